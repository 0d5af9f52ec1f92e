//! Regression case files: a text format holding the bitness, the machine
//! code (hex) and the initial state. Lines starting with `#` are comments
//! (the disassembly and the differences seen when the case was found).
//!
//! ```text
//! bitness 64
//! code 4801c8
//! gpr 0 0000000000000001          (index 0..15 = RAX..R15, hex)
//! rflags 0000000000000891
//! mxcsr 00001f80
//! xmm 3 000000000000000000000000000000ff
//! x87 037f 3800 80                 (control word, status word, non-empty mask)
//! st 7 3fff 8000000000000000       (physical register: sign|exponent, significand)
//! data 0040 00112233…              (offset, bytes; absent lines are zero)
//! ```

use super::{Case, InitState, X87State, DATA_SIZE};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Serialises a case; `comment` lines are prefixed with `# `.
pub fn to_text(case: &Case, comment: &str) -> String {
    let mut o = String::new();
    for l in comment.lines() {
        let _ = writeln!(o, "# {l}");
    }
    let s = &case.init;
    let _ = writeln!(o, "bitness {}", case.bitness);
    let hex: String = case.code.iter().map(|b| format!("{b:02x}")).collect();
    let _ = writeln!(o, "code {hex}");
    for (i, g) in s.gpr.iter().enumerate() {
        let _ = writeln!(o, "gpr {i} {g:016x}");
    }
    let _ = writeln!(o, "rflags {:016x}", s.rflags);
    let _ = writeln!(o, "mxcsr {:08x}", s.mxcsr);
    for (i, x) in s.xmm.iter().enumerate() {
        let _ = writeln!(o, "xmm {i} {x:032x}");
    }
    let _ = writeln!(
        o,
        "x87 {:04x} {:04x} {:02x}",
        s.x87.cw, s.x87.sw, s.x87.valid
    );
    for (i, (m, e)) in s.x87.regs.iter().enumerate() {
        let _ = writeln!(o, "st {i} {e:04x} {m:016x}");
    }
    for (k, chunk) in s.data.chunks(32).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(o, "data {:04x} {hex}", k * 32);
        }
    }
    o
}

fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("{s:?}: {e}")))
        .collect()
}

fn hex_u64(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses a case file.
pub fn from_text(text: &str) -> Result<Case, String> {
    let mut case = Case {
        bitness: 64,
        code: Vec::new(),
        init: InitState {
            gpr: [0; 16],
            rflags: 0,
            xmm: [0; 16],
            mxcsr: 0x1f80,
            x87: X87State::default(),
            data: vec![0; DATA_SIZE],
        },
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let err = |e: String| format!("line {}: {e}", n + 1);
        let idx = |i: usize, max: usize| -> Result<usize, String> {
            let v: usize = w
                .get(i)
                .ok_or("missing index")?
                .parse()
                .map_err(|e| format!("{e}"))?;
            if v >= max {
                return Err(format!("index {v} out of range"));
            }
            Ok(v)
        };
        let arg = |i: usize| -> Result<&str, String> {
            w.get(i).copied().ok_or_else(|| "missing value".to_string())
        };
        let s = &mut case.init;
        match w[0] {
            "bitness" => {
                case.bitness = arg(1)
                    .and_then(|v| v.parse().map_err(|e| format!("{e}")))
                    .map_err(err)?;
                if case.bitness != 32 && case.bitness != 64 {
                    return Err(err(format!("bitness {} not supported", case.bitness)));
                }
            }
            "code" => case.code = hex_bytes(w.get(1).copied().unwrap_or("")).map_err(err)?,
            "gpr" => {
                let i = idx(1, 16).map_err(err)?;
                s.gpr[i] = arg(2).and_then(hex_u64).map_err(err)?;
            }
            "rflags" => s.rflags = arg(1).and_then(hex_u64).map_err(err)?,
            "mxcsr" => s.mxcsr = arg(1).and_then(hex_u64).map_err(err)? as u32,
            "xmm" => {
                let i = idx(1, 16).map_err(err)?;
                let v = arg(2).map_err(err)?;
                s.xmm[i] = u128::from_str_radix(v, 16).map_err(|e| err(format!("{e}")))?;
            }
            "x87" => {
                s.x87.cw = arg(1).and_then(hex_u64).map_err(err)? as u16;
                s.x87.sw = arg(2).and_then(hex_u64).map_err(err)? as u16;
                s.x87.valid = arg(3).and_then(hex_u64).map_err(err)? as u8;
            }
            "st" => {
                let i = idx(1, 8).map_err(err)?;
                let e = arg(2).and_then(hex_u64).map_err(err)? as u16;
                let m = arg(3).and_then(hex_u64).map_err(err)?;
                s.x87.regs[i] = (m, e);
            }
            "data" => {
                let off = arg(1).and_then(hex_u64).map_err(err)? as usize;
                let b = hex_bytes(arg(2).map_err(err)?).map_err(err)?;
                if off + b.len() > DATA_SIZE {
                    return Err(err("data beyond the buffer".into()));
                }
                s.data[off..off + b.len()].copy_from_slice(&b);
            }
            other => return Err(err(format!("unknown key {other:?}"))),
        }
    }
    if case.code.len() > super::MAX_CODE {
        return Err("code too long".into());
    }
    Ok(case)
}

/// The directory holding the regression cases (`tests/regressions`).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions")
}

/// Every `*.case` file in `dir`, sorted, parsed.
pub fn load_dir(dir: &Path) -> Vec<(PathBuf, Result<Case, String>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let r = std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| from_text(&t));
            (p, r)
        })
        .collect()
}
