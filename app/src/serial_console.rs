//! COM1 on the terminal: raw mode on a TTY, Ctrl-A x to quit (as QEMU's
//! `-serial mon:stdio`), Ctrl-A Ctrl-A to send a Ctrl-A.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use vireo_emulator::engine::{Command, EngineHandle};

/// The terminal side of COM1.
pub struct SerialConsole {
    saved: Option<libc::termios>,
}

const CTRL_A: u8 = 1;

impl SerialConsole {
    /// Puts the terminal in raw mode (when it is one) and starts forwarding
    /// stdin to the guest.
    pub fn start(handle: EngineHandle) -> Self {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(fd) } == 1;
        let saved = if tty { raw_mode(fd) } else { None };
        std::thread::Builder::new()
            .name("serial-stdin".into())
            .spawn(move || forward_stdin(handle, tty))
            .ok();
        SerialConsole { saved }
    }

    /// Shows guest output.
    pub fn write(&self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}

impl Drop for SerialConsole {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes saved from the same descriptor.
            unsafe {
                libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &t);
            }
        }
    }
}

fn raw_mode(fd: i32) -> Option<libc::termios> {
    // SAFETY: tcgetattr/tcsetattr on a TTY descriptor with a zeroed struct
    // that tcgetattr fills before it is used.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return None;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        t.c_oflag |= libc::OPOST | libc::ONLCR;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        Some(saved)
    }
}

fn forward_stdin(handle: EngineHandle, tty: bool) {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    let mut escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if tty && escape {
                escape = false;
                match b {
                    b'x' | b'X' => {
                        eprint!("\r\nvireo: terminated\r\n");
                        handle.send(Command::PowerOff);
                        return;
                    }
                    CTRL_A => out.push(CTRL_A),
                    b'h' | b'H' => eprint!("\r\nC-a x  exit\r\nC-a C-a  send C-a\r\n"),
                    _ => {}
                }
            } else if tty && b == CTRL_A {
                escape = true;
            } else {
                out.push(b);
            }
        }
        if !out.is_empty() && !handle.send(Command::SerialInput(out)) {
            return;
        }
    }
}
