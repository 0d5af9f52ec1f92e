//! A QMP (QEMU Machine Protocol) server: the subset of QEMU's monitor
//! protocol that lets existing clients (QEMU's Python `qemu.qmp`, `socat`,
//! test harnesses) drive Vireo unchanged.
//!
//! Protocol: QEMU's `docs/interop/qmp-spec.rst`. On connection the server
//! sends the greeting (`{"QMP": {"version": ..., "capabilities": []}}`; no
//! capability is offered, in particular not `oob`). The connection then is in
//! capabilities negotiation mode, where only `qmp_capabilities` runs (any
//! other command fails with `CommandNotFound`, "Expecting capabilities
//! negotiation with 'qmp_capabilities'"), and after it in command mode, where
//! asynchronous events are delivered too. Every message the server sends is
//! one line ending in CRLF.
//!
//! Input is a stream of JSON values, not necessarily separated by newlines:
//! a message ends where its brackets balance. A malformed message gets a
//! `GenericError` ("JSON parse error, ...") and the connection stays usable;
//! an ASCII control character other than tab/CR/LF (or a 0xff byte) resets
//! the parser, as the spec's "Forcing the JSON parser into known-good state"
//! asks. QEMU's single-quoted string extension is not accepted. A message
//! longer than [`MAX_MESSAGE`] bytes closes the connection.
//!
//! Commands (arguments and errors as in QEMU's QAPI schema, `qapi/*.json`):
//! `qmp_capabilities`, `query-status`, `stop`, `cont`, `system_reset`,
//! `system_powerdown`, `quit` (replies, then closes the connection),
//! `screendump`, `send-key`, `eject`, `blockdev-change-medium`,
//! `query-commands`, `query-version`, `query-name`. Arguments are type
//! checked with QEMU's messages ("Parameter 'filename' is missing",
//! "Invalid parameter type for 'keys', expected: array", "Parameter 'x' is
//! unexpected", "Parameter 'format' does not accept value 'gif'").
//!
//! The server does not know the engine: it calls a [`QmpBackend`]. Requests
//! are handled by [`Session::handle_value`] / [`Session::handle_bytes`],
//! pure functions of the session state (fuzzing entry points); the transport
//! ([`QmpServer`]) runs one reader and one writer thread per client (at most
//! [`MAX_CLIENTS`]), and broadcasts events ([`QmpServer::emit`]) to the
//! clients in command mode.

use crate::keycodes;
use serde_json::{json, Map, Value};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The QEMU version the greeting and `query-version` announce (QMP clients
/// check it to pick command variants; 7.2 has every command served here).
pub const QEMU_VERSION: (u32, u32, u32) = (7, 2, 0);
/// The longest single JSON message a client may send, in bytes; past it the
/// connection is closed.
pub const MAX_MESSAGE: usize = 1 << 20;
/// The most clients connected at once; further connections are closed at
/// once.
pub const MAX_CLIENTS: usize = 16;
/// The most keys one `send-key` may press together.
pub const MAX_KEYS: usize = 32;
/// The longest `hold-time` accepted, in milliseconds (longer ones are
/// clamped).
pub const MAX_HOLD_TIME_MS: u64 = 60_000;
/// Messages queued for a client before it counts as stuck: an event that
/// finds the queue full disconnects the client.
const QUEUE_LEN: usize = 256;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// What the backend sees.
// ---------------------------------------------------------------------------

/// The machine's run state, as QMP's `RunState` enumeration names it
/// (`query-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// The guest runs.
    Running,
    /// Stopped by `stop` or the user.
    Paused,
    /// The guest shut down (or the machine is quitting).
    Shutdown,
    /// Created, not started yet.
    Prelaunch,
    /// Stopped on a debugger event.
    Debug,
    /// An emulation error stopped the machine.
    InternalError,
    /// The guest reported a panic.
    GuestPanicked,
    /// The guest is suspended (ACPI S3).
    Suspended,
}

impl RunState {
    /// The QMP name (`"running"`, `"paused"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
            RunState::Prelaunch => "prelaunch",
            RunState::Debug => "debug",
            RunState::InternalError => "internal-error",
            RunState::GuestPanicked => "guest-panicked",
            RunState::Suspended => "suspended",
        }
    }
}

/// The image format of `screendump` (QAPI `ImageFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenFormat {
    /// Binary PPM (P6), QEMU's default.
    Ppm,
    /// PNG.
    Png,
}

/// One key of `send-key` (QAPI `KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// A QKeyCode name, already checked against
    /// [`keycodes::QKEYCODE_NAMES`] (it may still have no scan code).
    QCode(String),
    /// A QEMU key number (set 1 make code, bit 7 for the `0xe0` prefix), sent
    /// as given; [`KeyValue::qcode`] resolves it.
    Number(i64),
}

impl KeyValue {
    /// The QKeyCode this key stands for (canonical: `sysrq` is `print`).
    pub fn qcode(&self) -> Result<&'static str, keycodes::KeyError> {
        match self {
            KeyValue::QCode(name) => keycodes::resolve(Some(name), None),
            KeyValue::Number(n) => keycodes::resolve(None, Some(*n)),
        }
    }
}

/// `blockdev-change-medium`'s `read-only-mode` (QAPI
/// `BlockdevChangeReadOnlyMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnlyMode {
    /// Keep the drive's current mode.
    Retain,
    /// Open the new medium read-only.
    ReadOnly,
    /// Open the new medium read-write.
    ReadWrite,
}

/// What the server asks of the machine. Every method runs on a client's
/// thread, so it must not wait long (queue work for the engine and return);
/// an `Err(text)` becomes a `GenericError` whose `desc` is `text`.
pub trait QmpBackend: Send + Sync {
    /// The current run state (`query-status`).
    fn status(&self) -> RunState;
    /// Pauses the guest (`stop`). The lead emits `STOP` when it happened.
    fn stop(&self) -> Result<(), String>;
    /// Resumes the guest (`cont`); emits `RESUME`.
    fn cont(&self) -> Result<(), String>;
    /// Hard reset (`system_reset`); emits `RESET` `{"guest": false, "reason": "host-qmp-system-reset"}`.
    fn system_reset(&self) -> Result<(), String>;
    /// ACPI power button (`system_powerdown`); emits `POWERDOWN`.
    fn system_powerdown(&self) -> Result<(), String>;
    /// Ends the emulator (`quit`), after the reply is queued; emits
    /// `SHUTDOWN` `{"guest": false, "reason": "host-qmp-quit"}`.
    fn quit(&self);
    /// Writes the screen to `filename` (`screendump`).
    fn screendump(&self, filename: &Path, format: ScreenFormat) -> Result<(), String>;
    /// Presses `keys` together, holds them `hold_time_ms` (default 100,
    /// at most [`MAX_HOLD_TIME_MS`]) and releases them in reverse order
    /// (`send-key`; see [`keycodes::key_sequence`]). `keys` is never empty.
    fn send_key(&self, keys: &[KeyValue], hold_time_ms: u64) -> Result<(), String>;
    /// Opens the tray / removes the medium of drive `device` (`eject`; the
    /// `device` or `id` argument, whichever was given).
    fn eject(&self, device: &str, force: bool) -> Result<(), String>;
    /// Inserts `filename` into drive `device` (`blockdev-change-medium`).
    fn change_medium(&self, device: &str, change: &MediumChange) -> Result<(), String>;
    /// The VM's name (`query-name`), if it has one.
    fn name(&self) -> Option<String> {
        None
    }
}

/// The arguments of `blockdev-change-medium` besides the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediumChange {
    /// The image to insert.
    pub filename: PathBuf,
    /// The image format (`"raw"`, ...), if given.
    pub format: Option<String>,
    /// Whether to eject even a locked medium.
    pub force: bool,
    /// How to open the image, if given.
    pub read_only_mode: Option<ReadOnlyMode>,
}

/// A backend that accepts everything and does nothing, in the `running`
/// state (for fuzzing and examples).
#[derive(Debug, Default)]
pub struct NullBackend;

