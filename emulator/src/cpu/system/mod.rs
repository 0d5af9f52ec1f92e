//! System instructions and interrupt/exception delivery (SDM vol. 3 ch. 2–7).
//!
//! - [`desc`]: descriptor tables, segment loads with protection checks,
//!   LGDT/LIDT/LLDT/LTR and the descriptor-inspecting instructions.
//! - [`far`]: far JMP/CALL/RETF, call gates.
//! - [`interrupts`]: exception and interrupt delivery (real, protected,
//!   virtual-8086, IA-32e), INT n/INT3/INTO/INT1, IRET, I/O permission.
//! - [`task`]: the hardware task switch (32-bit TSS).
//! - [`control`]: control and debug registers and the other privileged
//!   instructions.
//! - [`msr`]: RDMSR/WRMSR, SYSCALL/SYSRET, SYSENTER/SYSEXIT, SWAPGS.
//! - [`cpuid`]: the CPUID table.

mod control;
pub(crate) mod cpuid;
mod desc;
mod far;
mod interrupts;
mod msr;
mod task;
#[cfg(test)]
mod tests;

use super::exec::{Handler, Insn};
use super::operand::seg_index;
use super::{Cpu, Exc, CS, R};
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// Handler for the system instructions this module implements.
pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Mov => return mov_lookup(ins),
        M::Pop
            if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() =>
        {
            desc::pop_sreg
        }
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => desc::load_far_pointer,
        M::Jmp if is_far(ins) => far::jmp_far,
        M::Call if is_far(ins) => far::call_far,
        M::Retf => far::retf,
        M::Iret | M::Iretd | M::Iretq => interrupts::iret,
        M::Int => interrupts::int_n,
        M::Int3 => interrupts::int3,
        M::Into => interrupts::into,
        M::Int1 => interrupts::int1,
        M::Lgdt | M::Lidt => desc::lgdt_lidt,
        M::Sgdt | M::Sidt => desc::sgdt_sidt,
        M::Lldt => desc::lldt,
        M::Sldt => desc::sldt,
        M::Ltr => desc::ltr,
        M::Str => desc::str_,
        M::Lar => desc::lar,
        M::Lsl => desc::lsl,
        M::Verr | M::Verw => desc::verr_verw,
        M::Arpl => desc::arpl,
        M::Clts => control::clts,
        M::Lmsw => control::lmsw,
        M::Smsw => control::smsw,
        M::Invlpg => control::invlpg,
        M::Wbinvd | M::Invd | M::Wbnoinvd => control::wbinvd,
        M::Rdtsc => control::rdtsc,
        M::Rdtscp => control::rdtscp,
        M::Rdpmc => control::rdpmc,
        M::Cpuid => cpuid::cpuid,
        M::Rdmsr => msr::rdmsr,
        M::Wrmsr => msr::wrmsr,
        M::Swapgs => msr::swapgs,
        M::Syscall => msr::syscall,
        M::Sysret | M::Sysretq => msr::sysret,
        M::Sysenter => msr::sysenter,
        M::Sysexit | M::Sysexitq => msr::sysexit,
        // Not advertised by CPUID (XSAVE, MONITOR) or always invalid.
        M::Ud0 | M::Ud1 | M::Ud2 | M::Xgetbv | M::Xsetbv | M::Monitor | M::Mwait => ud,
        _ => return None,
    })
}

fn mov_lookup(ins: &Instruction) -> Option<Handler> {
    let reg = |i: u32| (ins.op_kind(i) == OpKind::Register).then(|| ins.op_register(i));
    let (r0, r1) = (reg(0), reg(1));
    Some(match (r0, r1) {
        (Some(r), _) if r.is_segment_register() => desc::mov_to_sreg,
        (_, Some(r)) if r.is_segment_register() => desc::mov_from_sreg,
        (Some(r), _) if r.is_cr() => control::mov_to_cr,
        (_, Some(r)) if r.is_cr() => control::mov_from_cr,
        (Some(r), _) if r.is_dr() => control::mov_to_dr,
        (_, Some(r)) if r.is_dr() => control::mov_from_dr,
        (Some(r), _) | (_, Some(r)) if r.is_tr() => ud,
        _ => return None,
    })
}

fn is_far(ins: &Instruction) -> bool {
    matches!(ins.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
        || ins.is_jmp_far_indirect()
        || ins.is_call_far_indirect()
}

fn ud(_: &mut Cpu, _: &Insn) -> R {
    Err(Exc::UD)
}

/// Error code for a fault naming selector `sel` (SDM vol. 3 §6.13): index
/// and TI, RPL cleared.
#[inline]
pub(super) fn sel_err(sel: u16) -> u32 {
    (sel & 0xfffc) as u32
}

/// Bytes moved by a push/pop-like instruction.
fn stack_op_size(d: &Insn) -> u8 {
    d.ins.stack_pointer_increment().unsigned_abs().clamp(2, 8) as u8
}

/// Segment index of operand `i`, a segment register.
fn sreg(d: &Insn, i: u32) -> usize {
    seg_index(d.ins.op_register(i))
}

/// Writes a 16-bit value (a selector or MSW) to operand 0: a memory operand
/// takes 16 bits, a register is zero-extended to its full size.
fn store_word_operand(c: &mut Cpu, d: &Insn, v: u64) -> R {
    match d.ins.op0_kind() {
        OpKind::Register => {
            let r = d.ins.op0_register();
            c.set_reg(r, v & super::flags::size_mask(r.size() as u8));
            Ok(())
        }
        _ => {
            let (s, off) = (c.mem_seg(d), c.ea(d));
            c.write_mem(s, off, 2, v & 0xffff)
        }
    }
}

/// Index of a control/debug register operand (CR0 → 0 ...).
fn cr_dr_index(r: Register) -> usize {
    if r.is_cr() {
        r as usize - Register::CR0 as usize
    } else {
        r as usize - Register::DR0 as usize
    }
}

impl Cpu {
    /// Current IOPL.
    #[inline]
    pub(super) fn iopl(&self) -> u8 {
        ((self.flags.get() & super::flags::IOPL) >> 12) as u8
    }

    /// True when the code segment in `attr` runs in 64-bit mode.
    #[inline]
    pub(super) fn is_64bit_cs(&self, attr: u16) -> bool {
        self.long_mode() && attr & super::attr::L != 0
    }

    /// Sets CS, CPL and RIP after a control transfer and ends the block (the
    /// decode mode may have changed).
    pub(super) fn commit_cs(&mut self, cs: super::Segment, cpl: u8, rip: u64) {
        self.seg[CS] = cs;
        self.cpl = cpl;
        self.rip = rip;
        self.stop_block = true;
    }
}
