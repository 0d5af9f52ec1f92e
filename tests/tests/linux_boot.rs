//! Debian's stock kernel with a busybox initramfs boots on the software CPU
//! to the fixture's marker, runs a command given on the kernel command line,
//! and reboots (which ends the machine under `no_reboot`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use vireo_emulator::accel::AccelKind;
use vireo_emulator::engine::{self, Event, KernelConfig, MachineConfig, StopReason};

/// Builds (or reuses) the Debian kernel + initramfs fixture.
fn fixture() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("VIREO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-linux"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/debian-linux.sh");
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 2, "unexpected fixture output: {stdout}");
    (
        PathBuf::from(lines[lines.len() - 2]),
        PathBuf::from(lines[lines.len() - 1]),
    )
}

#[test]
fn debian_kernel_boots_to_the_marker_and_runs_a_command() {
    let (kernel, initrd) = fixture();
    let config = MachineConfig {
        memory: 512 << 20,
        accel: AccelKind::Soft,
        kernel: Some(KernelConfig {
            path: kernel,
            cmdline: "console=ttyS0 quiet vireo.cmd=uname%20-a".into(),
            initrd: Some(initrd.display().to_string()),
        }),
        no_reboot: true,
        kvm_allow_paravirtual: false,
        vcpus: 1,
    };
    let start = Instant::now();
    let handle = engine::start(&config).expect("start");
    let events = handle.subscribe();
    let deadline = start + Duration::from_secs(600);
    let mut serial = Vec::new();
    let mut marker_at = None;
    let stop = loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::SerialOutput(b)) => {
                serial.extend_from_slice(&b);
                if marker_at.is_none() && String::from_utf8_lossy(&serial).contains("VIREO-BOOT-OK")
                {
                    marker_at = Some(start.elapsed());
                }
            }
            Ok(Event::Stopped(r)) => break Some(r),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break None,
        }
    };
    let text = String::from_utf8_lossy(&serial);
    if stop.is_none() {
        handle.send(engine::Command::PowerOff);
    }
    eprintln!(
        "marker after {:?}, stopped after {:?}",
        marker_at,
        start.elapsed()
    );
    assert!(
        text.contains("VIREO-BOOT-OK"),
        "no marker; serial output:\n{text}"
    );
    let cmd_out = text
        .split("VIREO-CMD-BEGIN")
        .nth(1)
        .and_then(|s| s.split("VIREO-CMD-END").next())
        .unwrap_or_default();
    assert!(
        cmd_out.contains("Linux") && cmd_out.contains("x86_64"),
        "uname output missing; serial output:\n{text}"
    );
    assert_eq!(stop, Some(StopReason::GuestReset), "serial output:\n{text}");
}
