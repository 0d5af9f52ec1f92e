//! Data movement, shuffles, blends and bitwise logic on XMM/MMX registers
//! (SDM vol. 1 §10.4.1, §10.4.4, §11.4.1, §11.4.4–6, §12.3, §12.10).

use super::int::{bin, bin_imm, lane, put};
use super::{
    check_mmx, check_sse, check_sse_mm, dst_write, imm8, mem_addr, mmx_transition, probe_write,
    set_vreg, src, uses_mm, vreg, write_at,
};
use crate::cpu::exec::{Handler, Insn};
use crate::cpu::{Cpu, Exc, R};
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

const LO64: u128 = u64::MAX as u128;

/// Checks for the MMX or SSE class of an instruction that may name MMX
/// registers.
fn check_any(c: &mut Cpu, d: &Insn) -> R {
    if uses_mm(&d.ins) {
        check_mmx(c, d)
    } else {
        check_sse(c, d)
    }
}

/// Full 128-bit moves: MOVAPS/MOVUPS/MOVAPD/MOVUPD/MOVDQA/MOVDQU/LDDQU and
/// the non-temporal MOVNTPS/MOVNTPD/MOVNTDQ/MOVNTDQA.
fn mov128(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let v = src(c, d, 1)?;
    dst_write(c, d, 0, v)
}

/// MOVD/MOVQ between MMX, XMM, general registers and memory: the low 32 or
/// 64 bits, zero-extended into a register destination.
fn movdq(c: &mut Cpu, d: &Insn) -> R {
    check_any(c, d)?;
    let bits = if d.ins.mnemonic() == M::Movd { 32 } else { 64 };
    let v = src(c, d, 1)? & ((1u128 << bits) - 1);
    dst_write(c, d, 0, v)?;
    if uses_mm(&d.ins) {
        mmx_transition(c);
    }
    Ok(())
}

/// MOVNTQ m64, mm.
fn movntq(c: &mut Cpu, d: &Insn) -> R {
    check_mmx(c, d)?;
    let v = src(c, d, 1)?;
    dst_write(c, d, 0, v)?;
    mmx_transition(c);
    Ok(())
}

/// MOVNTI m32/m64, r32/r64: an ordinary store.
fn movnti(c: &mut Cpu, d: &Insn) -> R {
    if d.ins.has_lock_prefix() {
        return Err(Exc::UD);
    }
    let v = c.get_reg(d.ins.op1_register());
    let size = d.ins.op1_register().size() as u8;
    let (s, off) = (c.mem_seg(d), c.ea(d));
    c.write_mem(s, off, size, v)
}

/// MOVSS/MOVSD (SSE2): a load zero-extends, a register move merges the low
/// element, a store writes the low element.
fn movs(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let m: u128 = if d.ins.mnemonic() == M::Movss {
        0xffff_ffff
    } else {
        LO64
    };
    let v = src(c, d, 1)? & m;
    match (d.ins.op0_kind(), d.ins.op1_kind()) {
        (OpKind::Register, OpKind::Register) => {
            let r = d.ins.op0_register();
            let a = vreg(c, r);
            set_vreg(c, r, (a & !m) | v);
            Ok(())
        }
        _ => dst_write(c, d, 0, v),
    }
}

/// MOVLPS/MOVLPD/MOVHPS/MOVHPD (memory forms), MOVHLPS and MOVLHPS.
fn movlh(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let high = matches!(d.ins.mnemonic(), M::Movhps | M::Movhpd);
    match d.ins.mnemonic() {
        M::Movhlps => {
            let r = d.ins.op0_register();
            let (a, b) = (vreg(c, r), vreg(c, d.ins.op1_register()));
            set_vreg(c, r, (a & !LO64) | (b >> 64));
            Ok(())
        }
        M::Movlhps => {
            let r = d.ins.op0_register();
            let (a, b) = (vreg(c, r), vreg(c, d.ins.op1_register()));
            set_vreg(c, r, (a & LO64) | (b << 64));
            Ok(())
        }
        _ if d.ins.op0_kind() == OpKind::Memory => {
            let v = vreg(c, d.ins.op1_register());
            dst_write(c, d, 0, if high { v >> 64 } else { v & LO64 })
        }
        _ => {
            let v = src(c, d, 1)?;
            let r = d.ins.op0_register();
            let a = vreg(c, r);
            set_vreg(
                c,
                r,
                if high {
                    (a & LO64) | (v << 64)
                } else {
                    (a & !LO64) | v
                },
            );
            Ok(())
        }
    }
}

