//! `vireo run` as a user runs it: exit statuses, one-line errors, serial I/O.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vireo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vireo"))
}

fn tmp() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// Assembles a small multiboot kernel from GNU assembler source with gcc.
fn kernel(name: &str, body: &str) -> PathBuf {
    let dir = tmp();
    let src = dir.join(format!("{name}.S"));
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    let text = format!(
        ".text\n.code32\n.globl _start\n.align 4\n.long 0x1BADB002, 3, -(0x1BADB002+3)\n_start:\n{body}\n"
    );
    std::fs::write(&src, text).expect("write source");
    let ok = Command::new("gcc")
        .args(["-m32", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("gcc")
        .success()
        && Command::new("ld")
            .args(["-m", "elf_i386", "-Ttext=0x100000", "-e", "_start"])
            .arg(&obj)
            .arg("-o")
            .arg(&elf)
            .status()
            .expect("ld")
            .success();
    assert!(ok, "assembling {name}");
    elf
}

/// Prints the characters of a NUL-terminated string at `msg` on COM1.
const PUTS: &str = "
  mov $0x200000, %esp
  mov $msg, %esi
1: movb (%esi), %al
  inc %esi
  test %al, %al
  jz 2f
  mov $0x3f8, %dx
  out %al, %dx
  jmp 1b
2:
";

fn run_with_timeout(mut cmd: Command, input: &[u8], secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vireo");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "vireo did not finish in {secs}s; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn debug_exit_sets_the_exit_status_and_serial_reaches_stdout() {
    let k = kernel(
        "hello",
        &format!("{PUTS}\n  mov $0x10, %al\n  out %al, $0xf4\n  hlt\nmsg: .asciz \"Hello from multiboot\\n\""),
    );
    let mut cmd = vireo();
    cmd.args(["run", "--accel", "soft", "--kernel"]).arg(&k);
    let out = run_with_timeout(cmd, b"", 30);
    assert_eq!(out.status.code(), Some(33));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from multiboot\n"
    );
}

/// Runs `k` under `--no-reboot`: its reset must end vireo with status 0.
fn assert_guest_reset_exits_zero(k: &Path) {
    let mut cmd = vireo();
    cmd.args(["run", "--accel", "soft", "--no-reboot", "--kernel"])
        .arg(k);
    let out = run_with_timeout(cmd, b"", 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn guest_reset_with_no_reboot_exits_zero() {
    // Pulse the i8042 reset line (command 0xfe).
    let k = kernel(
        "reset",
        "  mov $0xfe, %al\n  out %al, $0x64\n1: hlt\n  jmp 1b",
    );
    assert_guest_reset_exits_zero(&k);
}

#[test]
fn serial_input_reaches_the_guest() {
    // Echo one received byte back, then exit with it as the status.
    let body = "
  mov $0x3fd, %dx
1: inb %dx, %al
  test $1, %al
  jz 1b
  mov $0x3f8, %dx
  inb %dx, %al
  outb %al, %dx
  outb %al, $0xf4
  hlt";
    let k = kernel("echo", body);
    let mut cmd = vireo();
    cmd.args(["run", "--accel", "soft", "--kernel"]).arg(&k);
    let out = run_with_timeout(cmd, b"A", 30);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "A");
    assert_eq!(out.status.code(), Some((b'A' as i32) << 1 | 1));
}

#[test]
fn missing_kernel_file_is_a_one_line_error() {
    let mut cmd = vireo();
    cmd.args(["run", "--kernel", "/nonexistent/kernel.elf"]);
    assert_one_line_error(&run_with_timeout(cmd, b"", 10), "/nonexistent/kernel.elf");
}

#[test]
fn a_file_that_is_no_kernel_is_a_one_line_error() {
    let f = tmp().join("notakernel.txt");
    std::fs::write(&f, "this is not a kernel\n").expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&f);
    let out = run_with_timeout(cmd, b"", 10);
    assert_one_line_error(&out, "neither a Linux bzImage");
    assert_one_line_error(&out, "notakernel.txt");
}

/// A real-looking bzImage header (boot protocol 2.15, 64-bit entry) over a
/// tiny protected-mode part, for loader error paths.
fn fake_bzimage() -> PathBuf {
    let f = tmp().join("fake-bzImage");
    let mut k = vec![0u8; 4 * 512 + 512 + 4096];
    k[0x1f1] = 4; // setup_sects
    k[0x1f4..0x1f8].copy_from_slice(&(4096u32 / 16).to_le_bytes()); // syssize
    k[0x1fe] = 0x55;
    k[0x1ff] = 0xaa;
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x211] = 1; // loadflags: LOADED_HIGH
    k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    k[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    k[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // xloadflags: 64-bit entry
    k[0x238..0x23c].copy_from_slice(&0x7ffu32.to_le_bytes()); // cmdline_size
    k[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
    std::fs::write(&f, k).expect("write");
    f
}

#[test]
fn an_initrd_larger_than_ram_is_a_one_line_error() {
    let k = fake_bzimage();
    let initrd = tmp().join("big-initrd");
    let f = std::fs::File::create(&initrd).expect("create");
    f.set_len(80 << 20).expect("sparse file");
    let mut cmd = vireo();
    cmd.args(["run", "-m", "64M", "--kernel"])
        .arg(&k)
        .arg("--initrd")
        .arg(&initrd);
    assert_one_line_error(&run_with_timeout(cmd, b"", 20), "does not fit in guest RAM");
}

#[test]
fn bad_vcpu_counts_are_one_line_errors() {
    let k = fake_bzimage();
    for (n, needle) in [
        ("0", "--smp 0: must be between 1 and"),
        ("1000", "--smp 1000: must be between 1 and"),
    ] {
        let mut cmd = vireo();
        cmd.args(["run", "--smp", n, "--kernel"]).arg(&k);
        assert_one_line_error(&run_with_timeout(cmd, b"", 10), needle);
    }
    let mut cmd = vireo();
    cmd.args(["run", "--smp", "two", "--kernel"]).arg(&k);
    let out = run_with_timeout(cmd, b"", 10);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn presets_give_defaults_and_bad_presets_are_one_line_errors() {
    let mut cmd = vireo();
    cmd.args(["run", "--preset", "no-such-preset", "--kernel", "/x"]);
    assert_one_line_error(&run_with_timeout(cmd, b"", 10), "linux-direct");
    let bad = tmp().join("bad-preset.toml");
    std::fs::write(&bad, "memory = \"512M\"\nsmpp = 2\n").expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--preset"])
        .arg(&bad)
        .args(["--kernel", "/x"]);
    assert_one_line_error(&run_with_timeout(cmd, b"", 10), "smpp");
    // The preset's memory (512M) applies unless --memory overrides it: an
    // 80 MiB initrd fits in 512M but not in 64M.
    let k = fake_bzimage();
    let initrd = tmp().join("big-initrd-2");
    std::fs::File::create(&initrd)
        .and_then(|f| f.set_len(80 << 20))
        .expect("sparse file");
    let mut cmd = vireo();
    cmd.args(["run", "--preset", "linux-direct", "-m", "64M", "--kernel"])
        .arg(&k)
        .arg("--initrd")
        .arg(&initrd);
    assert_one_line_error(&run_with_timeout(cmd, b"", 20), "does not fit in guest RAM");
}

#[test]
fn zero_memory_is_a_one_line_error() {
    let k = kernel("hlt0", "  hlt");
    let mut cmd = vireo();
    cmd.args(["run", "--memory", "0", "--kernel"]).arg(&k);
    assert_one_line_error(&run_with_timeout(cmd, b"", 10), "--memory 0");
}

#[test]
fn more_memory_than_the_host_has_is_a_one_line_error() {
    let k = kernel("hlt1", "  hlt");
    let mut cmd = vireo();
    cmd.args(["run", "--memory", "64T", "--kernel"]).arg(&k);
    assert_one_line_error(&run_with_timeout(cmd, b"", 10), "more than the host");
}

#[test]
fn unknown_accelerator_and_options_are_rejected() {
    let mut cmd = vireo();
    cmd.args(["run", "--accel", "warp"]);
    let out = run_with_timeout(cmd, b"", 10);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn kvm_that_cannot_run_the_guest_says_why() {
    let k = kernel("hlt2", "  hlt");
    let mut cmd = vireo();
    cmd.args(["run", "--accel", "kvm", "--kernel"]).arg(&k);
    let out = run_with_timeout(cmd, b"", 10);
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        // Hosts where KVM can run unmodified guests run it.
        Some(c) if c != 2 => eprintln!("KVM ran the guest here (status {c})"),
        _ => assert_one_line_error(&out, "--accel kvm: "),
    }
    eprintln!("{err}");
}

#[test]
fn help_reads_well() {
    let out = run_with_timeout(
        {
            let mut c = vireo();
            c.args(["run", "--help"]);
            c
        },
        b"",
        10,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--kernel",
        "--append",
        "--initrd",
        "--memory",
        "--serial",
        "--accel",
        "--no-reboot",
        "--log",
    ] {
        assert!(text.contains(opt), "{opt} missing from --help");
    }
}

#[test]
fn auto_accel_says_in_one_line_why_it_uses_the_software_cpu() {
    let k = kernel(
        "hello-auto",
        &format!("{PUTS}\n  mov $0x10, %al\n  out %al, $0xf4\n  hlt\nmsg: .asciz \"hi\\n\""),
    );
    let mut cmd = vireo();
    cmd.args(["run", "--accel", "auto", "--kernel"]).arg(&k);
    let out = run_with_timeout(cmd, b"", 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(33), "{err}");
    let notes: Vec<_> = err
        .lines()
        .filter(|l| l.contains("using the software CPU"))
        .collect();
    // Where KVM can run the guest there is nothing to explain.
    assert!(notes.len() <= 1, "{err}");
    if let Some(n) = notes.first() {
        assert!(n.starts_with("vireo: using the software CPU: "), "{n}");
        eprintln!("{n}");
    }
}

#[test]
fn triple_fault_with_no_reboot_exits_zero() {
    // An empty IDT: the breakpoint escalates to a triple fault.
    let k = kernel(
        "triple",
        "  lidt idt\n  int3\n1: hlt\n  jmp 1b\n.align 4\nidt: .word 0\n .long 0",
    );
    assert_guest_reset_exits_zero(&k);
}

/// Opens a pseudo-terminal: (master, slave).
fn openpty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors we then own; null name/termios/
    // winsize pointers are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) }
}

#[test]
fn ctrl_a_x_quits_from_a_terminal() {
    use std::io::Read;
    let k = kernel(
        "spin",
        &format!("{PUTS}\n3: jmp 3b\nmsg: .asciz \"ready\\n\""),
    );
    let (mut master, slave) = openpty();
    let mut child = vireo()
        .args(["run", "--accel", "soft", "--kernel"])
        .arg(&k)
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(slave);
    // Wait for the guest's output through the terminal.
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no output: {seen:?}"
        );
        let n = master.read(&mut buf).expect("read pty");
        seen.extend_from_slice(&buf[..n]);
    }
    master.write_all(b"\x01x").expect("write pty");
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert_eq!(st.code(), Some(0));
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("Ctrl-A x did not end vireo");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
