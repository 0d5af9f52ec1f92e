//! SSE/SSE2/SSE3/SSE4.1 floating-point instructions (SDM vol. 1 §10.4,
//! §11.4, §12.3, §12.10): arithmetic, comparisons, conversions, rounding
//! and dot products, computed by the host ([`super::host`]) and followed by
//! the SIMD floating-point exception logic of SDM vol. 1 §11.5.

use super::host::{self, FromInt, Op, ToInt, DAZ, DE, IE, OE, PE, UE, ZE};
use super::{
    check_sse, check_sse_mm, imm8, mmx_transition, set_vreg, simd_exception, src, uses_mm, vreg,
};
use crate::cpu::exec::{Handler, Insn};
use crate::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use crate::cpu::{Cpu, R};
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

/// Element type of a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    F32,
    F64,
    I32,
}

impl Ty {
    fn bits(self) -> u32 {
        match self {
            Ty::F64 => 64,
            _ => 32,
        }
    }
    /// A value that every operation handles exactly and without any flag.
    fn neutral(self) -> u64 {
        match self {
            Ty::F32 => 0x3f80_0000,
            Ty::F64 => 0x3ff0_0000_0000_0000,
            Ty::I32 => 1,
        }
    }
}

/// The rounding step whose exactness decides PE under an unmasked overflow
/// or underflow (SDM vol. 1 §11.5.2.3–4: the result is rounded to the
/// destination precision with an unbounded exponent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    /// Cannot overflow or underflow.
    None,
    Add,
    Sub,
    Mul,
    Div,
    /// ADDSUBPS/PD: even lanes subtract, odd lanes add.
    AddSub,
    /// Double → single conversion.
    Narrow,
}

/// How result lanes depend on source lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Only lane 0 is computed.
    Scalar,
    /// Result lane j from source lane j of both operands, for j < n.
    Packed(u8),
    /// HADD/HSUB with n result lanes: the first half from pairs of the
    /// destination, the second from pairs of the source.
    Horiz(u8),
}

/// What the exception logic needs to know about an operation.
#[derive(Debug, Clone, Copy)]
struct Spec {
    src: Ty,
    out: Ty,
    shape: Shape,
    arith: Arith,
}

const fn spec(src: Ty, out: Ty, shape: Shape, arith: Arith) -> Spec {
    Spec {
        src,
        out,
        shape,
        arith,
    }
}

#[inline(always)]
fn lane(v: u128, bits: u32, j: u32) -> u64 {
    let m = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (v >> (bits * j)) as u64 & m
}

#[inline(always)]
fn set_lane(v: u128, bits: u32, j: u32, x: u64) -> u128 {
    let m: u128 = if bits == 64 {
        u64::MAX as u128
    } else {
        (1u128 << bits) - 1
    };
    (v & !(m << (bits * j))) | ((x as u128 & m) << (bits * j))
}

/// Replaces every lane of `v` whose bit is clear in `keep` by the neutral
/// value.
fn neutralize(v: u128, ty: Ty, keep: u32) -> u128 {
    let bits = ty.bits();
    let mut r = v;
    for j in 0..128 / bits {
        if keep & (1 << j) == 0 {
            r = set_lane(r, bits, j, ty.neutral());
        }
    }
    r
}

/// The operands of result lane `j` with every other source lane neutral.
fn isolate(s: Spec, a: u128, b: u128, j: u32) -> (u128, u128) {
    match s.shape {
        Shape::Horiz(n) => {
            let half = n as u32 / 2;
            let pair = 3 << (2 * (j % half));
            if j < half {
                (neutralize(a, s.src, pair), neutralize(b, s.src, 0))
            } else {
                (neutralize(a, s.src, 0), neutralize(b, s.src, pair))
            }
        }
        _ => (neutralize(a, s.src, 1 << j), neutralize(b, s.src, 1 << j)),
    }
}

