//! Times booting CD images to what the screen shows, for `vireo run` and
//! for QEMU, measured the same way: each is launched as a process with a
//! QMP socket, the screen is fetched with QMP `screendump` (PPM) every
//! 50 ms and read with a font, and the clock runs from the launch.
//!
//! ```text
//! iso-boot --vireo target/ci/vireo --qemu QEMU --grub GRUB.iso --di D-I.iso \
//!          --unifont unifont.hex --vgabios vgabios-stdvga.bin [--runs 3] [--accel tcg]
//! ```
//!
//! Prints one line a run and a summary with medians:
//! - GRUB: launch → "GNU GRUB" on the text screen (grub-rescue-pc's CD);
//! - installer: launch → the isolinux VESA menu (Enter is then pressed) →
//!   "Select a language" on the framebuffer (Debian installer CD).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vireo_tests::screen::Font;

struct Args {
    vireo: PathBuf,
    qemu: PathBuf,
    grub: PathBuf,
    di: PathBuf,
    unifont: PathBuf,
    vgabios: PathBuf,
    runs: usize,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = std::env::args().skip(1);
    let mut vals = std::collections::HashMap::new();
    while let Some(k) = a.next() {
        let v = a.next().ok_or(format!("{k}: missing value"))?;
        vals.insert(k.trim_start_matches("--").to_string(), v);
    }
    let path = |k: &str| -> Result<PathBuf, String> {
        vals.get(k)
            .map(PathBuf::from)
            .ok_or(format!("--{k} is required"))
    };
    Ok(Args {
        vireo: path("vireo")?,
        qemu: path("qemu")?,
        grub: path("grub")?,
        di: path("di")?,
        unifont: path("unifont")?,
        vgabios: path("vgabios")?,
        runs: vals.get("runs").and_then(|r| r.parse().ok()).unwrap_or(3),
        only: vals.get("only").cloned(),
    })
}

/// One emulator process with its QMP connection.
struct Vm {
    child: Child,
    qmp: BufReader<UnixStream>,
    dir: PathBuf,
    t0: Instant,
}

impl Vm {
    fn launch(kind: &str, args: &Args, iso: &Path, tag: &str) -> Result<Vm, String> {
        let dir = std::env::temp_dir().join(format!("iso-boot-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let sock = dir.join("qmp.sock");
        let t0 = Instant::now();
        let mut cmd = if kind == "vireo" {
            let mut c = Command::new(&args.vireo);
            c.args([
                "run", "--accel", "soft", "--memory", "1G", "--serial", "none", "--boot", "d",
            ])
            .arg("--cdrom")
            .arg(iso)
            .arg("--qmp")
            .arg(format!("unix:{}", sock.display()));
            c
        } else {
            let mut c = Command::new(&args.qemu);
            c.args([
                "-accel", "tcg", "-M", "pc", "-m", "1G", "-display", "none", "-boot", "d",
            ])
            .args(["-serial", "none", "-monitor", "none", "-net", "none"])
            .arg("-cdrom")
            .arg(iso)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
            c
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{kind}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("{kind}: QMP socket: {e}")),
            }
        };
        let mut vm = Vm {
            child,
            qmp: BufReader::new(stream),
            dir,
            t0,
        };
        vm.read_reply()?; // greeting
        vm.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(vm)
    }

    fn read_reply(&mut self) -> Result<String, String> {
        loop {
            let mut line = String::new();
            if self.qmp.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP connection closed".into());
            }
            if !line.contains("\"event\"") {
                return Ok(line);
            }
        }
    }

    fn execute(&mut self, json: &str) -> Result<String, String> {
        self.qmp
            .get_mut()
            .write_all(format!("{json}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let r = self.read_reply()?;
        if r.contains("\"error\"") {
            return Err(r);
        }
        Ok(r)
    }

    /// The screen as (width, height, RGBA).
    fn screen(&mut self) -> Result<(usize, usize, Vec<u8>), String> {
        let path = self.dir.join("screen.ppm");
        self.execute(&format!(
            r#"{{"execute":"screendump","arguments":{{"filename":"{}"}}}}"#,
            path.display()
        ))?;
        let data = std::fs::read(&path).map_err(|e| e.to_string())?;
        parse_ppm(&data).ok_or_else(|| "bad PPM".to_string())
    }

    fn elapsed(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A binary PPM (P6, maxval 255) as RGBA.
fn parse_ppm(data: &[u8]) -> Option<(usize, usize, Vec<u8>)> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while data.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while !data.get(i)?.is_ascii_whitespace() {
            i += 1;
        }
        fields.push(std::str::from_utf8(&data[start..i]).ok()?.to_string());
    }
    i += 1;
    if fields[0] != "P6" {
        return None;
    }
    let (w, h): (usize, usize) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
    let px = data.get(i..i + w * h * 3)?;
    let rgba = px
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    Some((w, h, rgba))
}

const POLL: Duration = Duration::from_millis(50);

/// Launch → GRUB's banner on the text screen.
fn grub_run(kind: &str, args: &Args, vga: &Font) -> Result<f64, String> {
    let mut vm = Vm::launch(kind, args, &args.grub, "grub")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (w, h, rgba) = vm.screen()?;
        if w == 720
            && vga
                .read_cells(&rgba, w, h, 9)
                .iter()
                .any(|l| l.contains("GNU GRUB"))
        {
            return Ok(vm.elapsed());
        }
        std::thread::sleep(POLL);
    }
    Err(format!("{kind}: no GRUB banner within 120 s"))
}

