//! Floating-point operations executed by the host's SSE unit.
//!
//! Each operation loads a control word derived from the guest MXCSR into the
//! host MXCSR, runs the very instruction the guest asked for, collects the
//! exception flags it raised and restores the host MXCSR — all inside one
//! `asm!` block, so no Rust code ever runs under the guest's rounding mode.
//! All exceptions are masked while the host runs: the caller decides from
//! the flags whether the guest takes #XM (see `fp::finish`).

use core::arch::asm;
use core::arch::x86_64::__m128i;

/// MXCSR invalid-operation flag.
pub const IE: u32 = 1 << 0;
/// MXCSR denormal-operand flag.
pub const DE: u32 = 1 << 1;
/// MXCSR divide-by-zero flag.
pub const ZE: u32 = 1 << 2;
/// MXCSR overflow flag.
pub const OE: u32 = 1 << 3;
/// MXCSR underflow flag.
pub const UE: u32 = 1 << 4;
/// MXCSR precision flag.
pub const PE: u32 = 1 << 5;
/// MXCSR denormals-are-zeros.
pub const DAZ: u32 = 1 << 6;
/// MXCSR flush-to-zero.
pub const FZ: u32 = 1 << 15;

/// A host SSE operation on two XMM values (the destination first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Addps,
    Addss,
    Addpd,
    Addsd,
    Subps,
    Subss,
    Subpd,
    Subsd,
    Mulps,
    Mulss,
    Mulpd,
    Mulsd,
    Divps,
    Divss,
    Divpd,
    Divsd,
    Minps,
    Minss,
    Minpd,
    Minsd,
    Maxps,
    Maxss,
    Maxpd,
    Maxsd,
    Sqrtps,
    Sqrtss,
    Sqrtpd,
    Sqrtsd,
    Rcpps,
    Rcpss,
    Rsqrtps,
    Rsqrtss,
    Cmpps(u8),
    Cmpss(u8),
    Cmppd(u8),
    Cmpsd(u8),
    Cvtdq2ps,
    Cvtps2dq,
    Cvttps2dq,
    Cvtdq2pd,
    Cvtpd2dq,
    Cvttpd2dq,
    Cvtps2pd,
    Cvtpd2ps,
    Cvtss2sd,
    Cvtsd2ss,
    Addsubps,
    Addsubpd,
    Haddps,
    Haddpd,
    Hsubps,
    Hsubpd,
    Roundps(u8),
    Roundpd(u8),
    Roundss(u8),
    Roundsd(u8),
}

/// The host MXCSR used to run a guest operation: the guest's DAZ, rounding
/// control and FTZ, every exception masked and no flag set. FTZ is dropped
/// when the guest unmasks underflow, which disables flushing (SDM vol. 1
/// §10.2.3.3).
#[inline(always)]
pub fn host_csr(guest: u32) -> u32 {
    let mut v = (guest & 0xffc0) | 0x1f80;
    if guest & (UE << 7) == 0 {
        v &= !FZ;
    }
    v
}

#[inline(always)]
fn to_m(v: u128) -> __m128i {
    // SAFETY: u128 and __m128i are both 16 plain bytes; any bit pattern is
    // valid for either.
    unsafe { core::mem::transmute::<u128, __m128i>(v) }
}

#[inline(always)]
fn from_m(v: __m128i) -> u128 {
    // SAFETY: as in `to_m`.
    unsafe { core::mem::transmute::<__m128i, u128>(v) }
}

/// Runs `$text` (operands `{a}` inout and `{b}` in) under the MXCSR in
/// `$buf[0]`, saving the host MXCSR in `$buf[1]` and the resulting one in
/// `$buf[2]`.
macro_rules! guarded {
    ($text:expr, $buf:ident, $a:ident, $b:ident) => {
        // SAFETY: the block only touches the two XMM operands and the three
        // u32 of `$buf` (through a pointer to it, valid and writable for the
        // whole block); the host MXCSR is restored before the block ends, and
        // every exception is masked in the loaded MXCSR so nothing traps.
        unsafe {
            asm!(
                "stmxcsr [{p} + 4]",
                "ldmxcsr [{p}]",
                $text,
                "stmxcsr [{p} + 8]",
                "ldmxcsr [{p} + 4]",
                p = in(reg) $buf.as_mut_ptr(),
                a = inout(xmm_reg) $a,
                b = in(xmm_reg) $b,
                options(nostack, preserves_flags),
            )
        }
    };
}