impl QmpBackend for NullBackend {
    fn status(&self) -> RunState {
        RunState::Running
    }
    fn stop(&self) -> Result<(), String> {
        Ok(())
    }
    fn cont(&self) -> Result<(), String> {
        Ok(())
    }
    fn system_reset(&self) -> Result<(), String> {
        Ok(())
    }
    fn system_powerdown(&self) -> Result<(), String> {
        Ok(())
    }
    fn quit(&self) {}
    fn screendump(&self, _: &Path, _: ScreenFormat) -> Result<(), String> {
        Ok(())
    }
    fn send_key(&self, _: &[KeyValue], _: u64) -> Result<(), String> {
        Ok(())
    }
    fn eject(&self, _: &str, _: bool) -> Result<(), String> {
        Ok(())
    }
    fn change_medium(&self, _: &str, _: &MediumChange) -> Result<(), String> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Message framing.
// ---------------------------------------------------------------------------

/// A client message longer than [`MAX_MESSAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("QMP message longer than {MAX_MESSAGE} bytes")]
pub struct MessageTooLong;

/// Splits a byte stream into JSON messages: a message is a balanced
/// `{...}`/`[...]`, a string, or a bare scalar ended by whitespace or a
/// structural character. Each finished message is parsed; parse failures
/// come out as `Err(desc)` with QEMU's "JSON parse error, ..." wording.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escape: bool,
    scalar: bool,
}

impl Framer {
    /// A framer between messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends each finished message to `out`.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<Result<Value, String>>,
    ) -> Result<(), MessageTooLong> {
        for &byte in data {
            self.byte(byte, out);
            if self.buf.len() > MAX_MESSAGE {
                self.reset();
                return Err(MessageTooLong);
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.in_string = false;
        self.escape = false;
        self.scalar = false;
    }

    fn finish(&mut self, out: &mut Vec<Result<Value, String>>) {
        let parsed = serde_json::from_slice::<Value>(&self.buf).map_err(|e| parse_error(&e));
        out.push(parsed);
        self.reset();
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Result<Value, String>>) {
        let control = (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0xff;
        if control {
            // The spec's way for a client to reset the parser.
            self.reset();
            out.push(Err(format!(
                "JSON parse error, invalid character 0x{b:02x}"
            )));
            return;
        }
        if self.scalar {
            if b.is_ascii_whitespace() || b"{}[]\",:".contains(&b) {
                self.finish(out);
                // The delimiter starts (or is) the next message.
            } else {
                self.buf.push(b);
                return;
            }
        }
        if self.depth == 0 && !self.in_string {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'{' | b'[' => {
                    self.buf.push(b);
                    self.depth = 1;
                }
                b'"' => {
                    self.buf.push(b);
                    self.in_string = true;
                }
                b'}' | b']' | b',' | b':' => {
                    out.push(Err(format!("JSON parse error, stray '{}'", b as char)));
                }
                _ => {
                    self.buf.push(b);
                    self.scalar = true;
                }
            }
            return;
        }
        self.buf.push(b);
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 0 {
                    self.finish(out);
                }
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.finish(out);
                }
            }
            _ => {}
        }
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn parse_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    format!("JSON parse error, {text}")
}

// ---------------------------------------------------------------------------
// Request handling.
// ---------------------------------------------------------------------------

/// A QMP error reply: its class and description.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QmpErr {
    class: &'static str,
    desc: String,
}

fn generic(desc: impl Into<String>) -> QmpErr {
    QmpErr {
        class: "GenericError",
        desc: desc.into(),
    }
}

fn not_found(desc: impl Into<String>) -> QmpErr {
    QmpErr {
        class: "CommandNotFound",
        desc: desc.into(),
    }
}

fn error_reply(err: QmpErr, id: Option<&Value>) -> Value {
    let mut reply = json!({ "error": { "class": err.class, "desc": err.desc } });
    if let (Some(id), Some(obj)) = (id, reply.as_object_mut()) {
        obj.insert("id".into(), id.clone());
    }
    reply
}

fn return_reply(ret: Value, id: Option<&Value>) -> Value {
    let mut obj = Map::new();
    obj.insert("return".into(), ret);
    if let Some(id) = id {
        obj.insert("id".into(), id.clone());
    }
    Value::Object(obj)
}

/// The commands served, as `query-commands` lists them.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "quit",
    "screendump",
    "send-key",
    "eject",
    "blockdev-change-medium",
    "query-commands",
    "query-version",
    "query-name",
];

/// The QMP `VersionInfo` of this server (greeting and `query-version`).
pub fn version_info() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({
        "qemu": { "major": major, "minor": minor, "micro": micro },
        "package": format!("vireo {}", env!("CARGO_PKG_VERSION")),
    })
}

/// The greeting sent on connection.
pub fn greeting() -> Value {
    json!({ "QMP": { "version": version_info(), "capabilities": [] } })
}

/// Reads a command's arguments with QAPI's checks: each member is taken
/// once with its type; what is left over is "unexpected".
struct Args<'a> {
    map: Option<&'a Map<String, Value>>,
    taken: Vec<&'static str>,
}

impl<'a> Args<'a> {
    fn new(map: Option<&'a Map<String, Value>>) -> Self {
        Args {
            map,
            taken: Vec::new(),
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.taken.push(name);
        self.map.and_then(|m| m.get(name))
    }

    fn opt_str(&mut self, name: &'static str) -> Result<Option<&'a str>, QmpErr> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad_type(name, "string")),
        }
    }

    fn req_str(&mut self, name: &'static str) -> Result<&'a str, QmpErr> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    fn opt_bool(&mut self, name: &'static str) -> Result<Option<bool>, QmpErr> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad_type(name, "boolean")),
        }
    }

    fn opt_int(&mut self, name: &'static str) -> Result<Option<i64>, QmpErr> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| bad_type(name, "integer")),
        }
    }

    fn opt_enum(
        &mut self,
        name: &'static str,
        values: &[&'static str],
    ) -> Result<Option<&'static str>, QmpErr> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(s) => enum_value(name, s, values).map(Some),
        }
    }

    /// Fails on the first member nobody took.
    fn finish(self) -> Result<(), QmpErr> {
        let Some(map) = self.map else { return Ok(()) };
        match map.keys().find(|k| !self.taken.contains(&k.as_str())) {
            Some(extra) => Err(unexpected(extra)),
            None => Ok(()),
        }
    }
}

fn missing(name: &str) -> QmpErr {
    generic(format!("Parameter '{name}' is missing"))
}

