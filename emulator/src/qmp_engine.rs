//! QMP on the engine: [`EngineQmp`] answers the [`QmpServer`]'s
//! commands through an [`EngineHandle`], and [`forward_events`] turns the
//! engine's events into QMP events.
//!
//! Events follow QEMU's QAPI schema (`qapi/run-state.json`):
//!
//! | engine                         | QMP event  | `data`                                                  |
//! |--------------------------------|------------|---------------------------------------------------------|
//! | `Paused`                       | `STOP`     | none                                                    |
//! | `Resumed`                      | `RESUME`   | none                                                    |
//! | `Reset { guest: false }`       | `RESET`    | `{"guest": false, "reason": "host-qmp-system-reset"}`   |
//! | `Reset { guest: true }`        | `RESET`    | `{"guest": true, "reason": "guest-reset"}`              |
//! | `PowerButton`                  | `POWERDOWN`| none                                                    |
//! | `Stopped(PowerOff)`            | `SHUTDOWN` | `{"guest": false, "reason": "host-qmp-quit"}`           |
//! | `Stopped(GuestPowerOff)`       | `SHUTDOWN` | `{"guest": true, "reason": "guest-shutdown"}`           |
//! | `Stopped(GuestReset)`          | `SHUTDOWN` | `{"guest": true, "reason": "guest-reset"}` (`-no-reboot`)|
//! | `Stopped(Error(_))`            | `SHUTDOWN` | `{"guest": false, "reason": "host-error"}`              |
//!
//! `reason` is a QAPI `ShutdownCause`. A guest reset is a triple fault or a
//! write to a reset register (0xcf9, the keyboard controller, port 0x92);
//! QEMU reports all of them as `guest-reset`. `isa-debug-exit` ends QEMU
//! without an event, and so it does here. Every host-side `PowerOff` is
//! reported as `host-qmp-quit`, also when the CLI's console sent it.
//!
//! [`QmpServer`]: crate::qmp::QmpServer

