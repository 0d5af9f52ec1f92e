//! MXCSR access and the FXSAVE/FXRSTOR state image (SDM vol. 1 §10.2.3,
//! §10.5; vol. 2 FXSAVE, Tables 10-2 and 10-3).

use super::{check_sse, probe_write, read_at, MXCSR_MASK};
use crate::cpu::exec::{Handler, Insn};
use crate::cpu::{cr0, Cpu, Exc, R};
use iced_x86::{Code, Instruction, Mnemonic as M};

/// LDMXCSR m32: #GP(0) on a reserved bit.
fn ldmxcsr(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let v = c.read_mem(s, off, 4)? as u32;
    if v & !MXCSR_MASK != 0 {
        return Err(Exc::gp(0));
    }
    c.mxcsr = v;
    Ok(())
}

/// STMXCSR m32.
fn stmxcsr(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let (s, off) = (c.mem_seg(d), c.ea(d));
    c.write_mem(s, off, 4, c.mxcsr as u64)
}

/// Checks shared by FXSAVE and FXRSTOR: #UD on LOCK, #NM if CR0.TS or
/// CR0.EM, #GP(0) unless the area is 16-byte aligned. Returns the area's
/// segment and offset.
fn fx_check(c: &mut Cpu, d: &Insn) -> R<(usize, u64)> {
    if d.ins.has_lock_prefix() {
        return Err(Exc::UD);
    }
    if c.cr0 & (cr0::TS | cr0::EM) != 0 {
        return Err(Exc::NM);
    }
    let (s, off) = (c.mem_seg(d), c.ea(d));
    if c.lin(s, off) & 15 != 0 {
        return Err(Exc::gp(0));
    }
    Ok((s, off))
}

/// The abridged tag word: one bit per physical register, set unless empty.
fn abridged_tag(tag: u16) -> u8 {
    let mut t = 0;
    for i in 0..8 {
        if (tag >> (2 * i)) & 3 != 3 {
            t |= 1 << i;
        }
    }
    t
}

/// The full tag of a non-empty register from its contents (SDM vol. 1
/// §8.1.7): 0 valid, 1 zero, 2 special.
fn tag_of(mant: u64, se: u16) -> u16 {
    let exp = se & 0x7fff;
    if exp == 0x7fff {
        2
    } else if exp == 0 {
        if mant == 0 {
            1
        } else {
            2
        }
    } else if mant >> 63 == 0 {
        2
    } else {
        0
    }
}

/// Number of XMM registers in the image: 16 in 64-bit mode, 8 otherwise.
fn xmm_count(c: &Cpu) -> usize {
    if c.mode64() {
        16
    } else {
        8
    }
}

/// FXSAVE/FXSAVE64 m512: the x87, MMX, XMM and MXCSR state.
fn fxsave(c: &mut Cpu, d: &Insn) -> R {
    let (s, off) = fx_check(c, d)?;
    probe_write(c, s, off, 512)?;
    let w64 = d.ins.code() == Code::Fxsave64_m512byte;
    let x = &c.x87;
    // TOP lives in `top`; B mirrors ES.
    let mut fsw = (x.sw & !0xb800) | ((x.top as u16 & 7) << 11);
    if fsw & 0x80 != 0 {
        fsw |= 0x8000;
    }
    let mut hdr = [0u64; 4];
    hdr[0] = x.cw as u64
        | (fsw as u64) << 16
        | (abridged_tag(x.tag) as u64) << 32
        | ((x.fop & 0x7ff) as u64) << 48;
    if w64 {
        hdr[1] = x.fip;
        hdr[2] = x.fdp;
    } else {
        hdr[1] = (x.fip & 0xffff_ffff) | (x.fcs as u64) << 32;
        hdr[2] = (x.fdp & 0xffff_ffff) | (x.fds as u64) << 32;
    }
    hdr[3] = c.mxcsr as u64 | (MXCSR_MASK as u64) << 32;
    let top = x.top as usize;
    let regs = x.regs;
    for (i, h) in hdr.iter().enumerate() {
        c.write_mem(s, off.wrapping_add(8 * i as u64), 8, *h)?;
    }
    for i in 0..8 {
        let (m, se) = regs[(top + i) & 7];
        let a = off.wrapping_add(32 + 16 * i as u64);
        c.write_mem(s, a, 8, m)?;
        c.write_mem(s, a.wrapping_add(8), 8, se as u64)?;
    }
    for i in 0..xmm_count(c) {
        let v = c.xmm[i];
        let a = off.wrapping_add(160 + 16 * i as u64);
        c.write_mem(s, a, 8, v as u64)?;
        c.write_mem(s, a.wrapping_add(8), 8, (v >> 64) as u64)?;
    }
    Ok(())
}

/// FXRSTOR/FXRSTOR64 m512. Everything is read (and MXCSR validated, #GP(0)
/// on reserved bits) before any state changes.
fn fxrstor(c: &mut Cpu, d: &Insn) -> R {
    let (s, off) = fx_check(c, d)?;
    let w64 = d.ins.code() == Code::Fxrstor64_m512byte;
    let mut hdr = [0u64; 4];
    for (i, h) in hdr.iter_mut().enumerate() {
        *h = c.read_mem(s, off.wrapping_add(8 * i as u64), 8)?;
    }
    let mut regs = [(0u64, 0u16); 8];
    for (i, r) in regs.iter_mut().enumerate() {
        let v = read_at(c, s, off.wrapping_add(32 + 16 * i as u64), 16)?;
        *r = (v as u64, (v >> 64) as u16);
    }
    let n = xmm_count(c);
    let mut xmm = [0u128; 16];
    for (i, x) in xmm.iter_mut().enumerate().take(n) {
        *x = read_at(c, s, off.wrapping_add(160 + 16 * i as u64), 16)?;
    }
    let mxcsr = hdr[3] as u32;
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(Exc::gp(0));
    }
    let fsw = (hdr[0] >> 16) as u16;
    let top = ((fsw >> 11) & 7) as usize;
    let ftw = (hdr[0] >> 32) as u8;
    let x = &mut c.x87;
    // FCW bits 7 and 13–15 are reserved and read as zero, bit 6 as one.
    x.cw = (hdr[0] as u16 & 0x1f3f) | 0x40;
    x.sw = fsw;
    x.top = top as u8;
    x.fop = (hdr[0] >> 48) as u16 & 0x7ff;
    if w64 {
        x.fip = hdr[1];
        x.fdp = hdr[2];
    } else {
        x.fip = hdr[1] & 0xffff_ffff;
        x.fcs = (hdr[1] >> 32) as u16;
        x.fdp = hdr[2] & 0xffff_ffff;
        x.fds = (hdr[2] >> 32) as u16;
    }
    let mut tag = 0u16;
    for (i, r) in regs.iter().enumerate() {
        let phys = (top + i) & 7;
        x.regs[phys] = *r;
    }
    for phys in 0..8 {
        let t = if ftw & (1 << phys) == 0 {
            3
        } else {
            let (m, se) = x.regs[phys];
            tag_of(m, se)
        };
        tag |= t << (2 * phys);
    }
    x.tag = tag;
    c.xmm[..n].copy_from_slice(&xmm[..n]);
    c.mxcsr = mxcsr;
    Ok(())
}

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Ldmxcsr => ldmxcsr,
        M::Stmxcsr => stmxcsr,
        M::Fxsave | M::Fxsave64 => fxsave,
        M::Fxrstor | M::Fxrstor64 => fxrstor,
        _ => return None,
    })
}