fn bad_type(name: &str, expected: &str) -> QmpErr {
    generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

fn unexpected(name: &str) -> QmpErr {
    generic(format!("Parameter '{name}' is unexpected"))
}

fn enum_value(name: &str, value: &str, values: &[&'static str]) -> Result<&'static str, QmpErr> {
    values.iter().copied().find(|v| *v == value).ok_or_else(|| {
        generic(format!(
            "Parameter '{name}' does not accept value '{value}'"
        ))
    })
}

/// One client's protocol state: negotiation, and whether it asked to quit.
pub struct Session {
    backend: Arc<dyn QmpBackend>,
    negotiated: bool,
    closing: bool,
    framer: Framer,
}

impl Session {
    /// A session in capabilities negotiation mode.
    pub fn new(backend: Arc<dyn QmpBackend>) -> Self {
        Session {
            backend,
            negotiated: false,
            closing: false,
            framer: Framer::new(),
        }
    }

    /// Whether `qmp_capabilities` succeeded (command mode: events go out).
    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// Whether the client sent `quit`: the connection closes after the
    /// replies already produced.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Handles raw client bytes: frames them, answers each complete message
    /// (stopping after `quit`). A fuzzing entry point.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<Vec<Value>, MessageTooLong> {
        let mut frames = Vec::new();
        self.framer.feed(data, &mut frames)?;
        let mut replies = Vec::new();
        for frame in frames {
            if self.closing {
                break;
            }
            replies.extend(self.handle_frame(frame));
        }
        Ok(replies)
    }

    /// Answers one framed message (a parsed value or a parse error).
    pub fn handle_frame(&mut self, frame: Result<Value, String>) -> Vec<Value> {
        match frame {
            Ok(value) => self.handle_value(value),
            Err(desc) => vec![error_reply(generic(desc), None)],
        }
    }

    /// Answers one request (`{"execute": ..., "arguments": ..., "id": ...}`)
    /// with its replies (always exactly one today). A fuzzing entry point.
    pub fn handle_value(&mut self, request: Value) -> Vec<Value> {
        let Value::Object(request) = request else {
            return vec![error_reply(
                generic("QMP input must be a JSON object"),
                None,
            )];
        };
        let id = request.get("id");
        let reply = match self.dispatch(&request) {
            Ok(ret) => return_reply(ret, id),
            Err(err) => error_reply(err, id),
        };
        vec![reply]
    }

    fn dispatch(&mut self, request: &Map<String, Value>) -> Result<Value, QmpErr> {
        let mut command = None;
        let mut arguments = None;
        for (key, value) in request {
            match key.as_str() {
                "execute" => match value {
                    Value::String(s) => command = Some(s.as_str()),
                    _ => return Err(generic("QMP input member 'execute' must be a string")),
                },
                "arguments" => match value {
                    Value::Object(map) => arguments = Some(map),
                    _ => return Err(generic("QMP input member 'arguments' must be an object")),
                },
                "id" => {}
                other => return Err(generic(format!("QMP input member '{other}' is unexpected"))),
            }
        }
        let command = command.ok_or_else(|| generic("QMP input lacks member 'execute'"))?;
        if !self.negotiated {
            if command != "qmp_capabilities" {
                return Err(not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ));
            }
        } else if command == "qmp_capabilities" {
            return Err(not_found(
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        let mut args = Args::new(arguments);
        let backend = Arc::clone(&self.backend);
        let ret = match command {
            "qmp_capabilities" => {
                if let Some(enable) = args.get("enable") {
                    let Value::Array(caps) = enable else {
                        return Err(bad_type("enable", "array"));
                    };
                    for (i, cap) in caps.iter().enumerate() {
                        let name = format!("enable[{i}]");
                        let cap = cap.as_str().ok_or_else(|| bad_type(&name, "string"))?;
                        enum_value(&name, cap, &["oob"])?;
                    }
                    if !caps.is_empty() {
                        return Err(generic("Capability 'oob' not available"));
                    }
                }
                args.finish()?;
                self.negotiated = true;
                json!({})
            }
            "query-status" => {
                args.finish()?;
                let status = backend.status();
                json!({
                    "status": status.as_str(),
                    "running": status == RunState::Running,
                    "singlestep": false,
                })
            }
            "stop" | "cont" | "system_reset" | "system_powerdown" => {
                args.finish()?;
                match command {
                    "stop" => backend.stop(),
                    "cont" => backend.cont(),
                    "system_reset" => backend.system_reset(),
                    _ => backend.system_powerdown(),
                }
                .map_err(generic)?;
                json!({})
            }
            "quit" => {
                args.finish()?;
                self.closing = true;
                backend.quit();
                json!({})
            }
            "screendump" => {
                let filename = args.req_str("filename")?;
                args.opt_str("device")?;
                args.opt_int("head")?;
                let format = match args.opt_enum("format", &["ppm", "png"])? {
                    Some("png") => ScreenFormat::Png,
                    _ => ScreenFormat::Ppm,
                };
                args.finish()?;
                backend
                    .screendump(Path::new(filename), format)
                    .map_err(generic)?;
                json!({})
            }
            "send-key" => {
                let keys = parse_keys(args.get("keys"))?;
                let hold = args.opt_int("hold-time")?.unwrap_or(100);
                args.finish()?;
                let hold = u64::try_from(hold).unwrap_or(0).min(MAX_HOLD_TIME_MS);
                if !keys.is_empty() {
                    backend.send_key(&keys, hold).map_err(generic)?;
                }
                json!({})
            }
            "eject" => {
                let device = drive(&mut args)?;
                let force = args.opt_bool("force")?.unwrap_or(false);
                args.finish()?;
                let device = device?;
                backend.eject(device, force).map_err(generic)?;
                json!({})
            }
            "blockdev-change-medium" => {
                let device = drive(&mut args)?;
                let filename = args.req_str("filename")?;
                let format = args.opt_str("format")?;
                let force = args.opt_bool("force")?.unwrap_or(false);
                let mode =
                    args.opt_enum("read-only-mode", &["retain", "read-only", "read-write"])?;
                args.finish()?;
                let device = device?;
                let change = MediumChange {
                    filename: PathBuf::from(filename),
                    format: format.map(str::to_string),
                    force,
                    read_only_mode: mode.map(|m| match m {
                        "read-only" => ReadOnlyMode::ReadOnly,
                        "read-write" => ReadOnlyMode::ReadWrite,
                        _ => ReadOnlyMode::Retain,
                    }),
                };
                backend.change_medium(device, &change).map_err(generic)?;
                json!({})
            }
            "query-commands" => {
                args.finish()?;
                Value::Array(COMMANDS.iter().map(|c| json!({ "name": c })).collect())
            }
            "query-version" => {
                args.finish()?;
                version_info()
            }
            "query-name" => {
                args.finish()?;
                match backend.name() {
                    Some(name) => json!({ "name": name }),
                    None => json!({}),
                }
            }
            other => return Err(not_found(format!("The command {other} has not been found"))),
        };
        Ok(ret)
    }
}

/// The drive of `eject` / `blockdev-change-medium`: exactly one of
/// `device` and `id` (the outer error is a type error, reported first; the
/// inner one is reported after the other arguments were checked).
fn drive<'a>(args: &mut Args<'a>) -> Result<Result<&'a str, QmpErr>, QmpErr> {
    let device = args.opt_str("device")?;
    let id = args.opt_str("id")?;
    Ok(match (device, id) {
        (Some(d), None) => Ok(d),
        (None, Some(i)) => Ok(i),
        _ => Err(generic("Need exactly one of 'device' and 'id'")),
    })
}

/// `send-key`'s `keys`: an array of `{"type": "qcode"|"number", "data": ...}`.
fn parse_keys(keys: Option<&Value>) -> Result<Vec<KeyValue>, QmpErr> {
    let keys = match keys {
        None => return Err(missing("keys")),
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(bad_type("keys", "array")),
    };
    if keys.len() > MAX_KEYS {
        return Err(generic(format!(
            "At most {MAX_KEYS} keys can be sent together"
        )));
    }
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let path = format!("keys[{i}]");
        let Value::Object(key) = key else {
            return Err(bad_type(&path, "object"));
        };
        let ty_name = format!("{path}.type");
        let data_name = format!("{path}.data");
        let ty = match key.get("type") {
            None => return Err(missing(&ty_name)),
            Some(Value::String(s)) => enum_value(&ty_name, s, &["number", "qcode"])?,
            Some(_) => return Err(bad_type(&ty_name, "string")),
        };
        let data = key.get("data").ok_or_else(|| missing(&data_name))?;
        let value = if ty == "number" {
            KeyValue::Number(
                data.as_i64()
                    .ok_or_else(|| bad_type(&data_name, "integer"))?,
            )
        } else {
            let name = data
                .as_str()
                .ok_or_else(|| bad_type(&data_name, "string"))?;
            if !keycodes::is_qkeycode(name) {
                return Err(generic(format!(
                    "Parameter '{data_name}' does not accept value '{name}'"
                )));
            }
            KeyValue::QCode(name.to_string())
        };
        if let Some(extra) = key.keys().find(|k| *k != "type" && *k != "data") {
            return Err(unexpected(&format!("{path}.{extra}")));
        }
        out.push(value);
    }
    Ok(out)
}

/// The QMP `timestamp` of now (seconds and microseconds since the epoch; -1
/// for both if the clock is before the epoch).
fn timestamp() -> Value {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(t) => json!({ "seconds": t.as_secs(), "microseconds": t.subsec_micros() }),
        Err(_) => json!({ "seconds": -1, "microseconds": -1 }),
    }
}

/// An event message: `{"event": name, "data": data, "timestamp": ...}`
/// (`data` left out when it is `null`).
pub fn event_message(name: &str, data: Value) -> Value {
    let mut obj = Map::new();
    obj.insert("event".into(), Value::String(name.to_string()));
    if !data.is_null() {
        obj.insert("data".into(), data);
    }
    obj.insert("timestamp".into(), timestamp());
    Value::Object(obj)
}

/// A message as sent on the wire: compact JSON and CRLF.
fn wire(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    bytes.extend_from_slice(b"\r\n");
    bytes
}

// ---------------------------------------------------------------------------
// Addresses.
// ---------------------------------------------------------------------------

/// Where the server listens: the command line's `unix:PATH` or
/// `tcp:HOST:PORT` (HOST is required: `127.0.0.1` keeps the monitor local,
/// `0.0.0.0` exposes it to the network unauthenticated; IPv6 hosts go in
/// brackets, `tcp:[::1]:4444`; port 0 picks a free port, see
/// [`QmpServer::local_addr`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpAddress {
    /// A unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP socket.
    Tcp {
        /// Host name or address (brackets removed).
        host: String,
        /// Port.
        port: u16,
    },
}

impl fmt::Display for QmpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            QmpAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            QmpAddress::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl FromStr for QmpAddress {
    type Err = QmpError;