/// MOVQ2DQ xmm, mm and MOVDQ2Q mm, xmm.
fn movq2dq(c: &mut Cpu, d: &Insn) -> R {
    check_sse_mm(c, d)?;
    let v = vreg(c, d.ins.op1_register()) & LO64;
    mmx_transition(c);
    set_vreg(c, d.ins.op0_register(), v);
    Ok(())
}

/// MOVMSKPS/MOVMSKPD r, xmm: the sign bits.
fn movmsk(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let v = vreg(c, d.ins.op1_register());
    let bits = if d.ins.mnemonic() == M::Movmskps {
        32
    } else {
        64
    };
    let mut m = 0u64;
    for j in 0..128 / bits {
        m |= (lane(v, bits, j) >> (bits - 1)) << j;
    }
    c.set_reg(d.ins.op0_register(), m);
    Ok(())
}

/// MASKMOVQ/MASKMOVDQU: stores the bytes of the first register whose mask
/// byte (second register) has its top bit set, at DS:rDI (segment
/// overridable). Every selected byte is checked writable first.
fn maskmov(c: &mut Cpu, d: &Insn) -> R {
    let mmx = d.ins.mnemonic() == M::Maskmovq;
    if mmx {
        check_mmx(c, d)?;
    } else {
        check_sse(c, d)?;
    }
    let v = vreg(c, d.ins.op1_register());
    let m = vreg(c, d.ins.op2_register());
    let w = if mmx { 8 } else { 16 };
    let s = c.mem_seg(d);
    let base = c.gpr[crate::cpu::reg::RDI] & d.amask;
    let sel: Vec<u32> = (0..w).filter(|&j| lane(m, 8, j) & 0x80 != 0).collect();
    for &j in &sel {
        probe_write(c, s, base.wrapping_add(j as u64) & d.amask, 1)?;
    }
    for &j in &sel {
        c.write_mem(s, base.wrapping_add(j as u64) & d.amask, 1, lane(v, 8, j))?;
    }
    if mmx {
        mmx_transition(c);
    }
    Ok(())
}

/// SHUFPS/SHUFPD.
fn shufp(c: &mut Cpu, d: &Insn) -> R {
    let ps = d.ins.mnemonic() == M::Shufps;
    bin_imm(c, d, move |a, b, i, _| {
        if ps {
            let s = |j: u32| ((i >> (2 * j)) & 3) as u32;
            put(lane(a, 32, s(0)), 32, 0)
                | put(lane(a, 32, s(1)), 32, 1)
                | put(lane(b, 32, s(2)), 32, 2)
                | put(lane(b, 32, s(3)), 32, 3)
        } else {
            put(lane(a, 64, (i & 1) as u32), 64, 0) | put(lane(b, 64, ((i >> 1) & 1) as u32), 64, 1)
        }
    })
}

/// UNPCKLPS/UNPCKHPS/UNPCKLPD/UNPCKHPD.
fn unpckp(c: &mut Cpu, d: &Insn) -> R {
    let (bits, high) = match d.ins.mnemonic() {
        M::Unpcklps => (32, false),
        M::Unpckhps => (32, true),
        M::Unpcklpd => (64, false),
        _ => (64, true),
    };
    bin(c, d, move |a, b, _| {
        let n = 128 / bits / 2;
        let base = if high { n } else { 0 };
        let mut r = 0;
        for j in 0..n {
            r |= put(lane(a, bits, base + j), bits, 2 * j);
            r |= put(lane(b, bits, base + j), bits, 2 * j + 1);
        }
        r
    })
}

/// ANDPS/ANDPD/ANDNPS/ANDNPD/ORPS/ORPD/XORPS/XORPD.
fn logicp(c: &mut Cpu, d: &Insn) -> R {
    let m = d.ins.mnemonic();
    bin(c, d, move |a, b, _| match m {
        M::Andps | M::Andpd => a & b,
        M::Andnps | M::Andnpd => !a & b,
        M::Orps | M::Orpd => a | b,
        _ => a ^ b,
    })
}

/// MOVSHDUP/MOVSLDUP/MOVDDUP (SSE3).
fn movdup(c: &mut Cpu, d: &Insn) -> R {
    let m = d.ins.mnemonic();
    bin(c, d, move |_, b, _| match m {
        M::Movshdup => {
            let (x, y) = (lane(b, 32, 1), lane(b, 32, 3));
            put(x, 32, 0) | put(x, 32, 1) | put(y, 32, 2) | put(y, 32, 3)
        }
        M::Movsldup => {
            let (x, y) = (lane(b, 32, 0), lane(b, 32, 2));
            put(x, 32, 0) | put(x, 32, 1) | put(y, 32, 2) | put(y, 32, 3)
        }
        _ => (b & LO64) | (b << 64),
    })
}