/// A lane value as f64 (exact), after DAZ.
fn lane_f64(v: u128, ty: Ty, j: u32, daz: bool) -> f64 {
    let x = lane(v, ty.bits(), j);
    match ty {
        Ty::F32 => {
            let mut b = x as u32;
            if daz && b & 0x7f80_0000 == 0 {
                b &= 0x8000_0000;
            }
            f32::from_bits(b) as f64
        }
        Ty::F64 => {
            let mut b = x;
            if daz && b & 0x7ff0_0000_0000_0000 == 0 {
                b &= 1 << 63;
            }
            f64::from_bits(b)
        }
        Ty::I32 => x as u32 as i32 as f64,
    }
}

/// Significant bits of a finite f64.
fn sig_bits(x: f64) -> u32 {
    let b = x.to_bits();
    let frac = b & ((1 << 52) - 1);
    let m = if (b >> 52) & 0x7ff == 0 {
        frac
    } else {
        frac | 1 << 52
    };
    if m == 0 {
        0
    } else {
        64 - m.leading_zeros() - m.trailing_zeros()
    }
}

/// `x` = m·2^e with |m| in [1, 2) (x finite, non-zero).
fn split(x: f64) -> (f64, i32) {
    let mut b = x.to_bits();
    let mut adj = 0;
    if (b >> 52) & 0x7ff == 0 {
        b = (x * f64::from_bits(0x43f0_0000_0000_0000)).to_bits(); // × 2^64
        adj = -64;
    }
    let e = ((b >> 52) & 0x7ff) as i32 - 1023 + adj;
    let m = f64::from_bits((b & !(0x7ff << 52)) | (1023 << 52));
    (m, e)
}

/// x·2^k, exact when the result is a normal number.
fn ldexp(mut x: f64, mut k: i32) -> f64 {
    while k > 500 {
        x *= f64::from_bits((1023 + 500) << 52);
        k -= 500;
    }
    while k < -500 {
        x *= f64::from_bits((1023 - 500) << 52);
        k += 500;
    }
    x * f64::from_bits(((1023 + k) as u64) << 52)
}

/// x op y rounded to nearest and whether that was exact (error-free
/// transformations; no overflow or underflow may occur).
fn exact_op(o: Arith, x: f64, y: f64) -> (f64, bool) {
    match o {
        Arith::Sub => exact_op(Arith::Add, x, -y),
        Arith::Mul => {
            let p = x * y;
            (p, x.mul_add(y, -p) == 0.0)
        }
        Arith::Div => {
            let q = x / y;
            if !q.is_finite() || y == 0.0 {
                return (q, true);
            }
            (q, (-q).mul_add(y, x) == 0.0)
        }
        _ => {
            let s = x + y;
            let bb = s - x;
            let err = (x - (s - bb)) + (y - bb);
            (s, err == 0.0)
        }
    }
}

/// Whether x op y, rounded to the precision of `ty` with an unbounded
/// exponent, is inexact.
fn scaled_inexact(o: Arith, ty: Ty, x: f64, y: f64) -> bool {
    if !x.is_finite() || !y.is_finite() {
        return false;
    }
    match (o, ty) {
        (Arith::Narrow, _) => sig_bits(x) > 24,
        (_, Ty::F64) => match o {
            Arith::Mul | Arith::Div => {
                if x == 0.0 || y == 0.0 {
                    return false;
                }
                let (mx, _) = split(x);
                let (my, _) = split(y);
                !exact_op(o, mx, my).1
            }
            _ => {
                let y = if o == Arith::Sub { -y } else { y };
                if x == 0.0 || y == 0.0 {
                    return false;
                }
                let (ex, ey) = (split(x).1, split(y).1);
                if (ex - ey).abs() > 60 {
                    return true;
                }
                let k = -ex.max(ey);
                !exact_op(Arith::Add, ldexp(x, k), ldexp(y, k)).1
            }
        },
        _ => {
            let (r, exact) = exact_op(o, x, y);
            !exact || sig_bits(r) > 24
        }
    }
}

fn is_denormal(v: u128, ty: Ty, j: u32) -> bool {
    let x = lane(v, ty.bits(), j);
    match ty {
        Ty::F32 => x & 0x7f80_0000 == 0 && x & 0x7f_ffff != 0,
        Ty::F64 => x & 0x7ff0_0000_0000_0000 == 0 && x & ((1 << 52) - 1) != 0,
        Ty::I32 => false,
    }
}

