//! SSE4.2 packed string comparisons PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM
//! (SDM vol. 2 §4.1, "Imm8 control byte operation").

use super::int::{lane, put};
use super::{check_sse, imm8, src, vreg};
use crate::cpu::exec::{Handler, Insn};
use crate::cpu::flags::{AF, CF, OF, PF, SF, ZF};
use crate::cpu::{reg, Cpu, R};
use iced_x86::{Instruction, Mnemonic as M};

/// Valid length of an explicit-length operand: |len| saturated to `n`.
fn explicit_len(v: u64, wide: bool, n: u32) -> u32 {
    let abs = if wide {
        (v as i64).unsigned_abs()
    } else {
        (v as u32 as i32).unsigned_abs() as u64
    };
    abs.min(n as u64) as u32
}

/// Valid length of an implicit-length operand: up to the first zero
/// element.
fn implicit_len(v: u128, bits: u32, n: u32) -> u32 {
    (0..n).find(|&j| lane(v, bits, j) == 0).unwrap_or(n)
}

/// The comparison core: returns IntRes2 (one bit per element).
fn compare(a: u128, la: u32, b: u128, lb: u32, imm: u8) -> u32 {
    let words = imm & 1 != 0;
    let signed = imm & 2 != 0;
    let (bits, n) = if words { (16, 8) } else { (8, 16) };
    let elem = |v: u128, j: u32| -> i64 {
        let x = lane(v, bits, j);
        if signed {
            ((x << (64 - bits)) as i64) >> (64 - bits)
        } else {
            x as i64
        }
    };
    let av = |i: u32| i < la;
    let bv = |j: u32| j < lb;
    let mut r1 = 0u32;
    match (imm >> 2) & 3 {
        0 => {
            // Equal any: b[j] equals some valid a[i].
            for j in 0..n {
                if bv(j) && (0..la).any(|i| elem(a, i) == elem(b, j)) {
                    r1 |= 1 << j;
                }
            }
        }
        1 => {
            // Ranges: a[i] <= b[j] <= a[i+1] for some valid pair.
            for j in 0..n {
                if !bv(j) {
                    continue;
                }
                let x = elem(b, j);
                let hit = (0..n / 2).any(|p| {
                    let (lo, hi) = (2 * p, 2 * p + 1);
                    av(lo) && av(hi) && elem(a, lo) <= x && x <= elem(a, hi)
                });
                if hit {
                    r1 |= 1 << j;
                }
            }
        }
        2 => {
            // Equal each: both invalid → true, one invalid → false.
            for j in 0..n {
                let t = match (av(j), bv(j)) {
                    (true, true) => elem(a, j) == elem(b, j),
                    (false, false) => true,
                    _ => false,
                };
                if t {
                    r1 |= 1 << j;
                }
            }
        }
        _ => {
            // Equal ordered: a (the needle) matches b from position j; an
            // invalid needle element matches anything, a valid one never
            // matches an invalid haystack element.
            for j in 0..n {
                let t = (0..n - j).all(|k| {
                    if !av(k) {
                        true
                    } else if !bv(j + k) {
                        false
                    } else {
                        elem(a, k) == elem(b, j + k)
                    }
                });
                if t {
                    r1 |= 1 << j;
                }
            }
        }
    }
    let all = (1u32 << n) - 1;
    match (imm >> 4) & 3 {
        1 => !r1 & all,
        3 => (r1 ^ ((1u32 << lb) - 1)) & all,
        _ => r1,
    }
}

/// PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM.
fn pcmpstr(c: &mut Cpu, d: &Insn) -> R {
    check_sse(c, d)?;
    let imm = imm8(d);
    let words = imm & 1 != 0;
    let (bits, n) = if words { (16, 8) } else { (8, 16) };
    let b = src(c, d, 1)?;
    let a = vreg(c, d.ins.op0_register());
    let m = d.ins.mnemonic();
    let explicit = matches!(
        m,
        M::Pcmpestri | M::Pcmpestri64 | M::Pcmpestrm | M::Pcmpestrm64
    );
    let (la, lb) = if explicit {
        let wide = matches!(m, M::Pcmpestri64 | M::Pcmpestrm64);
        (
            explicit_len(c.gpr[reg::RAX], wide, n),
            explicit_len(c.gpr[reg::RDX], wide, n),
        )
    } else {
        (implicit_len(a, bits, n), implicit_len(b, bits, n))
    };
    let r2 = compare(a, la, b, lb, imm);
    if matches!(m, M::Pcmpestri | M::Pcmpestri64 | M::Pcmpistri) {
        let idx = if r2 == 0 {
            n
        } else if imm & 0x40 != 0 {
            31 - r2.leading_zeros()
        } else {
            r2.trailing_zeros()
        };
        c.gpr[reg::RCX] = idx as u64;
    } else {
        c.xmm[0] = if imm & 0x40 != 0 {
            let mut v = 0;
            for j in 0..n {
                if r2 & (1 << j) != 0 {
                    v |= put(u64::MAX, bits, j);
                }
            }
            v
        } else {
            r2 as u128
        };
    }
    let f = if r2 != 0 { CF } else { 0 }
        | if lb < n { ZF } else { 0 }
        | if la < n { SF } else { 0 }
        | if r2 & 1 != 0 { OF } else { 0 };
    c.flags.set_masked(f, CF | ZF | SF | OF | AF | PF);
    Ok(())
}

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    match ins.mnemonic() {
        M::Pcmpestri
        | M::Pcmpestri64
        | M::Pcmpestrm
        | M::Pcmpestrm64
        | M::Pcmpistri
        | M::Pcmpistrm => Some(pcmpstr),
        _ => None,
    }
}
