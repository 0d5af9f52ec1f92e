//! Packed integer instructions on MMX and XMM registers: MMX (SDM vol. 1
//! ch. 9), the SSE/SSE2 integer additions (§10.4.4, §11.4.3), SSSE3
//! (§12.7), the SSE4.1 integer instructions (§12.10) and PCMPGTQ/CRC32
//! (SSE4.2). Computed lane by lane in portable Rust.

use super::{check_by, check_mmx, check_sse, imm8, mem_addr, set_vreg, src, vreg, write_at};
use crate::cpu::exec::{Handler, Insn};
use crate::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use crate::cpu::{Cpu, Exc, R};
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// Mask of `bits` low bits (bits ≤ 64).
#[inline(always)]
fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Lane `j` of `bits` bits, zero-extended.
#[inline(always)]
pub(super) fn lane(v: u128, bits: u32, j: u32) -> u64 {
    (v >> (bits * j)) as u64 & mask(bits)
}

/// Lane `j` of `bits` bits, sign-extended.
#[inline(always)]
pub(super) fn slane(v: u128, bits: u32, j: u32) -> i64 {
    sx(lane(v, bits, j), bits)
}

/// Sign-extends the low `bits` bits of `x`.
#[inline(always)]
fn sx(x: u64, bits: u32) -> i64 {
    ((x << (64 - bits)) as i64) >> (64 - bits)
}

/// `x` placed in lane `j` of `bits` bits.
#[inline(always)]
pub(super) fn put(x: u64, bits: u32, j: u32) -> u128 {
    ((x & mask(bits)) as u128) << (bits * j)
}

/// Applies `f` to each pair of `bits`-bit lanes of the low `w` bytes.
#[inline(always)]
fn map2(a: u128, b: u128, bits: u32, w: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    let mut r = 0;
    for j in 0..w * 8 / bits {
        r |= put(f(lane(a, bits, j), lane(b, bits, j)), bits, j);
    }
    r
}

/// As [`map2`] on sign-extended lanes.
#[inline(always)]
fn smap2(a: u128, b: u128, bits: u32, w: u32, f: impl Fn(i64, i64) -> i64) -> u128 {
    map2(a, b, bits, w, |x, y| f(sx(x, bits), sx(y, bits)) as u64)
}

/// Signed saturation of `v` to `bits` bits.
#[inline(always)]
fn sat_s(v: i64, bits: u32) -> u64 {
    let max = (1i64 << (bits - 1)) - 1;
    v.clamp(-max - 1, max) as u64
}

/// Unsigned saturation of `v` to `bits` bits.
#[inline(always)]
fn sat_u(v: i64, bits: u32) -> u64 {
    v.clamp(0, mask(bits) as i64) as u64
}

/// Width in bytes of the register `r` (8 for MMX, 16 for XMM).
#[inline(always)]
fn width(r: Register) -> u32 {
    if r.is_mm() {
        8
    } else {
        16
    }
}

/// Two-operand form `dst = f(dst, src, width)` with the exception checks
/// of the destination's class.
#[inline(always)]
pub(super) fn bin(c: &mut Cpu, d: &Insn, f: impl Fn(u128, u128, u32) -> u128) -> R {
    let dst = d.ins.op0_register();
    check_by(c, d, dst)?;
    let b = src(c, d, 1)?;
    let a = vreg(c, dst);
    set_vreg(c, dst, f(a, b, width(dst)));
    Ok(())
}

/// Two-operand form with an immediate: `dst = f(dst, src, imm8, width)`.
#[inline(always)]
pub(super) fn bin_imm(c: &mut Cpu, d: &Insn, f: impl Fn(u128, u128, u8, u32) -> u128) -> R {
    let dst = d.ins.op0_register();
    check_by(c, d, dst)?;
    let b = src(c, d, 1)?;
    let a = vreg(c, dst);
    set_vreg(c, dst, f(a, b, imm8(d), width(dst)));
    Ok(())
}

macro_rules! bins {
    ($($name:ident => $f:expr;)*) => {
        $( fn $name(c: &mut Cpu, d: &Insn) -> R { bin(c, d, $f) } )*
    };
}