    fn from_str(spec: &str) -> Result<Self, QmpError> {
        let bad = |reason: &str| QmpError::BadAddress {
            spec: spec.to_string(),
            reason: reason.into(),
        };
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(QmpAddress::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp:HOST:PORT (the host is required)"))?;
            let host = match host.strip_prefix('[') {
                Some(inner) => inner
                    .strip_suffix(']')
                    .ok_or_else(|| bad("unbalanced '[' in the host"))?,
                None if host.contains(':') => {
                    return Err(bad("an IPv6 host must be in brackets, like tcp:[::1]:4444"))
                }
                None => host,
            };
            if host.is_empty() {
                return Err(bad("the host is empty (use tcp:127.0.0.1:PORT)"));
            }
            let port = port
                .parse::<u16>()
                .map_err(|_| bad(&format!("'{port}' is not a port number (0-65535)")))?;
            return Ok(QmpAddress::Tcp {
                host: host.to_string(),
                port,
            });
        }
        Err(bad("expected unix:PATH or tcp:HOST:PORT"))
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum QmpError {
    /// The address does not parse.
    #[error("--qmp {spec}: {reason}")]
    BadAddress {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host name does not resolve.
    #[error("--qmp {addr}: cannot resolve the host: {reason}")]
    Resolve {
        /// The address.
        addr: String,
        /// The resolver's error.
        reason: String,
    },
    /// `bind`/`listen` failed.
    #[error("--qmp {addr}: cannot bind: {reason}")]
    Bind {
        /// The address.
        addr: String,
        /// The system's error, without its "(os error N)".
        reason: String,
        /// The error itself.
        #[source]
        source: io::Error,
    },
    /// A live server already listens on the unix socket.
    #[error("--qmp {addr}: another process is listening on this socket")]
    InUse {
        /// The address.
        addr: String,
    },
    /// The unix socket path exists and is not a socket (it is left alone).
    #[error("--qmp {addr}: the path exists and is not a socket")]
    NotASocket {
        /// The address.
        addr: String,
    },
    /// The accept thread could not start.
    #[error("--qmp {addr}: cannot start the server thread: {source}")]
    Thread {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn os_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

// ---------------------------------------------------------------------------
// Transport.
// ---------------------------------------------------------------------------

/// A connected client's socket.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_blocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(false),
            Stream::Tcp(s) => s.set_nonblocking(false),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }

    fn raw_fd(&self) -> i32 {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// A connected client as the broadcaster sees it.
struct Client {
    id: u64,
    negotiated: Arc<AtomicBool>,
    tx: SyncSender<Vec<u8>>,
    stream: Stream,
}

struct Shared {
    backend: Arc<dyn QmpBackend>,
    clients: Mutex<Vec<Client>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopping: AtomicBool,
    next_id: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn emit(&self, name: &str, data: Value) {
        let line = wire(&event_message(name, data));
        let mut clients = locked(&self.clients);
        clients.retain(|client| {
            if !client.negotiated.load(Ordering::Acquire) {
                return true;
            }
            match client.tx.try_send(line.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        "QMP client {} does not read its events: disconnecting it",
                        client.id
                    );
                    client.stream.shutdown();
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }

    fn remove(&self, id: u64) {
        locked(&self.clients).retain(|c| c.id != id);
    }
}

/// A handle that broadcasts events to the server's clients; cheap to clone
/// and usable from any thread (the engine's event loop keeps one).
#[derive(Clone)]
pub struct QmpEvents {
    shared: Arc<Shared>,
}

impl QmpEvents {
    /// Sends event `name` (`STOP`, `RESUME`, `SHUTDOWN`, `RESET`,
    /// `POWERDOWN`, ...) with `data` (an object, or `Value::Null` for none)
    /// to every client in command mode. Never blocks: a client whose queue
    /// is full is disconnected.
    pub fn emit(&self, name: &str, data: Value) {
        self.shared.emit(name, data);
    }
}

/// The QMP server: a listening socket and its clients' threads. Dropping it
/// (or [`QmpServer::shutdown`]) closes every connection, stops the threads
/// and removes the unix socket file.
pub struct QmpServer {
    shared: Arc<Shared>,
    address: QmpAddress,
    local: Option<SocketAddr>,
    /// The unix socket file and its inode, removed at shutdown if still ours.
    socket_file: Option<(PathBuf, u64, u64)>,
    accept: Option<JoinHandle<()>>,
}

impl QmpServer {
    /// Listens on `addr` and serves `backend`. A unix socket file left by a
    /// dead process is replaced (one a live server listens on is not, and
    /// a path that is not a socket is never removed).
    pub fn bind(addr: &QmpAddress, backend: Arc<dyn QmpBackend>) -> Result<QmpServer, QmpError> {
        let name = addr.to_string();
        let bind_err = |e: io::Error| QmpError::Bind {
            addr: name.clone(),
            reason: os_reason(&e),
            source: e,
        };
        let (listener, local, socket_file) = match addr {
            QmpAddress::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(QmpError::NotASocket { addr: name });
                    }
                    match UnixStream::connect(path) {
                        Ok(_) => return Err(QmpError::InUse { addr: name }),
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            tracing::info!("QMP: removing stale socket {}", path.display());
                            std::fs::remove_file(path).map_err(bind_err)?;
                        }
                        Err(e) => return Err(bind_err(e)),
                    }
                }
                let listener = UnixListener::bind(path).map_err(bind_err)?;
                let file = std::fs::metadata(path)
                    .ok()
                    .map(|m| (path.clone(), m.dev(), m.ino()));
                (Listener::Unix(listener), None, file)
            }
            QmpAddress::Tcp { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| QmpError::Resolve {
                        addr: name.clone(),
                        reason: os_reason(&e),
                    })?
                    .collect();
                let listener = TcpListener::bind(&addrs[..]).map_err(bind_err)?;
                let local = listener.local_addr().map_err(bind_err)?;
                (Listener::Tcp(listener), Some(local), None)
            }
        };
        let nonblocking = match &listener {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        };
        let cleanup = |file: &Option<(PathBuf, u64, u64)>| {
            if let Some((path, _, _)) = file {
                let _ = std::fs::remove_file(path);
            }
        };
        if let Err(e) = nonblocking {
            cleanup(&socket_file);
            return Err(bind_err(e));
        }
        let shared = Arc::new(Shared {
            backend,
            clients: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || accept_loop(listener, accept_shared));
        let accept = match accept {
            Ok(handle) => handle,
            Err(source) => {
                cleanup(&socket_file);
                return Err(QmpError::Thread { addr: name, source });
            }
        };
        tracing::info!(
            "QMP server listening on {}",
            local.map_or(name, |l| format!("tcp:{l}"))
        );
        Ok(QmpServer {
            shared,
            address: addr.clone(),
            local,
            socket_file,
            accept: Some(accept),
        })
    }

    /// The address this server was bound with.
    pub fn address(&self) -> &QmpAddress {
        &self.address
    }

    /// The TCP address actually bound (with the port chosen for port 0);
    /// `None` for unix sockets.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Sends an event to every client in command mode (see
    /// [`QmpEvents::emit`]).
    pub fn emit(&self, name: &str, data: Value) {
        self.shared.emit(name, data);
    }

    /// A handle for emitting events from another thread.
    pub fn events(&self) -> QmpEvents {
        QmpEvents {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The number of connected clients.
    pub fn client_count(&self) -> usize {
        locked(&self.shared.clients).len()
    }

    /// Stops listening, closes every connection, waits for the threads
    /// (except the calling one, should a backend call this) and removes the
    /// unix socket file. Idempotent.
    pub fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for client in locked(&self.shared.clients).drain(..) {
            client.stream.shutdown();
        }
        let threads: Vec<_> = locked(&self.shared.threads).drain(..).collect();
        let me = thread::current().id();
        for handle in threads {
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
        if let Some((path, dev, ino)) = self.socket_file.take() {
            // Only remove the file if it still is the socket bound here.
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits up to `timeout` for the listener to become readable.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the
    // count is 1; poll only writes `revents`.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    while !shared.stopping.load(Ordering::Acquire) {
        let stream = match listener.accept() {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(listener.raw_fd(), ACCEPT_POLL);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("QMP accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        locked(&shared.threads).retain(|h| !h.is_finished());
        if locked(&shared.clients).len() >= MAX_CLIENTS {
            tracing::warn!("QMP: {MAX_CLIENTS} clients already connected, refusing another");
            stream.shutdown();
            continue;
        }
        if let Err(e) = start_client(stream, &shared) {
            tracing::warn!("QMP: cannot serve a client: {e}");
        }
    }
}

fn start_client(stream: Stream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_blocking()?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LEN);
    let negotiated = Arc::new(AtomicBool::new(false));
    let writer_stream = stream.try_clone()?;
    let registry_stream = stream.try_clone()?;
    // The greeting goes first, before the client can be sent anything else.
    let _ = tx.try_send(wire(&greeting()));
    locked(&shared.clients).push(Client {
        id,
        negotiated: Arc::clone(&negotiated),
        tx: tx.clone(),
        stream: registry_stream,
    });
    let writer = thread::Builder::new()
        .name(format!("qmp-write-{id}"))
        .spawn(move || writer_loop(writer_stream, rx));
    let reader_shared = Arc::clone(shared);
    let reader = thread::Builder::new()
        .name(format!("qmp-read-{id}"))
        .spawn(move || reader_loop(stream, tx, negotiated, id, reader_shared));
    let mut threads = locked(&shared.threads);
    match (writer, reader) {
        (Ok(w), Ok(r)) => {
            threads.push(w);
            threads.push(r);
            Ok(())
        }
        (w, r) => {
            // One thread missing: the client cannot be served.
            shared.remove(id);
            let mut error = None;
            for result in [w, r] {
                match result {
                    Ok(h) => threads.push(h),
                    Err(e) => error = Some(e),
                }
            }
            Err(error.unwrap_or_else(|| io::Error::other("thread spawn failed")))
        }
    }
}

fn writer_loop(mut stream: Stream, rx: Receiver<Vec<u8>>) {
    while let Ok(line) = rx.recv() {
        if stream
            .write_all(&line)
            .and_then(|()| stream.flush())
            .is_err()
        {
            break;
        }
    }
    stream.shutdown();
}

fn reader_loop(
    mut stream: Stream,
    tx: SyncSender<Vec<u8>>,
    negotiated: Arc<AtomicBool>,
    id: u64,
    shared: Arc<Shared>,
) {
    let mut session = Session::new(Arc::clone(&shared.backend));
    let mut buf = vec![0u8; 4096];
    let mut frames = Vec::new();
    'serve: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if session.framer.feed(&buf[..n], &mut frames).is_err() {
            tracing::warn!(
                "QMP client {id} sent a message over {MAX_MESSAGE} bytes: disconnecting it"
            );
            break;
        }
        for frame in frames.drain(..) {
            let was_negotiated = session.is_negotiated();
            let replies = session.handle_frame(frame);
            let opens_events = session.is_negotiated() && !was_negotiated;
            for reply in replies {
                let line = wire(&reply);
                if opens_events {
                    // Queue the reply to qmp_capabilities and open the event
                    // gate under the broadcaster's lock: no event overtakes
                    // the reply, and none emitted after it is missed.
                    let clients = locked(&shared.clients);
                    match tx.try_send(line) {
                        Ok(()) => {
                            negotiated.store(true, Ordering::Release);
                            continue;
                        }
                        Err(TrySendError::Full(line)) => {
                            drop(clients);
                            if tx.send(line).is_err() {
                                break 'serve;
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => break 'serve,
                    }
                } else if tx.send(line).is_err() {
                    break 'serve;
                }
            }
            if session.is_negotiated() {
                negotiated.store(true, Ordering::Release);
            }
            if session.is_closing() {
                break 'serve;
            }
        }
    }
    shared.remove(id);
    // Dropping `tx` (the registry's copy is gone too) lets the writer drain
    // the queued replies, then close the socket.
    drop(tx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::AtomicUsize;

    static NEXT_PATH: AtomicUsize = AtomicUsize::new(0);

    /// A fresh socket path in a fresh directory.
    fn temp_socket() -> PathBuf {
        let n = NEXT_PATH.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vireo-qmp-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("qmp.sock")
    }

    #[derive(Default)]
    struct Mock {
        calls: Mutex<Vec<String>>,
        state: Mutex<Option<RunState>>,
        fail: AtomicBool,
    }

    impl Mock {
        fn log(&self, call: String) -> Result<(), String> {
            locked(&self.calls).push(call);
            if self.fail.load(Ordering::Relaxed) {
                Err("backend says no".into())
            } else {
                Ok(())
            }
        }
        fn calls(&self) -> Vec<String> {
            locked(&self.calls).clone()
        }
    }

    impl QmpBackend for Mock {
        fn status(&self) -> RunState {
            locked(&self.state).unwrap_or(RunState::Running)
        }
        fn stop(&self) -> Result<(), String> {
            *locked(&self.state) = Some(RunState::Paused);
            self.log("stop".into())
        }
        fn cont(&self) -> Result<(), String> {
            *locked(&self.state) = Some(RunState::Running);
            self.log("cont".into())
        }
        fn system_reset(&self) -> Result<(), String> {
            self.log("reset".into())
        }
        fn system_powerdown(&self) -> Result<(), String> {
            self.log("powerdown".into())
        }
        fn quit(&self) {
            let _ = self.log("quit".into());
        }
        fn screendump(&self, filename: &Path, format: ScreenFormat) -> Result<(), String> {
            self.log(format!("screendump {} {format:?}", filename.display()))
        }
        fn send_key(&self, keys: &[KeyValue], hold: u64) -> Result<(), String> {
            let names: Vec<String> = keys
                .iter()
                .map(|k| match k {
                    KeyValue::QCode(q) => q.clone(),
                    KeyValue::Number(n) => format!("#{n}"),
                })
                .collect();
            self.log(format!("send-key {} {hold}", names.join("+")))
        }
        fn eject(&self, device: &str, force: bool) -> Result<(), String> {
            self.log(format!("eject {device} {force}"))
        }
        fn change_medium(&self, device: &str, c: &MediumChange) -> Result<(), String> {
            self.log(format!(
                "change {device} {} {:?} {} {:?}",
                c.filename.display(),
                c.format,
                c.force,
                c.read_only_mode
            ))
        }
        fn name(&self) -> Option<String> {
            Some("testvm".into())
        }
    }

    /// A test client speaking line-based QMP.
    struct TestClient {
        reader: BufReader<Stream>,
        writer: Stream,
    }

    impl TestClient {
        fn unix(path: &Path) -> TestClient {
            Self::new(Stream::Unix(UnixStream::connect(path).unwrap()))
        }
        fn tcp(addr: SocketAddr) -> TestClient {
            Self::new(Stream::Tcp(TcpStream::connect(addr).unwrap()))
        }
        fn new(stream: Stream) -> TestClient {
            match &stream {
                Stream::Unix(s) => s.set_read_timeout(Some(Duration::from_secs(10))).unwrap(),
                Stream::Tcp(s) => s.set_read_timeout(Some(Duration::from_secs(10))).unwrap(),
            }
            let writer = stream.try_clone().unwrap();
            TestClient {
                reader: BufReader::new(stream),
                writer,
            }
        }
        fn send(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).unwrap();
            self.writer.flush().unwrap();
        }
        /// The next message, or None at end of stream.
        fn recv(&mut self) -> Option<Value> {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => None,
                Ok(_) => {
                    assert!(line.ends_with("\r\n"), "not CRLF-terminated: {line:?}");
                    Some(serde_json::from_str(&line).unwrap())
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => None,
                Err(e) => panic!("read: {e}"),
            }
        }
        fn cmd(&mut self, text: &str) -> Value {
            self.send(text);
            self.recv().expect("reply")
        }
        /// Reads the greeting and negotiates.
        fn negotiate(&mut self) {
            let greeting = self.recv().unwrap();
            assert!(greeting.get("QMP").is_some());
            assert_eq!(
                self.cmd(r#"{"execute":"qmp_capabilities"}"#),
                json!({"return": {}})
            );
        }
    }

    fn error_of(reply: &Value) -> (String, String) {
        let e = &reply["error"];
        (
            e["class"].as_str().unwrap_or_default().to_string(),
            e["desc"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn unix_server() -> (QmpServer, Arc<Mock>, PathBuf) {
        let path = temp_socket();
        let mock = Arc::new(Mock::default());
        let server = QmpServer::bind(&QmpAddress::Unix(path.clone()), mock.clone()).unwrap();
        (server, mock, path)
    }

    fn tcp_server() -> (QmpServer, Arc<Mock>, SocketAddr) {
        let mock = Arc::new(Mock::default());
        let addr: QmpAddress = "tcp:127.0.0.1:0".parse().unwrap();
        let server = QmpServer::bind(&addr, mock.clone()).unwrap();
        let local = server.local_addr().unwrap();
        (server, mock, local)
    }

    #[test]
    fn greeting_has_qemu_shape() {
        let (_server, _mock, path) = unix_server();
        let mut c = TestClient::unix(&path);
        let g = c.recv().unwrap();
        assert_eq!(
            g["QMP"]["version"]["qemu"],
            json!({"major": 7, "minor": 2, "micro": 0})
        );
        assert!(g["QMP"]["version"]["package"]
            .as_str()
            .unwrap()
            .starts_with("vireo"));
        assert_eq!(g["QMP"]["capabilities"], json!([]));
    }

    #[test]
    fn negotiation_is_required_first() {
        let (_server, mock, path) = unix_server();
        let mut c = TestClient::unix(&path);
        c.recv().unwrap();
        let r = c.cmd(r#"{"execute": "query-status", "id": 7}"#);
        assert_eq!(
            error_of(&r),
            (
                "CommandNotFound".into(),
                "Expecting capabilities negotiation with 'qmp_capabilities'".into()
            )
        );
        assert_eq!(r["id"], json!(7));
        let r = c.cmd(r#"{"execute": "stop"}"#);
        assert_eq!(error_of(&r).0, "CommandNotFound");
        assert!(mock.calls().is_empty(), "nothing ran before negotiation");
        // oob is not offered.
        let r = c.cmd(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#);
        assert_eq!(error_of(&r).0, "GenericError");
        let r = c.cmd(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["x"]}}"#);
        assert_eq!(
            error_of(&r).1,
            "Parameter 'enable[0]' does not accept value 'x'"
        );
        // qemu.qmp sends empty arguments.
        assert_eq!(
            c.cmd(r#"{"execute": "qmp_capabilities", "arguments": {}, "id": "__qmp#00000"}"#),
            json!({"return": {}, "id": "__qmp#00000"})
        );
        let r = c.cmd(r#"{"execute": "qmp_capabilities"}"#);
        assert_eq!(
            error_of(&r),
            (
                "CommandNotFound".into(),
                "Capabilities negotiation is already complete, command ignored".into()
            )
        );
        let r = c.cmd(r#"{"execute": "query-status"}"#);
        assert_eq!(r["return"]["status"], "running");
    }

    #[test]
    fn each_command_replies_and_calls_the_backend() {
        let (_server, mock, addr) = tcp_server();
        let mut c = TestClient::tcp(addr);
        c.negotiate();
        let ok = |v: Value, id: Value| assert_eq!(v, json!({"return": {}, "id": id}));
        let r = c.cmd(r#"{"execute": "query-status", "id": 1}"#);
        assert_eq!(
            r,
            json!({"return": {"status": "running", "running": true, "singlestep": false}, "id": 1})
        );
        ok(c.cmd(r#"{"execute": "stop", "id": "s"}"#), json!("s"));
        let r = c.cmd(r#"{"execute": "query-status"}"#);
        assert_eq!(
            r,
            json!({"return": {"status": "paused", "running": false, "singlestep": false}})
        );
        ok(
            c.cmd(r#"{"execute": "cont", "id": {"a": [1, null]}}"#),
            json!({"a": [1, null]}),
        );
        ok(
            c.cmd(r#"{"execute": "system_reset", "id": 1.5}"#),
            json!(1.5),
        );
        ok(
            c.cmd(r#"{"execute": "system_powerdown", "id": null}"#),
            Value::Null,
        );
        ok(
            c.cmd(r#"{"execute": "screendump", "arguments": {"filename": "/tmp/a.ppm"}, "id": 2}"#),
            json!(2),
        );
        ok(
            c.cmd(r#"{"execute": "screendump", "arguments": {"filename": "b.png", "format": "png", "device": "vga", "head": 0}, "id": 3}"#),
            json!(3),
        );
        ok(
            c.cmd(r#"{"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}]}, "id": 4}"#),
            json!(4),
        );
        ok(
            c.cmd(r#"{"execute": "send-key", "arguments": {"keys": [{"type": "number", "data": 29}], "hold-time": 5}, "id": 5}"#),
            json!(5),
        );
        ok(
            c.cmd(r#"{"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "a"}], "hold-time": -3}, "id": 6}"#),
            json!(6),
        );
        ok(
            c.cmd(r#"{"execute": "eject", "arguments": {"device": "ide1-cd0"}, "id": 7}"#),
            json!(7),
        );
        ok(
            c.cmd(r#"{"execute": "eject", "arguments": {"id": "cd", "force": true}, "id": 8}"#),
            json!(8),
        );
        ok(
            c.cmd(r#"{"execute": "blockdev-change-medium", "arguments": {"device": "ide1-cd0", "filename": "/x.iso", "format": "raw", "read-only-mode": "read-only"}, "id": 9}"#),
            json!(9),
        );
        assert_eq!(
            c.cmd(r#"{"execute": "blockdev-change-medium", "arguments": {"id": "cd", "filename": "y.iso"}}"#),
            json!({"return": {}})
        );
        assert_eq!(
            mock.calls(),
            [
                "stop",
                "cont",
                "reset",
                "powerdown",
                "screendump /tmp/a.ppm Ppm",
                "screendump b.png Png",
                "send-key ctrl+alt+delete 100",
                "send-key #29 5",
                "send-key a 0",
                "eject ide1-cd0 false",
                "eject cd true",
                "change ide1-cd0 /x.iso Some(\"raw\") false Some(ReadOnly)",
                "change cd y.iso None false None",
            ]
        );
        let r = c.cmd(r#"{"execute": "query-commands"}"#);
        let names: Vec<&str> = r["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, COMMANDS);
        let r = c.cmd(r#"{"execute": "query-version"}"#);
        assert_eq!(r["return"]["qemu"]["major"], 7);
        let r = c.cmd(r#"{"execute": "query-name"}"#);
        assert_eq!(r, json!({"return": {"name": "testvm"}}));
        // Backend errors become GenericError with the backend's text.
        mock.fail.store(true, Ordering::Relaxed);
        let r = c.cmd(r#"{"execute": "stop", "id": 10}"#);
        assert_eq!(
            r,
            json!({"error": {"class": "GenericError", "desc": "backend says no"}, "id": 10})
        );
    }

    #[test]
    fn argument_errors_use_qemu_wording() {
        let mock = Arc::new(Mock::default());
        let mut s = Session::new(mock.clone());
        s.handle_value(json!({"execute": "qmp_capabilities"}));
        let desc = |s: &mut Session, v: Value| error_of(&s.handle_value(v)[0]).1;
        let cases = [
            (
                json!({"execute": "screendump"}),
                "Parameter 'filename' is missing",
            ),
            (
                json!({"execute": "screendump", "arguments": {"filename": 3}}),
                "Invalid parameter type for 'filename', expected: string",
            ),
            (
                json!({"execute": "screendump", "arguments": {"filename": "a", "format": "gif"}}),
                "Parameter 'format' does not accept value 'gif'",
            ),
            (
                json!({"execute": "screendump", "arguments": {"filename": "a", "head": "0"}}),
                "Invalid parameter type for 'head', expected: integer",
            ),
            (
                json!({"execute": "screendump", "arguments": {"filename": "a", "bogus": 1}}),
                "Parameter 'bogus' is unexpected",
            ),
            (
                json!({"execute": "send-key"}),
                "Parameter 'keys' is missing",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": "ctrl"}}),
                "Invalid parameter type for 'keys', expected: array",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [1]}}),
                "Invalid parameter type for 'keys[0]', expected: object",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [{"data": "a"}]}}),
                "Parameter 'keys[0].type' is missing",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [{"type": "qcode"}]}}),
                "Parameter 'keys[0].data' is missing",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [{"type": "sym", "data": "a"}]}}),
                "Parameter 'keys[0].type' does not accept value 'sym'",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "a"}, {"type": "qcode", "data": "nokey"}]}}),
                "Parameter 'keys[1].data' does not accept value 'nokey'",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [{"type": "number", "data": "a"}]}}),
                "Invalid parameter type for 'keys[0].data', expected: integer",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "a", "x": 1}]}}),
                "Parameter 'keys[0].x' is unexpected",
            ),
            (
                json!({"execute": "send-key", "arguments": {"keys": [], "hold-time": true}}),
                "Invalid parameter type for 'hold-time', expected: integer",
            ),
            (
                json!({"execute": "eject"}),
                "Need exactly one of 'device' and 'id'",
            ),
            (
                json!({"execute": "eject", "arguments": {"device": "a", "id": "b"}}),
                "Need exactly one of 'device' and 'id'",
            ),
            (
                json!({"execute": "eject", "arguments": {"device": "a", "force": "yes"}}),
                "Invalid parameter type for 'force', expected: boolean",
            ),
            (
                json!({"execute": "blockdev-change-medium", "arguments": {"device": "a"}}),
                "Parameter 'filename' is missing",
            ),
            (
                json!({"execute": "blockdev-change-medium", "arguments": {"device": "a", "filename": "f", "read-only-mode": "rw"}}),
                "Parameter 'read-only-mode' does not accept value 'rw'",
            ),
            (
                json!({"execute": "stop", "arguments": {"now": true}}),
                "Parameter 'now' is unexpected",
            ),
            (
                json!({"execute": "nope"}),
                "The command nope has not been found",
            ),
            (
                json!({"execute": 1}),
                "QMP input member 'execute' must be a string",
            ),
            (
                json!({"execute": "stop", "arguments": []}),
                "QMP input member 'arguments' must be an object",
            ),
            (
                json!({"exec-oob": "stop"}),
                "QMP input member 'exec-oob' is unexpected",
            ),
            (json!({"arguments": {}}), "QMP input lacks member 'execute'"),
            (json!([1]), "QMP input must be a JSON object"),
        ];
        for (request, expected) in cases {
            assert_eq!(desc(&mut s, request.clone()), expected, "for {request}");
        }
        let r = s.handle_value(json!({"execute": "nope", "id": "x"}));
        assert_eq!(r[0]["error"]["class"], "CommandNotFound");
        assert_eq!(r[0]["id"], "x");
        // Too many keys.
        let keys: Vec<Value> = (0..MAX_KEYS + 1)
            .map(|_| json!({"type": "qcode", "data": "a"}))
            .collect();
        let r = s.handle_value(json!({"execute": "send-key", "arguments": {"keys": keys}}));
        assert_eq!(error_of(&r[0]).0, "GenericError");
        assert!(
            mock.calls().is_empty(),
            "no failed command reached the backend: {:?}",
            mock.calls()
        );
    }

    #[test]
    fn malformed_json_keeps_the_connection() {
        let (_server, _mock, path) = unix_server();
        let mut c = TestClient::unix(&path);
        c.negotiate();
        for bad in [
            r#"{"execute": }"#,
            "[1, 2",
            "]",
            "nul ",
            "\"unterminated\u{1}",
        ] {
            c.send(bad);
            if bad == "[1, 2" {
                c.send("}"); // mismatched close: balanced, but not JSON
            }
            let r = c.recv().unwrap();
            let (class, desc) = error_of(&r);
            assert_eq!(class, "GenericError", "for {bad:?}");
            assert!(desc.starts_with("JSON parse error"), "for {bad:?}: {desc}");
            assert!(r.get("id").is_none());
        }
        for (input, desc) in [
            ("42\n", "QMP input must be a JSON object"),
            ("\"text\"", "QMP input must be a JSON object"),
        ] {
            assert_eq!(error_of(&c.cmd(input)).1, desc);
        }
        // Control characters reset the parser mid-message.
        c.send("{\"execute\": \"sto\x00");
        assert!(error_of(&c.recv().unwrap())
            .1
            .starts_with("JSON parse error"));
        assert_eq!(c.cmd(r#"{"execute": "query-status", "id": 9}"#)["id"], 9);
        // Invalid UTF-8 inside a string.
        c.send("{\"execute\": \"\u{7f}");
        c.writer.write_all(&[0xc3, 0x28, b'"', b'}']).unwrap();
        assert!(error_of(&c.recv().unwrap())
            .1
            .starts_with("JSON parse error"));
        assert_eq!(c.cmd(r#"{"execute": "query-name", "id": 10}"#)["id"], 10);
    }

    #[test]
    fn split_and_batched_messages() {
        let (_server, mock, path) = unix_server();
        let mut c = TestClient::unix(&path);
        c.negotiate();
        // One command in pieces, including inside a string and an escape.
        for piece in [
            "{\"exec",
            "ute\": \"st",
            "op\", \"id\": \"a\\",
            "\"b\"",
            "}",
        ] {
            c.send(piece);
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(c.recv().unwrap(), json!({"return": {}, "id": "a\"b"}));
        // Several in one write, no separators.
        c.send(r#"{"execute":"cont","id":1}{"execute":"system_reset","id":2} {"execute":"query-name","id":3}"#);
        assert_eq!(c.recv().unwrap()["id"], 1);
        assert_eq!(c.recv().unwrap()["id"], 2);
        assert_eq!(c.recv().unwrap()["id"], 3);
        assert_eq!(mock.calls(), ["stop", "cont", "reset"]);
        // Nested braces inside strings do not end a message early.
        let r = c.cmd(r#"{"execute": "eject", "arguments": {"device": "}{]["}, "id": "}"}"#);
        assert_eq!(r["id"], "}");
        assert_eq!(mock.calls().last().unwrap(), "eject }{][ false");
    }

    #[test]
    fn events_reach_only_negotiated_clients() {
        let (server, _mock, addr) = tcp_server();
        let mut a = TestClient::tcp(addr);
        let mut b = TestClient::tcp(addr);
        a.negotiate();
        b.recv().unwrap(); // greeting only
        server.emit("STOP", Value::Null);
        server.events().emit(
            "SHUTDOWN",
            json!({"guest": false, "reason": "host-qmp-quit"}),
        );
        let e = a.recv().unwrap();
        assert_eq!(e["event"], "STOP");
        assert!(e.get("data").is_none());
        assert!(e["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
        assert!(e["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
        let e = a.recv().unwrap();
        assert_eq!(e["event"], "SHUTDOWN");
        assert_eq!(
            e["data"],
            json!({"guest": false, "reason": "host-qmp-quit"})
        );
        // b got nothing: its next message is the reply to its command.
        assert_eq!(
            b.cmd(r#"{"execute": "qmp_capabilities", "id": 1}"#),
            json!({"return": {}, "id": 1})
        );
        server.emit("RESUME", Value::Null);
        assert_eq!(b.recv().unwrap()["event"], "RESUME");
        assert_eq!(a.recv().unwrap()["event"], "RESUME");
    }

    #[test]
    fn quit_replies_then_closes() {
        let (server, mock, path) = unix_server();
        let mut c = TestClient::unix(&path);
        c.negotiate();
        c.send(r#"{"execute": "quit", "id": 1}{"execute": "stop"}"#);
        assert_eq!(c.recv().unwrap(), json!({"return": {}, "id": 1}));
        assert_eq!(c.recv(), None);
        assert_eq!(mock.calls(), ["quit"], "nothing runs after quit");
        // The server still takes new clients.
        let mut d = TestClient::unix(&path);
        d.negotiate();
        for _ in 0..100 {
            if server.client_count() == 1 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.client_count(), 1);
    }

    #[test]
    fn unix_socket_file_lifecycle() {
        // A stale socket (nobody listening) is replaced.
        let path = temp_socket();
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let mut server =
            QmpServer::bind(&QmpAddress::Unix(path.clone()), Arc::new(NullBackend)).unwrap();
        TestClient::unix(&path).negotiate();
        // A live one is not.
        let e = QmpServer::bind(&QmpAddress::Unix(path.clone()), Arc::new(NullBackend))
            .err()
            .unwrap();
        assert!(matches!(e, QmpError::InUse { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with(&format!("--qmp unix:{}", path.display())));
        // Shutdown removes the file and closes clients.
        let mut c = TestClient::unix(&path);
        c.recv().unwrap();
        server.shutdown();
        assert!(!path.exists());
        assert_eq!(c.recv(), None);
        server.shutdown(); // idempotent
                           // A regular file is left alone.
        std::fs::write(&path, b"keep me").unwrap();
        let e = QmpServer::bind(&QmpAddress::Unix(path.clone()), Arc::new(NullBackend))
            .err()
            .unwrap();
        assert!(matches!(e, QmpError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        // A missing directory.
        let missing = path.with_file_name("no-such-dir").join("q.sock");
        let e = QmpServer::bind(&QmpAddress::Unix(missing.clone()), Arc::new(NullBackend))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "--qmp unix:{}: cannot bind: No such file or directory",
                missing.display()
            )
        );
        // Drop also removes the file.
        let path2 = path.with_file_name("second.sock");
        let server =
            QmpServer::bind(&QmpAddress::Unix(path2.clone()), Arc::new(NullBackend)).unwrap();
        assert!(path2.exists());
        drop(server);
        assert!(!path2.exists());
    }

    #[test]
    fn address_parsing() {
        assert_eq!(
            "unix:/a/b".parse::<QmpAddress>().unwrap(),
            QmpAddress::Unix("/a/b".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:4444".parse::<QmpAddress>().unwrap(),
            QmpAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
        let v6 = "tcp:[::1]:0".parse::<QmpAddress>().unwrap();
        assert_eq!(
            v6,
            QmpAddress::Tcp {
                host: "::1".into(),
                port: 0
            }
        );
        assert_eq!(v6.to_string(), "tcp:[::1]:0");
        assert_eq!(
            "tcp:localhost:1".parse::<QmpAddress>().unwrap().to_string(),
            "tcp:localhost:1"
        );
        for bad in [
            "",
            "foo",
            "unix:",
            "tcp:1234",
            "tcp::1234",
            "tcp:host:port",
            "tcp:host:70000",
            "tcp:::1:5",
            "tcp:[::1:5",
            "stdio",
        ] {
            let e = bad
                .parse::<QmpAddress>()
                .err()
                .unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert!(e.to_string().starts_with(&format!("--qmp {bad}: ")), "{e}");
        }
        let e = QmpServer::bind(
            &QmpAddress::Tcp {
                host: "no-such-host.invalid".into(),
                port: 1,
            },
            Arc::new(NullBackend),
        )
        .err()
        .unwrap();
        assert!(
            matches!(e, QmpError::Resolve { .. } | QmpError::Bind { .. }),
            "{e}"
        );
        // A port in use.
        let (_server, _mock, addr) = tcp_server();
        let e = QmpServer::bind(
            &format!("tcp:127.0.0.1:{}", addr.port()).parse().unwrap(),
            Arc::new(NullBackend),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("cannot bind: Address already in use"),
            "{e}"
        );
    }

    #[test]
    fn oversized_message_drops_the_client() {
        let (server, _mock, addr) = tcp_server();
        let mut c = TestClient::tcp(addr);
        c.negotiate();
        let chunk = vec![b' '; 64 * 1024];
        c.send("{\"execute\": \"");
        let mut written = 0;
        while written <= MAX_MESSAGE + chunk.len() {
            if c.writer.write_all(&chunk).is_err() {
                break;
            }
            written += chunk.len();
        }
        assert_eq!(c.recv(), None);
        // Others are still served.
        TestClient::tcp(addr).negotiate();
        drop(server);
    }

    #[test]
    fn client_limit() {
        let (server, _mock, path) = unix_server();
        let mut clients: Vec<TestClient> =
            (0..MAX_CLIENTS).map(|_| TestClient::unix(&path)).collect();
        for c in &mut clients {
            c.recv().unwrap();
        }
        let mut extra = TestClient::unix(&path);
        assert_eq!(extra.recv(), None);
        assert_eq!(server.client_count(), MAX_CLIENTS);
        drop(clients.pop());
        let mut again = None;
        for _ in 0..200 {
            let mut c = TestClient::unix(&path);
            if c.recv().is_some() {
                again = Some(c);
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let mut again = again.expect("a slot frees up when a client leaves");
        assert_eq!(
            again.cmd(r#"{"execute": "qmp_capabilities"}"#),
            json!({"return": {}})
        );
    }

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        let names = [
            "execute",
            "arguments",
            "id",
            "keys",
            "type",
            "data",
            "filename",
            "device",
            "format",
            "enable",
        ];
        let commands = COMMANDS;
        match rng.gen_range(0..if depth > 3 { 6 } else { 9 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.gen()),
            2 => json!(rng.gen::<i64>()),
            3 => json!(rng.gen::<f64>()),
            4 => json!(commands[rng.gen_range(0..commands.len())]),
            5 => json!(["qcode", "number", "ppm", "png", "a", "ctrl", ""][rng.gen_range(0..7)]),
            6 | 7 => {
                let mut m = Map::new();
                for _ in 0..rng.gen_range(0..5) {
                    m.insert(
                        names[rng.gen_range(0..names.len())].into(),
                        random_value(rng, depth + 1),
                    );
                }
                Value::Object(m)
            }
            _ => Value::Array(
                (0..rng.gen_range(0..4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x51a7e);
        // Pure entry points: random bytes and random JSON.
        for round in 0..3000 {
            let mut s = Session::new(Arc::new(NullBackend));
            if round % 2 == 0 {
                s.handle_value(json!({"execute": "qmp_capabilities"}));
            }
            let len = rng.gen_range(0..200);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.gen_range(0..4) {
                    0 => {
                        let syntax = b"{}[]\":,\\ \n";
                        syntax[rng.gen_range(0..syntax.len())]
                    }
                    _ => rng.gen(),
                })
                .collect();
            let _ = s.handle_bytes(&bytes);
            for _ in 0..5 {
                let v = random_value(&mut rng, 0);
                let replies = s.handle_value(v.clone());
                assert_eq!(replies.len(), 1);
                let text = String::from_utf8(wire(&v)).unwrap();
                let _ = s.handle_bytes(text.as_bytes());
            }
        }
        // Deep nesting is refused, not a stack overflow.
        let mut s = Session::new(Arc::new(NullBackend));
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let r = s.handle_bytes(deep.as_bytes()).unwrap();
        assert!(error_of(&r[0]).1.starts_with("JSON parse error"), "{r:?}");
        // Messages after garbage are still answered once the parser is reset.
        let _ = s.handle_bytes(b"{\"execute\": [[[\"");
        let r = s
            .handle_bytes(b"\x01{\"execute\": \"qmp_capabilities\"}")
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], json!({"return": {}}));
        // Over a socket: garbage on one client, another is served normally.
        let (_server, _mock, path) = unix_server();
        let mut bad = TestClient::unix(&path);
        bad.recv().unwrap();
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..rng.gen_range(1..500)).map(|_| rng.gen()).collect();
            if bad.writer.write_all(&bytes).is_err() {
                break;
            }
            let v = random_value(&mut rng, 0);
            let _ = bad.writer.write_all(&wire(&v));
        }
        let mut good = TestClient::unix(&path);
        good.negotiate();
        assert_eq!(
            good.cmd(r#"{"execute": "query-status", "id": 1}"#)["return"]["running"],
            true
        );
    }

    /// Serves a mock machine for trying clients by hand:
    /// `VIREO_QMP_SERVE=unix:/tmp/q.sock cargo test -p vireo-emulator --lib
    /// qmp::tests::serve_for_manual_use -- --ignored --nocapture`, then e.g.
    /// `socat - UNIX-CONNECT:/tmp/q.sock`. Serves `VIREO_QMP_SECONDS`
    /// (default 30) seconds, emitting a `RESUME` event every 5.
    #[test]
    #[ignore]
    fn serve_for_manual_use() {
        let spec = std::env::var("VIREO_QMP_SERVE").unwrap_or_else(|_| "tcp:127.0.0.1:4444".into());
        let seconds: u64 = std::env::var("VIREO_QMP_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30);
        let mock = Arc::new(Mock::default());
        let server = QmpServer::bind(&spec.parse().unwrap(), mock.clone()).unwrap();
        eprintln!("serving {spec} for {seconds} s");
        for i in 0..seconds {
            thread::sleep(Duration::from_secs(1));
            if i % 5 == 4 {
                server.emit("RESUME", Value::Null);
            }
        }
        eprintln!("backend calls: {:?}", mock.calls());
    }

    /// Runs QEMU's own Python client (`qemu.qmp`) against the server when it
    /// is installed (`VIREO_QMP_PYTHON` names the interpreter; default
    /// `python3`); skipped otherwise.
    #[test]
    fn qemu_qmp_python_client() {
        let python = std::env::var("VIREO_QMP_PYTHON").unwrap_or_else(|_| "python3".into());
        let has_module = std::process::Command::new(&python)
            .args(["-c", "import qemu.qmp"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_module {
            eprintln!("qemu.qmp is not installed for {python}: skipped");
            return;
        }
        let (_server, mock, path) = unix_server();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qmp_client.py");
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        assert_eq!(
            status,
            json!({"status": "running", "running": true, "singlestep": false})
        );
        assert!(mock.calls().is_empty());
    }
}