/// The flags of result lane `j` (`f` from the masked host run, `r` its
/// result) as the hardware reports them when overflow or underflow is
/// unmasked.
fn refine(mxcsr: u32, s: Spec, a: u128, b: u128, j: u32, f: u32, r: u128) -> u32 {
    let unmasked = !(mxcsr >> 7) & 0x3f;
    if s.arith == Arith::None || unmasked & (OE | UE) == 0 {
        return f;
    }
    let daz = mxcsr & DAZ != 0;
    let (o, x, y) = match (s.shape, s.arith) {
        (Shape::Horiz(n), o) => {
            let half = n as u32 / 2;
            let v = if j < half { a } else { b };
            let k = 2 * (j % half);
            (
                o,
                lane_f64(v, s.src, k, daz),
                lane_f64(v, s.src, k + 1, daz),
            )
        }
        (_, Arith::Narrow) => (Arith::Narrow, lane_f64(b, s.src, j, daz), 0.0),
        (_, Arith::AddSub) => {
            let o = if j.is_multiple_of(2) {
                Arith::Sub
            } else {
                Arith::Add
            };
            (o, lane_f64(a, s.src, j, daz), lane_f64(b, s.src, j, daz))
        }
        (_, o) => (o, lane_f64(a, s.src, j, daz), lane_f64(b, s.src, j, daz)),
    };
    let ty = s.out;
    let mut f = f;
    if f & OE != 0 && unmasked & OE != 0 {
        f = (f & !(OE | PE)) | OE | if scaled_inexact(o, ty, x, y) { PE } else { 0 };
    }
    if unmasked & UE != 0 && (f & UE != 0 || is_denormal(r, s.out, j)) {
        f = (f & !(UE | PE)) | UE | if scaled_inexact(o, ty, x, y) { PE } else { 0 };
    }
    f
}

/// Applies the flags `f` of a masked host run of `op` on (`a`, `b`)
/// giving `r` (SDM vol. 1 §11.5.2): with no unmasked exception the flags
/// are ORed into MXCSR; otherwise the flags of the exceptions the hardware
/// reports are set (only pre-computation ones — IE, DE, ZE — of all lanes
/// if any of those is unmasked) and #XM/#UD is raised, leaving the
/// destination unchanged.
fn finish(c: &mut Cpu, op: Op, s: Spec, a: u128, b: u128, r: u128, f: u32) -> R {
    let unmasked = !(c.mxcsr >> 7) & 0x3f;
    let ue_check = unmasked & UE != 0 && s.arith != Arith::None;
    if f & unmasked == 0 && !ue_check {
        c.mxcsr |= f;
        return Ok(());
    }
    let csr = host::host_csr(c.mxcsr);
    let (mut pre, mut all) = (0, 0);
    let n = match s.shape {
        Shape::Scalar => 1,
        Shape::Packed(n) | Shape::Horiz(n) => n as u32,
    };
    for j in 0..n {
        let (fj, rj) = if n == 1 {
            (f, r)
        } else {
            let (x, y) = isolate(s, a, b, j);
            let (rj, fj) = host::run(op, x, y, csr);
            (fj, rj)
        };
        let fl = refine(c.mxcsr, s, a, b, j, fj, rj);
        pre |= fl & (IE | DE | ZE);
        all |= fl;
    }
    let flags = if pre & unmasked != 0 { pre } else { all };
    c.mxcsr |= flags;
    if flags & unmasked != 0 {
        return Err(simd_exception(c));
    }
    Ok(())
}

/// Runs `op` on the destination (operand 0) and source (operand 1) and
/// writes the destination, after the exception logic.
fn exec(c: &mut Cpu, d: &Insn, op: Op, s: Spec) -> R {
    check_sse(c, d)?;
    let dst = d.ins.op0_register();
    let b = src(c, d, 1)?;
    let a = vreg(c, dst);
    let (r, f) = host::run(op, a, b, host::host_csr(c.mxcsr));
    finish(c, op, s, a, b, r, f)?;
    set_vreg(c, dst, r);
    Ok(())
}