/// Packs signed lanes of `a` then `b` (`bits` wide) into half-width lanes
/// with saturation `sat`.
fn pack(a: u128, b: u128, bits: u32, w: u32, sat: impl Fn(i64, u32) -> u64) -> u128 {
    let n = w * 8 / bits;
    let mut r = 0;
    for j in 0..n {
        r |= put(sat(slane(a, bits, j), bits / 2), bits / 2, j);
        r |= put(sat(slane(b, bits, j), bits / 2), bits / 2, j + n);
    }
    r
}

/// Interleaves the low (`high` false) or high halves of `a` and `b`.
fn unpack(a: u128, b: u128, bits: u32, w: u32, high: bool) -> u128 {
    let n = w * 8 / bits / 2;
    let base = if high { n } else { 0 };
    let mut r = 0;
    for j in 0..n {
        r |= put(lane(a, bits, base + j), bits, 2 * j);
        r |= put(lane(b, bits, base + j), bits, 2 * j + 1);
    }
    r
}

/// Horizontal operation: pairs of `a` then pairs of `b`.
fn horiz(a: u128, b: u128, bits: u32, w: u32, f: impl Fn(i64, i64) -> u64) -> u128 {
    let n = w * 8 / bits / 2;
    let mut r = 0;
    for j in 0..n {
        r |= put(f(slane(a, bits, 2 * j), slane(a, bits, 2 * j + 1)), bits, j);
        r |= put(
            f(slane(b, bits, 2 * j), slane(b, bits, 2 * j + 1)),
            bits,
            j + n,
        );
    }
    r
}

#[inline(always)]
fn wmask(w: u32) -> u128 {
    if w == 16 {
        u128::MAX
    } else {
        u64::MAX as u128
    }
}

fn bool_lane(b: bool) -> u64 {
    if b {
        u64::MAX
    } else {
        0
    }
}

