//! The engine thread and its handle. Every client (CLI, GUI, VNC, QMP) drives
//! a machine only through an [`EngineHandle`]: commands in, events out.
//!
//! The vCPU is an explicit state machine (the firecracker model): `Running`,
//! `Paused`, `Halted` (waiting for an interrupt), `Stopped`.

use crate::accel::{AccelExit, AccelKind, Accelerator, SoftAccel};
use crate::boot::multiboot::{self, Module, MultibootError};
use crate::boot::BootState;
use crate::bus::lock;
use crate::machine::{Machine, MachineError, MAX_VCPUS};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
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
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Where to look first for firmware (`--firmware DIR`); firmware boots
    /// the machine when no kernel is given.
    pub firmware_dir: Option<PathBuf>,
    /// Firmware boot order, QEMU's `--boot` letters (`c` disk, `d` CD-ROM).
    pub boot_order: String,
    /// The CD image in the CD-ROM drive (the secondary IDE master, which
    /// is there even when empty).
    pub cdrom: Option<PathBuf>,
    /// Hard disk images (raw): the primary IDE master, then its slave.
    pub disks: Vec<DiskConfig>,
}

/// A hard disk image.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Opened read-only (guest writes fail).
    pub read_only: bool,
}

/// File formats for [`Command::Screendump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenFormat {
    /// Netpbm P6.
    Ppm,
    /// PNG.
    Png,
}

/// The run state clients can ask for (QMP's `query-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running guest code.
    Running,
    /// Paused by a command.
    Paused,
    /// Stopped for good.
    Shutdown,
}

/// A command's answer.
pub type Reply = Sender<Result<(), String>>;

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            memory: 128 << 20,
            accel: AccelKind::Auto,
            kernel: None,
            no_reboot: false,
            kvm_allow_paravirtual: false,
            vcpus: 1,
            firmware_dir: None,
            boot_order: "cd".into(),
            cdrom: None,
            disks: Vec::new(),
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
    /// The MP table does not fit.
    #[error(transparent)]
    MpTable(#[from] crate::boot::mptable::MpTableError),
    /// A disk or CD image is unusable.
    #[error("{0}: {1}")]
    Media(String, String),
    /// Firmware is missing or unreadable.
    #[error(transparent)]
    Firmware(#[from] crate::boot::firmware::FirmwareError),
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
    /// Presses the ACPI power button (the guest shuts down if it listens).
    PowerButton,
    /// Saves the screen to a file.
    Screendump {
        /// Where.
        path: PathBuf,
        /// PPM or PNG.
        format: ScreenFormat,
        /// The outcome.
        reply: Reply,
    },
    /// Presses keys (QKeyCode names, e.g. `ctrl`, `alt`, `delete`)
    /// together on the PS/2 keyboard, releasing them after `hold_ms`.
    SendKeys {
        /// The keys, pressed in order and released in reverse.
        keys: Vec<String>,
        /// How long they stay down.
        hold_ms: u64,
        /// The outcome (unknown key names are refused).
        reply: Reply,
    },
    /// Reads the characters of a text-mode screen (None in graphics modes).
    TextScreen(Sender<Option<Vec<String>>>),
    /// Opens the CD-ROM drive's tray (`device`: `ide1-cd0` or `cdrom`).
    Eject {
        /// The drive.
        device: String,
        /// Even if the guest locked the tray.
        force: bool,
        /// The outcome.
        reply: Reply,
    },
    /// Puts a new image in the CD-ROM drive.
    ChangeMedium {
        /// The drive.
        device: String,
        /// The image.
        path: PathBuf,
        /// The outcome.
        reply: Reply,
    },
}

/// Why the machine stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// [`Command::PowerOff`].
    PowerOff,
    /// The guest powered off (ACPI S5).
    GuestPowerOff,
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
    Reset {
        /// The guest asked for it (else [`Command::Reset`]).
        guest: bool,
    },
    /// [`Command::PowerButton`] pressed the ACPI power button.
    PowerButton,
    /// Bytes from COM1.
    SerialOutput(Vec<u8>),
    /// Bytes firmware wrote to its debug console (port 0x402).
    DebugOutput(Vec<u8>),
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
    wake: Arc<crate::apic::Waker>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Receives every event since the start, for the first subscriber.
    first: Arc<Mutex<Option<Receiver<Event>>>>,
    /// Why `--accel auto` fell back to the software CPU.
    fallback: Option<String>,
    /// The screen, as the engine renders it.
    surface: crate::display::SharedSurface,
    /// [`RunState`] as a number.
    state: Arc<std::sync::atomic::AtomicU8>,
}