use Arith as A;
use Shape::{Horiz, Packed, Scalar};
use Ty::{F32, F64, I32};

const PS: Spec = spec(F32, F32, Packed(4), A::None);
const SS: Spec = spec(F32, F32, Scalar, A::None);
const PD: Spec = spec(F64, F64, Packed(2), A::None);
const SD: Spec = spec(F64, F64, Scalar, A::None);

const fn with(s: Spec, arith: Arith) -> Spec {
    Spec { arith, ..s }
}

macro_rules! fp_ops {
    ($($name:ident => $op:expr, $spec:expr;)*) => {
        $( fn $name(c: &mut Cpu, d: &Insn) -> R { exec(c, d, $op, $spec) } )*
    };
}

fp_ops! {
    addps => Op::Addps, with(PS, A::Add);
    addss => Op::Addss, with(SS, A::Add);
    addpd => Op::Addpd, with(PD, A::Add);
    addsd => Op::Addsd, with(SD, A::Add);
    subps => Op::Subps, with(PS, A::Sub);
    subss => Op::Subss, with(SS, A::Sub);
    subpd => Op::Subpd, with(PD, A::Sub);
    subsd => Op::Subsd, with(SD, A::Sub);
    mulps => Op::Mulps, with(PS, A::Mul);
    mulss => Op::Mulss, with(SS, A::Mul);
    mulpd => Op::Mulpd, with(PD, A::Mul);
    mulsd => Op::Mulsd, with(SD, A::Mul);
    divps => Op::Divps, with(PS, A::Div);
    divss => Op::Divss, with(SS, A::Div);
    divpd => Op::Divpd, with(PD, A::Div);
    divsd => Op::Divsd, with(SD, A::Div);
    minps => Op::Minps, PS;
    minss => Op::Minss, SS;
    minpd => Op::Minpd, PD;
    minsd => Op::Minsd, SD;
    maxps => Op::Maxps, PS;
    maxss => Op::Maxss, SS;
    maxpd => Op::Maxpd, PD;
    maxsd => Op::Maxsd, SD;
    sqrtps => Op::Sqrtps, PS;
    sqrtss => Op::Sqrtss, SS;
    sqrtpd => Op::Sqrtpd, PD;
    sqrtsd => Op::Sqrtsd, SD;
    rcpps => Op::Rcpps, PS;
    rcpss => Op::Rcpss, SS;
    rsqrtps => Op::Rsqrtps, PS;
    rsqrtss => Op::Rsqrtss, SS;
    cvtdq2ps => Op::Cvtdq2ps, spec(I32, F32, Packed(4), A::None);
    cvtps2dq => Op::Cvtps2dq, spec(F32, I32, Packed(4), A::None);
    cvttps2dq => Op::Cvttps2dq, spec(F32, I32, Packed(4), A::None);
    cvtdq2pd => Op::Cvtdq2pd, spec(I32, F64, Packed(2), A::None);
    cvtpd2dq => Op::Cvtpd2dq, spec(F64, I32, Packed(2), A::None);
    cvttpd2dq => Op::Cvttpd2dq, spec(F64, I32, Packed(2), A::None);
    cvtps2pd => Op::Cvtps2pd, spec(F32, F64, Packed(2), A::None);
    cvtpd2ps => Op::Cvtpd2ps, spec(F64, F32, Packed(2), A::Narrow);
    cvtss2sd => Op::Cvtss2sd, spec(F32, F64, Scalar, A::None);
    cvtsd2ss => Op::Cvtsd2ss, spec(F64, F32, Scalar, A::Narrow);
}

macro_rules! fp_ops_sse3 {
    ($($name:ident => $op:expr, $spec:expr;)*) => {
        $( fn $name(c: &mut Cpu, d: &Insn) -> R {
            if !host::host_has(3) {
                return Err(c.unimplemented(&d.ins));
            }
            exec(c, d, $op, $spec)
        } )*
    };
}

