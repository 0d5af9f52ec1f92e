//! MMX, SSE, SSE2, SSE3, SSSE3, SSE4.1 and SSE4.2 (SDM vol. 1 ch. 9–12,
//! vol. 2), legacy (non-VEX) encodings.
//!
//! Integer operations are computed in portable Rust. Floating-point
//! operations run on the host's own SSE unit with the guest's MXCSR loaded
//! ([`host`]), so results, NaN propagation, DAZ/FTZ, rounding and the
//! exception flags are bit-exact with the hardware.

use super::exec::{Handler, Insn};
use super::mmu::Access;
use super::{cr0, cr4, vec, Cpu, Exc, R};
use iced_x86::{EncodingKind, Instruction, Mnemonic as M, OpKind, Register};

// Floating point runs on the host's SSE unit: x86-64 hosts only (elsewhere
// the FP instructions raise #UD).
#[cfg(target_arch = "x86_64")]
mod fp;
#[cfg(target_arch = "x86_64")]
mod host;
mod int;
mod mov;
mod state;
mod strings;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

/// Bits of MXCSR that exist (MXCSR_MASK, SDM vol. 1 §11.6.6): DAZ included.
pub(super) const MXCSR_MASK: u32 = 0xffff;

#[cfg(target_arch = "x86_64")]
fn fp_lookup(ins: &Instruction) -> Option<Handler> {
    fp::lookup(ins)
}

#[cfg(not(target_arch = "x86_64"))]
fn fp_lookup(_ins: &Instruction) -> Option<Handler> {
    None
}

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    if ins.encoding() != EncodingKind::Legacy {
        return None;
    }
    int::lookup(ins)
        .or_else(|| mov::lookup(ins))
        .or_else(|| fp_lookup(ins))
        .or_else(|| state::lookup(ins))
        .or_else(|| strings::lookup(ins))
}

/// x87 status word: exception summary (a pending unmasked x87 exception).
const FSW_ES: u16 = 1 << 7;

/// Checks for an MMX instruction, including the MMX-register forms of the
/// SSE/SSE2/SSSE3 integer instructions (SDM vol. 3 §12.2 and the
/// "Exception Conditions for Legacy SIMD/MMX Instructions" tables): #UD if
/// CR0.EM or LOCK, #NM if CR0.TS, #MF if an x87 exception is pending.
#[inline]
pub(super) fn check_mmx(c: &mut Cpu, d: &Insn) -> R {
    if c.cr0 & cr0::EM != 0 || d.ins.has_lock_prefix() {
        return Err(Exc::UD);
    }
    if c.cr0 & cr0::TS != 0 {
        return Err(Exc::NM);
    }
    check_x87_pending(c)
}

/// #MF when the x87 has a pending unmasked exception and CR0.NE selects
/// native error reporting.
#[inline]
fn check_x87_pending(c: &Cpu) -> R {
    if c.x87.sw & FSW_ES != 0 && c.cr0 & cr0::NE != 0 {
        return Err(Exc {
            vector: vec::MF,
            code: None,
        });
    }
    Ok(())
}

/// Checks for an SSE instruction (SDM vol. 3 §13.1.4, Table 13-1): #UD if
/// CR0.EM, !CR4.OSFXSR or LOCK, #NM if CR0.TS.
#[inline]
pub(super) fn check_sse(c: &mut Cpu, d: &Insn) -> R {
    if c.cr0 & cr0::EM != 0 || c.cr4 & cr4::OSFXSR == 0 || d.ins.has_lock_prefix() {
        return Err(Exc::UD);
    }
    if c.cr0 & cr0::TS != 0 {
        return Err(Exc::NM);
    }
    Ok(())
}

/// Checks for an SSE instruction that also touches MMX registers (CVTPI2PS,
/// MOVQ2DQ...): the SSE checks, then #MF for a pending x87 exception when an
/// MMX register is involved.
#[inline]
pub(super) fn check_sse_mm(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    if uses_mm(&d.ins) {
        check_x87_pending(c)?;
    }
    Ok(())
}

/// Checks by the destination register class: MMX rules for an MMX
/// register, SSE rules otherwise.
#[inline]
pub(super) fn check_by(c: &mut Cpu, d: &Insn, r: Register) -> R {
    if r.is_mm() {
        check_mmx(c, d)
    } else {
        check_sse(c, d)
    }
}

/// True when any operand is an MMX register.
pub(super) fn uses_mm(ins: &Instruction) -> bool {
    (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_mm())
}

/// The x87 → MMX transition done by every MMX instruction (SDM vol. 1
/// §9.5.1): TOP = 0, all registers valid.
#[inline]
pub(super) fn mmx_transition(c: &mut Cpu) {
    c.x87.top = 0;
    c.x87.sw &= !0x3800;
    c.x87.tag = 0;
}

/// Index of an XMM register.
#[inline(always)]
fn xmm_idx(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

/// Index of an MMX register.
#[inline(always)]
fn mm_idx(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::MM0 as usize) & 7
}

/// Value of a vector or general register (zero-extended to 128 bits).
#[inline(always)]
pub(super) fn vreg(c: &Cpu, r: Register) -> u128 {
    if r.is_xmm() {
        c.xmm[xmm_idx(r)]
    } else if r.is_mm() {
        c.x87.regs[mm_idx(r)].0 as u128
    } else {
        c.get_reg(r) as u128
    }
}

