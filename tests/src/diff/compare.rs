//! Comparison of native and emulated outcomes, and mismatch reports.

use super::analysis::Analysis;
use super::{
    fl, vector_name, Case, FinalState, InitState, Outcome, X87State, CODE_ADDR, DATA_ADDR,
};
use std::fmt::Write;

const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Verdict on one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same final state (modulo undefined parts).
    Match,
    /// The emulator disagrees with the host: one line per difference.
    Mismatch(Vec<String>),
    /// The native run failed (harness problem, not an emulator bug).
    NativeError(String),
}

fn flag_names(f: u64) -> String {
    let names = [
        (fl::CF, "CF"),
        (fl::PF, "PF"),
        (fl::AF, "AF"),
        (fl::ZF, "ZF"),
        (fl::SF, "SF"),
        (fl::DF, "DF"),
        (fl::OF, "OF"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

fn f80(r: (u64, u16)) -> String {
    format!("{:04x}:{:016x}", r.1, r.0)
}

/// Index of the instruction at `rip` (number of instructions before it).
fn insn_index(an_len: usize, insn_ips: &[u64], rip: u64) -> usize {
    insn_ips.iter().position(|&ip| ip == rip).unwrap_or(an_len)
}

/// Compares two outcomes of `case`.
pub fn compare(case: &Case, an: &Analysis, native: &Outcome, emu: &Outcome) -> Verdict {
    let ips: Vec<u64> = super::decode(case.bitness, &case.code)
        .iter()
        .map(|i| i.ip())
        .collect();
    let (ns, es) = match (native, emu) {
        (Outcome::Error(e), _) => return Verdict::NativeError(e.clone()),
        (_, Outcome::Error(e)) => return Verdict::Mismatch(vec![e.clone()]),
        (Outcome::Done(n), Outcome::Done(e)) => (n, e),
        (Outcome::Fault(a, n), Outcome::Fault(b, e)) => {
            if a != b {
                return Verdict::Mismatch(vec![format!(
                    "exception: native {} (vector {a}) at {:#x}, emulated {} (vector {b}) at {:#x}",
                    vector_name(*a),
                    n.rip,
                    vector_name(*b),
                    e.rip
                )]);
            }
            (n, e)
        }
        (Outcome::Fault(a, n), Outcome::Done(_)) => {
            return Verdict::Mismatch(vec![format!(
                "exception: native raised {} (vector {a}) at {:#x}, emulated ran to the end",
                vector_name(*a),
                n.rip
            )])
        }
        (Outcome::Done(_), Outcome::Fault(b, e)) => {
            let what = if *b == 6 {
                " (unimplemented instruction?)"
            } else {
                ""
            };
            return Verdict::Mismatch(vec![format!(
                "exception: emulated raised {} (vector {b}) at {:#x}{what}, native ran to the end",
                vector_name(*b),
                e.rip
            )]);
        }
    };
    let idx = insn_index(an.masks.len() - 1, &ips, ns.rip).min(an.masks.len() - 1);
    let m = an.masks[idx];
    let mut d = Vec::new();
    let nregs = if case.bitness == 64 { 16 } else { 8 };
    for (i, name) in GPR_NAMES.iter().enumerate().take(nregs) {
        let mask = !m.gpr[i];
        if (ns.gpr[i] ^ es.gpr[i]) & mask != 0 {
            let undef = if m.gpr[i] != 0 {
                format!(" (undefined bits {:#x} ignored)", m.gpr[i])
            } else {
                String::new()
            };
            d.push(format!(
                "{name}: native {:#018x} emulated {:#018x}{undef}",
                ns.gpr[i], es.gpr[i]
            ));
        }
    }
    if ns.rip != es.rip {
        d.push(format!("rip: native {:#x} emulated {:#x}", ns.rip, es.rip));
    }
    let fmask = fl::COMPARED & !m.rflags();
    if (ns.rflags ^ es.rflags) & fmask != 0 {
        d.push(format!(
            "rflags: native {:#x} [{}] emulated {:#x} [{}] (differ: {}; undefined ignored: {})",
            ns.rflags & fl::COMPARED,
            flag_names(ns.rflags),
            es.rflags & fl::COMPARED,
            flag_names(es.rflags),
            flag_names((ns.rflags ^ es.rflags) & fmask),
            flag_names(m.rflags())
        ));
    }
    diff_data(&case.init, ns, es, &mut d);
    if an.coverage.sse {
        for i in 0..nregs {
            if ns.xmm[i] != es.xmm[i] {
                d.push(format!(
                    "xmm{i}: native {:032x} emulated {:032x}",
                    ns.xmm[i], es.xmm[i]
                ));
            }
        }
        if ns.mxcsr != es.mxcsr {
            d.push(format!(
                "mxcsr: native {:#x} emulated {:#x}",
                ns.mxcsr, es.mxcsr
            ));
        }
    }
    if an.coverage.x87 {
        diff_x87(&ns.x87, &es.x87, m.x87_sw(), &mut d);
    }
    if d.is_empty() {
        Verdict::Match
    } else {
        Verdict::Mismatch(d)
    }
}

fn diff_data(init: &InitState, n: &FinalState, e: &FinalState, d: &mut Vec<String>) {
    let mut shown = 0;
    let mut i = 0;
    while i < n.data.len() {
        if n.data[i] != e.data[i] {
            let start = i & !7;
            let end = (start + 8).min(n.data.len());
            if shown < 8 {
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                d.push(format!(
                    "memory {:#x} (data+{:#x}): initial {} native {} emulated {}",
                    DATA_ADDR + start as u64,
                    start,
                    hex(&init.data[start..end]),
                    hex(&n.data[start..end]),
                    hex(&e.data[start..end])
                ));
            }
            shown += 1;
            i = end;
        } else {
            i += 1;
        }
    }
    if shown > 8 {
        d.push(format!("memory: {} more differing qwords", shown - 8));
    }
}

fn diff_x87(n: &X87State, e: &X87State, sw_undef: u16, d: &mut Vec<String>) {
    if n.cw != e.cw {
        d.push(format!(
            "x87 cw: native {:#06x} emulated {:#06x}",
            n.cw, e.cw
        ));
    }
    if (n.sw ^ e.sw) & !sw_undef != 0 {
        d.push(format!(
            "x87 sw: native {:#06x} (top {}) emulated {:#06x} (top {}) (undefined bits {:#x} ignored)",
            n.sw,
            n.top(),
            e.sw,
            e.top(),
            sw_undef
        ));
    }
    if n.valid != e.valid {
        d.push(format!(
            "x87 tags (non-empty physical registers): native {:08b} emulated {:08b}",
            n.valid, e.valid
        ));
    }
    for i in 0..8 {
        if n.valid & e.valid & (1 << i) != 0 && n.regs[i] != e.regs[i] {
            d.push(format!(
                "x87 R{i} (ST{}): native {} emulated {}",
                (i + 8 - n.top() as usize) & 7,
                f80(n.regs[i]),
                f80(e.regs[i])
            ));
        }
    }
}

/// A printable description of a case's initial state.
pub fn format_init(case: &Case, an: &Analysis) -> String {
    let s = &case.init;
    let mut o = String::new();
    let nregs = if case.bitness == 64 { 16 } else { 8 };
    for (i, name) in GPR_NAMES.iter().enumerate().take(nregs) {
        let v = if case.bitness == 64 {
            s.gpr[i]
        } else {
            s.gpr[i] & 0xffff_ffff
        };
        let _ = write!(o, "  {name:>3}={v:016x}");
        if i % 4 == 3 {
            o.push('\n');
        }
    }
    let _ = writeln!(
        o,
        "  rflags={:#x} [{}]",
        s.rflags & fl::COMPARED,
        flag_names(s.rflags)
    );
    if an.coverage.sse {
        for i in 0..nregs {
            let _ = write!(o, "  xmm{i:<2}={:032x}", s.xmm[i]);
            if i % 2 == 1 {
                o.push('\n');
            }
        }
        let _ = writeln!(o, "  mxcsr={:#x}", s.mxcsr);
    }
    if an.coverage.x87 {
        let x = &s.x87;
        let _ = writeln!(
            o,
            "  x87 cw={:#06x} sw={:#06x} (top {}) non-empty={:08b}",
            x.cw,
            x.sw,
            x.top(),
            x.valid
        );
        for i in 0..8 {
            let _ = write!(
                o,
                "  R{i}={}{}",
                f80(x.regs[i]),
                if x.valid & (1 << i) != 0 {
                    ""
                } else {
                    "(empty)"
                }
            );
            if i % 4 == 3 {
                o.push('\n');
            }
        }
    }
    let nz = s.data.iter().filter(|b| **b != 0).count();
    let _ = writeln!(o, "  data buffer at {DATA_ADDR:#x}: {} bytes, {nz} non-zero (full contents in the regression file)", s.data.len());
    o
}

/// A full mismatch report.
pub fn report(label: &str, case: &Case, an: &Analysis, verdict: &Verdict) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "=== {label} ({}-bit, code at {CODE_ADDR:#x})",
        case.bitness
    );
    o.push_str(&super::disassemble(case.bitness, &case.code));
    o.push_str("initial state:\n");
    o.push_str(&format_init(case, an));
    match verdict {
        Verdict::Match => o.push_str("match\n"),
        Verdict::NativeError(e) => {
            let _ = writeln!(o, "native run failed: {e}");
        }
        Verdict::Mismatch(lines) => {
            o.push_str("differences (native vs emulated):\n");
            for l in lines {
                let _ = writeln!(o, "  {l}");
            }
        }
    }
    o
}