fp_ops_sse3! {
    addsubps => Op::Addsubps, with(PS, A::AddSub);
    addsubpd => Op::Addsubpd, with(PD, A::AddSub);
    haddps => Op::Haddps, spec(F32, F32, Horiz(4), A::Add);
    haddpd => Op::Haddpd, spec(F64, F64, Horiz(2), A::Add);
    hsubps => Op::Hsubps, spec(F32, F32, Horiz(4), A::Sub);
    hsubpd => Op::Hsubpd, spec(F64, F64, Horiz(2), A::Sub);
}

/// CMPPS/CMPSS/CMPPD/CMPSD (SDM vol. 2): predicate imm8[2:0].
fn cmp(c: &mut Cpu, d: &Insn) -> R {
    let p = imm8(d) & 7;
    let (op, s) = match d.ins.mnemonic() {
        M::Cmpps => (Op::Cmpps(p), PS),
        M::Cmpss => (Op::Cmpss(p), SS),
        M::Cmppd => (Op::Cmppd(p), PD),
        _ => (Op::Cmpsd(p), SD),
    };
    exec(c, d, op, s)
}

/// ROUNDPS/PD/SS/SD (SSE4.1).
fn round(c: &mut Cpu, d: &Insn) -> R {
    if !host::host_has(41) {
        return Err(c.unimplemented(&d.ins));
    }
    let i = imm8(d) & 15;
    let (op, s) = match d.ins.mnemonic() {
        M::Roundps => (Op::Roundps(i), PS),
        M::Roundss => (Op::Roundss(i), SS),
        M::Roundpd => (Op::Roundpd(i), PD),
        _ => (Op::Roundsd(i), SD),
    };
    exec(c, d, op, s)
}

/// Lane permutation: lane j of the result is lane `j ^ x` of `v`.
fn xor_lanes(v: u128, bits: u32, x: u32) -> u128 {
    let mut r = 0;
    for j in 0..128 / bits {
        r = set_lane(r, bits, j, lane(v, bits, j ^ x));
    }
    r
}

/// DPPS/DPPD (SSE4.1), one step at a time as the hardware does it (an
/// unmasked exception stops it at the step that raised it, with only the
/// flags up to that step): unselected products are +0.0 without being
/// computed; then for DPPS lane j gets (t[j^1] + t[j]) + (t[j^3] + t[j^2]),
/// for DPPD t[j] + t[j^1] (the operand order shows in which NaN
/// propagates); imm8[3:0] (imm8[1:0]) picks the lanes that keep the sum.
fn dp(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let i = imm8(d);
    let dps = d.ins.mnemonic() == M::Dpps;
    let dst = d.ins.op0_register();
    let b = src(c, d, 1)?;
    let a = vreg(c, dst);
    let (bits, n) = if dps { (32, 4) } else { (64, 2) };
    let (mut x, mut y) = (a, b);
    for j in 0..n {
        if i & (0x10 << j) == 0 {
            x = set_lane(x, bits, j, 0);
            y = set_lane(y, bits, j, 0);
        }
    }
    let (mul, add, p) = if dps {
        (Op::Mulps, Op::Addps, PS)
    } else {
        (Op::Mulpd, Op::Addpd, PD)
    };
    let step = |c: &mut Cpu, op: Op, arith: Arith, x: u128, y: u128| -> R<u128> {
        let (r, f) = host::run(op, x, y, host::host_csr(c.mxcsr));
        finish(c, op, with(p, arith), x, y, r, f)?;
        Ok(r)
    };
    let t = step(c, mul, A::Mul, x, y)?;
    let sum = if dps {
        let s = step(c, add, A::Add, xor_lanes(t, 32, 1), t)?;
        step(c, add, A::Add, s, xor_lanes(s, 32, 2))?
    } else {
        step(c, add, A::Add, t, xor_lanes(t, 64, 1))?
    };
    let mut out = 0;
    for j in 0..n {
        if i & (1 << j) != 0 {
            out = set_lane(out, bits, j, lane(sum, bits, j));
        }
    }
    set_vreg(c, dst, out);
    Ok(())
}