impl EngineHandle {
    /// The screen: read it (it is updated in place, with dirty regions).
    pub fn surface(&self) -> crate::display::SharedSurface {
        self.surface.clone()
    }

    /// Running, paused or stopped.
    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            0 => RunState::Running,
            1 => RunState::Paused,
            _ => RunState::Shutdown,
        }
    }

    /// Sends a command that answers, and waits for its answer.
    pub fn request(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        if !self.send(make(tx)) {
            return Err("the machine has stopped".into());
        }
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| Err("the machine did not answer".into()))
    }

    /// Types `text` on the keyboard (US layout: letters, digits, space,
    /// punctuation and `\n` as Enter), one key at a time.
    pub fn type_text(&self, text: &str) -> Result<(), String> {
        for ch in text.chars() {
            let keys = crate::keycodes::keys_for_char(ch)
                .ok_or_else(|| format!("cannot type {ch:?} on a US keyboard"))?;
            self.request(|reply| Command::SendKeys {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                hold_ms: 10,
                reply,
            })?;
        }
        Ok(())
    }

    /// The characters on a text-mode screen, a string a row; None in a
    /// graphics mode or when the machine has stopped.
    pub fn text_screen(&self) -> Option<Vec<String>> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Command::TextScreen(tx)) {
            return None;
        }
        rx.recv_timeout(Duration::from_secs(10)).ok().flatten()
    }

    /// Sends a command; false if the engine has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        let ok = self.commands.send(cmd).is_ok();
        self.wake.wake();
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

/// What the engine reloads on every reset: a kernel to boot directly, or
/// the firmware's ROM.
enum BootImage {
    Kernel(KernelImage),
    Firmware,
}

impl BootImage {
    fn load(&self, machine: &Machine) -> Result<BootState, EngineError> {
        match self {
            BootImage::Kernel(k) => k.load(machine),
            BootImage::Firmware => {
                machine.load_firmware();
                Ok(BootState::reset_vector())
            }
        }
    }
}

/// Puts the configured disks and CD in the IDE drives: disks on the
/// primary channel, the CD-ROM drive (always there, maybe empty) as the
/// secondary master.
fn attach_drives(machine: &Machine, config: &MachineConfig) -> Result<(), EngineError> {
    use vireo_devices::block::FileBackend;
    use vireo_devices::ide::Drive;
    if config.disks.len() > 2 {
        return Err(EngineError::Media(
            "--disk".into(),
            format!(
                "{} disks given; the IDE primary channel takes 2",
                config.disks.len()
            ),
        ));
    }
    let mut ide = lock(&machine.ide);
    for (i, d) in config.disks.iter().enumerate() {
        let name = d.path.display().to_string();
        let f = FileBackend::open(&d.path, d.read_only)
            .map_err(|e| EngineError::File(name.clone(), e))?;
        if vireo_devices::block::BlockBackend::len(&f) < 512 {
            return Err(EngineError::Media(
                name,
                "a disk image must hold at least one 512-byte sector".into(),
            ));
        }
        ide.attach(0, i, Drive::disk(Box::new(f)));
    }
    let cd = match &config.cdrom {
        Some(p) => Some(Box::new(open_cd_image(p)?) as Box<dyn vireo_devices::block::BlockBackend>),
        None => None,
    };
    let (c, s) = CDROM_SLOT;
    ide.attach(c, s, Drive::cdrom(cd));
    Ok(())
}

/// A kernel (Linux bzImage or Multiboot) and what it boots with.
struct KernelImage {
    name: String,
    kernel: Vec<u8>,
    cmdline: String,
    modules: Vec<Module>,
}

