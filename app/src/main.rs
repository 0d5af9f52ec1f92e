//! `vireo`: the command-line front of the Vireo emulator.
//!
//! `vireo run` boots a machine headless with its serial port on the terminal.

mod preset;
mod serial_console;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use vireo_emulator::accel::AccelKind;
use vireo_emulator::engine::{self, DiskConfig, Event, KernelConfig, MachineConfig, StopReason};
use vireo_emulator::qmp::{QmpAddress, QmpServer};
use vireo_emulator::qmp_engine::{self, EngineQmp};

/// Vireo: a machine emulator and virtualizer.
#[derive(Parser, Debug)]
#[command(name = "vireo", version, about, propagate_version = true)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a machine without a window, its serial port on this terminal.
    Run(RunArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Accel {
    /// KVM where it can run the guest, otherwise the software CPU.
    Auto,
    /// The software CPU (an x86 interpreter).
    Soft,
    /// KVM; fails where the host cannot run the guest with it.
    Kvm,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum SerialTarget {
    /// COM1 on this terminal (raw mode; Ctrl-A x quits).
    Stdio,
    /// COM1 unconnected.
    None,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Start from a machine preset (e.g. linux-direct, or a .toml file);
    /// other flags override its values.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Kernel to boot directly (Linux bzImage, or Multiboot ELF / a.out-kludge image).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "CMDLINE")]
    append: Option<String>,
    /// Initial ramdisk for Linux; modules for Multiboot: "file args,file2 args".
    #[arg(long, value_name = "FILES")]
    initrd: Option<String>,
    /// Guest RAM, e.g. 256M or 2G (a plain number means MiB) [default: 128M].
    #[arg(long, short = 'm', value_name = "SIZE")]
    memory: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    smp: Option<usize>,
    /// Where COM1 goes [default: stdio].
    #[arg(long, value_enum)]
    serial: Option<SerialTarget>,
    /// Which accelerator runs the guest [default: auto].
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long)]
    no_reboot: bool,
    /// Directory searched first for the BIOS (bios-256k.bin) and VGA BIOS;
    /// firmware boots the machine when no --kernel is given.
    #[arg(long, value_name = "DIR")]
    firmware: Option<PathBuf>,
    /// Firmware boot order: c = first disk, d = CD-ROM, e.g. "dc" [default: cd].
    #[arg(long, value_name = "ORDER", value_parser = parse_boot_order)]
    boot: Option<String>,
    /// CD image for the CD-ROM drive (secondary IDE master).
    #[arg(long, value_name = "FILE")]
    cdrom: Option<PathBuf>,
    /// Hard disk image (raw), up to two: FILE or file=FILE[,if=ide][,readonly=on|off].
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,
    /// Where the screen goes; "none" keeps it for screendumps and clients only.
    #[arg(long, value_enum, default_value = "none")]
    display: DisplayTarget,
    /// Serve QMP (QEMU's machine protocol) on unix:PATH or tcp:HOST:PORT;
    /// `quit` ends vireo with status 0.
    #[arg(long, value_name = "ADDR")]
    qmp: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum DisplayTarget {
    /// No window.
    None,
}

/// `--disk`: a path, or QEMU-style `file=PATH,if=ide,readonly=on`.
fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    if !s.contains('=') {
        return Ok(DiskConfig {
            path: PathBuf::from(s),
            read_only: false,
        });
    }
    let mut path = None;
    let mut read_only = false;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("\"{part}\" is not key=value"))?;
        match (k, v) {
            ("file", v) if !v.is_empty() => path = Some(PathBuf::from(v)),
            ("if", "ide") | ("format", "raw") => {}
            ("if", v) => return Err(format!("if={v}: only ide disks exist so far")),
            ("format", v) => {
                return Err(format!("format={v}: only raw images are supported so far"))
            }
            ("readonly", "on") => read_only = true,
            ("readonly", "off") => read_only = false,
            _ => return Err(format!("unknown or bad option \"{part}\"")),
        }
    }
    let path = path.ok_or("file=PATH is missing")?;
    Ok(DiskConfig { path, read_only })
}

/// `--boot`: QEMU's boot letters (a, c, d, n), at most three.
fn parse_boot_order(s: &str) -> Result<String, String> {
    let s = s.strip_prefix("order=").unwrap_or(s);
    if s.is_empty() || s.len() > 3 || !s.chars().all(|c| "acdn".contains(c)) {
        return Err(format!(
            "\"{s}\" is not a boot order: use up to three of c (disk), d (CD-ROM), a (floppy), n (network)"
        ));
    }
    Ok(s.to_string())
}