/// COMISS/UCOMISS/COMISD/UCOMISD: ZF, PF, CF from the comparison; OF, SF
/// and AF cleared.
fn comi(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let (double, unordered) = match d.ins.mnemonic() {
        M::Comiss => (false, false),
        M::Ucomiss => (false, true),
        M::Comisd => (true, false),
        _ => (true, true),
    };
    let b = src(c, d, 1)?;
    let a = vreg(c, d.ins.op0_register());
    let ([z, p, cf], f) = host::compare(double, unordered, a, b, host::host_csr(c.mxcsr));
    finish(c, Op::Addss, if double { SD } else { SS }, a, b, 0, f)?;
    let v = if z { ZF } else { 0 } | if p { PF } else { 0 } | if cf { CF } else { 0 };
    c.flags.set_masked(v, ZF | PF | CF | OF | SF | AF);
    Ok(())
}

/// CVTSS2SI/CVTTSS2SI/CVTSD2SI/CVTTSD2SI r32/r64, xmm/m.
fn cvt_to_int(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let w64 = d.ins.op0_register().is_gpr64();
    let op = match (d.ins.mnemonic(), w64) {
        (M::Cvtss2si, false) => ToInt::Cvtss2si32,
        (M::Cvtss2si, true) => ToInt::Cvtss2si64,
        (M::Cvttss2si, false) => ToInt::Cvttss2si32,
        (M::Cvttss2si, true) => ToInt::Cvttss2si64,
        (M::Cvtsd2si, false) => ToInt::Cvtsd2si32,
        (M::Cvtsd2si, true) => ToInt::Cvtsd2si64,
        (M::Cvttsd2si, false) => ToInt::Cvttsd2si32,
        _ => ToInt::Cvttsd2si64,
    };
    let b = src(c, d, 1)?;
    let (v, f) = host::to_int(op, b, host::host_csr(c.mxcsr));
    finish(c, Op::Addss, SS, 0, b, 0, f)?;
    c.set_reg(d.ins.op0_register(), v);
    Ok(())
}

/// CVTSI2SS/CVTSI2SD xmm, r/m32 or r/m64.
fn cvt_from_int(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let w64 = match d.ins.op1_kind() {
        OpKind::Register => d.ins.op1_register().is_gpr64(),
        _ => d.ins.memory_size().size() == 8,
    };
    let op = match (d.ins.mnemonic(), w64) {
        (M::Cvtsi2ss, false) => FromInt::Cvtsi2ss32,
        (M::Cvtsi2ss, true) => FromInt::Cvtsi2ss64,
        (_, false) => FromInt::Cvtsi2sd32,
        _ => FromInt::Cvtsi2sd64,
    };
    let v = src(c, d, 1)? as u64;
    let dst = d.ins.op0_register();
    let a = vreg(c, dst);
    let (r, f) = host::from_int(op, a, v, host::host_csr(c.mxcsr));
    finish(c, Op::Addss, SS, a, 0, r, f)?;
    set_vreg(c, dst, r);
    Ok(())
}

/// CVTPI2PS/CVTPI2PD xmm, mm/m64: two integers to floats. An MMX register
/// source transitions the x87 to MMX mode.
fn cvtpi2p(c: &mut Cpu, d: &Insn) -> R {
    check_sse_mm(c, d)?;
    let b = src(c, d, 1)? & u64::MAX as u128;
    let dst = d.ins.op0_register();
    let a = vreg(c, dst);
    let (op, s) = if d.ins.mnemonic() == M::Cvtpi2ps {
        (Op::Cvtdq2ps, spec(I32, F32, Packed(2), A::None))
    } else {
        (Op::Cvtdq2pd, spec(I32, F64, Packed(2), A::None))
    };
    let (r, f) = host::run(op, a, b, host::host_csr(c.mxcsr));
    finish(c, op, s, a, b, r, f)?;
    let r = if op == Op::Cvtdq2ps {
        (a & !(u64::MAX as u128)) | (r & u64::MAX as u128)
    } else {
        r
    };
    if uses_mm(&d.ins) {
        mmx_transition(c);
    }
    set_vreg(c, dst, r);
    Ok(())
}