bins! {
    paddb => |a, b, w| map2(a, b, 8, w, u64::wrapping_add);
    paddw => |a, b, w| map2(a, b, 16, w, u64::wrapping_add);
    paddd => |a, b, w| map2(a, b, 32, w, u64::wrapping_add);
    paddq => |a, b, w| map2(a, b, 64, w, u64::wrapping_add);
    psubb => |a, b, w| map2(a, b, 8, w, u64::wrapping_sub);
    psubw => |a, b, w| map2(a, b, 16, w, u64::wrapping_sub);
    psubd => |a, b, w| map2(a, b, 32, w, u64::wrapping_sub);
    psubq => |a, b, w| map2(a, b, 64, w, u64::wrapping_sub);
    paddsb => |a, b, w| smap2(a, b, 8, w, |x, y| sat_s(x + y, 8) as i64);
    paddsw => |a, b, w| smap2(a, b, 16, w, |x, y| sat_s(x + y, 16) as i64);
    psubsb => |a, b, w| smap2(a, b, 8, w, |x, y| sat_s(x - y, 8) as i64);
    psubsw => |a, b, w| smap2(a, b, 16, w, |x, y| sat_s(x - y, 16) as i64);
    paddusb => |a, b, w| map2(a, b, 8, w, |x, y| sat_u((x + y) as i64, 8));
    paddusw => |a, b, w| map2(a, b, 16, w, |x, y| sat_u((x + y) as i64, 16));
    psubusb => |a, b, w| map2(a, b, 8, w, |x, y| x.saturating_sub(y));
    psubusw => |a, b, w| map2(a, b, 16, w, |x, y| x.saturating_sub(y));
    pmullw => |a, b, w| smap2(a, b, 16, w, |x, y| x * y);
    pmulhw => |a, b, w| smap2(a, b, 16, w, |x, y| (x * y) >> 16);
    pmulhuw => |a, b, w| map2(a, b, 16, w, |x, y| (x * y) >> 16);
    pmulld => |a, b, w| smap2(a, b, 32, w, |x, y| x.wrapping_mul(y));
    pmuludq => |a, b, w| map2(a, b, 64, w, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff));
    pmuldq => |a, b, w| map2(a, b, 64, w, |x, y| (sx(x, 32) * sx(y, 32)) as u64);
    pmaddwd => |a, b, w| {
        let mut r = 0;
        for j in 0..w / 4 {
            let s = slane(a, 16, 2 * j) * slane(b, 16, 2 * j)
                + slane(a, 16, 2 * j + 1) * slane(b, 16, 2 * j + 1);
            r |= put(s as u64, 32, j);
        }
        r
    };
    pmulhrsw => |a, b, w| smap2(a, b, 16, w, |x, y| (((x * y) >> 14) + 1) >> 1);
    pmaddubsw => |a, b, w| {
        let mut r = 0;
        for j in 0..w / 2 {
            let s = lane(a, 8, 2 * j) as i64 * slane(b, 8, 2 * j)
                + lane(a, 8, 2 * j + 1) as i64 * slane(b, 8, 2 * j + 1);
            r |= put(sat_s(s, 16), 16, j);
        }
        r
    };
    pand => |a, b, w| a & b & wmask(w);
    pandn => |a, b, w| !a & b & wmask(w);
    por => |a, b, w| (a | b) & wmask(w);
    pxor => |a, b, w| (a ^ b) & wmask(w);
    pcmpeqb => |a, b, w| map2(a, b, 8, w, |x, y| bool_lane(x == y));
    pcmpeqw => |a, b, w| map2(a, b, 16, w, |x, y| bool_lane(x == y));
    pcmpeqd => |a, b, w| map2(a, b, 32, w, |x, y| bool_lane(x == y));
    pcmpeqq => |a, b, w| map2(a, b, 64, w, |x, y| bool_lane(x == y));
    pcmpgtb => |a, b, w| smap2(a, b, 8, w, |x, y| bool_lane(x > y) as i64);
    pcmpgtw => |a, b, w| smap2(a, b, 16, w, |x, y| bool_lane(x > y) as i64);
    pcmpgtd => |a, b, w| smap2(a, b, 32, w, |x, y| bool_lane(x > y) as i64);
    pcmpgtq => |a, b, w| smap2(a, b, 64, w, |x, y| bool_lane(x > y) as i64);
    packsswb => |a, b, w| pack(a, b, 16, w, sat_s);
    packssdw => |a, b, w| pack(a, b, 32, w, sat_s);
    packuswb => |a, b, w| pack(a, b, 16, w, sat_u);
    packusdw => |a, b, w| pack(a, b, 32, w, sat_u);
    punpcklbw => |a, b, w| unpack(a, b, 8, w, false);
    punpcklwd => |a, b, w| unpack(a, b, 16, w, false);
    punpckldq => |a, b, w| unpack(a, b, 32, w, false);
    punpcklqdq => |a, b, w| unpack(a, b, 64, w, false);
    punpckhbw => |a, b, w| unpack(a, b, 8, w, true);
    punpckhwd => |a, b, w| unpack(a, b, 16, w, true);
    punpckhdq => |a, b, w| unpack(a, b, 32, w, true);
    punpckhqdq => |a, b, w| unpack(a, b, 64, w, true);
    pavgb => |a, b, w| map2(a, b, 8, w, |x, y| (x + y + 1) >> 1);
    pavgw => |a, b, w| map2(a, b, 16, w, |x, y| (x + y + 1) >> 1);
    pminub => |a, b, w| map2(a, b, 8, w, u64::min);
    pmaxub => |a, b, w| map2(a, b, 8, w, u64::max);
    pminuw => |a, b, w| map2(a, b, 16, w, u64::min);
    pmaxuw => |a, b, w| map2(a, b, 16, w, u64::max);
    pminud => |a, b, w| map2(a, b, 32, w, u64::min);
    pmaxud => |a, b, w| map2(a, b, 32, w, u64::max);
    pminsb => |a, b, w| smap2(a, b, 8, w, i64::min);
    pmaxsb => |a, b, w| smap2(a, b, 8, w, i64::max);
    pminsw => |a, b, w| smap2(a, b, 16, w, i64::min);
    pmaxsw => |a, b, w| smap2(a, b, 16, w, i64::max);
    pminsd => |a, b, w| smap2(a, b, 32, w, i64::min);
    pmaxsd => |a, b, w| smap2(a, b, 32, w, i64::max);
    psadbw => |a, b, w| {
        let mut r = 0;
        for q in 0..w / 8 {
            let s: u64 = (0..8)
                .map(|j| lane(a, 8, q * 8 + j).abs_diff(lane(b, 8, q * 8 + j)))
                .sum();
            r |= put(s, 64, q);
        }
        r
    };
    phaddw => |a, b, w| horiz(a, b, 16, w, |x, y| (x + y) as u64);
    phaddd => |a, b, w| horiz(a, b, 32, w, |x, y| (x + y) as u64);
    phaddsw => |a, b, w| horiz(a, b, 16, w, |x, y| sat_s(x + y, 16));
    phsubw => |a, b, w| horiz(a, b, 16, w, |x, y| (x - y) as u64);
    phsubd => |a, b, w| horiz(a, b, 32, w, |x, y| (x - y) as u64);
    phsubsw => |a, b, w| horiz(a, b, 16, w, |x, y| sat_s(x - y, 16));
    psignb => |a, b, w| smap2(a, b, 8, w, |x, y| x * y.signum());
    psignw => |a, b, w| smap2(a, b, 16, w, |x, y| x * y.signum());
    psignd => |a, b, w| smap2(a, b, 32, w, |x, y| x * y.signum());
    pabsb => |_, b, w| smap2(0, b, 8, w, |_, y| y.abs());
    pabsw => |_, b, w| smap2(0, b, 16, w, |_, y| y.abs());
    pabsd => |_, b, w| smap2(0, b, 32, w, |_, y| y.abs());
    pshufb => |a, b, w| {
        let mut r = 0;
        for j in 0..w {
            let s = lane(b, 8, j);
            if s & 0x80 == 0 {
                r |= put(lane(a, 8, (s as u32) & (w - 1)), 8, j);
            }
        }
        r
    };
    phminposuw => |_, b, _| {
        let (mut min, mut idx) = (lane(b, 16, 0), 0u64);
        for j in 1..8 {
            let v = lane(b, 16, j);
            if v < min {
                min = v;
                idx = j as u64;
            }
        }
        put(min, 16, 0) | (idx as u128) << 16
    };
}

