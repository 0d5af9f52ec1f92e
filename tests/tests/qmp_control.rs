//! QMP on a real machine: a [`QmpServer`] serving [`EngineQmp`] on a unix
//! socket, driven by a raw-socket JSON client (QEMU's `docs/interop/qmp-spec.rst`
//! wire format), and the `vireo run --qmp` command line.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vireo_emulator::accel::AccelKind;
use vireo_emulator::boot::multiboot;
use vireo_emulator::engine::{self, Command, EngineHandle, KernelConfig, MachineConfig, RunState};
use vireo_emulator::qmp::{QmpAddress, QmpServer};
use vireo_emulator::qmp_engine::{forward_events, EngineQmp};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory for one test's files (short: unix socket
/// paths must fit in 108 bytes).
fn temp_dir() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vireo-qmpt-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// An a.out-kludge multiboot kernel at 1 MiB whose body is `code`.
fn kernel_file(dir: &Path, code: &[u8]) -> PathBuf {
    let img = multiboot::flat_image(code);
    let path = dir.join("kernel");
    std::fs::write(&path, img).expect("write kernel");
    path
}

/// `jmp $`.
const SPIN: &[u8] = &[0xeb, 0xfe];

/// Waits for a byte on COM1, then resets the machine through port 0xcf9.
const RESET_ON_INPUT: &[u8] = &[
    0xba, 0xfd, 0x03, 0x00, 0x00, // mov edx, 0x3fd
    0xec, // in al, dx
    0xa8, 0x01, // test al, 1
    0x74, 0xfb, // jz in
    0xba, 0xf9, 0x0c, 0x00, 0x00, // mov edx, 0xcf9
    0xb0, 0x06, // mov al, 6 (SYS_RST | RST_CPU)
    0xee, // out dx, al
    0xeb, 0xfe, // jmp $
];

/// A machine running `code`, a QMP server for it on `dir/qmp.sock`, and
/// the event forwarder.
struct Vm {
    handle: EngineHandle,
    server: QmpServer,
    socket: PathBuf,
    forward: Option<std::thread::JoinHandle<()>>,
}

impl Vm {
    fn start(dir: &Path, code: &[u8], no_reboot: bool) -> Vm {
        let config = MachineConfig {
            memory: 16 << 20,
            accel: AccelKind::Soft,
            kernel: Some(KernelConfig {
                path: kernel_file(dir, code),
                cmdline: String::new(),
                initrd: None,
            }),
            no_reboot,
            ..Default::default()
        };
        let handle = engine::start(&config).unwrap_or_else(|e| panic!("start: {e}"));
        let socket = dir.join("qmp.sock");
        let server = QmpServer::bind(
            &QmpAddress::Unix(socket.clone()),
            Arc::new(EngineQmp::new(handle.clone())),
        )
        .unwrap_or_else(|e| panic!("bind: {e}"));
        let forward = forward_events(handle.subscribe(), server.events()).expect("forwarder");
        Vm {
            handle,
            server,
            socket,
            forward: Some(forward),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Waits for the engine thread, checks the forwarder ended, and shuts
    /// the server down (removing the socket file).
    fn finish(mut self) {
        self.handle.join();
        assert_eq!(self.handle.state(), RunState::Shutdown);
        let forward = self.forward.take().expect("forwarder");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !forward.is_finished() {
            assert!(Instant::now() < deadline, "the event forwarder did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = forward.join();
        self.server.shutdown();
        assert!(!self.socket.exists(), "the socket file was left behind");
    }
}

/// A QMP client speaking the wire protocol by hand: one JSON object a
/// line (CRLF-terminated), events kept aside until asked for.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Client {
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
        }
    }

    fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.flush())
            .expect("send");
    }

    /// The next message; None at end of stream.
    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                assert!(line.ends_with("\r\n"), "not CRLF-terminated: {line:?}");
                Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads the greeting, negotiates; returns the greeting.
    fn negotiate(&mut self) -> Value {
        let greeting = self.recv().expect("greeting");
        assert_eq!(
            self.execute(json!({"execute": "qmp_capabilities"})),
            json!({"return": {}})
        );
        greeting
    }

    /// Sends a request; returns its reply (events arriving first are kept).
    fn execute(&mut self, request: Value) -> Value {
        self.send(&format!("{request}\n"));
        loop {
            let msg = self.recv().expect("reply");
            if msg.get("event").is_some() {
                self.events.push_back(msg);
            } else {
                return msg;
            }
        }
    }

    /// The `return` of a request that must succeed.
    fn ok(&mut self, request: Value) -> Value {
        let reply = self.execute(request.clone());
        match reply.get("return") {
            Some(r) => r.clone(),
            None => panic!("{request} failed: {reply}"),
        }
    }

    /// The error class and description of a request that must fail.
    fn err(&mut self, request: Value) -> (String, String) {
        let reply = self.execute(request.clone());
        let e = reply
            .get("error")
            .unwrap_or_else(|| panic!("{request} did not fail: {reply}"));
        (
            e["class"].as_str().unwrap_or_default().to_string(),
            e["desc"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// The next event called `name` (others before it stay queued).
    fn event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i).expect("queued");
        }
        loop {
            let msg = self
                .recv()
                .unwrap_or_else(|| panic!("connection closed waiting for {name}"));
            assert!(msg.get("event").is_some(), "unexpected reply {msg}");
            if msg["event"] == name {
                return msg;
            }
            self.events.push_back(msg);
        }
    }

    fn status(&mut self) -> String {
        let r = self.ok(json!({"execute": "query-status"}));
        assert_eq!(r["running"], r["status"] == "running", "{r}");
        r["status"].as_str().unwrap_or_default().to_string()
    }
}