fn init_logging(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|_| format!("--log {level}: not a log level (try warn, info or debug)"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    Ok(())
}

/// Parses a value of a clap enum given in a preset.
fn preset_enum<T: ValueEnum>(preset: &str, key: &str, v: &str) -> Result<T, String> {
    T::from_str(v, true).map_err(|_| {
        let allowed: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|x| x.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!(
            "preset {preset}: {key} = \"{v}\" is not one of {}",
            allowed.join(", ")
        )
    })
}

/// The QMP server of `--qmp`, and the thread forwarding engine events to it.
struct Qmp {
    server: QmpServer,
    forward: Option<std::thread::JoinHandle<()>>,
}

impl Qmp {
    /// Serves QMP for `handle` on `addr`.
    fn start(addr: &QmpAddress, handle: &engine::EngineHandle) -> Result<Qmp, String> {
        // Subscribe first: no event between binding and forwarding is lost.
        let events = handle.subscribe();
        let server = QmpServer::bind(addr, std::sync::Arc::new(EngineQmp::new(handle.clone())))
            .map_err(|e| e.to_string())?;
        let forward = qmp_engine::forward_events(events, server.events())
            .map_err(|e| format!("--qmp {addr}: cannot start the event thread: {e}"))?;
        Ok(Qmp {
            server,
            forward: Some(forward),
        })
    }

    /// After the machine stopped: lets the last event (SHUTDOWN) reach the
    /// clients, then closes them and removes the socket file.
    fn finish(mut self) {
        if let Some(t) = self.forward.take() {
            let _ = t.join();
        }
        if self.server.client_count() > 0 {
            // The writer threads send what is queued in well under this.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.server.shutdown();
    }
}

fn run(args: RunArgs) -> Result<u8, String> {
    let qmp_addr = args
        .qmp
        .as_deref()
        .map(str::parse::<QmpAddress>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let (preset, pname) = match &args.preset {
        Some(n) => (preset::load(n)?, n.clone()),
        None => (preset::Preset::default(), String::new()),
    };
    let memory_str = args
        .memory
        .clone()
        .or(preset.memory.clone())
        .unwrap_or_else(|| "128M".into());
    let memory = engine::parse_memory(&memory_str).map_err(|e| e.to_string())?;
    let vcpus = args.smp.or(preset.smp).unwrap_or(1);
    let accel = match (args.accel, &preset.accel) {
        (Some(a), _) => a,
        (None, Some(v)) => preset_enum(&pname, "accel", v)?,
        (None, None) => Accel::Auto,
    };
    let serial = match (args.serial, &preset.serial) {
        (Some(s), _) => s,
        (None, Some(v)) => preset_enum(&pname, "serial", v)?,
        (None, None) => SerialTarget::Stdio,
    };
    let append = args
        .append
        .clone()
        .or(preset.append.clone())
        .unwrap_or_default();
    let kernel = args.kernel.map(|path| KernelConfig {
        path,
        cmdline: append,
        initrd: args.initrd.clone(),
    });
    let config = MachineConfig {
        memory,
        accel: match accel {
            Accel::Auto => AccelKind::Auto,
            Accel::Soft => AccelKind::Soft,
            Accel::Kvm => AccelKind::Kvm,
        },
        kernel,
        no_reboot: args.no_reboot || preset.no_reboot.unwrap_or(false),
        kvm_allow_paravirtual: false,
        vcpus,
        firmware_dir: args.firmware.clone(),
        boot_order: args.boot.clone().unwrap_or_else(|| "cd".into()),
        cdrom: args.cdrom.clone(),
        disks: args.disk.clone(),
    };
    let handle = engine::start(&config).map_err(|e| e.to_string())?;
    if let Some(why) = handle.accel_fallback() {
        eprintln!("vireo: using the software CPU: {why}");
    }
    let events = handle.subscribe();
    let qmp = match qmp_addr.map(|a| Qmp::start(&a, &handle)).transpose() {
        Ok(q) => q,
        Err(e) => {
            handle.send(engine::Command::PowerOff);
            handle.join();
            return Err(e);
        }
    };
    let console = match serial {
        SerialTarget::Stdio => Some(serial_console::SerialConsole::start(handle.clone())),
        SerialTarget::None => None,
    };
    let mut status = 0u8;
    for ev in events.iter() {
        match ev {
            Event::SerialOutput(bytes) => {
                if let Some(c) = &console {
                    c.write(&bytes);
                }
            }
            Event::Stopped(reason) => {
                status = match reason {
                    StopReason::Exit(s) => (s & 0xff) as u8,
                    StopReason::PowerOff | StopReason::GuestPowerOff | StopReason::GuestReset => 0,
                    StopReason::Error(e) => {
                        drop(console);
                        if let Some(q) = qmp {
                            q.finish();
                        }
                        return Err(e);
                    }
                };
                break;
            }
            Event::Started { accel } => tracing::info!("machine started on {accel}"),
            Event::DebugOutput(bytes) => {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    tracing::debug!(target: "firmware", "{line}");
                }
            }
            _ => {}
        }
    }
    drop(console);
    if let Some(q) = qmp {
        q.finish();
    }
    handle.join();
    Ok(status)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log) {
        eprintln!("vireo: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Some(Cmd::Run(args)) => match run(args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("vireo: {e}");
                ExitCode::from(2)
            }
        },
        None => {
            eprintln!("vireo: the desktop app is not built yet; use `vireo run --help`");
            ExitCode::from(2)
        }
    }
}