/// PALIGNR: the concatenation dst:src shifted right by imm8 bytes.
fn palignr(c: &mut Cpu, d: &Insn) -> R {
    bin_imm(c, d, |a, b, i, w| {
        let mut r = 0;
        for j in 0..w {
            let k = j + i as u32;
            let byte = if k < w {
                lane(b, 8, k)
            } else if k < 2 * w {
                lane(a, 8, k - w)
            } else {
                0
            };
            r |= put(byte, 8, j);
        }
        r
    })
}

/// PBLENDW: words from the source where imm8 has a one.
fn pblendw(c: &mut Cpu, d: &Insn) -> R {
    bin_imm(c, d, |a, b, i, _| {
        let mut r = 0;
        for j in 0..8 {
            let v = if i & (1 << j) != 0 { b } else { a };
            r |= put(lane(v, 16, j), 16, j);
        }
        r
    })
}

/// MPSADBW (SSE4.1): eight sums of absolute differences of 4-byte groups.
fn mpsadbw(c: &mut Cpu, d: &Insn) -> R {
    bin_imm(c, d, |a, b, i, _| {
        let aoff = ((i >> 2) & 1) as u32 * 4;
        let boff = (i & 3) as u32 * 4;
        let mut r = 0;
        for j in 0..8 {
            let s: u64 = (0..4)
                .map(|k| lane(a, 8, aoff + j + k).abs_diff(lane(b, 8, boff + k)))
                .sum();
            r |= put(s, 16, j);
        }
        r
    })
}