#[test]
fn qmp_drives_a_real_machine() {
    let dir = temp_dir();
    let vm = Vm::start(&dir, SPIN, false);
    let mut c = vm.client();
    let greeting = c.negotiate();
    assert!(
        greeting["QMP"]["version"]["qemu"]["major"].is_u64(),
        "{greeting}"
    );
    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    assert_eq!(c.status(), "running");

    // stop / cont: the reply comes once the state changed; the event too.
    assert_eq!(c.ok(json!({"execute": "stop", "id": 7})), json!({}));
    assert_eq!(c.status(), "paused");
    assert_eq!(vm.handle.state(), RunState::Paused);
    let stop = c.event("STOP");
    assert!(stop.get("data").is_none(), "{stop}");
    assert!(stop["timestamp"]["seconds"].as_u64().unwrap_or(0) > 1_600_000_000);
    assert_eq!(c.ok(json!({"execute": "cont"})), json!({}));
    c.event("RESUME");
    assert_eq!(c.status(), "running");

    // screendump, PNG and (the default) PPM.
    let png = dir.join("screen.png");
    let arguments = json!({"filename": png, "format": "png"});
    c.ok(json!({"execute": "screendump", "arguments": arguments}));
    let bytes = std::fs::read(&png).expect("png written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let ppm = dir.join("screen.ppm");
    c.ok(json!({"execute": "screendump", "arguments": {"filename": ppm}}));
    assert!(std::fs::read(&ppm).expect("ppm written").starts_with(b"P6"));
    let (class, desc) = c.err(json!({"execute": "screendump",
        "arguments": {"filename": dir.join("no/such/dir/x.png"), "format": "png"}}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("no/such/dir/x.png"), "{desc}");

    // send-key: QKeyCodes and QEMU key numbers.
    let ctrl_alt_del = json!({"execute": "send-key", "arguments": {"keys": [
        {"type": "qcode", "data": "ctrl"},
        {"type": "qcode", "data": "alt"},
        {"type": "qcode", "data": "delete"}]}});
    assert_eq!(c.ok(ctrl_alt_del), json!({}));
    let by_number = json!({"execute": "send-key", "arguments": {
        "keys": [{"type": "number", "data": 0x1d}, {"type": "number", "data": 0x1e}],
        "hold-time": 5}});
    assert_eq!(c.ok(by_number), json!({}));
    let (class, desc) = c.err(json!({"execute": "send-key",
        "arguments": {"keys": [{"type": "number", "data": 999}]}}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("keys[0].data"), "{desc}");
    let (_, desc) = c.err(json!({"execute": "send-key",
        "arguments": {"keys": [{"type": "qcode", "data": "nokey"}]}}));
    assert_eq!(
        desc,
        "Parameter 'keys[0].data' does not accept value 'nokey'"
    );

    // system_reset: RESET from the host.
    assert_eq!(c.ok(json!({"execute": "system_reset"})), json!({}));
    let reset = c.event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(c.status(), "running");

    // system_powerdown: POWERDOWN (this guest does not listen).
    assert_eq!(c.ok(json!({"execute": "system_powerdown"})), json!({}));
    assert!(c.event("POWERDOWN").get("data").is_none());
    assert_eq!(c.status(), "running");

    // eject of the empty CD-ROM drive: the engine opens its tray, which
    // QEMU answers with success too.
    let eject = json!({"execute": "eject", "arguments": {"device": "ide1-cd0"}});
    assert_eq!(c.ok(eject.clone()), json!({}));
    assert_eq!(c.ok(eject), json!({}));
    let (class, desc) = c.err(json!({"execute": "eject", "arguments": {"device": "floppy0"}}));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "Device 'floppy0' not found");

    // blockdev-change-medium.
    let missing = dir.join("missing.iso");
    let (class, desc) = c.err(json!({"execute": "blockdev-change-medium",
        "arguments": {"device": "ide1-cd0", "filename": missing}}));
    assert_eq!(class, "GenericError");
    assert_eq!(
        desc,
        format!(
            "Could not open '{}': No such file or directory",
            missing.display()
        )
    );
    let iso = dir.join("blank.iso");
    std::fs::write(&iso, vec![0u8; 20 * 2048]).expect("write image");
    let (_, desc) = c.err(json!({"execute": "blockdev-change-medium",
        "arguments": {"device": "ide1-cd0", "filename": iso, "format": "qcow2"}}));
    assert!(desc.contains("'qcow2'") && desc.contains("'raw'"), "{desc}");
    let (_, desc) = c.err(json!({"execute": "blockdev-change-medium",
        "arguments": {"device": "ide1-cd0", "filename": iso, "format": "gif"}}));
    assert_eq!(desc, "Unknown driver 'gif'");
    let (_, desc) = c.err(json!({"execute": "blockdev-change-medium",
        "arguments": {"device": "ide1-cd0", "filename": iso, "read-only-mode": "read-write"}}));
    assert!(desc.contains("read-only"), "{desc}");
    let odd = dir.join("odd.iso");
    std::fs::write(&odd, vec![0u8; 3000]).expect("write image");
    let (_, desc) = c.err(json!({"execute": "blockdev-change-medium",
        "arguments": {"device": "ide1-cd0", "filename": odd}}));
    assert!(desc.contains("not a CD image"), "{desc}");
    let change = json!({"execute": "blockdev-change-medium",
        "arguments": {"device": "ide1-cd0", "filename": iso, "format": "raw"}});
    assert_eq!(c.ok(change), json!({}));

    // Unknown commands.
    let (class, desc) = c.err(json!({"execute": "migrate", "id": "x"}));
    assert_eq!(class, "CommandNotFound");
    assert_eq!(desc, "The command migrate has not been found");

    // quit: the reply, the connection closes, another client sees SHUTDOWN
    // and the engine stops.
    let mut watcher = vm.client();
    watcher.negotiate();
    assert_eq!(
        c.execute(json!({"execute": "quit", "id": 1})),
        json!({"return": {}, "id": 1})
    );
    while let Some(msg) = c.recv() {
        assert!(msg.get("event").is_some(), "{msg} after quit");
    }
    let shutdown = watcher.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    // The server answers until it is shut down.
    assert_eq!(watcher.status(), "shutdown");
    let (class, _) = watcher.err(json!({"execute": "stop"}));
    assert_eq!(class, "GenericError");
    vm.finish();
    assert_eq!(watcher.recv(), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_resets_are_reported_as_the_guests() {
    // Rebooting: RESET {"guest": true}.
    let dir = temp_dir();
    let vm = Vm::start(&dir, RESET_ON_INPUT, false);
    let mut c = vm.client();
    c.negotiate();
    vm.handle.send(Command::SerialInput(b"r".to_vec()));
    let reset = c.event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": true, "reason": "guest-reset"})
    );
    assert_eq!(c.status(), "running");
    c.ok(json!({"execute": "quit"}));
    vm.finish();

    // Under no_reboot the machine ends: SHUTDOWN {"guest": true}.
    let dir2 = temp_dir();
    let vm = Vm::start(&dir2, RESET_ON_INPUT, true);
    let mut c = vm.client();
    c.negotiate();
    vm.handle.send(Command::SerialInput(b"r".to_vec()));
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-reset"})
    );
    assert_eq!(c.status(), "shutdown");
    vm.finish();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

/// A random JSON value (depth-limited).
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => match rng.gen_range(0..3) {
            0 => json!(rng.gen::<i64>()),
            1 => json!(rng.gen_range(-300..300)),
            _ => json!(rng.gen::<f64>() * 1e6),
        },
        3 | 4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.gen_range(0..5))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.gen_range(0..5))
                .map(|_| (random_key(rng), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

fn random_string(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "ide1-cd0",
        "cdrom",
        "ctrl",
        "alt",
        "delete",
        "a",
        "qcode",
        "number",
        "raw",
        "\\",
        "\"",
        "\u{0}",
        "é",
        "\u{1f600}",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\n",
    ];
    (0..rng.gen_range(0..4))
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

fn random_key(rng: &mut StdRng) -> String {
    const KEYS: &[&str] = &[
        "execute",
        "arguments",
        "id",
        "device",
        "id",
        "filename",
        "format",
        "keys",
        "type",
        "data",
        "hold-time",
        "force",
        "enable",
        "read-only-mode",
        "head",
    ];
    if rng.gen_bool(0.8) {
        KEYS[rng.gen_range(0..KEYS.len())].to_string()
    } else {
        random_string(rng)
    }
}

/// A request for a real command with random arguments. Commands that
/// legitimately change the run state or write files (`stop`, `quit`,
/// `system_powerdown`, `screendump`) are left out.
fn random_request(rng: &mut StdRng) -> Value {
    const COMMANDS: &[&str] = &[
        "qmp_capabilities",
        "query-status",
        "cont",
        "system_reset",
        "send-key",
        "eject",
        "blockdev-change-medium",
        "query-commands",
        "query-version",
        "query-name",
        "no-such-command",
    ];
    let mut req = serde_json::Map::new();
    req.insert(
        "execute".into(),
        json!(COMMANDS[rng.gen_range(0..COMMANDS.len())]),
    );
    if rng.gen_bool(0.7) {
        let mut args = serde_json::Map::new();
        for _ in 0..rng.gen_range(0..4) {
            args.insert(random_key(rng), random_value(rng, 2));
        }
        if rng.gen_bool(0.3) {
            let keys: Vec<Value> = (0..rng.gen_range(0..4))
                .map(|_| {
                    if rng.gen_bool(0.5) {
                        json!({"type": "number", "data": rng.gen_range(-5..300)})
                    } else {
                        {
                            let name = ["a", "ctrl", "lang1", "x", "ret"][rng.gen_range(0..5)];
                            json!({"type": "qcode", "data": name})
                        }
                    }
                })
                .collect();
            args.insert("keys".into(), Value::Array(keys));
        }
        req.insert("arguments".into(), Value::Object(args));
    }
    if rng.gen_bool(0.3) {
        req.insert("id".into(), random_value(rng, 1));
    }
    Value::Object(req)
}

#[test]
fn fuzzed_qmp_session_never_takes_the_vm_down() {
    let dir = temp_dir();
    let vm = Vm::start(&dir, SPIN, false);
    let mut rng = StdRng::seed_from_u64(0x0051_4d50);
    let (mut sent, mut answered, mut refused) = (0usize, 0usize, 0usize);
    for conn in 0..30 {
        let stream = UnixStream::connect(&vm.socket).expect("connect");
        let mut reader = stream.try_clone().expect("clone");
        // Drain replies so the server never blocks on a full socket.
        let drain = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = reader.read_to_end(&mut all);
            all
        });
        let mut w = stream;
        if conn % 2 == 0 {
            let _ = w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
        }
        for _ in 0..200 {
            let bytes: Vec<u8> = match rng.gen_range(0..4) {
                0 => (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(),
                1 => random_value(&mut rng, 3).to_string().into_bytes(),
                _ => random_request(&mut rng).to_string().into_bytes(),
            };
            // Sometimes split, sometimes run together with the next one.
            let cut = rng.gen_range(0..=bytes.len());
            let _ = w.write_all(&bytes[..cut]);
            let _ = w.write_all(&bytes[cut..]);
            if rng.gen_bool(0.5) {
                let _ = w.write_all(b"\n");
            }
            sent += 1;
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
        let replies = drain.join().expect("drain");
        let text = String::from_utf8_lossy(&replies);
        answered += text.matches("{\"return\"").count();
        refused += text.matches("{\"error\"").count();
    }
    eprintln!("fuzz: {sent} sent, {answered} returns, {refused} errors");
    assert!(sent >= 6000);
    // Both successes and errors came back (not just parse errors).
    assert!(
        answered > 300 && refused > 3000,
        "{answered} returns, {refused} errors"
    );
    // A fresh client still gets answers; the machine still runs.
    let mut c = vm.client();
    c.negotiate();
    assert_eq!(c.status(), "running");
    assert_eq!(vm.handle.state(), RunState::Running);
    let png = dir.join("after.png");
    c.ok(json!({"execute": "screendump", "arguments": {"filename": png, "format": "png"}}));
    assert!(std::fs::read(&png).expect("png").starts_with(b"\x89PNG"));
    c.ok(json!({"execute": "quit"}));
    vm.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `vireo` binary of this build (target/<profile>/vireo), built first
/// with the same profile so it is current.
fn vireo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("vireo");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => "dev",
    };
    let target_dir = profile_dir.parent().expect("target dir");
    let built = Process::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "vireo", "--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    match built {
        Ok(s) if s.success() => {}
        other => eprintln!("note: cargo build -p vireo failed ({other:?}); using {bin:?} as it is"),
    }
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p vireo --profile {profile}` first",
        bin.display()
    );
    bin
}

/// Waits for `child` to exit, killing it after `timeout`.
fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vireo did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vireo_run_qmp_quit_exits_cleanly() {
    let bin = vireo_binary();
    let dir = temp_dir();

    // A bad address is a one-line error naming --qmp.
    let out = Process::new(&bin)
        .args(["run", "--serial", "none", "--qmp", "udp:1.2.3.4:5"])
        .output()
        .expect("run vireo");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("vireo: --qmp udp:1.2.3.4:5: "), "{err}");

    // Firmware boot (SeaBIOS), QMP on a unix socket.
    let socket = dir.join("qmp.sock");
    let mut child = Process::new(&bin)
        .arg("run")
        .args(["--serial", "none", "--accel", "soft", "--memory", "64M"])
        .arg("--qmp")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn vireo");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Some(s) = child.try_wait().expect("try_wait") {
            panic!("vireo exited before serving QMP: {s}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no QMP socket after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut c = Client::connect(&socket);
    c.negotiate();
    assert_eq!(c.status(), "running");

    // The same through socat, as shell scripts drive QEMU.
    let socat = Process::new("socat")
        .args([
            "-t",
            "5",
            "-",
            &format!("UNIX-CONNECT:{}", socket.display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match socat {
        Err(e) => eprintln!("note: socat not found ({e}); skipping the socat part"),
        Ok(mut p) => {
            p.stdin
                .take()
                .expect("stdin")
                .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
                .expect("write to socat");
            let out = p.wait_with_output().expect("socat");
            let text = String::from_utf8_lossy(&out.stdout);
            let msgs: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
                .collect();
            assert!(msgs.len() >= 3, "socat got {text:?}");
            assert!(msgs[0]["QMP"].is_object(), "{text}");
            assert_eq!(msgs[1], json!({"return": {}}));
            assert_eq!(msgs[2]["return"]["status"], "running", "{text}");
        }
    }

    assert_eq!(c.execute(json!({"execute": "quit"})), json!({"return": {}}));
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!socket.exists(), "vireo left its QMP socket behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qmp_engine_refuses_commands_after_the_machine_stopped() {
    let dir = temp_dir();
    let vm = Vm::start(&dir, SPIN, false);
    vm.handle.send(Command::PowerOff);
    let mut c = vm.client();
    c.negotiate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status() != "shutdown" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    for cmd in ["stop", "cont", "system_reset", "system_powerdown"] {
        let (class, desc) = c.err(json!({"execute": cmd}));
        assert_eq!(class, "GenericError");
        assert_eq!(desc, "The machine has stopped");
    }
    vm.finish();
    let _ = std::fs::remove_dir_all(&dir);
}
