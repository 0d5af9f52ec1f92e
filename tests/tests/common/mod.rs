//! Helpers for tests that boot the multiboot test kernels of `tests/kernels`:
//! building them with `tests/kernels/build.sh`, booting one on the engine,
//! and collecting its serial output and how it stopped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vireo_emulator::accel::AccelKind;
use vireo_emulator::engine::{
    self, Command, EngineError, Event, KernelConfig, MachineConfig, StopReason,
};

/// The exit status of a kernel that passed: isa-debug-exit value 0x10.
pub const EXIT_SUCCESS: i32 = 33;

/// How long one kernel may run.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Builds all kernels once per test process; returns the directory holding
/// `NAME.elf`. Panics with the build output if the build fails.
pub fn kernels_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_builds(tmp);
        let out = tmp.join(format!("multiboot-kernels-{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/build.sh");
        let result = Process::new("bash")
            .arg(&script)
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            result.status.success(),
            "{} failed ({}); it needs gcc and GNU ld (binutils).\nstdout:\n{}\nstderr:\n{}",
            script.display(),
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        out
    })
}

/// Removes kernel builds left by test processes that no longer run.
fn remove_stale_builds(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("multiboot-kernels-") else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .map(|p| Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(false);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The path of a built kernel.
pub fn kernel(name: &str) -> PathBuf {
    let p = kernels_dir().join(format!("{name}.elf"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// What a kernel run produced.
#[derive(Debug)]
pub struct Run {
    /// Kernel name, for messages.
    pub name: String,
    /// Everything it wrote to COM1.
    pub serial: String,
    /// How the machine stopped; `None` if it was still running at the timeout.
    pub stop: Option<StopReason>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Boots kernel `name` with `cmdline` on `accel` (128 MiB, no reboot) and
/// waits for it to stop, at most `timeout`. Errors if the engine refuses to
/// start (for example an accelerator that is not available).
pub fn run_kernel(
    name: &str,
    cmdline: &str,
    accel: AccelKind,
    timeout: Duration,
) -> Result<Run, EngineError> {
    let config = MachineConfig {
        memory: 128 << 20,
        accel,
        kernel: Some(KernelConfig {
            path: kernel(name),
            cmdline: cmdline.to_string(),
            initrd: None,
        }),
        no_reboot: true,
        // Only real-mode kernels are run on KVM here: PVM can run those.
        kvm_allow_paravirtual: accel == AccelKind::Kvm,
        vcpus: 1,
        ..Default::default()
    };
    let start = Instant::now();
    let handle = engine::start(&config)?;
    let events = handle.subscribe();
    let deadline = start + timeout;
    let mut serial = Vec::new();
    let mut stop = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::SerialOutput(bytes)) => serial.extend_from_slice(&bytes),
            Ok(Event::Stopped(reason)) => {
                stop = Some(reason);
                break;
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                stop = Some(StopReason::Error(
                    "engine ended without a Stopped event".into(),
                ));
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    if stop.is_none() {
        // Timed out: stop the machine, keep what it printed meanwhile.
        handle.send(Command::PowerOff);
        let grace = Instant::now() + Duration::from_secs(5);
        while let Ok(ev) = events.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            match ev {
                Event::SerialOutput(bytes) => serial.extend_from_slice(&bytes),
                Event::Stopped(_) => break,
                _ => {}
            }
        }
    } else {
        handle.join();
    }
    Ok(Run {
        name: name.to_string(),
        serial: String::from_utf8_lossy(&serial).into_owned(),
        stop,
        elapsed,
    })
}

/// What QEMU 7.2 printed for kernel `name` (tests/kernels/qemu-7.2/NAME.txt).
pub fn qemu_transcript(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("kernels/qemu-7.2/{name}.txt"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The lines of QEMU's transcript a passing run must print too: every
/// "ok ..." check, the "checks: ..." total and the final verdict.
pub fn qemu_result_lines(name: &str) -> Vec<String> {
    qemu_transcript(name)
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("checks: ") || *l == "ALL TESTS PASSED")
        .map(str::to_string)
        .collect()
}

impl Run {
    /// The lines of the serial output.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.serial.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// A description for failure messages: how it stopped, the FAIL lines,
    /// then the whole serial output.
    pub fn report(&self) -> String {
        let stop = match &self.stop {
            Some(r) => format!("{r:?}"),
            None => format!("still running after {:.1?} (timed out)", self.elapsed),
        };
        let fails: Vec<&str> = self.lines().filter(|l| l.starts_with("FAIL")).collect();
        format!(
            "kernel `{}`: stopped: {stop}\nfailed checks ({}):\n  {}\n--- serial output ---\n{}--- end of serial output ---",
            self.name,
            fails.len(),
            fails.join("\n  "),
            self.serial
        )
    }

    /// Asserts the kernel passed as it did under QEMU 7.2: see
    /// [`qemu_result_lines`] and [`Run::assert_success`].
    pub fn assert_like_qemu(&self) {
        let lines = qemu_result_lines(&self.name);
        assert!(
            !lines.is_empty(),
            "no results in QEMU's transcript for {}",
            self.name
        );
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        self.assert_success(&refs);
    }

    /// Asserts the kernel exited with [`EXIT_SUCCESS`], printed no FAIL
    /// line, and printed every line of `expected` (each an exact line).
    pub fn assert_success(&self, expected: &[&str]) {
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|want| !self.lines().any(|l| l == *want))
            .collect();
        let failed = self.lines().any(|l| l.starts_with("FAIL"));
        let exited = self.stop == Some(StopReason::Exit(EXIT_SUCCESS));
        assert!(
            exited && !failed && missing.is_empty(),
            "{}\nexpected exit status {EXIT_SUCCESS}; {} expected lines missing:\n  {}",
            self.report(),
            missing.len(),
            missing.join("\n  ")
        );
    }
}