/// BLENDPS/BLENDPD (imm8 selects source lanes).
fn blendp(c: &mut Cpu, d: &Insn) -> R {
    let bits = if d.ins.mnemonic() == M::Blendps {
        32
    } else {
        64
    };
    bin_imm(c, d, move |a, b, i, _| {
        let mut r = 0;
        for j in 0..128 / bits {
            let v = if i & (1 << j) != 0 { b } else { a };
            r |= put(lane(v, bits, j), bits, j);
        }
        r
    })
}

/// BLENDVPS/BLENDVPD/PBLENDVB: source lanes where the top bit of XMM0's
/// lane is set.
fn blendv(c: &mut Cpu, d: &Insn) -> R {
    let bits = match d.ins.mnemonic() {
        M::Blendvps => 32,
        M::Blendvpd => 64,
        _ => 8,
    };
    check_sse(c, d)?;
    let dst = d.ins.op0_register();
    let b = src(c, d, 1)?;
    let a = vreg(c, dst);
    let sel = c.xmm[0];
    let mut r = 0;
    for j in 0..128 / bits {
        let v = if lane(sel, bits, j) >> (bits - 1) != 0 {
            b
        } else {
            a
        };
        r |= put(lane(v, bits, j), bits, j);
    }
    set_vreg(c, dst, r);
    Ok(())
}

/// INSERTPS xmm, xmm/m32, imm8 (SSE4.1).
fn insertps(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let i = imm8(d);
    let e = match d.ins.op1_kind() {
        OpKind::Register => lane(vreg(c, d.ins.op1_register()), 32, (i >> 6) as u32),
        _ => src(c, d, 1)? as u64,
    };
    let dst = d.ins.op0_register();
    let a = vreg(c, dst);
    let j = ((i >> 4) & 3) as u32;
    let mut r = (a & !put(u64::MAX, 32, j)) | put(e, 32, j);
    for k in 0..4 {
        if i & (1 << k) != 0 {
            r &= !put(u64::MAX, 32, k);
        }
    }
    set_vreg(c, dst, r);
    Ok(())
}

/// EXTRACTPS r/m32, xmm, imm8 (SSE4.1).
fn extractps(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let v = lane(vreg(c, d.ins.op1_register()), 32, (imm8(d) & 3) as u32);
    match d.ins.op0_kind() {
        OpKind::Register => {
            c.set_reg(d.ins.op0_register(), v);
            Ok(())
        }
        _ => {
            let (s, off) = mem_addr(c, d, 4)?;
            write_at(c, s, off, 4, v as u128)
        }
    }
}

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Movaps
        | M::Movups
        | M::Movapd
        | M::Movupd
        | M::Movdqa
        | M::Movdqu
        | M::Lddqu
        | M::Movntps
        | M::Movntpd
        | M::Movntdq
        | M::Movntdqa => mov128,
        M::Movd | M::Movq => movdq,
        M::Movntq => movntq,
        M::Movnti => movnti,
        M::Movss => movs,
        M::Movsd if matches!(ins.code(), Code::Movsd_xmm_xmmm64 | Code::Movsd_xmmm64_xmm) => movs,
        M::Movlps | M::Movlpd | M::Movhps | M::Movhpd | M::Movhlps | M::Movlhps => movlh,
        M::Movq2dq | M::Movdq2q => movq2dq,
        M::Movmskps | M::Movmskpd => movmsk,
        M::Maskmovq | M::Maskmovdqu => maskmov,
        M::Shufps | M::Shufpd => shufp,
        M::Unpcklps | M::Unpckhps | M::Unpcklpd | M::Unpckhpd => unpckp,
        M::Andps | M::Andpd | M::Andnps | M::Andnpd | M::Orps | M::Orpd | M::Xorps | M::Xorpd => {
            logicp
        }
        M::Movshdup | M::Movsldup | M::Movddup => movdup,
        M::Blendps | M::Blendpd => blendp,
        M::Blendvps | M::Blendvpd | M::Pblendvb => blendv,
        M::Insertps => insertps,
        M::Extractps => extractps,
        _ => return None,
    })
}
