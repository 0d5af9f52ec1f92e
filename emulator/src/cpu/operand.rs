//! Operand access: registers by `iced_x86::Register`, effective addresses,
//! and reads/writes of an instruction's operands.

use super::exec::Insn;
use super::{Cpu, Exc, R};
use iced_x86::{OpKind, Register};

/// Where an operand lives once its address is computed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// A register.
    Reg(Register),
    /// Memory at segment index and offset.
    Mem(usize, u64),
}

/// True for the operand kinds that are immediates.
#[inline(always)]
pub(crate) fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
            | OpKind::Immediate8_2nd
    )
}

/// Segment index of an iced segment register (ES=0 … GS=5).
#[inline(always)]
pub(crate) fn seg_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ES as usize).min(5)
}

/// How an `iced_x86::Register` maps onto the CPU state, by its number.
#[derive(Clone, Copy)]
struct RegEntry {
    kind: u8,
    idx: u8,
    shift: u8,
    /// Writes of this register clear the rest of the GPR (32 and 64 bits).
    zero_extends: bool,
    mask: u64,
}

const KIND_NONE: u8 = 0;
const KIND_GPR: u8 = 1;
const KIND_IP: u8 = 2;
const KIND_SEG: u8 = 3;

const fn gpr(idx: usize, shift: u8, mask: u64, zero_extends: bool) -> RegEntry {
    RegEntry {
        kind: KIND_GPR,
        idx: idx as u8,
        shift,
        zero_extends,
        mask,
    }
}

const fn reg_entry(n: usize) -> RegEntry {
    let none = RegEntry {
        kind: KIND_NONE,
        idx: 0,
        shift: 0,
        zero_extends: false,
        mask: 0,
    };
    // The numbering of `iced_x86::Register`: AL..BL, AH..BH, SPL..R15L,
    // AX..R15W, EAX..R15D, RAX..R15, EIP, RIP, ES..GS.
    match n {
        1..=4 => gpr(n - 1, 0, 0xff, false),
        5..=8 => gpr(n - 5, 8, 0xff, false),
        9..=20 => gpr(n - 5, 0, 0xff, false),
        21..=36 => gpr(n - 21, 0, 0xffff, false),
        37..=52 => gpr(n - 37, 0, 0xffff_ffff, true),
        53..=68 => gpr(n - 53, 0, u64::MAX, true),
        69 | 70 => RegEntry {
            kind: KIND_IP,
            ..none
        },
        71..=76 => RegEntry {
            kind: KIND_SEG,
            idx: (n - 71) as u8,
            ..none
        },
        _ => none,
    }
}

const REGS: [RegEntry; 256] = {
    let mut t = [reg_entry(0); 256];
    let mut n = 0;
    while n < 256 {
        t[n] = reg_entry(n);
        n += 1;
    }
    t
};

impl Cpu {
    /// Reads a general-purpose or segment register (zero-extended).
    #[inline(always)]
    pub(crate) fn get_reg(&self, r: Register) -> u64 {
        let e = REGS[r as usize & 0xff];
        match e.kind {
            KIND_GPR => (self.gpr[e.idx as usize & 15] >> e.shift) & e.mask,
            KIND_IP => self.rip,
            KIND_SEG => self.seg[e.idx as usize % 6].selector as u64,
            _ => 0,
        }
    }

    /// Writes a general-purpose register with x86 semantics (32-bit writes
    /// zero the upper half; 8/16-bit writes merge).
    #[inline(always)]
    pub(crate) fn set_reg(&mut self, r: Register, v: u64) {
        let e = REGS[r as usize & 0xff];
        if e.kind != KIND_GPR {
            return;
        }
        let g = &mut self.gpr[e.idx as usize & 15];
        *g = if e.zero_extends {
            v & e.mask
        } else {
            (*g & !(e.mask << e.shift)) | ((v & e.mask) << e.shift)
        };
    }

    /// Writes the low `size` bytes of GPR `idx` with x86 merge semantics.
    #[inline(always)]
    pub(crate) fn set_gpr_sized(&mut self, idx: usize, size: u8, v: u64) {
        match size {
            1 => self.gpr[idx] = (self.gpr[idx] & !0xff) | (v & 0xff),
            2 => self.gpr[idx] = (self.gpr[idx] & !0xffff) | (v & 0xffff),
            4 => self.gpr[idx] = v & 0xffff_ffff,
            _ => self.gpr[idx] = v,
        }
    }

