//! `vireo`: the command-line front of the Vireo emulator.
//!
//! `vireo run` boots a machine headless with its serial port on the terminal.

mod serial_console;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use vireo_emulator::accel::AccelKind;
use vireo_emulator::engine::{self, Event, KernelConfig, MachineConfig, StopReason};

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
    /// Kernel to boot directly (Multiboot ELF or a.out-kludge image).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "CMDLINE", default_value = "")]
    append: String,
    /// Modules for a Multiboot kernel: "file args,file2 args".
    #[arg(long, value_name = "FILES")]
    initrd: Option<String>,
    /// Guest RAM, e.g. 256M or 2G (a plain number means MiB).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "128M")]
    memory: String,
    /// Where COM1 goes.
    #[arg(long, value_enum, default_value_t = SerialTarget::Stdio)]
    serial: SerialTarget,
    /// Which accelerator runs the guest.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long)]
    no_reboot: bool,
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

fn run(args: RunArgs) -> Result<u8, String> {
    let memory = engine::parse_memory(&args.memory).map_err(|e| e.to_string())?;
    let kernel = args.kernel.map(|path| KernelConfig {
        path,
        cmdline: args.append.clone(),
        initrd: args.initrd.clone(),
    });
    let config = MachineConfig {
        memory,
        accel: match args.accel {
            Accel::Auto => AccelKind::Auto,
            Accel::Soft => AccelKind::Soft,
            Accel::Kvm => AccelKind::Kvm,
        },
        kernel,
        no_reboot: args.no_reboot,
        kvm_allow_paravirtual: false,
    };
    let handle = engine::start(&config).map_err(|e| e.to_string())?;
    if let Some(why) = handle.accel_fallback() {
        eprintln!("vireo: using the software CPU: {why}");
    }
    let events = handle.subscribe();
    let console = match args.serial {
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
                    StopReason::PowerOff | StopReason::GuestReset => 0,
                    StopReason::Error(e) => {
                        drop(console);
                        return Err(e);
                    }
                };
                break;
            }
            Event::Started { accel } => tracing::info!("machine started on {accel}"),
            _ => {}
        }
    }
    drop(console);
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