/// Writes a vector or general register. An MMX register write sets the
/// exponent field of the aliased x87 register to all ones and performs the
/// MMX transition (SDM vol. 1 §9.5).
#[inline(always)]
pub(super) fn set_vreg(c: &mut Cpu, r: Register, v: u128) {
    if r.is_xmm() {
        c.xmm[xmm_idx(r)] = v;
    } else if r.is_mm() {
        c.x87.regs[mm_idx(r)] = (v as u64, 0xffff);
        mmx_transition(c);
    } else {
        c.set_reg(r, v as u64);
    }
}

/// True when a 16-byte memory operand of this instruction must be aligned
/// (SDM vol. 1 §11.4.1.1 / vol. 2 exception tables): everything except the
/// explicitly unaligned forms.
fn needs_align(ins: &Instruction) -> bool {
    !matches!(
        ins.mnemonic(),
        M::Movups
            | M::Movupd
            | M::Movdqu
            | M::Lddqu
            | M::Pcmpestri
            | M::Pcmpestri64
            | M::Pcmpestrm
            | M::Pcmpestrm64
            | M::Pcmpistri
            | M::Pcmpistrm
    )
}

/// Segment and offset of the memory operand, after the 16-byte alignment
/// check for `size` = 16 (#GP(0); SDM vol. 1 §11.4.1.1).
#[inline]
pub(super) fn mem_addr(c: &Cpu, d: &Insn, size: usize) -> R<(usize, u64)> {
    let (s, off) = (c.mem_seg(d), c.ea(d));
    if size == 16 && c.lin(s, off) & 15 != 0 && needs_align(&d.ins) {
        return Err(Exc::gp(0));
    }
    Ok((s, off))
}

/// Reads `size` (1, 2, 4, 8 or 16) bytes at `seg:off`.
pub(super) fn read_at(c: &mut Cpu, s: usize, off: u64, size: usize) -> R<u128> {
    if size <= 8 {
        return Ok(c.read_mem(s, off, size as u8)? as u128);
    }
    let lo = c.read_mem(s, off, 8)?;
    let hi = c.read_mem(s, off.wrapping_add(8), 8)?;
    Ok(lo as u128 | (hi as u128) << 64)
}

/// Writes `size` (1, 2, 4, 8 or 16) bytes at `seg:off`; a 16-byte write is
/// checked to be entirely writable before anything is stored.
pub(super) fn write_at(c: &mut Cpu, s: usize, off: u64, size: usize, v: u128) -> R {
    if size <= 8 {
        return c.write_mem(s, off, size as u8, v as u64);
    }
    probe_write(c, s, off, size as u64)?;
    c.write_mem(s, off, 8, v as u64)?;
    c.write_mem(s, off.wrapping_add(8), 8, (v >> 64) as u64)
}

/// Faults now if any byte of `seg:off .. +len` (`len` ≤ 4096) cannot be
/// written: probes the first byte, and the first byte of the next page when
/// the range crosses one (the address a split access reports in CR2).
pub(super) fn probe_write(c: &mut Cpu, s: usize, off: u64, len: u64) -> R {
    let user = c.user();
    let first = c.lin(s, off);
    c.translate(first, Access::Write, user)?;
    let last = c.lin(s, off.wrapping_add(len.saturating_sub(1)));
    if last & !0xfff != first & !0xfff {
        c.translate(last & !0xfff, Access::Write, user)?;
    }
    Ok(())
}

/// Value of operand `i`: a register (vector or general), memory of the
/// instruction's memory size (alignment-checked when 16 bytes) or an
/// immediate.
#[inline]
pub(super) fn src(c: &mut Cpu, d: &Insn, i: u32) -> R<u128> {
    match d.ins.op_kind(i) {
        OpKind::Register => Ok(vreg(c, d.ins.op_register(i))),
        OpKind::Memory => {
            let size = d.ins.memory_size().size();
            let (s, off) = mem_addr(c, d, size)?;
            read_at(c, s, off, size)
        }
        _ => Ok(d.ins.immediate(i) as u128),
    }
}

/// Writes operand `i` (register, or memory of the instruction's memory
/// size).
#[inline]
pub(super) fn dst_write(c: &mut Cpu, d: &Insn, i: u32, v: u128) -> R {
    match d.ins.op_kind(i) {
        OpKind::Register => {
            set_vreg(c, d.ins.op_register(i), v);
            Ok(())
        }
        _ => {
            let size = d.ins.memory_size().size();
            let (s, off) = mem_addr(c, d, size)?;
            write_at(c, s, off, size, v)
        }
    }
}

/// The immediate byte (the last operand).
#[inline(always)]
pub(super) fn imm8(d: &Insn) -> u8 {
    d.ins.immediate8()
}

/// A SIMD floating-point exception (SDM vol. 3 §6.15 int 19): #XM when
/// CR4.OSXMMEXCPT, #UD otherwise.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn simd_exception(c: &Cpu) -> Exc {
    if c.cr4 & cr4::OSXMMEXCPT != 0 {
        Exc {
            vector: vec::XM,
            code: None,
        }
    } else {
        Exc::UD
    }
}