    /// Effective address (offset within the segment) of the memory operand.
    #[inline(always)]
    pub(crate) fn ea(&self, d: &Insn) -> u64 {
        // `None` registers read as 0 (see `REGS`).
        d.ins
            .memory_displacement64()
            .wrapping_add(self.get_reg(d.ea_base))
            .wrapping_add(self.get_reg(d.ea_index) << d.ea_shift)
            & d.amask
    }

    /// Segment index used by the memory operand.
    #[inline(always)]
    pub(crate) fn mem_seg(&self, d: &Insn) -> usize {
        seg_index(d.ins.memory_segment())
    }

    /// Location of operand `i` (register or memory).
    #[inline(always)]
    pub(crate) fn loc(&self, d: &Insn, i: u32) -> Loc {
        match d.ins.op_kind(i) {
            OpKind::Register => Loc::Reg(d.ins.op_register(i)),
            _ => Loc::Mem(self.mem_seg(d), self.ea(d)),
        }
    }

    /// Reads `size` bytes from a location.
    #[inline(always)]
    pub(crate) fn read_loc(&mut self, l: Loc, size: u8) -> R<u64> {
        match l {
            Loc::Reg(r) => Ok(self.get_reg(r)),
            Loc::Mem(s, off) => self.read_mem(s, off, size),
        }
    }

    /// Writes `size` bytes to a location.
    #[inline(always)]
    pub(crate) fn write_loc(&mut self, l: Loc, size: u8, v: u64) -> R {
        match l {
            Loc::Reg(r) => {
                self.set_reg(r, v);
                Ok(())
            }
            Loc::Mem(s, off) => self.write_mem(s, off, size, v),
        }
    }

    /// Value of operand `i`: register, memory (of `size` bytes) or immediate
    /// (sign-extended as encoded, masked to `size`).
    #[inline(always)]
    pub(crate) fn rd(&mut self, d: &Insn, i: u32, size: u8) -> R<u64> {
        match d.ins.op_kind(i) {
            OpKind::Register => Ok(self.get_reg(d.ins.op_register(i))),
            OpKind::Memory => {
                let (s, off) = (self.mem_seg(d), self.ea(d));
                self.read_mem(s, off, size)
            }
            k if is_immediate(k) => {
                let v = if i == d.imm_op as u32 {
                    d.imm
                } else {
                    d.ins.immediate(i)
                };
                Ok(v & super::flags::size_mask(size))
            }
            _ => Err(Exc::UD),
        }
    }

    /// Writes operand `i`.
    #[inline(always)]
    pub(crate) fn wr(&mut self, d: &Insn, i: u32, size: u8, v: u64) -> R {
        let l = self.loc(d, i);
        self.write_loc(l, size, v)
    }

    /// Pushes `size` bytes on the stack (SDM vol. 1 §6.2).
    #[inline]
    pub(crate) fn push(&mut self, size: u8, v: u64) -> R {
        let ss = self.stack_size();
        let sp = self.gpr[super::reg::RSP];
        let new = sp.wrapping_sub(size as u64);
        let mask = super::flags::size_mask(ss);
        self.write_mem(super::SS, new & mask, size, v)?;
        self.set_gpr_sized(super::reg::RSP, ss, new);
        Ok(())
    }

    /// Pops `size` bytes from the stack.
    #[inline]
    pub(crate) fn pop(&mut self, size: u8) -> R<u64> {
        let ss = self.stack_size();
        let sp = self.gpr[super::reg::RSP];
        let mask = super::flags::size_mask(ss);
        let v = self.read_mem(super::SS, sp & mask, size)?;
        self.set_gpr_sized(super::reg::RSP, ss, sp.wrapping_add(size as u64));
        Ok(v)
    }

    /// Reads from the stack at `offset` bytes above the stack pointer,
    /// without popping.
    #[allow(dead_code)] // far returns, in the system module
    pub(crate) fn peek(&mut self, offset: u64, size: u8) -> R<u64> {
        let mask = super::flags::size_mask(self.stack_size());
        let sp = self.gpr[super::reg::RSP].wrapping_add(offset) & mask;
        self.read_mem(super::SS, sp, size)
    }
}
