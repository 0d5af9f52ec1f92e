//! The engine thread and its handle. Every client (CLI, GUI, VNC, QMP) drives
//! a machine only through an [`EngineHandle`]: commands in, events out.
//!
//! The vCPU is an explicit state machine (the firecracker model): `Running`,
//! `Paused`, `Halted` (waiting for an interrupt), `Stopped`.

use crate::accel::{AccelExit, AccelKind, Accelerator, SoftAccel};
use crate::boot::multiboot::{self, Module, MultibootError};
use crate::boot::BootState;
use crate::bus::lock;
use crate::machine::{Machine, MachineError};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

/// A kernel to boot directly.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Kernel image path.
    pub path: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Modules, QEMU-style: `"file args,file2 args"`.
    pub initrd: Option<String>,
}

/// What to build and boot.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Accelerator choice.
    pub accel: AccelKind,
    /// Direct kernel boot.
    pub kernel: Option<KernelConfig>,
    /// A guest reset ends the machine instead of rebooting it.
    pub no_reboot: bool,
    /// Accept a paravirtual KVM (PVM) for `--accel kvm`; it runs real-mode
    /// code only, so this is for tests of such code.
    pub kvm_allow_paravirtual: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            memory: 128 << 20,
            accel: AccelKind::Auto,
            kernel: None,
            no_reboot: false,
            kvm_allow_paravirtual: false,
        }
    }
}

/// Errors starting a machine: each names the thing and the problem.
#[derive(Debug, Error)]
pub enum EngineError {
    /// Bad memory size.
    #[error("--memory {0}: {1}")]
    Memory(String, String),
    /// Machine construction failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A file could not be read.
    #[error("{0}: {1}")]
    File(String, std::io::Error),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Multiboot(#[from] MultibootError),
    /// The Linux kernel could not be loaded.
    #[error(transparent)]
    Linux(#[from] crate::boot::linux::LinuxBootError),
    /// No kernel or boot device was given.
    #[error("Nothing to boot: give --kernel")]
    NothingToBoot,
    /// The requested accelerator cannot run this machine.
    #[error("--accel kvm: {0}")]
    Accel(String),
    /// The engine thread could not start.
    #[error("Cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// Commands to the engine.
#[derive(Debug, Clone)]
pub enum Command {
    /// Stop running guest code.
    Pause,
    /// Continue after [`Command::Pause`].
    Resume,
    /// Hard reset.
    Reset,
    /// Pull the plug.
    PowerOff,
    /// Bytes typed into COM1.
    SerialInput(Vec<u8>),
}

/// Why the machine stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// [`Command::PowerOff`] or the guest powered off.
    PowerOff,
    /// The guest reset under `no_reboot`.
    GuestReset,
    /// The guest wrote to `isa-debug-exit`; the process status to use.
    Exit(i32),
    /// The engine failed.
    Error(String),
}

/// Events from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The machine started, on this accelerator.
    Started {
        /// Accelerator name.
        accel: &'static str,
    },
    /// Paused by a command.
    Paused,
    /// Resumed by a command.
    Resumed,
    /// The machine reset (and reboots).
    Reset,
    /// Bytes from COM1.
    SerialOutput(Vec<u8>),
    /// The machine stopped; no more events follow.
    Stopped(StopReason),
}

type Subscribers = Arc<Mutex<Vec<Sender<Event>>>>;

/// The handle every client drives the engine through. Cloning it gives
/// another client; [`EngineHandle::subscribe`] gives it its own event stream.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    subscribers: Subscribers,
    kick: crate::accel::Kick,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Receives every event since the start, for the first subscriber.
    first: Arc<Mutex<Option<Receiver<Event>>>>,
    /// Why `--accel auto` fell back to the software CPU.
    fallback: Option<String>,
}