/// PSHUFW/PSHUFD/PSHUFHW/PSHUFLW.
fn pshuf(c: &mut Cpu, d: &Insn) -> R {
    let m = d.ins.mnemonic();
    bin_imm(c, d, move |_, b, i, _| {
        let sel = |j: u32| ((i >> (2 * j)) & 3) as u32;
        let mut r = 0;
        match m {
            M::Pshufw => {
                for j in 0..4 {
                    r |= put(lane(b, 16, sel(j)), 16, j);
                }
            }
            M::Pshufd => {
                for j in 0..4 {
                    r |= put(lane(b, 32, sel(j)), 32, j);
                }
            }
            M::Pshufhw => {
                r = b & u64::MAX as u128;
                for j in 0..4 {
                    r |= put(lane(b, 16, 4 + sel(j)), 16, 4 + j);
                }
            }
            _ => {
                r = b & !(u64::MAX as u128);
                for j in 0..4 {
                    r |= put(lane(b, 16, sel(j)), 16, j);
                }
            }
        }
        r
    })
}

/// Shift count of a PSxx instruction: the immediate, or the low 64 bits of
/// the source register or memory operand.
fn shift_count(c: &mut Cpu, d: &Insn) -> R<u64> {
    match d.ins.op1_kind() {
        OpKind::Register | OpKind::Memory => Ok(src(c, d, 1)? as u64),
        _ => Ok(imm8(d) as u64),
    }
}

/// PSLLx/PSRLx/PSRAx (words, dwords, qwords) and PSLLDQ/PSRLDQ.
fn shift(c: &mut Cpu, d: &Insn) -> R {
    let dst = d.ins.op0_register();
    check_by(c, d, dst)?;
    let n = shift_count(c, d)?;
    let a = vreg(c, dst);
    let w = width(dst);
    let logical = |bits: u32, left: bool| {
        map2(a, 0, bits, w, |x, _| {
            if n >= bits as u64 {
                0
            } else if left {
                x << n
            } else {
                x >> n
            }
        })
    };
    let arith = |bits: u32| smap2(a, 0, bits, w, |x, _| x >> n.min(bits as u64 - 1));
    let r = match d.ins.mnemonic() {
        M::Psllw => logical(16, true),
        M::Pslld => logical(32, true),
        M::Psllq => logical(64, true),
        M::Psrlw => logical(16, false),
        M::Psrld => logical(32, false),
        M::Psrlq => logical(64, false),
        M::Psraw => arith(16),
        M::Psrad => arith(32),
        M::Pslldq => {
            if n > 15 {
                0
            } else {
                a << (8 * n)
            }
        }
        _ => {
            if n > 15 {
                0
            } else {
                a >> (8 * n)
            }
        }
    };
    set_vreg(c, dst, r);
    Ok(())
}

/// PMOVSX/PMOVZX (SSE4.1): widens the low lanes of the source.
fn pmovx(c: &mut Cpu, d: &Insn) -> R {
    let (from, to, signed) = match d.ins.mnemonic() {
        M::Pmovsxbw => (8, 16, true),
        M::Pmovsxbd => (8, 32, true),
        M::Pmovsxbq => (8, 64, true),
        M::Pmovsxwd => (16, 32, true),
        M::Pmovsxwq => (16, 64, true),
        M::Pmovsxdq => (32, 64, true),
        M::Pmovzxbw => (8, 16, false),
        M::Pmovzxbd => (8, 32, false),
        M::Pmovzxbq => (8, 64, false),
        M::Pmovzxwd => (16, 32, false),
        M::Pmovzxwq => (16, 64, false),
        _ => (32, 64, false),
    };
    bin(c, d, |_, b, _| {
        let mut r = 0;
        for j in 0..128 / to {
            let v = if signed {
                slane(b, from, j) as u64
            } else {
                lane(b, from, j)
            };
            r |= put(v, to, j);
        }
        r
    })
}

/// PMOVMSKB r32/r64, mm/xmm: the top bit of each byte.
fn pmovmskb(c: &mut Cpu, d: &Insn) -> R {
    let s = d.ins.op1_register();
    check_by(c, d, s)?;
    let v = vreg(c, s);
    let w = width(s);
    let mut m = 0u64;
    for j in 0..w {
        m |= (lane(v, 8, j) >> 7) << j;
    }
    if s.is_mm() {
        super::mmx_transition(c);
    }
    c.set_reg(d.ins.op0_register(), m);
    Ok(())
}

