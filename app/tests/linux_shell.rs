//! An interactive shell over the serial port, as a user gets it: `vireo run
//! --preset linux-direct` boots Debian's kernel and busybox initramfs with
//! four vCPUs and 5 GiB (one of them above the PCI hole); the test types
//! commands into the process's stdin and reads their output from its stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Builds (or reuses) the kernel + initramfs fixture of `tests/fixtures`.
fn fixture() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("VIREO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-linux"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/debian-linux.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&cache)
        .output()
        .expect("run debian-linux.sh");
    assert!(
        out.status.success(),
        "debian-linux.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "unexpected fixture output: {text}");
    (
        PathBuf::from(lines[lines.len() - 2]),
        PathBuf::from(lines[lines.len() - 1]),
    )
}

/// The last number after `key` in `text` (the shell echoes what is typed,
/// so keys are printed in two pieces and only the output contains them).
fn field(text: &str, key: &str) -> u64 {
    text.rsplit(key)
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn shell_on_the_serial_port_with_four_vcpus_and_5g() {
    let (kernel, initrd) = fixture();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(["run", "--preset", "linux-direct", "--smp", "4", "-m", "5G"])
        .args(["--accel", "soft", "--no-reboot", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--append",
            "console=ttyS0 quiet vireo.shell=1 vireo.cmd=true",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vireo");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Each step: what to wait for, then what to type.
    let steps: [(&str, &str); 3] = [
        (
            "VIREO-CMD-END",
            "echo cpus=$(nproc) sum=$((6*7)); echo epo\"ch=$(date +%s)\"\n",
        ),
        (
            "sum=42",
            "awk '/MemTotal/ {print \"mem\" \"total=\" $2}' /proc/meminfo; \
             awk '/zone +Normal/ {z=1} z && /managed/ {print \"nor\" \"mal=\" $2; exit}' /proc/zoneinfo\n",
        ),
        (
            "normal=",
            "cat /sys/devices/system/cpu/online; \
             echo pci\"devs=$(cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device | tr '\\n' ,)\"; \
             reboot -f\n",
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut out = Vec::new();
    let (mut next, mut seen) = (0, 0);
    let status = loop {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            out.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((wait, typed)) = steps.get(next) {
            if let Some(pos) = text[seen..].find(wait) {
                seen += pos + wait.len();
                stdin.write_all(typed.as_bytes()).expect("type");
                stdin.flush().expect("flush");
                next += 1;
            }
        }
        if let Some(s) = child.try_wait().expect("wait") {
            // Drain what is left.
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                out.extend_from_slice(&chunk);
            }
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
    };
    let text = String::from_utf8_lossy(&out);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(
        next,
        steps.len(),
        "the shell did not answer:\n{text}\n{err}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{text}\n{err}");
    assert!(text.contains("cpus=4 sum=42"), "serial output:\n{text}");
    assert!(
        field(&text, "memtotal=") > 4_800_000,
        "MemTotal (kB):\n{text}"
    );
    // Pages managed in the Normal zone, all above 4 GiB: more than 200 MiB.
    assert!(
        field(&text, "normal=") > 50_000,
        "Normal zone pages:\n{text}"
    );
    assert!(text.contains("0-3"), "online CPUs:\n{text}");
    // Linux found the PC's PCI functions on bus 0 (vendors, then devices,
    // in 00:00.0, 00:01.0, 00:01.1, 00:01.3, 00:02.0 order): 440FX, PIIX3,
    // its IDE, the PIIX4 PM function and the VGA.
    assert!(
        text.contains(
            "pcidevs=0x8086,0x8086,0x8086,0x8086,0x1234,0x1237,0x7000,0x7010,0x7113,0x1111,"
        ),
        "PCI devices:\n{text}"
    );
    // The guest's clock comes from the RTC: the host's UTC time.
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("host clock")
        .as_secs();
    let guest = field(&text, "epoch=");
    assert!(
        guest.abs_diff(host) < 900,
        "guest time {guest}, host time {host}:\n{text}"
    );
}