/// Launch → the VESA boot menu (then Enter) → "Select a language".
fn installer_run(kind: &str, args: &Args, uni: &Font) -> Result<(f64, f64), String> {
    let mut vm = Vm::launch(kind, args, &args.di, "di")?;
    let deadline = Instant::now() + Duration::from_secs(900);
    // The BIOS's text screen first (QEMU starts at 640x480 before any
    // mode is set), then the menu's 640x480 picture.
    let mut text_seen = false;
    let menu = loop {
        let (w, h, rgba) = vm.screen()?;
        text_seen |= (w, h) == (720, 400);
        let colors = rgba
            .chunks_exact(4)
            .step_by(7)
            .collect::<std::collections::HashSet<_>>()
            .len();
        if text_seen && (w, h) == (640, 480) && colors > 16 {
            break vm.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("{kind}: no boot menu"));
        }
        std::thread::sleep(POLL);
    };
    // The menu draws its picture and entries, then waits for a key.
    std::thread::sleep(Duration::from_millis(1500));
    vm.execute(r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ret"}]}}"#)?;
    let trace = std::env::var_os("ISO_BOOT_TRACE").is_some();
    let mut last = (0, 0);
    while Instant::now() < deadline {
        let (w, h, rgba) = vm.screen()?;
        if trace && (w, h) != last {
            last = (w, h);
            eprintln!("{kind}: {:.2} s: {w}x{h}", vm.elapsed());
        }
        if uni
            .read(&rgba, w, h)
            .iter()
            .any(|l| l.contains("Select a language"))
        {
            return Ok((menu, vm.elapsed()));
        }
        std::thread::sleep(POLL);
    }
    Err(format!("{kind}: no installer dialog within 900 s"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("iso-boot: {e}");
            std::process::exit(2);
        }
    };
    let vga = Font::from_vga_rom(&args.vgabios).unwrap_or_else(|e| {
        eprintln!("iso-boot: {e}");
        std::process::exit(2)
    });
    let uni = Font::from_unifont_hex(&args.unifont).unwrap_or_else(|e| {
        eprintln!("iso-boot: {}: {e}", args.unifont.display());
        std::process::exit(2)
    });
    let mut summary = Vec::new();
    let kinds: Vec<String> = std::env::var("ISO_BOOT_KINDS")
        .unwrap_or_else(|_| "vireo qemu".into())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for kind in kinds.iter().map(String::as_str) {
        let mut grub = Vec::new();
        let mut di = Vec::new();
        for run in 0..args.runs {
            if args.only.as_deref() != Some("installer") {
                match grub_run(kind, &args, &vga) {
                    Ok(t) => {
                        println!("{kind} run {run}: GRUB banner {t:.2} s");
                        grub.push(t);
                    }
                    Err(e) => println!("{kind} run {run}: {e}"),
                }
            }
            if args.only.as_deref() != Some("grub") {
                match installer_run(kind, &args, &uni) {
                    Ok((m, t)) => {
                        println!("{kind} run {run}: boot menu {m:.2} s, installer dialog {t:.2} s");
                        di.push(t);
                    }
                    Err(e) => println!("{kind} run {run}: {e}"),
                }
            }
        }
        summary.push((kind, median(&mut grub), median(&mut di)));
    }
    println!();
    println!(
        "{:<18} {:>16} {:>22}",
        "", "GRUB banner (s)", "installer dialog (s)"
    );
    for (kind, g, d) in summary {
        let name = if kind == "vireo" {
            "vireo-soft"
        } else {
            "qemu-tcg"
        };
        println!("{name:<18} {g:>16.2} {d:>22.2}");
    }
}