/// PEXTRW r, mm/xmm, imm8 (and the SSE4.1 m16 form), PEXTRB, PEXTRD,
/// PEXTRQ.
fn pextr(c: &mut Cpu, d: &Insn) -> R {
    let s = d.ins.op1_register();
    check_by(c, d, s)?;
    let v = vreg(c, s);
    let i = imm8(d) as u32;
    let (bits, n) = match d.ins.mnemonic() {
        M::Pextrb => (8, 16),
        M::Pextrw => (16, width(s) / 2),
        M::Pextrd => (32, 4),
        _ => (64, 2),
    };
    let x = lane(v, bits, i % n);
    if s.is_mm() {
        super::mmx_transition(c);
    }
    match d.ins.op0_kind() {
        OpKind::Register => {
            c.set_reg(d.ins.op0_register(), x);
            Ok(())
        }
        _ => {
            let (sg, off) = mem_addr(c, d, (bits / 8) as usize)?;
            write_at(c, sg, off, (bits / 8) as usize, x as u128)
        }
    }
}

/// PINSRW mm/xmm, r32/m16, imm8 and PINSRB/PINSRD/PINSRQ.
fn pinsr(c: &mut Cpu, d: &Insn) -> R {
    let dst = d.ins.op0_register();
    check_by(c, d, dst)?;
    let x = src(c, d, 1)? as u64;
    let i = imm8(d) as u32;
    let (bits, n) = match d.ins.mnemonic() {
        M::Pinsrb => (8, 16),
        M::Pinsrw => (16, width(dst) / 2),
        M::Pinsrd => (32, 4),
        _ => (64, 2),
    };
    let j = i % n;
    let a = vreg(c, dst);
    let m = put(mask(bits), bits, j);
    set_vreg(c, dst, (a & !m) | put(x, bits, j));
    Ok(())
}

/// PTEST (SSE4.1): ZF = (dst AND src) == 0, CF = (NOT dst AND src) == 0.
fn ptest(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let b = src(c, d, 1)?;
    let a = vreg(c, d.ins.op0_register());
    let v = if a & b == 0 { ZF } else { 0 } | if !a & b == 0 { CF } else { 0 };
    c.flags.set_masked(v, ZF | CF | OF | SF | AF | PF);
    Ok(())
}