use crate::engine::{self, Command, EngineHandle, Event, StopReason};
use crate::keycodes;
use crate::qmp::{self, KeyValue, MediumChange, QmpBackend, QmpEvents, ReadOnlyMode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `stop`/`cont` wait for the engine to reach the new state.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// The image formats QEMU's block layer knows that Vireo does not open
/// (`blockdev-change-medium`'s `format`); other names are unknown drivers.
const QEMU_FORMATS: &[&str] = &[
    "qcow2",
    "qcow",
    "qed",
    "vmdk",
    "vdi",
    "vhdx",
    "vpc",
    "dmg",
    "parallels",
    "bochs",
    "cloop",
    "luks",
    "file",
    "host_device",
    "host_cdrom",
];

/// The QMP backend of a running engine (QEMU's QAPI commands in
/// `qapi/misc.json`, `qapi/ui.json`, `qapi/block.json`, mapped onto
/// [`Command`]s).
pub struct EngineQmp {
    handle: EngineHandle,
}

impl EngineQmp {
    /// A backend driving the machine behind `handle`.
    pub fn new(handle: EngineHandle) -> Self {
        EngineQmp { handle }
    }

    fn send(&self, cmd: Command) -> Result<(), String> {
        if self.handle.state() == engine::RunState::Shutdown || !self.handle.send(cmd) {
            return Err("The machine has stopped".into());
        }
        Ok(())
    }

    /// Waits until the engine reports `want` (or stopped for good).
    fn wait_for(&self, want: engine::RunState, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let now = self.handle.state();
            if now == want {
                return Ok(());
            }
            if now == engine::RunState::Shutdown {
                return Err("The machine has stopped".into());
            }
            if Instant::now() >= deadline {
                return Err(format!("The machine did not {what} in time"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// QMP's name for the engine's run state.
pub fn run_state(s: engine::RunState) -> qmp::RunState {
    match s {
        engine::RunState::Running => qmp::RunState::Running,
        engine::RunState::Paused => qmp::RunState::Paused,
        engine::RunState::Shutdown => qmp::RunState::Shutdown,
    }
}

/// `"Could not open 'PATH': REASON"`, QEMU's block-layer wording.
fn could_not_open(path: &Path, e: &std::io::Error) -> String {
    let text = e.to_string();
    let reason = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    format!("Could not open '{}': {reason}", path.display())
}

impl QmpBackend for EngineQmp {
    fn status(&self) -> qmp::RunState {
        run_state(self.handle.state())
    }

    /// `stop`: replies once the vCPUs are parked (as QEMU's `vm_stop`).
    fn stop(&self) -> Result<(), String> {
        self.send(Command::Pause)?;
        self.wait_for(engine::RunState::Paused, "pause")
    }

    /// `cont`: replies once the vCPUs run again.
    fn cont(&self) -> Result<(), String> {
        self.send(Command::Resume)?;
        self.wait_for(engine::RunState::Running, "resume")
    }

    fn system_reset(&self) -> Result<(), String> {
        self.send(Command::Reset)
    }

    fn system_powerdown(&self) -> Result<(), String> {
        self.send(Command::PowerButton)
    }

    fn quit(&self) {
        // Already stopped: nothing to end.
        let _ = self.handle.send(Command::PowerOff);
    }

    fn screendump(&self, filename: &Path, format: qmp::ScreenFormat) -> Result<(), String> {
        let format = match format {
            qmp::ScreenFormat::Ppm => engine::ScreenFormat::Ppm,
            qmp::ScreenFormat::Png => engine::ScreenFormat::Png,
        };
        self.handle.request(|reply| Command::Screendump {
            path: filename.to_path_buf(),
            format,
            reply,
        })
    }

    /// `send-key`. Keys without a PS/2 scan code (Sun and language keys)
    /// are left out, as QEMU's PS/2 keyboard ignores them; a key number
    /// naming no key is refused (QEMU's "Parameter '...' expects ...").
    fn send_key(&self, keys: &[KeyValue], hold_time_ms: u64) -> Result<(), String> {
        let mut names = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let name = key.qcode().map_err(|e| match key {
                KeyValue::Number(n) => format!(
                    "Parameter 'keys[{i}].data' expects a QEMU key number (set 1 scan code), not {n}"
                ),
                KeyValue::QCode(_) => format!("Parameter 'keys[{i}].data' expects a QKeyCode: {e}"),
            })?;
            if keycodes::make_code(name, 1).is_err() {
                tracing::debug!("send-key: '{name}' has no PS/2 scan code, left out");
                continue;
            }
            names.push(name.to_string());
        }
        if names.is_empty() {
            return Ok(());
        }
        self.handle.request(|reply| Command::SendKeys {
            keys: names,
            hold_ms: hold_time_ms.min(qmp::MAX_HOLD_TIME_MS),
            reply,
        })
    }

    fn eject(&self, device: &str, force: bool) -> Result<(), String> {
        self.handle.request(|reply| Command::Eject {
            device: device.to_string(),
            force,
            reply,
        })
    }

    /// `blockdev-change-medium`: only read-only raw CD images exist. The
    /// image is checked first (a bad one leaves the drive as it was), then
    /// the old medium is ejected (refused if the guest locked it, unless
    /// `force`), then the new one is inserted with the tray closed.
    fn change_medium(&self, device: &str, change: &MediumChange) -> Result<(), String> {
        match change.format.as_deref() {
            None | Some("raw") => {}
            Some(f) if QEMU_FORMATS.contains(&f) => {
                return Err(format!(
                    "Image format '{f}' is not supported: CD images must be 'raw'"
                ))
            }
            Some(f) => return Err(format!("Unknown driver '{f}'")),
        }
        if change.read_only_mode == Some(ReadOnlyMode::ReadWrite) {
            return Err(format!(
                "Device '{device}' is a read-only CD-ROM drive: read-only-mode 'read-write' is not possible"
            ));
        }
        let path = &change.filename;
        std::fs::metadata(path).map_err(|e| could_not_open(path, &e))?;
        engine::open_cd_image(path).map_err(|e| match e {
            engine::EngineError::File(_, io) => could_not_open(path, &io),
            other => other.to_string(),
        })?;
        self.eject(device, change.force)?;
        self.handle.request(|reply| Command::ChangeMedium {
            device: device.to_string(),
            path: path.clone(),
            reply,
        })
    }
}

/// The QMP event for an engine event, if there is one (see the table in
/// the module documentation).
pub fn qmp_event(event: &Event) -> Option<(&'static str, Value)> {
    let cause = |guest: bool, reason: &str| json!({ "guest": guest, "reason": reason });
    Some(match event {
        Event::Paused => ("STOP", Value::Null),
        Event::Resumed => ("RESUME", Value::Null),
        Event::Reset { guest: true } => ("RESET", cause(true, "guest-reset")),
        Event::Reset { guest: false } => ("RESET", cause(false, "host-qmp-system-reset")),
        Event::PowerButton => ("POWERDOWN", Value::Null),
        Event::Stopped(reason) => (
            "SHUTDOWN",
            match reason {
                StopReason::PowerOff => cause(false, "host-qmp-quit"),
                StopReason::GuestPowerOff => cause(true, "guest-shutdown"),
                StopReason::GuestReset => cause(true, "guest-reset"),
                StopReason::Error(_) => cause(false, "host-error"),
                StopReason::Exit(_) => return None,
            },
        ),
        Event::Started { .. } | Event::SerialOutput(_) | Event::DebugOutput(_) => return None,
    })
}

/// Starts a thread that sends the QMP event of each engine event in
/// `events` (a subscription of its own, [`EngineHandle::subscribe`]) to
/// `qmp`'s clients. The thread ends after the machine stopped (its
/// `SHUTDOWN` sent, if any); join it before shutting the server down so
/// the last event is queued.
pub fn forward_events(events: Receiver<Event>, qmp: QmpEvents) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("qmp-events".into())
        .spawn(move || {
            for event in events.iter() {
                if let Some((name, data)) = qmp_event(&event) {
                    qmp.emit(name, data);
                }
                if matches!(event, Event::Stopped(_)) {
                    break;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_events_map_to_qemu_events() {
        assert_eq!(qmp_event(&Event::Paused), Some(("STOP", Value::Null)));
        assert_eq!(qmp_event(&Event::Resumed), Some(("RESUME", Value::Null)));
        assert_eq!(
            qmp_event(&Event::PowerButton),
            Some(("POWERDOWN", Value::Null))
        );
        assert_eq!(
            qmp_event(&Event::Reset { guest: false }),
            Some((
                "RESET",
                json!({"guest": false, "reason": "host-qmp-system-reset"})
            ))
        );
        assert_eq!(
            qmp_event(&Event::Reset { guest: true }),
            Some(("RESET", json!({"guest": true, "reason": "guest-reset"})))
        );
        for (reason, data) in [
            (
                StopReason::PowerOff,
                json!({"guest": false, "reason": "host-qmp-quit"}),
            ),
            (
                StopReason::GuestPowerOff,
                json!({"guest": true, "reason": "guest-shutdown"}),
            ),
            (
                StopReason::GuestReset,
                json!({"guest": true, "reason": "guest-reset"}),
            ),
            (
                StopReason::Error("x".into()),
                json!({"guest": false, "reason": "host-error"}),
            ),
        ] {
            assert_eq!(qmp_event(&Event::Stopped(reason)), Some(("SHUTDOWN", data)));
        }
        assert_eq!(qmp_event(&Event::Stopped(StopReason::Exit(3))), None);
        assert_eq!(qmp_event(&Event::Started { accel: "soft" }), None);
        assert_eq!(qmp_event(&Event::SerialOutput(b"x".to_vec())), None);
    }

    #[test]
    fn run_states_map() {
        assert_eq!(run_state(engine::RunState::Running), qmp::RunState::Running);
        assert_eq!(run_state(engine::RunState::Paused), qmp::RunState::Paused);
        assert_eq!(
            run_state(engine::RunState::Shutdown),
            qmp::RunState::Shutdown
        );
    }
}
