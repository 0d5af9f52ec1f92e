//! Bad input from the user: broken or missing CD and disk images, unusable
//! firmware, impossible boot orders, unbootable media. Each gives a clear
//! error that names the file (through `engine::start`, and as exactly one
//! line on stderr with a failure status from the `vireo` binary), or, for
//! media the firmware rejects, the firmware's own report while the
//! machine keeps running.

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use vireo_emulator::accel::AccelKind;
use vireo_emulator::engine::{
    self, Command, DiskConfig, EngineHandle, Event, MachineConfig, RunState, StopReason,
};

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bad-input-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen()).collect()
}

/// A firmware-booted machine on the software CPU with `f` applied.
fn config(f: impl FnOnce(&mut MachineConfig)) -> MachineConfig {
    let mut c = MachineConfig {
        memory: 64 << 20,
        accel: AccelKind::Soft,
        ..Default::default()
    };
    f(&mut c);
    c
}

/// The error `engine::start` gives for `config` (panics if it starts).
fn start_error(config: &MachineConfig) -> String {
    match engine::start(config) {
        Ok(h) => {
            h.send(Command::PowerOff);
            h.join();
            panic!("the machine started with {config:?}");
        }
        Err(e) => e.to_string(),
    }
}

/// The `vireo` binary next to this test's build (`cargo test --workspace`
/// builds it).
fn vireo_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("vireo"))
        .expect("target dir");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p vireo` \
         with the same profile first)",
        bin.display()
    );
    bin
}

/// Runs `vireo run ARGS --serial none`, killing it if it has not exited
/// after 60 s (these runs must fail before a machine starts).
fn vireo_run(args: &[&str]) -> Output {
    let mut child = Process::new(vireo_bin())
        .arg("run")
        .args(args)
        .args(["--serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vireo");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "vireo run {args:?} was still running after 60 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Checks `vireo run ARGS` failed with one line on stderr holding every
/// string of `want`; returns the line.
fn assert_one_line_error(args: &[&str], want: &[&str]) -> String {
    let out = vireo_run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "vireo run {args:?} succeeded; stderr:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "vireo run {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "vireo run {args:?}: want one line on stderr, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("vireo: "), "{stderr}");
    for w in want {
        assert!(lines[0].contains(w), "{w:?} missing from: {stderr}");
    }
    lines[0].to_string()
}

/// An ISO 9660 image holding a 1 MiB file, made with xorriso.
fn make_iso(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).expect("dir");
    std::fs::write(content.join("big.bin"), random_bytes(1, 1 << 20)).expect("file");
    let iso = dir.join("full.iso");
    let out = Process::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-r", "-o"])
        .arg(&iso)
        .arg(&content)
        .output()
        .expect("run xorriso (scripts/setup.sh --test installs it)");
    assert!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

#[test]
fn a_truncated_iso_is_refused_naming_the_file() {
    let dir = scratch("truncated");
    let iso = make_iso(&dir);
    // The whole image is accepted.
    engine::open_cd_image(&iso).unwrap_or_else(|e| panic!("the full ISO: {e}"));
    let full = std::fs::read(&iso).expect("read iso");
    assert!(full.len() > 1 << 20, "the ISO is {} bytes", full.len());
    let truncated = dir.join("truncated.iso");
    std::fs::write(&truncated, &full[..full.len() / 2]).expect("write");
    let name = truncated.display().to_string();

    let e = start_error(&config(|c| {
        c.cdrom = Some(truncated.clone());
        c.boot_order = "d".into();
    }));
    assert!(e.contains(&name), "{e}");
    assert!(e.contains("truncated"), "{e}");

    let line = assert_one_line_error(&["--cdrom", &name], &[&name, "truncated"]);
    eprintln!("{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_a_cd_image_is_refused() {
    let dir = scratch("not-a-cd");
    let junk = dir.join("junk.iso");
    std::fs::write(&junk, random_bytes(2, 1000)).expect("write");
    let name = junk.display().to_string();
    let e = start_error(&config(|c| c.cdrom = Some(junk.clone())));
    assert!(e.contains(&name), "{e}");
    assert!(e.contains("not a CD image"), "{e}");
    assert_one_line_error(&["--cdrom", &name], &[&name, "not a CD image"]);

    let empty = dir.join("empty.iso");
    std::fs::write(&empty, b"").expect("write");
    let e = start_error(&config(|c| c.cdrom = Some(empty.clone())));
    assert!(e.contains(&empty.display().to_string()), "{e}");
    assert!(e.contains("empty"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bios_image_of_a_bad_size_is_refused_naming_the_file() {
    let dir = scratch("bad-bios");
    let bios = dir.join(vireo_emulator::boot::firmware::BIOS_FILE);
    std::fs::write(&bios, vec![0u8; 1000]).expect("write");
    let name = bios.display().to_string();
    // The directory given is searched before VIREO_FIRMWARE_DIR and the
    // system's, so this image is the one found.
    let e = start_error(&config(|c| c.firmware_dir = Some(dir.clone())));
    assert!(e.contains(&name), "{e}");
    assert!(e.contains("64 KiB"), "{e}");
    assert!(e.contains("1000 bytes"), "{e}");
    let dir_name = dir.display().to_string();
    assert_one_line_error(&["--firmware", &dir_name], &[&name, "64 KiB"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_boot_media_and_bad_boot_orders_are_one_line_errors() {
    for (flag, path) in [
        ("--cdrom", "/nonexistent.iso"),
        ("--disk", "/nonexistent.img"),
    ] {
        let line = assert_one_line_error(&[flag, path], &[path]);
        assert!(
            line.contains("No such file"),
            "{flag} {path}: the reason is missing: {line}"
        );
    }
    let e = start_error(&config(|c| {
        c.disks = vec![DiskConfig {
            path: "/nonexistent.img".into(),
            read_only: false,
        }]
    }));
    assert!(e.contains("/nonexistent.img"), "{e}");

    // clap refuses the boot order before anything starts.
    let out = vireo_run(&["--boot", "z"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--boot"), "{stderr}");
    assert!(stderr.contains("\"z\" is not a boot order"), "{stderr}");
}

#[test]
fn a_disk_image_smaller_than_a_sector_is_refused() {
    let dir = scratch("tiny-disk");
    let disk = dir.join("tiny.img");
    std::fs::write(&disk, vec![0u8; 511]).expect("write");
    let name = disk.display().to_string();
    let e = start_error(&config(|c| {
        c.disks = vec![DiskConfig {
            path: disk.clone(),
            read_only: false,
        }];
        c.boot_order = "c".into();
    }));
    assert!(e.contains(&name), "{e}");
    assert!(e.contains("512-byte sector"), "{e}");
    assert_one_line_error(&["--disk", &name], &[&name, "512-byte sector"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Collects the firmware's debug output until it holds `want`; panics if
/// the machine stops or `timeout` passes first.
fn wait_debug(events: &Receiver<Event>, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(Event::DebugOutput(b)) => log.extend_from_slice(&b),
            Ok(Event::Stopped(r)) => {
                panic!("stopped ({r:?}):\n{}", String::from_utf8_lossy(&log))
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the engine went away:\n{}", String::from_utf8_lossy(&log))
            }
        }
        let text = String::from_utf8_lossy(&log);
        if text.contains(want) {
            return text.into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} did not appear within {timeout:?}:\n{text}"
        );
    }
}

/// Checks the machine still runs a while after the firmware gave up,
/// then powers it off and checks it stopped for that reason only.
fn keeps_running_until_powered_off(h: EngineHandle, events: Receiver<Event>) {
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(ev) = events.recv_timeout(until.saturating_duration_since(Instant::now())) {
        assert!(!matches!(ev, Event::Stopped(_)), "it stopped: {ev:?}");
    }
    assert_eq!(h.state(), RunState::Running);
    h.send(Command::PowerOff);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Stopped(r)) => {
                assert_eq!(r, StopReason::PowerOff);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no Stopped event after PowerOff: {e:?}"),
        }
    }
    h.join();
    assert_eq!(h.state(), RunState::Shutdown);
}

#[test]
fn booting_from_an_empty_cd_drive_reports_no_bootable_device() {
    let h = engine::start(&config(|c| c.boot_order = "d".into()))
        .unwrap_or_else(|e| panic!("start: {e}"));
    let events = h.subscribe();
    let log = wait_debug(&events, "No bootable device", Duration::from_secs(120));
    assert!(log.contains("Booting from DVD/CD"), "{log}");
    keeps_running_until_powered_off(h, events);
}

#[test]
fn a_garbage_boot_disk_is_tried_and_refused_by_the_firmware() {
    let dir = scratch("garbage-disk");
    let disk = dir.join("garbage.img");
    let mut bytes = random_bytes(3, 1 << 20);
    // No boot signature (a random one could be 0x55 0xaa).
    bytes[510] = 0;
    std::fs::write(&disk, &bytes).expect("write");
    let h = engine::start(&config(|c| {
        c.disks = vec![DiskConfig {
            path: disk.clone(),
            read_only: false,
        }];
        c.boot_order = "c".into();
    }))
    .unwrap_or_else(|e| panic!("start: {e}"));
    let events = h.subscribe();
    let log = wait_debug(
        &events,
        "Boot failed: not a bootable disk",
        Duration::from_secs(120),
    );
    assert!(log.contains("Booting from Hard Disk"), "{log}");
    keeps_running_until_powered_off(h, events);
    // Firmware only read it: the image is as it was.
    assert_eq!(std::fs::read(&disk).expect("read"), bytes);
    let _ = std::fs::remove_dir_all(&dir);
}
