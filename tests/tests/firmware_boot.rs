//! PC firmware boots on the software CPU: Debian's SeaBIOS (from the
//! `seabios` package that scripts/setup.sh installs) runs its power-on
//! self test on the machine and reports what it found.

use std::time::{Duration, Instant};
use vireo_emulator::accel::AccelKind;
use vireo_emulator::engine::{self, Command, Event, MachineConfig};

/// Boots the firmware with no boot device and returns its debug-console
/// output once `until` appears (or after `timeout`).
fn boot_firmware(vcpus: usize, memory: u64, until: &str, timeout: Duration) -> String {
    let config = MachineConfig {
        memory,
        accel: AccelKind::Soft,
        vcpus,
        ..Default::default()
    };
    let handle = engine::start(&config).unwrap_or_else(|e| panic!("start: {e}"));
    let events = handle.subscribe();
    let deadline = Instant::now() + timeout;
    let mut log = Vec::new();
    while Instant::now() < deadline {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::DebugOutput(b)) => log.extend_from_slice(&b),
            Ok(Event::Stopped(r)) => panic!("stopped: {r:?}\n{}", String::from_utf8_lossy(&log)),
            _ => {}
        }
        if String::from_utf8_lossy(&log).contains(until) {
            break;
        }
    }
    handle.send(Command::PowerOff);
    handle.join();
    String::from_utf8_lossy(&log).into_owned()
}

#[test]
fn seabios_finds_the_machine_and_reports_no_boot_device() {
    let log = boot_firmware(2, 256 << 20, "No bootable device", Duration::from_secs(60));
    for want in [
        "SeaBIOS (version",
        "Found QEMU fw_cfg",
        "QEMU fw_cfg DMA interface supported",
        // RAM from fw_cfg's etc/e820, the vCPUs from CMOS/fw_cfg (the AP
        // answered the firmware's INIT-SIPI), the 440FX and PIIX3 on PCI.
        "qemu/e820: addr 0x0000000000000000 len 0x0000000010000000 [RAM]",
        "Found 2 cpu(s) max supported 2 cpu(s)",
        "PCI: init bdf=00:00.0 id=8086:1237",
        "PCI: init bdf=00:01.0 id=8086:7000",
        "No bootable device",
    ] {
        assert!(log.contains(want), "SeaBIOS did not print {want:?}:\n{log}");
    }
}

/// The CD images of `tests/fixtures/boot-media.sh` (built once a run).
fn boot_media() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    static MEDIA: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();
    let v = MEDIA.get_or_init(|| {
        let cache = std::env::var_os("VIREO_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/vireo")
            });
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/boot-media.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(&cache)
            .output()
            .expect("run boot-media.sh");
        assert!(
            out.status.success(),
            "boot-media.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(3)
            .map(std::path::PathBuf::from)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    });
    (v[0].clone(), v[1].clone(), v[2].clone())
}

/// What a screenshot showed.
struct Shot {
    width: u32,
    height: u32,
    /// Distinct colours on the screen.
    colors: usize,
}

/// Saves the screen as `target/screenshots/NAME.png` (kept as a CI
/// artifact) through the engine's screendump, and describes it.
fn screenshot(h: &engine::EngineHandle, name: &str) -> Shot {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(format!("{name}.png"));
    h.request(|reply| Command::Screendump {
        path: path.clone(),
        format: engine::ScreenFormat::Png,
        reply,
    })
    .unwrap_or_else(|e| panic!("screendump: {e}"));
    let png = std::fs::read(&path).expect("read the screenshot");
    assert_eq!(&png[1..4], b"PNG", "{} is not a PNG", path.display());
    let surface = h.surface();
    let s = surface.read().expect("surface");
    let colors = s
        .pixels()
        .chunks_exact(4)
        .collect::<std::collections::HashSet<_>>()
        .len();
    eprintln!(
        "screenshot {} ({}x{}, {colors} colours)",
        path.display(),
        s.width(),
        s.height()
    );
    Shot {
        width: s.width(),
        height: s.height(),
        colors,
    }
}