/// CRC32 r32/r64, r/m8/16/32/64 (SSE4.2): CRC-32C (Castagnoli),
/// bit-reflected.
fn crc32(c: &mut Cpu, d: &Insn) -> R {
    if d.ins.has_lock_prefix() {
        return Err(Exc::UD);
    }
    let size = match d.ins.op1_kind() {
        OpKind::Register => d.ins.op1_register().size(),
        _ => d.ins.memory_size().size(),
    };
    let v = match d.ins.op1_kind() {
        OpKind::Register => c.get_reg(d.ins.op1_register()),
        _ => {
            let (s, off) = (c.mem_seg(d), c.ea(d));
            c.read_mem(s, off, size as u8)?
        }
    };
    let mut crc = c.get_reg(d.ins.op0_register()) as u32;
    for k in 0..size {
        crc ^= (v >> (8 * k)) as u8 as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    c.set_reg(d.ins.op0_register(), crc as u64);
    Ok(())
}

/// EMMS: marks every x87 register empty.
fn emms(c: &mut Cpu, d: &Insn) -> R {
    check_mmx(c, d)?;
    c.x87.tag = 0xffff;
    Ok(())
}

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Paddb => paddb,
        M::Paddw => paddw,
        M::Paddd => paddd,
        M::Paddq => paddq,
        M::Psubb => psubb,
        M::Psubw => psubw,
        M::Psubd => psubd,
        M::Psubq => psubq,
        M::Paddsb => paddsb,
        M::Paddsw => paddsw,
        M::Psubsb => psubsb,
        M::Psubsw => psubsw,
        M::Paddusb => paddusb,
        M::Paddusw => paddusw,
        M::Psubusb => psubusb,
        M::Psubusw => psubusw,
        M::Pmullw => pmullw,
        M::Pmulhw => pmulhw,
        M::Pmulhuw => pmulhuw,
        M::Pmulld => pmulld,
        M::Pmuludq => pmuludq,
        M::Pmuldq => pmuldq,
        M::Pmaddwd => pmaddwd,
        M::Pmulhrsw => pmulhrsw,
        M::Pmaddubsw => pmaddubsw,
        M::Pand => pand,
        M::Pandn => pandn,
        M::Por => por,
        M::Pxor => pxor,
        M::Pcmpeqb => pcmpeqb,
        M::Pcmpeqw => pcmpeqw,
        M::Pcmpeqd => pcmpeqd,
        M::Pcmpeqq => pcmpeqq,
        M::Pcmpgtb => pcmpgtb,
        M::Pcmpgtw => pcmpgtw,
        M::Pcmpgtd => pcmpgtd,
        M::Pcmpgtq => pcmpgtq,
        M::Packsswb => packsswb,
        M::Packssdw => packssdw,
        M::Packuswb => packuswb,
        M::Packusdw => packusdw,
        M::Punpcklbw => punpcklbw,
        M::Punpcklwd => punpcklwd,
        M::Punpckldq => punpckldq,
        M::Punpcklqdq => punpcklqdq,
        M::Punpckhbw => punpckhbw,
        M::Punpckhwd => punpckhwd,
        M::Punpckhdq => punpckhdq,
        M::Punpckhqdq => punpckhqdq,
        M::Pavgb => pavgb,
        M::Pavgw => pavgw,
        M::Pminub => pminub,
        M::Pmaxub => pmaxub,
        M::Pminuw => pminuw,
        M::Pmaxuw => pmaxuw,
        M::Pminud => pminud,
        M::Pmaxud => pmaxud,
        M::Pminsb => pminsb,
        M::Pmaxsb => pmaxsb,
        M::Pminsw => pminsw,
        M::Pmaxsw => pmaxsw,
        M::Pminsd => pminsd,
        M::Pmaxsd => pmaxsd,
        M::Psadbw => psadbw,
        M::Phaddw => phaddw,
        M::Phaddd => phaddd,
        M::Phaddsw => phaddsw,
        M::Phsubw => phsubw,
        M::Phsubd => phsubd,
        M::Phsubsw => phsubsw,
        M::Psignb => psignb,
        M::Psignw => psignw,
        M::Psignd => psignd,
        M::Pabsb => pabsb,
        M::Pabsw => pabsw,
        M::Pabsd => pabsd,
        M::Pshufb => pshufb,
        M::Phminposuw => phminposuw,
        M::Palignr => palignr,
        M::Pblendw => pblendw,
        M::Mpsadbw => mpsadbw,
        M::Pshufw | M::Pshufd | M::Pshufhw | M::Pshuflw => pshuf,
        M::Psllw
        | M::Pslld
        | M::Psllq
        | M::Psrlw
        | M::Psrld
        | M::Psrlq
        | M::Psraw
        | M::Psrad
        | M::Pslldq
        | M::Psrldq => shift,
        M::Pmovsxbw
        | M::Pmovsxbd
        | M::Pmovsxbq
        | M::Pmovsxwd
        | M::Pmovsxwq
        | M::Pmovsxdq
        | M::Pmovzxbw
        | M::Pmovzxbd
        | M::Pmovzxbq
        | M::Pmovzxwd
        | M::Pmovzxwq
        | M::Pmovzxdq => pmovx,
        M::Pmovmskb => pmovmskb,
        M::Pextrb | M::Pextrw | M::Pextrd | M::Pextrq => pextr,
        M::Pinsrb | M::Pinsrw | M::Pinsrd | M::Pinsrq => pinsr,
        M::Ptest => ptest,
        M::Crc32 => crc32,
        M::Emms => emms,
        _ => return None,
    })
}