impl KernelImage {
    fn load(&self, machine: &Machine) -> Result<BootState, EngineError> {
        use crate::boot::mptable;
        mptable::write(
            &machine.space.ram,
            mptable::MPTABLE_ADDR,
            machine.vcpus() as u8,
        )?;
        if crate::boot::linux::is_bzimage(&self.kernel) {
            machine
                .install_acpi()
                .map_err(|e| EngineError::Media("ACPI tables".into(), e.to_string()))?;
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

/// One accelerator per vCPU, and why `auto` fell back to the software CPU.
type ChosenAccels = (Vec<Box<dyn Accelerator>>, Option<String>);

/// Picks the accelerator: one per vCPU, and, when `auto` fell back, why.
fn choose_accels(
    kind: AccelKind,
    allow_paravirtual: bool,
    machine: &Machine,
) -> Result<ChosenAccels, EngineError> {
    let n = machine.vcpus();
    let soft = || -> Vec<Box<dyn Accelerator>> {
        let code = machine.code.clone();
        (0..n)
            .map(|i| {
                Box::new(SoftAccel::for_vcpu(machine, i, code.clone())) as Box<dyn Accelerator>
            })
            .collect()
    };
    match kind {
        AccelKind::Soft => Ok((soft(), None)),
        AccelKind::Auto | AccelKind::Kvm => {
            let kvm = if n > 1 {
                Err(format!(
                    "--smp {n}: more than one vCPU runs on the software CPU only for now"
                ))
            } else if machine.has_firmware() {
                Err("firmware boot runs on the software CPU only for now \
                     (the BIOS ROM is not mapped into KVM yet)"
                    .to_string())
            } else {
                crate::kvm_accel::create(machine, allow_paravirtual && kind == AccelKind::Kvm)
            };
            match kvm {
                Ok(a) => Ok((vec![a], None)),
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
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(MachineError::Vcpus(config.vcpus).into());
    }
    let (image, firmware) = match &config.kernel {
        Some(kernel) => {
            let name = kernel.path.display().to_string();
            let image = KernelImage {
                kernel: read_file(&name)?,
                name,
                cmdline: kernel.cmdline.clone(),
                modules: match &kernel.initrd {
                    Some(s) => parse_modules(s)?,
                    None => Vec::new(),
                },
            };
            (BootImage::Kernel(image), None)
        }
        None => (
            BootImage::Firmware,
            Some(crate::boot::firmware::Firmware::load(
                config.firmware_dir.as_deref(),
            )?),
        ),
    };
    let machine = Machine::with_firmware(config.memory, config.vcpus, firmware.as_ref())?;
    machine.set_boot_order(&config.boot_order);
    attach_drives(&machine, config)?;
    let boot = image.load(&machine)?;
    let (mut accels, fallback) =
        choose_accels(config.accel, config.kvm_allow_paravirtual, &machine)?;
    if let Some(why) = &fallback {
        tracing::info!("accelerator: soft ({why})");
    }
    for (i, a) in accels.iter_mut().enumerate() {
        if i == 0 {
            a.load_boot_state(&boot);
        } else {
            a.reset_as_ap();
        }
    }
    let accel_name = accels[0].name();

    let (tx, rx) = mpsc::channel();
    let (first_tx, first_rx) = mpsc::channel();
    let subscribers: Subscribers = Arc::new(Mutex::new(vec![first_tx]));
    let handle = EngineHandle {
        first: Arc::new(Mutex::new(Some(first_rx))),
        fallback,
        commands: tx,
        subscribers: subscribers.clone(),
        wake: machine.engine_waker.clone(),
        thread: Arc::new(Mutex::new(None)),
        surface: machine.surface.clone(),
        state: Arc::new(std::sync::atomic::AtomicU8::new(0)),
    };
    let state = handle.state.clone();
    let no_reboot = config.no_reboot;
    let t = std::thread::Builder::new()
        .name("vireo-engine".into())
        .spawn(move || {
            let mut engine = Engine {
                gate: Arc::new(Gate::new(boot)),
                notes: Arc::new(Mutex::new(Vec::new())),
                vcpus: Vec::new(),
                machine,
                image,
                commands: rx,
                subscribers,
                no_reboot,
                paused: false,
                serial_pending: Default::default(),
                state,
                keys_pending: Default::default(),
            };
            engine.run(accel_name, accels);
            engine.set_state(RunState::Shutdown);
        })
        .map_err(EngineError::Thread)?;
    *lock(&handle.thread) = Some(t);
    Ok(handle)
}

/// What the vCPU threads tell the control loop.
enum VcpuNote {
    /// A triple fault: the machine resets.
    Shutdown,
    /// The accelerator failed.
    Failed(String),
}

#[derive(Default)]
struct GateState {
    /// vCPUs may run.
    run: bool,
    /// vCPU threads must end.
    quit: bool,
    /// vCPU threads waiting at the gate.
    parked: usize,
    /// Bumped by every machine reset: vCPUs reset themselves when they see
    /// a new one.
    generation: u64,
    /// The BSP's state after a reset.
    boot: BootState,
}

/// Where vCPU threads wait while the machine is paused, reset or stopped
/// (the run-state machine of each vCPU: running, halted, parked, ended).
struct Gate {
    st: Mutex<GateState>,
    cv: Condvar,
    running: AtomicBool,
}

impl Gate {
    fn new(boot: BootState) -> Self {
        Gate {
            st: Mutex::new(GateState {
                run: true,
                boot,
                ..Default::default()
            }),
            cv: Condvar::new(),
            running: AtomicBool::new(true),
        }
    }
}

/// A running vCPU thread.
struct VcpuThread {
    kick: crate::accel::Kick,
    waker: Arc<crate::apic::Waker>,
    thread: Option<JoinHandle<Option<u64>>>,
}

/// The loop of one vCPU thread; returns the instructions it retired.
fn vcpu_loop(
    index: usize,
    mut accel: Box<dyn Accelerator>,
    gate: Arc<Gate>,
    waker: Arc<crate::apic::Waker>,
    engine: Arc<crate::apic::Waker>,
    notes: Arc<Mutex<Vec<VcpuNote>>>,
) -> Option<u64> {
    crate::apic::set_current_vcpu(index);
    let mut generation = 0;
    let note = |n: VcpuNote| {
        lock(&notes).push(n);
        engine.wake();
    };
    loop {
        if !gate.running.load(Ordering::Acquire) {
            let mut st = lock(&gate.st);
            st.parked += 1;
            gate.cv.notify_all();
            while !st.run && !st.quit {
                st = match gate.cv.wait(st) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            st.parked -= 1;
            if st.quit {
                return accel.instructions();
            }
            if st.generation != generation {
                generation = st.generation;
                if index == 0 {
                    accel.reset();
                    accel.load_boot_state(&st.boot);
                } else {
                    accel.reset_as_ap();
                }
            }
            continue;
        }
        match accel.run() {
            AccelExit::Slice | AccelExit::Kicked => {}
            AccelExit::Halted => {
                while gate.running.load(Ordering::Acquire) && !accel.can_wake() {
                    waker.wait(Duration::from_millis(100));
                }
            }
            AccelExit::Shutdown => {
                note(VcpuNote::Shutdown);
                while gate.running.load(Ordering::Acquire) {
                    waker.wait(Duration::from_millis(10));
                }
            }
            AccelExit::Failed(why) => {
                note(VcpuNote::Failed(format!("{}: {why}", accel.name())));
                while gate.running.load(Ordering::Acquire) {
                    waker.wait(Duration::from_millis(10));
                }
            }
        }
    }
}

struct Engine {
    machine: Machine,
    vcpus: Vec<VcpuThread>,
    gate: Arc<Gate>,
    notes: Arc<Mutex<Vec<VcpuNote>>>,
    image: BootImage,
    commands: Receiver<Command>,
    subscribers: Subscribers,
    no_reboot: bool,
    /// Paused by a command.
    paused: bool,
    /// Host input COM1 could not take yet.
    serial_pending: std::collections::VecDeque<u8>,
    /// Shared with the handles.
    state: Arc<std::sync::atomic::AtomicU8>,
    /// Scan codes waiting for their time (machine ns) or for room in the
    /// keyboard's buffer, in order.
    keys_pending: std::collections::VecDeque<(u64, Vec<u8>)>,
}

/// Most key presses and releases waiting for the guest's keyboard.
const KEYS_PENDING_MAX: usize = 1024;

/// The CD-ROM drive's place on the IDE bus (secondary master), and the
/// names clients may give it (QEMU's, and a plain one).
const CDROM_SLOT: (usize, usize) = (1, 0);
fn is_cdrom_name(device: &str) -> bool {
    matches!(device, "ide1-cd0" | "cdrom" | "cd0")
}

/// Opens a CD image, checking it is one: an ISO 9660 volume descriptor
/// (ECMA-119 §8.4) at sector 16 and a file as long as the volume it
/// describes. Images without ISO 9660 (El Torito-only, audio) are taken
/// as they are if their size is a whole number of 2048-byte sectors.
pub fn open_cd_image(
    path: &std::path::Path,
) -> Result<vireo_devices::block::FileBackend, EngineError> {
    use std::io::{Read, Seek, SeekFrom};
    let name = path.display().to_string();
    let bad = |why: String| EngineError::Media(name.clone(), why);
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::File(name.clone(), e))?;
    let len = f
        .metadata()
        .map_err(|e| EngineError::File(name.clone(), e))?
        .len();
    if len == 0 {
        return Err(bad("the file is empty".into()));
    }
    let mut pvd = [0u8; 2048];
    let has_pvd = len >= 17 * 2048
        && f.seek(SeekFrom::Start(16 * 2048)).is_ok()
        && f.read_exact(&mut pvd).is_ok()
        && &pvd[1..6] == b"CD001";
    if has_pvd {
        let blocks = u32::from_le_bytes([pvd[80], pvd[81], pvd[82], pvd[83]]) as u64;
        let block = u16::from_le_bytes([pvd[128], pvd[129]]) as u64;
        let want = blocks * block;
        if want > len {
            return Err(bad(format!(
                "truncated: its ISO 9660 volume is {want} bytes but the file has {len}"
            )));
        }
    } else if len % 2048 != 0 {
        return Err(bad(format!(
            "not a CD image: no ISO 9660 volume, and {len} bytes is not a whole number of 2048-byte sectors"
        )));
    }
    vireo_devices::block::FileBackend::open(path, true).map_err(|e| EngineError::File(name, e))
}

impl Engine {
    fn set_state(&self, s: RunState) {
        let v = match s {
            RunState::Running => 0,
            RunState::Paused => 1,
            RunState::Shutdown => 2,
        };
        self.state.store(v, Ordering::Release);
    }

    fn emit(&self, ev: Event) {
        lock(&self.subscribers).retain(|s| s.send(ev.clone()).is_ok());
    }

    fn flush_serial(&self) {
        let out = self.machine.take_serial_output();
        if !out.is_empty() {
            self.emit(Event::SerialOutput(out));
        }
        let out = self.machine.take_debug_output();
        if !out.is_empty() {
            self.emit(Event::DebugOutput(out));
        }
    }

    /// Stops every vCPU at the gate and waits until they are there.
    fn park_vcpus(&self) {
        self.gate.running.store(false, Ordering::Release);
        let mut st = lock(&self.gate.st);
        st.run = false;
        for v in &self.vcpus {
            (v.kick)();
            v.waker.wake();
        }
        let alive = self.vcpus.iter().filter(|v| v.thread.is_some()).count();
        while st.parked < alive {
            st = match self.gate.cv.wait_timeout(st, Duration::from_millis(10)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            for v in &self.vcpus {
                (v.kick)();
                v.waker.wake();
            }
        }
    }

    /// Lets the vCPUs run again.
    fn unpark_vcpus(&self) {
        let mut st = lock(&self.gate.st);
        st.run = true;
        self.gate.running.store(true, Ordering::Release);
        self.gate.cv.notify_all();
    }

    /// Applies one command; returns a stop reason if it ends the machine.
    fn command(&mut self, cmd: Command) -> Option<StopReason> {
        match cmd {
            Command::Pause => {
                if !self.paused {
                    self.park_vcpus();
                    self.paused = true;
                    self.set_state(RunState::Paused);
                    self.emit(Event::Paused);
                }
            }
            Command::Resume => {
                if self.paused {
                    self.paused = false;
                    self.unpark_vcpus();
                    self.set_state(RunState::Running);
                    self.emit(Event::Resumed);
                }
            }
            Command::Reset => return self.reset(false),
            Command::PowerOff => return Some(StopReason::PowerOff),
            Command::SerialInput(bytes) => {
                self.serial_pending.extend(bytes);
                self.feed_serial();
            }
            Command::SendKeys {
                keys,
                hold_ms,
                reply,
            } => {
                let set = lock(&self.machine.i8042).expected_scancode_set();
                let names: Vec<&str> = keys.iter().map(String::as_str).collect();
                let r = match crate::keycodes::key_sequence(&names, set) {
                    // A guest that never reads its keyboard must not make
                    // the host queue keystrokes without end.
                    Ok(_) if self.keys_pending.len() >= KEYS_PENDING_MAX => {
                        Err("the guest is not reading its keyboard: too many keys queued".into())
                    }
                    Ok(seq) => {
                        let now = self.machine.now_ns();
                        // After whatever is still queued.
                        let at = self.keys_pending.back().map_or(now, |(t, _)| (*t).max(now));
                        self.keys_pending.push_back((at, seq.press));
                        self.keys_pending
                            .push_back((at + hold_ms.min(60_000) * 1_000_000, seq.release));
                        self.feed_keys();
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(r);
            }
            Command::TextScreen(reply) => {
                let _ = reply.send(lock(&self.machine.vga).text_screen());
            }
            Command::PowerButton => {
                let listened = lock(&self.machine.acpi_pm).events().power_button();
                if !listened {
                    tracing::info!("power button: the guest has no ACPI handler listening");
                }
                self.emit(Event::PowerButton);
            }
            Command::Screendump {
                path,
                format,
                reply,
            } => {
                self.machine.refresh_display();
                let s = self
                    .machine
                    .surface
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                let r = match format {
                    ScreenFormat::Ppm => s.write_ppm(&path),
                    ScreenFormat::Png => s.write_png(&path),
                };
                let _ = reply.send(r.map_err(|e| format!("{}: {e}", path.display())));
            }
            Command::Eject {
                device,
                force,
                reply,
            } => {
                let r = if is_cdrom_name(&device) {
                    let (c, d) = CDROM_SLOT;
                    lock(&self.machine.ide)
                        .eject(c, d, force)
                        .map_err(|e| format!("Device '{device}': {e}"))
                } else {
                    Err(format!("Device '{device}' not found"))
                };
                let _ = reply.send(r);
            }
            Command::ChangeMedium {
                device,
                path,
                reply,
            } => {
                let r = if is_cdrom_name(&device) {
                    match open_cd_image(&path) {
                        Ok(b) => {
                            let (c, d) = CDROM_SLOT;
                            lock(&self.machine.ide)
                                .change_medium(c, d, Some(Box::new(b)))
                                .map_err(|e| format!("Device '{device}': {e}"))
                        }
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    Err(format!("Device '{device}' not found"))
                };
                let _ = reply.send(r);
            }
        }
        None
    }

    /// Moves due key scan codes into the keyboard as far as it takes them;
    /// returns when the next batch is due.
    fn feed_keys(&mut self) -> Option<u64> {
        let now = self.machine.now_ns();
        while let Some((due, codes)) = self.keys_pending.front_mut() {
            if *due > now {
                return Some(*due);
            }
            let n = lock(&self.machine.i8042).push_scancodes(codes);
            codes.drain(..n);
            if !codes.is_empty() {
                // The guest has not read its buffer yet: try again soon.
                return Some(now + 5_000_000);
            }
            self.keys_pending.pop_front();
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
        self.park_vcpus();
        lock(&self.notes).clear();
        self.machine.reset_devices();
        match self.image.load(&self.machine) {
            Ok(boot) => {
                let mut st = lock(&self.gate.st);
                st.boot = boot;
                st.generation += 1;
            }
            Err(e) => return Some(StopReason::Error(e.to_string())),
        }
        self.emit(Event::Reset { guest: by_guest });
        if !self.paused {
            self.unpark_vcpus();
        }
        None
    }

    fn run(&mut self, accel: &'static str, accels: Vec<Box<dyn Accelerator>>) {
        self.emit(Event::Started { accel });
        for (i, a) in accels.into_iter().enumerate() {
            let kick = a.kicker();
            let waker = self.machine.vcpu_wakers[i].clone();
            let (gate, w, engine, notes) = (
                self.gate.clone(),
                waker.clone(),
                self.machine.engine_waker.clone(),
                self.notes.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("vireo-vcpu{i}"))
                .spawn(move || vcpu_loop(i, a, gate, w, engine, notes));
            match thread {
                Ok(t) => self.vcpus.push(VcpuThread {
                    kick,
                    waker,
                    thread: Some(t),
                }),
                Err(e) => {
                    self.stop_vcpus();
                    self.emit(Event::Stopped(StopReason::Error(format!(
                        "Cannot start a vCPU thread: {e}"
                    ))));
                    return;
                }
            }
        }
        let reason = self.main_loop();
        let instructions = self.stop_vcpus();
        self.flush_serial();
        if let Some(n) = instructions {
            tracing::info!("instructions: {n}");
        }
        // Clients that see the event see the state too.
        self.set_state(RunState::Shutdown);
        self.emit(Event::Stopped(reason));
    }

    /// Ends the vCPU threads; returns the instructions they retired.
    fn stop_vcpus(&mut self) -> Option<u64> {
        {
            let mut st = lock(&self.gate.st);
            st.quit = true;
            self.gate.running.store(false, Ordering::Release);
            self.gate.cv.notify_all();
        }
        let mut total = None;
        for v in &mut self.vcpus {
            (v.kick)();
            v.waker.wake();
            if let Some(t) = v.thread.take() {
                if let Ok(Some(n)) = t.join() {
                    total = Some(total.unwrap_or(0) + n);
                }
            }
        }
        total
    }

    fn main_loop(&mut self) -> StopReason {
        // When the timers next need attention, in machine time.
        let mut next_timer: Option<u64> = None;
        // The display is redrawn from the VGA this often.
        const FRAME_NS: u64 = 33_000_000;
        let mut next_frame = 0u64;
        loop {
            let now = self.machine.now_ns();
            if now >= next_frame {
                self.machine.refresh_display();
                next_frame = now + FRAME_NS;
            }
            let mut wait = next_timer
                .map(|t| Duration::from_nanos(t.saturating_sub(now)))
                .unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50))
                .min(Duration::from_nanos(next_frame.saturating_sub(now)));
            if !self.serial_pending.is_empty() {
                wait = wait.min(Duration::from_millis(5));
            }
            if let Some(due) = self.feed_keys() {
                wait = wait.min(Duration::from_nanos(due.saturating_sub(now)));
            }
            if !wait.is_zero() {
                self.machine.engine_waker.wait(wait);
            }
            loop {
                match self.commands.try_recv() {
                    Ok(c) => {
                        if let Some(r) = self.command(c) {
                            return r;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    // Every handle is gone: nobody can stop the machine
                    // any more, so it runs until the guest ends it.
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            let notes = std::mem::take(&mut *lock(&self.notes));
            for n in notes {
                match n {
                    VcpuNote::Shutdown => {
                        tracing::info!("triple fault: resetting");
                        if let Some(r) = self.reset(true) {
                            return r;
                        }
                    }
                    VcpuNote::Failed(why) => return StopReason::Error(why),
                }
            }
            if let Some(status) = self.machine.control.exit_status() {
                return StopReason::Exit(status);
            }
            if self.machine.control.take_poweroff() {
                return StopReason::GuestPowerOff;
            }
            if self.machine.control.take_reset() {
                if let Some(r) = self.reset(true) {
                    return r;
                }
            }
            next_timer = self.machine.poll_timers();
            self.feed_serial();
            self.flush_serial();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An a.out-kludge multiboot kernel at 1 MiB whose body is `code`.
    fn kernel_file(name: &str, code: &[u8]) -> PathBuf {
        let img = multiboot::flat_image(code);
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
            vcpus: 1,
            firmware_dir: None,
            boot_order: "cd".into(),
            cdrom: None,
            disks: Vec::new(),
        }
    }

    fn next(rx: &Receiver<Event>) -> Event {
        loop {
            match rx.recv_timeout(Duration::from_secs(10)).expect("event") {
                Event::SerialOutput(_) | Event::DebugOutput(_) => continue,
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
        assert_eq!(next(&rx), Event::Reset { guest: false });
        let late = h.subscribe();
        h.send(Command::PowerOff);
        assert_eq!(next(&rx), Event::Stopped(StopReason::PowerOff));
        assert_eq!(next(&late), Event::Stopped(StopReason::PowerOff));
        h.join();
    }

    #[test]
    fn commands_drive_every_vcpu_thread() {
        // jmp $ on the BSP; the AP waits for a start-up IPI.
        let mut cfg = config(kernel_file("spin2", &[0xeb, 0xfe]));
        cfg.vcpus = 2;
        let h = start(&cfg).expect("start");
        let rx = h.subscribe();
        assert_eq!(next(&rx), Event::Started { accel: "soft" });
        for _ in 0..3 {
            h.send(Command::Pause);
            assert_eq!(next(&rx), Event::Paused);
            h.send(Command::Reset);
            assert_eq!(next(&rx), Event::Reset { guest: false });
            h.send(Command::Resume);
            assert_eq!(next(&rx), Event::Resumed);
        }
        h.send(Command::PowerOff);
        assert_eq!(next(&rx), Event::Stopped(StopReason::PowerOff));
        h.join();
    }

    #[test]
    fn vcpu_counts_are_checked() {
        let mut cfg = config(kernel_file("spin3", &[0xeb, 0xfe]));
        for n in [0, MAX_VCPUS + 1] {
            cfg.vcpus = n;
            let e = start(&cfg).err().expect("refused");
            assert!(e.to_string().contains("--smp"), "{e}");
        }
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