/// One arm per listed immediate.
macro_rules! with_imm {
    ($imm:expr, $ins:literal, $buf:ident, $a:ident, $b:ident; $($n:literal)*) => {
        match $imm {
            $( $n => guarded!(concat!($ins, " {a}, {b}, ", $n), $buf, $a, $b), )*
            _ => {}
        }
    };
}

/// Runs `op` on `a` (destination) and `b` (source) with guest MXCSR `csr`
/// (see [`host_csr`]); returns the destination and the flags raised.
pub fn run(op: Op, a: u128, b: u128, csr: u32) -> (u128, u32) {
    let mut buf = [csr, 0u32, 0u32];
    let mut x = to_m(a);
    let y = to_m(b);
    match op {
        Op::Addps => guarded!("addps {a}, {b}", buf, x, y),
        Op::Addss => guarded!("addss {a}, {b}", buf, x, y),
        Op::Addpd => guarded!("addpd {a}, {b}", buf, x, y),
        Op::Addsd => guarded!("addsd {a}, {b}", buf, x, y),
        Op::Subps => guarded!("subps {a}, {b}", buf, x, y),
        Op::Subss => guarded!("subss {a}, {b}", buf, x, y),
        Op::Subpd => guarded!("subpd {a}, {b}", buf, x, y),
        Op::Subsd => guarded!("subsd {a}, {b}", buf, x, y),
        Op::Mulps => guarded!("mulps {a}, {b}", buf, x, y),
        Op::Mulss => guarded!("mulss {a}, {b}", buf, x, y),
        Op::Mulpd => guarded!("mulpd {a}, {b}", buf, x, y),
        Op::Mulsd => guarded!("mulsd {a}, {b}", buf, x, y),
        Op::Divps => guarded!("divps {a}, {b}", buf, x, y),
        Op::Divss => guarded!("divss {a}, {b}", buf, x, y),
        Op::Divpd => guarded!("divpd {a}, {b}", buf, x, y),
        Op::Divsd => guarded!("divsd {a}, {b}", buf, x, y),
        Op::Minps => guarded!("minps {a}, {b}", buf, x, y),
        Op::Minss => guarded!("minss {a}, {b}", buf, x, y),
        Op::Minpd => guarded!("minpd {a}, {b}", buf, x, y),
        Op::Minsd => guarded!("minsd {a}, {b}", buf, x, y),
        Op::Maxps => guarded!("maxps {a}, {b}", buf, x, y),
        Op::Maxss => guarded!("maxss {a}, {b}", buf, x, y),
        Op::Maxpd => guarded!("maxpd {a}, {b}", buf, x, y),
        Op::Maxsd => guarded!("maxsd {a}, {b}", buf, x, y),
        Op::Sqrtps => guarded!("sqrtps {a}, {b}", buf, x, y),
        Op::Sqrtss => guarded!("sqrtss {a}, {b}", buf, x, y),
        Op::Sqrtpd => guarded!("sqrtpd {a}, {b}", buf, x, y),
        Op::Sqrtsd => guarded!("sqrtsd {a}, {b}", buf, x, y),
        Op::Rcpps => guarded!("rcpps {a}, {b}", buf, x, y),
        Op::Rcpss => guarded!("rcpss {a}, {b}", buf, x, y),
        Op::Rsqrtps => guarded!("rsqrtps {a}, {b}", buf, x, y),
        Op::Rsqrtss => guarded!("rsqrtss {a}, {b}", buf, x, y),
        Op::Cmpps(i) => with_imm!(i & 7, "cmpps", buf, x, y; 0 1 2 3 4 5 6 7),
        Op::Cmpss(i) => with_imm!(i & 7, "cmpss", buf, x, y; 0 1 2 3 4 5 6 7),
        Op::Cmppd(i) => with_imm!(i & 7, "cmppd", buf, x, y; 0 1 2 3 4 5 6 7),
        Op::Cmpsd(i) => with_imm!(i & 7, "cmpsd", buf, x, y; 0 1 2 3 4 5 6 7),
        Op::Cvtdq2ps => guarded!("cvtdq2ps {a}, {b}", buf, x, y),
        Op::Cvtps2dq => guarded!("cvtps2dq {a}, {b}", buf, x, y),
        Op::Cvttps2dq => guarded!("cvttps2dq {a}, {b}", buf, x, y),
        Op::Cvtdq2pd => guarded!("cvtdq2pd {a}, {b}", buf, x, y),
        Op::Cvtpd2dq => guarded!("cvtpd2dq {a}, {b}", buf, x, y),
        Op::Cvttpd2dq => guarded!("cvttpd2dq {a}, {b}", buf, x, y),
        Op::Cvtps2pd => guarded!("cvtps2pd {a}, {b}", buf, x, y),
        Op::Cvtpd2ps => guarded!("cvtpd2ps {a}, {b}", buf, x, y),
        Op::Cvtss2sd => guarded!("cvtss2sd {a}, {b}", buf, x, y),
        Op::Cvtsd2ss => guarded!("cvtsd2ss {a}, {b}", buf, x, y),
        Op::Addsubps => guarded!("addsubps {a}, {b}", buf, x, y),
        Op::Addsubpd => guarded!("addsubpd {a}, {b}", buf, x, y),
        Op::Haddps => guarded!("haddps {a}, {b}", buf, x, y),
        Op::Haddpd => guarded!("haddpd {a}, {b}", buf, x, y),
        Op::Hsubps => guarded!("hsubps {a}, {b}", buf, x, y),
        Op::Hsubpd => guarded!("hsubpd {a}, {b}", buf, x, y),
        Op::Roundps(i) => with_imm!(i & 15, "roundps", buf, x, y;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
        Op::Roundpd(i) => with_imm!(i & 15, "roundpd", buf, x, y;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
        Op::Roundss(i) => with_imm!(i & 15, "roundss", buf, x, y;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
        Op::Roundsd(i) => with_imm!(i & 15, "roundsd", buf, x, y;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
    }
    (from_m(x), buf[2] & 0x3f)
}

/// A conversion from a scalar in an XMM register to an integer register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToInt {
    Cvtss2si32,
    Cvtss2si64,
    Cvttss2si32,
    Cvttss2si64,
    Cvtsd2si32,
    Cvtsd2si64,
    Cvttsd2si32,
    Cvttsd2si64,
}

/// Runs `$text` (`{r}` an integer output, `{a}` an XMM input) guarded as in
/// `guarded!`.
macro_rules! guarded_out {
    ($text:expr, $buf:ident, $a:ident, $r:ident) => {
        // SAFETY: as in `guarded!`: only the operands and `$buf` are touched
        // and the host MXCSR is restored before the block ends.
        unsafe {
            asm!(
                "stmxcsr [{p} + 4]",
                "ldmxcsr [{p}]",
                $text,
                "stmxcsr [{p} + 8]",
                "ldmxcsr [{p} + 4]",
                p = in(reg) $buf.as_mut_ptr(),
                a = in(xmm_reg) $a,
                r = out(reg) $r,
                options(nostack, preserves_flags),
            )
        }
    };
}

/// Converts the low element of `a` to an integer; returns the value (a
/// 32-bit result zero-extended) and the flags raised.
pub fn to_int(op: ToInt, a: u128, csr: u32) -> (u64, u32) {
    let mut buf = [csr, 0u32, 0u32];
    let x = to_m(a);
    let r: u64;
    match op {
        ToInt::Cvtss2si32 => guarded_out!("cvtss2si {r:e}, {a}", buf, x, r),
        ToInt::Cvtss2si64 => guarded_out!("cvtss2si {r}, {a}", buf, x, r),
        ToInt::Cvttss2si32 => guarded_out!("cvttss2si {r:e}, {a}", buf, x, r),
        ToInt::Cvttss2si64 => guarded_out!("cvttss2si {r}, {a}", buf, x, r),
        ToInt::Cvtsd2si32 => guarded_out!("cvtsd2si {r:e}, {a}", buf, x, r),
        ToInt::Cvtsd2si64 => guarded_out!("cvtsd2si {r}, {a}", buf, x, r),
        ToInt::Cvttsd2si32 => guarded_out!("cvttsd2si {r:e}, {a}", buf, x, r),
        ToInt::Cvttsd2si64 => guarded_out!("cvttsd2si {r}, {a}", buf, x, r),
    }
    let r = match op {
        ToInt::Cvtss2si32 | ToInt::Cvttss2si32 | ToInt::Cvtsd2si32 | ToInt::Cvttsd2si32 => {
            r & 0xffff_ffff
        }
        _ => r,
    };
    (r, buf[2] & 0x3f)
}

/// A conversion from an integer to the low element of an XMM register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromInt {
    Cvtsi2ss32,
    Cvtsi2ss64,
    Cvtsi2sd32,
    Cvtsi2sd64,
}

/// Converts integer `v` into the low element of `a`; returns the register
/// and the flags raised.
pub fn from_int(op: FromInt, a: u128, v: u64, csr: u32) -> (u128, u32) {
    let mut buf = [csr, 0u32, 0u32];
    let mut x = to_m(a);
    macro_rules! go {
        ($text:expr) => {
            // SAFETY: as in `guarded!`: only the operands and `buf` are
            // touched and the host MXCSR is restored before the block ends.
            unsafe {
                asm!(
                    "stmxcsr [{p} + 4]",
                    "ldmxcsr [{p}]",
                    $text,
                    "stmxcsr [{p} + 8]",
                    "ldmxcsr [{p} + 4]",
                    p = in(reg) buf.as_mut_ptr(),
                    a = inout(xmm_reg) x,
                    v = in(reg) v,
                    options(nostack, preserves_flags),
                )
            }
        };
    }
    match op {
        FromInt::Cvtsi2ss32 => go!("cvtsi2ss {a}, {v:e}"),
        FromInt::Cvtsi2ss64 => go!("cvtsi2ss {a}, {v}"),
        FromInt::Cvtsi2sd32 => go!("cvtsi2sd {a}, {v:e}"),
        FromInt::Cvtsi2sd64 => go!("cvtsi2sd {a}, {v}"),
    }
    (from_m(x), buf[2] & 0x3f)
}

/// COMISS/UCOMISS/COMISD/UCOMISD: returns (ZF, PF, CF) and the flags raised.
pub fn compare(double: bool, unordered: bool, a: u128, b: u128, csr: u32) -> ([bool; 3], u32) {
    let mut buf = [csr, 0u32, 0u32];
    let x = to_m(a);
    let y = to_m(b);
    let (mut z, mut p, mut cf): (u8, u8, u8);
    macro_rules! go {
        ($text:expr) => {
            // SAFETY: as in `guarded!`; the block changes host RFLAGS, which
            // is declared by not using `preserves_flags`.
            unsafe {
                asm!(
                    "stmxcsr [{p} + 4]",
                    "ldmxcsr [{p}]",
                    $text,
                    "setz {z}",
                    "setp {pf}",
                    "setc {cf}",
                    "stmxcsr [{p} + 8]",
                    "ldmxcsr [{p} + 4]",
                    p = in(reg) buf.as_mut_ptr(),
                    a = in(xmm_reg) x,
                    b = in(xmm_reg) y,
                    z = out(reg_byte) z,
                    pf = out(reg_byte) p,
                    cf = out(reg_byte) cf,
                    options(nostack),
                )
            }
        };
    }
    match (double, unordered) {
        (false, false) => go!("comiss {a}, {b}"),
        (false, true) => go!("ucomiss {a}, {b}"),
        (true, false) => go!("comisd {a}, {b}"),
        (true, true) => go!("ucomisd {a}, {b}"),
    }
    ([z != 0, p != 0, cf != 0], buf[2] & 0x3f)
}

/// True when the host implements the SSE extension a guest instruction
/// needs (`level`: 3 = SSE3, 4 = SSSE3... the FP ones only use SSE3 and
/// SSE4.1).
pub fn host_has(level: u8) -> bool {
    match level {
        3 => std::arch::is_x86_feature_detected!("sse3"),
        41 => std::arch::is_x86_feature_detected!("sse4.1"),
        _ => true,
    }
}