impl EngineHandle {
    /// Sends a command; false if the engine has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        let ok = self.commands.send(cmd).is_ok();
        (self.kick)();
        ok
    }

    /// A new stream of events: the first call gets every event since the
    /// engine started, later calls the events from now on.
    pub fn subscribe(&self) -> Receiver<Event> {
        if let Some(rx) = lock(&self.first).take() {
            return rx;
        }
        let (tx, rx) = mpsc::channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    /// Why the accelerator choice `auto` fell back to the software CPU, if it
    /// did (one line).
    pub fn accel_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Waits for the engine thread to end.
    pub fn join(&self) {
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// Parses a memory size as QEMU does: a plain number is MiB; suffixes K, M,
/// G, T (optionally followed by B or iB).
pub fn parse_memory(s: &str) -> Result<u64, EngineError> {
    let bad = |why: &str| EngineError::Memory(s.to_string(), why.to_string());
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| bad("not a size (try 256M or 1G)"))?;
    let unit = t[digits..].trim().to_ascii_uppercase();
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" | "M" => 20,
        "K" => 10,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad("unknown unit (use K, M, G or T)")),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(|| bad("too large"))?;
    if bytes == 0 {
        return Err(bad("must be larger than zero"));
    }
    if bytes < 1 << 20 {
        return Err(bad("must be at least 1M"));
    }
    if bytes % 4096 != 0 {
        return Err(bad("must be a multiple of 4K"));
    }
    Ok(bytes)
}

/// Total host RAM in bytes.
fn host_memory() -> Option<u64> {
    // SAFETY: sysinfo fills the zeroed struct we pass; no other effects.
    unsafe {
        let mut si: libc::sysinfo = std::mem::zeroed();
        (libc::sysinfo(&mut si) == 0).then(|| si.totalram as u64 * si.mem_unit as u64)
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|e| EngineError::File(path.to_string(), e))
}

/// What the engine reloads on every reset.
struct BootImage {
    name: String,
    kernel: Vec<u8>,
    cmdline: String,
    modules: Vec<Module>,
}

impl BootImage {
    fn load(&self, machine: &Machine) -> Result<BootState, EngineError> {
        if crate::boot::linux::is_bzimage(&self.kernel) {
            return Ok(crate::boot::linux::load(
                &machine.space.ram,
                &self.name,
                &self.kernel,
                &self.cmdline,
                self.modules.first().map(|m| m.data.as_slice()),
            )?);
        }
        Ok(multiboot::load(
            &machine.space.ram,
            &self.name,
            &self.kernel,
            &self.cmdline,
            &self.modules,
        )?)
    }
}

fn parse_modules(spec: &str) -> Result<Vec<Module>, EngineError> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|m| {
            let m = m.trim();
            let path = m.split_whitespace().next().unwrap_or(m);
            Ok(Module {
                data: read_file(path)?,
                cmdline: m.to_string(),
            })
        })
        .collect()
}

/// Picks the accelerator: returns it and, when `auto` fell back, why.
fn choose_accel(
    kind: AccelKind,
    allow_paravirtual: bool,
    machine: &Machine,
) -> Result<(Box<dyn Accelerator>, Option<String>), EngineError> {
    let soft = || -> Box<dyn Accelerator> {
        Box::new(SoftAccel::new(
            machine.space.clone(),
            machine.interrupt_controller(),
        ))
    };
    match kind {
        AccelKind::Soft => Ok((soft(), None)),
        AccelKind::Auto | AccelKind::Kvm => {
            match crate::kvm_accel::create(machine, allow_paravirtual && kind == AccelKind::Kvm) {
                Ok(a) => Ok((a, None)),
                Err(why) if kind == AccelKind::Auto => Ok((soft(), Some(why))),
                Err(why) => Err(EngineError::Accel(why)),
            }
        }
    }
}

