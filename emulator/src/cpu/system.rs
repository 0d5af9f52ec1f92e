//! System instructions and interrupt/exception delivery (SDM vol. 3 ch. 5–7).
//! (Stub: real-mode delivery only; replaced by the full implementation.)

use super::exec::{Handler, Insn};
use super::{Cpu, Exc, R};
use iced_x86::Instruction;

pub(super) fn lookup(_ins: &Instruction) -> Option<Handler> {
    None
}

#[allow(dead_code)]
fn _unused(_: &mut Cpu, _: &Insn) -> R {
    Ok(())
}

impl Cpu {
    /// Delivers an exception raised by the instruction at `self.rip`.
    pub(crate) fn raise(&mut self, e: Exc) {
        self.last_exception = Some(e);
        if !self.protected() {
            let _ = self.deliver_real(e.vector, self.rip);
        } else {
            self.shutdown = true;
        }
    }

    /// Delivers external interrupt `v`.
    pub(crate) fn external_interrupt(&mut self, v: u8) {
        if !self.protected() {
            let _ = self.deliver_real(v, self.rip);
        }
    }

    fn deliver_real(&mut self, v: u8, ret: u64) -> R {
        let f = self.flags.get();
        self.push(2, f)?;
        self.push(2, self.seg[super::CS].selector as u64)?;
        self.push(2, ret)?;
        let off = self.read_sys(v as u64 * 4, 2)?;
        let sel = self.read_sys(v as u64 * 4 + 2, 2)?;
        self.seg[super::CS] = super::Segment::real(sel as u16);
        self.rip = off;
        self.flags
            .set_masked(0, super::flags::IF | super::flags::TF | super::flags::AC);
        Ok(())
    }

    /// Checks the I/O permission for `size` bytes at `port`.
    pub(crate) fn check_io(&mut self, _port: u16, _size: u8) -> R {
        Ok(())
    }
}