/// CVTPS2PI/CVTTPS2PI/CVTPD2PI/CVTTPD2PI mm, xmm/m: two floats to
/// integers in an MMX register.
fn cvtp2pi(c: &mut Cpu, d: &Insn) -> R {
    check_sse_mm(c, d)?;
    let (op, s, b) = match d.ins.mnemonic() {
        M::Cvtps2pi | M::Cvttps2pi => {
            let b = src(c, d, 1)? & u64::MAX as u128;
            let op = if d.ins.mnemonic() == M::Cvtps2pi {
                Op::Cvtps2dq
            } else {
                Op::Cvttps2dq
            };
            (op, spec(F32, I32, Packed(2), A::None), b)
        }
        m => {
            let b = src(c, d, 1)?;
            let op = if m == M::Cvtpd2pi {
                Op::Cvtpd2dq
            } else {
                Op::Cvttpd2dq
            };
            (op, spec(F64, I32, Packed(2), A::None), b)
        }
    };
    let (r, f) = host::run(op, 0, b, host::host_csr(c.mxcsr));
    finish(c, op, s, 0, b, r, f)?;
    set_vreg(c, d.ins.op0_register(), r & u64::MAX as u128);
    Ok(())
}

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Addps => addps,
        M::Addss => addss,
        M::Addpd => addpd,
        M::Addsd => addsd,
        M::Subps => subps,
        M::Subss => subss,
        M::Subpd => subpd,
        M::Subsd => subsd,
        M::Mulps => mulps,
        M::Mulss => mulss,
        M::Mulpd => mulpd,
        M::Mulsd => mulsd,
        M::Divps => divps,
        M::Divss => divss,
        M::Divpd => divpd,
        M::Divsd => divsd,
        M::Minps => minps,
        M::Minss => minss,
        M::Minpd => minpd,
        M::Minsd => minsd,
        M::Maxps => maxps,
        M::Maxss => maxss,
        M::Maxpd => maxpd,
        M::Maxsd => maxsd,
        M::Sqrtps => sqrtps,
        M::Sqrtss => sqrtss,
        M::Sqrtpd => sqrtpd,
        M::Sqrtsd => sqrtsd,
        M::Rcpps => rcpps,
        M::Rcpss => rcpss,
        M::Rsqrtps => rsqrtps,
        M::Rsqrtss => rsqrtss,
        M::Cmpps | M::Cmpss | M::Cmppd => cmp,
        M::Cmpsd if ins.code() == Code::Cmpsd_xmm_xmmm64_imm8 => cmp,
        M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd => comi,
        M::Cvtdq2ps => cvtdq2ps,
        M::Cvtps2dq => cvtps2dq,
        M::Cvttps2dq => cvttps2dq,
        M::Cvtdq2pd => cvtdq2pd,
        M::Cvtpd2dq => cvtpd2dq,
        M::Cvttpd2dq => cvttpd2dq,
        M::Cvtps2pd => cvtps2pd,
        M::Cvtpd2ps => cvtpd2ps,
        M::Cvtss2sd => cvtss2sd,
        M::Cvtsd2ss => cvtsd2ss,
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => cvt_to_int,
        M::Cvtsi2ss | M::Cvtsi2sd => cvt_from_int,
        M::Cvtpi2ps | M::Cvtpi2pd => cvtpi2p,
        M::Cvtps2pi | M::Cvttps2pi | M::Cvtpd2pi | M::Cvttpd2pi => cvtp2pi,
        M::Addsubps => addsubps,
        M::Addsubpd => addsubpd,
        M::Haddps => haddps,
        M::Haddpd => haddpd,
        M::Hsubps => hsubps,
        M::Hsubpd => hsubpd,
        M::Roundps | M::Roundpd | M::Roundss | M::Roundsd => round,
        M::Dpps | M::Dppd => dp,
        _ => return None,
    })
}