/// Waits until the text screen holds `want`; returns it.
fn wait_text(h: &engine::EngineHandle, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Some(t) = h.text_screen() {
            if t.iter().any(|l| l.contains(want)) {
                return t;
            }
            last = t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{want:?} never appeared; the screen:\n{}", last.join("\n"));
}

#[test]
fn grub_rescue_cd_boots_to_the_grub_prompt() {
    let (grub, _, _) = boot_media();
    let config = MachineConfig {
        memory: 256 << 20,
        accel: AccelKind::Soft,
        cdrom: Some(grub),
        boot_order: "d".into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let h = engine::start(&config).unwrap_or_else(|e| panic!("start: {e}"));
    let screen = wait_text(&h, "GNU GRUB", Duration::from_secs(120));
    eprintln!(
        "GRUB banner after {:?}:\n{}",
        t0.elapsed(),
        screen.join("\n")
    );
    // `c` opens GRUB's command line; `ls` lists its devices.
    h.type_text("c").expect("type");
    wait_text(&h, "grub>", Duration::from_secs(30));
    h.type_text("ls\n").expect("type");
    let screen = wait_text(&h, "(cd) (cd,msdos1)", Duration::from_secs(30));
    eprintln!(
        "GRUB command line after {:?}:\n{}",
        t0.elapsed(),
        screen.join("\n")
    );
    assert!(
        screen.iter().any(|l| l.starts_with("grub> ls")),
        "{screen:?}"
    );
    // The picture: 80x25 text in 9x16 cells, GRUB's banner on it.
    let shot = screenshot(&h, "grub-rescue-prompt");
    assert_eq!((shot.width, shot.height), (720, 400));
    assert!(shot.colors >= 2, "a blank screen");
    // A reset boots the firmware again (it shadows itself anew) back to
    // GRUB's menu, which the command line had replaced.
    h.send(Command::Reset);
    wait_text(
        &h,
        "Press enter to boot the selected OS",
        Duration::from_secs(60),
    );
    h.send(Command::PowerOff);
    h.join();
}

/// Reads the screen's text through Unifont (the installer's bterm font).
fn read_screen(
    h: &engine::EngineHandle,
    font: &vireo_tests::screen::Font,
) -> (u32, u32, Vec<String>) {
    let surface = h.surface();
    let s = surface.read().expect("surface");
    let lines = font.read(s.pixels(), s.width() as usize, s.height() as usize);
    (s.width(), s.height(), lines)
}

#[test]
fn debian_installer_cd_boots_to_its_first_dialog() {
    let (_, di, unifont) = boot_media();
    let font = vireo_tests::screen::Font::from_unifont_hex(&unifont).expect("unifont");
    let config = MachineConfig {
        memory: 1 << 30,
        accel: AccelKind::Soft,
        cdrom: Some(di),
        boot_order: "d".into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let h = engine::start(&config).unwrap_or_else(|e| panic!("start: {e}"));
    // isolinux's VESA menu: a graphics mode showing the menu's title.
    let deadline = Instant::now() + Duration::from_secs(120);
    // (vesamenu draws with its own font, over Debian's splash picture.)
    loop {
        let (w, ht, _) = read_screen(&h, &font);
        if h.text_screen().is_none() && (w, ht) == (640, 480) {
            eprintln!("boot menu ({w}x{ht}) after {:?}", t0.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no graphical boot menu ({w}x{ht})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Let it finish drawing.
    std::thread::sleep(Duration::from_secs(2));
    let menu = screenshot(&h, "d-i-boot-menu");
    assert_eq!((menu.width, menu.height), (640, 480));
    assert!(menu.colors > 16, "the menu's background picture is missing");
    h.type_text("\n").expect("enter");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (w, ht, lines) = read_screen(&h, &font);
        if lines.iter().any(|l| l.contains("Select a language")) {
            eprintln!("installer dialog ({w}x{ht}) after {:?}", t0.elapsed());
            eprintln!("{}", lines.join("\n"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no installer dialog:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let shot = screenshot(&h, "d-i-select-a-language");
    assert!(
        shot.width >= 640 && shot.height >= 480,
        "{}x{}",
        shot.width,
        shot.height
    );
    h.send(Command::PowerOff);
    h.join();
}