/// Builds the machine described by `config`, loads what it boots, and starts
/// the engine thread.
pub fn start(config: &MachineConfig) -> Result<EngineHandle, EngineError> {
    let mem_str = format!("{}M", config.memory >> 20);
    if let Some(host) = host_memory() {
        if config.memory > host {
            return Err(EngineError::Memory(
                mem_str,
                format!(
                    "more than the host's {:.1} GiB of RAM",
                    host as f64 / (1u64 << 30) as f64
                ),
            ));
        }
    }
    let kernel = config.kernel.as_ref().ok_or(EngineError::NothingToBoot)?;
    let name = kernel.path.display().to_string();
    let image = BootImage {
        kernel: read_file(&name)?,
        name,
        cmdline: kernel.cmdline.clone(),
        modules: match &kernel.initrd {
            Some(s) => parse_modules(s)?,
            None => Vec::new(),
        },
    };
    let machine = Machine::new(config.memory)?;
    let boot = image.load(&machine)?;
    let (mut accel, fallback) = choose_accel(config.accel, config.kvm_allow_paravirtual, &machine)?;
    if let Some(why) = &fallback {
        tracing::info!("accelerator: soft ({why})");
    }
    accel.load_boot_state(&boot);
    let kick = accel.kicker();
    machine.control.set_kick(kick.clone());

    let (tx, rx) = mpsc::channel();
    let (first_tx, first_rx) = mpsc::channel();
    let subscribers: Subscribers = Arc::new(Mutex::new(vec![first_tx]));
    let handle = EngineHandle {
        first: Arc::new(Mutex::new(Some(first_rx))),
        fallback,
        commands: tx,
        subscribers: subscribers.clone(),
        kick,
        thread: Arc::new(Mutex::new(None)),
    };
    let no_reboot = config.no_reboot;
    let t = std::thread::Builder::new()
        .name("vireo-vcpu0".into())
        .spawn(move || {
            let mut engine = Engine {
                machine,
                accel,
                image,
                commands: rx,
                subscribers,
                no_reboot,
                state: RunState::Running,
                serial_pending: Default::default(),
            };
            engine.run();
        })
        .map_err(EngineError::Thread)?;
    *lock(&handle.thread) = Some(t);
    Ok(handle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Halted,
    Paused,
}

struct Engine {
    machine: Machine,
    accel: Box<dyn Accelerator>,
    image: BootImage,
    commands: Receiver<Command>,
    subscribers: Subscribers,
    no_reboot: bool,
    state: RunState,
    /// Host input COM1 could not take yet.
    serial_pending: std::collections::VecDeque<u8>,
}

impl Engine {
    fn emit(&self, ev: Event) {
        lock(&self.subscribers).retain(|s| s.send(ev.clone()).is_ok());
    }

    fn flush_serial(&self) {
        let out = self.machine.take_serial_output();
        if !out.is_empty() {
            self.emit(Event::SerialOutput(out));
        }
    }

    /// Applies one command; returns a stop reason if it ends the machine.
    fn command(&mut self, cmd: Command) -> Option<StopReason> {
        match cmd {
            Command::Pause => {
                if self.state != RunState::Paused {
                    self.state = RunState::Paused;
                    self.emit(Event::Paused);
                }
            }
            Command::Resume => {
                if self.state == RunState::Paused {
                    self.state = RunState::Running;
                    self.emit(Event::Resumed);
                }
            }
            Command::Reset => return self.reset(false),
            Command::PowerOff => return Some(StopReason::PowerOff),
            Command::SerialInput(bytes) => {
                self.serial_pending.extend(bytes);
                self.feed_serial();
            }
        }
        None
    }

    /// Moves host input into COM1 as far as its receive buffer allows.
    fn feed_serial(&mut self) {
        if self.serial_pending.is_empty() {
            return;
        }
        let n = lock(&self.machine.serial).enqueue_input(self.serial_pending.make_contiguous());
        self.serial_pending.drain(..n);
    }

    fn reset(&mut self, by_guest: bool) -> Option<StopReason> {
        if by_guest && self.no_reboot {
            return Some(StopReason::GuestReset);
        }
        self.machine.reset_devices();
        self.accel.reset();
        match self.image.load(&self.machine) {
            Ok(boot) => self.accel.load_boot_state(&boot),
            Err(e) => return Some(StopReason::Error(e.to_string())),
        }
        self.emit(Event::Reset);
        if self.state == RunState::Halted {
            self.state = RunState::Running;
        }
        None
    }

    fn run(&mut self) {
        self.emit(Event::Started {
            accel: self.accel.name(),
        });
        let reason = self.main_loop();
        self.flush_serial();
        if let Some(n) = self.accel.instructions() {
            tracing::info!("instructions: {n}");
        }
        self.emit(Event::Stopped(reason));
    }

    fn main_loop(&mut self) -> StopReason {
        // When the timers next need attention, in machine time.
        let mut next_timer: Option<u64> = None;
        loop {
            // Commands: block only when there is nothing to run.
            let wait = match self.state {
                RunState::Running => None,
                RunState::Paused => Some(Duration::from_millis(50)),
                RunState::Halted => {
                    let now = self.machine.now_ns();
                    let next = next_timer.unwrap_or(now + 10_000_000);
                    Some(Duration::from_nanos(
                        next.saturating_sub(now).clamp(20_000, 10_000_000),
                    ))
                }
            };
            let first = match wait {
                None => self.commands.try_recv().ok(),
                Some(d) => match self.commands.recv_timeout(d) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            if let Some(c) = first {
                if let Some(r) = self.command(c) {
                    return r;
                }
                while let Ok(c) = self.commands.try_recv() {
                    if let Some(r) = self.command(c) {
                        return r;
                    }
                }
            }
            if let Some(status) = self.machine.control.exit_status() {
                return StopReason::Exit(status);
            }
            if self.machine.control.take_reset() {
                if let Some(r) = self.reset(true) {
                    return r;
                }
            }
            next_timer = self.machine.poll_timers();
            self.feed_serial();
            if self.state == RunState::Halted && self.machine.has_interrupt() {
                self.state = RunState::Running;
            }
            if self.state == RunState::Running {
                match self.accel.run() {
                    AccelExit::Slice | AccelExit::Kicked => {}
                    AccelExit::Failed(why) => {
                        self.flush_serial();
                        return StopReason::Error(format!("{}: {why}", self.accel.name()));
                    }
                    AccelExit::Halted => self.state = RunState::Halted,
                    AccelExit::Shutdown => {
                        tracing::info!("triple fault: resetting");
                        if let Some(r) = self.reset(true) {
                            self.flush_serial();
                            return r;
                        }
                    }
                }
            }
            self.flush_serial();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An a.out-kludge multiboot kernel at 1 MiB whose body is `code`.
    fn kernel_file(name: &str, code: &[u8]) -> PathBuf {
        let flags = 1u32 << 16;
        let words = [
            multiboot::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(multiboot::HEADER_MAGIC)
                .wrapping_sub(flags),
            0x10_0000,
            0x10_0000,
            0,
            0,
            0x10_0020,
        ];
        let mut img: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        img.extend_from_slice(code);
        let path = std::env::temp_dir().join(format!("vireo-engine-{}-{name}", std::process::id()));
        std::fs::write(&path, img).expect("write kernel");
        path
    }

    fn config(path: PathBuf) -> MachineConfig {
        MachineConfig {
            memory: 16 << 20,
            accel: AccelKind::Soft,
            kernel: Some(KernelConfig {
                path,
                cmdline: String::new(),
                initrd: None,
            }),
            no_reboot: false,
            kvm_allow_paravirtual: false,
        }
    }

    fn next(rx: &Receiver<Event>) -> Event {
        loop {
            match rx.recv_timeout(Duration::from_secs(10)).expect("event") {
                Event::SerialOutput(_) => continue,
                e => return e,
            }
        }
    }

    #[test]
    fn commands_drive_the_run_state() {
        // jmp $ — spins forever.
        let h = start(&config(kernel_file("spin", &[0xeb, 0xfe]))).expect("start");
        let rx = h.subscribe();
        assert_eq!(next(&rx), Event::Started { accel: "soft" });
        h.send(Command::Pause);
        assert_eq!(next(&rx), Event::Paused);
        h.send(Command::Resume);
        assert_eq!(next(&rx), Event::Resumed);
        h.send(Command::Reset);
        assert_eq!(next(&rx), Event::Reset);
        let late = h.subscribe();
        h.send(Command::PowerOff);
        assert_eq!(next(&rx), Event::Stopped(StopReason::PowerOff));
        assert_eq!(next(&late), Event::Stopped(StopReason::PowerOff));
        h.join();
    }

    #[test]
    fn serial_input_reaches_a_polling_guest() {
        // Poll LSR.DR, then exit with the received byte.
        let code = [
            0xba, 0xfd, 0x03, 0x00, 0x00, // mov edx, 0x3fd
            0xec, // in al, dx
            0xa8, 0x01, // test al, 1
            0x74, 0xfb, // jz in
            0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
            0xec, // in al, dx
            0xe6, 0xf4, // out 0xf4, al
            0xeb, 0xfe,
        ];
        let h = start(&config(kernel_file("echo", &code))).expect("start");
        let rx = h.subscribe();
        assert_eq!(next(&rx), Event::Started { accel: "soft" });
        std::thread::sleep(Duration::from_millis(50));
        h.send(Command::SerialInput(b"B".to_vec()));
        assert_eq!(
            next(&rx),
            Event::Stopped(StopReason::Exit(((b'B' as i32) << 1) | 1))
        );
    }

    #[test]
    fn parses_memory_sizes() {
        assert_eq!(parse_memory("256M").unwrap(), 256 << 20);
        assert_eq!(parse_memory("256").unwrap(), 256 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("2GiB").unwrap(), 2 << 30);
        assert!(parse_memory("0")
            .unwrap_err()
            .to_string()
            .contains("larger than zero"));
        assert!(parse_memory("12Q").is_err());
        assert!(parse_memory("abc").is_err());
        assert!(parse_memory("99999999999T").is_err());
    }
}
