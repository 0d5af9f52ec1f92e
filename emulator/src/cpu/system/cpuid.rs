//! CPUID (SDM vol. 2 CPUID): an honest description of what this CPU
//! implements.

// Optional instruction-set features. The lead sets these once the SSE and
// integer helpers report what they implement; every CPUID bit for them comes
// from `cpuid_features()`.

/// SSE3 (leaf 1 ECX[0]).
pub(crate) const HAS_SSE3: bool = true;
/// SSSE3 (leaf 1 ECX[9]).
pub(crate) const HAS_SSSE3: bool = true;
/// SSE4.1 (leaf 1 ECX[19]).
pub(crate) const HAS_SSE41: bool = true;
/// SSE4.2 (leaf 1 ECX[20]).
pub(crate) const HAS_SSE42: bool = true;
/// POPCNT (leaf 1 ECX[23]).
pub(crate) const HAS_POPCNT: bool = true;
/// CMPXCHG16B (leaf 1 ECX[13]).
pub(crate) const HAS_CX16: bool = true;
/// MOVBE (leaf 1 ECX[22]).
pub(crate) const HAS_MOVBE: bool = true;
/// BMI1 (leaf 7 EBX[3]).
pub(crate) const HAS_BMI1: bool = true;
/// BMI2 (leaf 7 EBX[8]).
pub(crate) const HAS_BMI2: bool = true;
/// LZCNT (leaf 0x80000001 ECX[5]).
pub(crate) const HAS_LZCNT: bool = true;

use super::super::exec::Insn;
use super::super::{reg, Cpu, R};

/// Feature words that depend on the optional instruction sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Features {
    /// Leaf 1 ECX.
    pub leaf1_ecx: u32,
    /// Leaf 7 subleaf 0 EBX.
    pub leaf7_ebx: u32,
    /// Leaf 0x80000001 ECX.
    pub ext1_ecx: u32,
}

const fn bit(on: bool, n: u32) -> u32 {
    if on {
        1 << n
    } else {
        0
    }
}

/// The optional feature bits, from the constants above.
pub(crate) const fn cpuid_features() -> Features {
    Features {
        leaf1_ecx: bit(HAS_SSE3, 0)
            | bit(HAS_SSSE3, 9)
            | bit(HAS_CX16, 13)
            | bit(HAS_SSE41, 19)
            | bit(HAS_SSE42, 20)
            | bit(HAS_MOVBE, 22)
            | bit(HAS_POPCNT, 23)
            // Running under a hypervisor.
            | (1 << 31),
        // Bits 6 and 13: the x87 pointer model (FDP updated only on unmasked
        // exceptions; FCS/FDS always 0).
        leaf7_ebx: bit(HAS_BMI1, 3) | bit(HAS_BMI2, 8) | (1 << 6) | (1 << 13),
        // LAHF/SAHF in 64-bit mode.
        ext1_ecx: 1 | bit(HAS_LZCNT, 5),
    }
}

/// Highest basic leaf.
const MAX_BASIC: u32 = 0x16;
/// Highest extended leaf.
const MAX_EXT: u32 = 0x8000_0008;
/// Family 6, model 0x55, stepping 4.
const SIGNATURE: u32 = (0x5 << 16) | (6 << 8) | (0x5 << 4) | 4;

/// Leaf 1 EDX: FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP, MTRR, PGE,
/// CMOV, PAT, PSE-36, CLFSH, MMX, FXSR, SSE, SSE2.
const LEAF1_EDX: u32 = (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);

/// Leaf 0x80000001 EDX: SYSCALL, NX, 1-GiB pages, RDTSCP, LM.
const EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29);

/// Packs 12 ASCII bytes into three little-endian words.
fn words(s: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    (w(0), w(4), w(8))
}

/// 48-byte processor brand string (NUL padded).
fn brand() -> [u8; 48] {
    let mut b = [0u8; 48];
    let s = b"Vireo Virtual CPU";
    b[..s.len()].copy_from_slice(s);
    b
}

/// One deterministic-cache-parameters subleaf (leaf 4): type (1 data,
/// 2 instruction, 3 unified), level, ways, sets; 64-byte lines.
fn cache_leaf(typ: u32, level: u32, ways: u32, sets: u32) -> [u32; 4] {
    [
        typ | (level << 5) | (1 << 8),
        (ways - 1) << 22 | 63,
        sets - 1,
        0,
    ]
}

/// CPUID leaf `leaf`, subleaf `sub`: [EAX, EBX, ECX, EDX].
pub(crate) fn cpuid_leaf(leaf: u32, sub: u32) -> [u32; 4] {
    let f = cpuid_features();
    match leaf {
        0 => {
            // EBX, EDX, ECX.
            let (w0, w1, w2) = words(b"GenuineIntel");
            [MAX_BASIC, w0, w2, w1]
        }
        // EBX: CLFLUSH line size 8 × 8 bytes; one logical processor.
        1 => [SIGNATURE, 8 << 8, f.leaf1_ecx, LEAF1_EDX],
        // One iteration; descriptor 0xFF: see leaf 4.
        2 => [0x0000_ff01, 0, 0, 0],
        3 => [0; 4],
        4 => match sub {
            0 => cache_leaf(1, 1, 8, 64),
            1 => cache_leaf(2, 1, 8, 64),
            2 => cache_leaf(3, 2, 16, 1024),
            _ => [0; 4],
        },
        5 => [0; 4],
        // ARAT: the local APIC timer keeps running in deep C-states.
        6 => [1 << 2, 0, 0, 0],
        7 => match sub {
            0 => [0, f.leaf7_ebx, 0, 0],
            _ => [0; 4],
        },
        // TSC and core crystal clock: a 1 GHz crystal, TSC = crystal × 1/1
        // (the TSC counts host nanoseconds; the local APIC timer runs off
        // the same 1 GHz), so the guest need not calibrate either.
        0x15 => [1, 1, 1_000_000_000, 0],
        // Base, maximum and bus frequency in MHz.
        0x16 => [1000, 1000, 1000, 0],
        8..=0x14 => [0; 4],
        0x4000_0000 => {
            // EBX, ECX, EDX.
            let (w0, w1, w2) = words(b"VireoVireoVi");
            [0x4000_0000, w0, w1, w2]
        }
        0x4000_0001..=0x4fff_ffff => [0; 4],
        0x8000_0000 => [MAX_EXT, 0, 0, 0],
        0x8000_0001 => [0, 0, f.ext1_ecx, EXT1_EDX],
        0x8000_0002..=0x8000_0004 => {
            let b = brand();
            let base = (leaf - 0x8000_0002) as usize * 16;
            let w = |i: usize| {
                let o = base + i * 4;
                u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
            };
            [w(0), w(1), w(2), w(3)]
        }
        0x8000_0005 => [0; 4],
        // L2: 1 MiB, 16-way (code 8), 64-byte lines.
        0x8000_0006 => [0, 0, (1024 << 16) | (8 << 12) | 64, 0],
        // Invariant TSC.
        0x8000_0007 => [0, 0, 0, 1 << 8],
        // 40-bit physical, 48-bit linear addresses.
        0x8000_0008 => [(48 << 8) | super::control::PHYS_BITS, 0, 0, 0],
        // Beyond the maximum: the highest basic leaf's data, as Intel does.
        _ => cpuid_leaf(MAX_BASIC, sub),
    }
}

/// CPUID.
pub(super) fn cpuid(c: &mut Cpu, _: &Insn) -> R {
    let leaf = c.gpr[reg::RAX] as u32;
    let mut r = cpuid_leaf(leaf, c.gpr[reg::RCX] as u32);
    if leaf == 1 {
        match c.intc.as_ref().and_then(|ic| ic.apic_id()) {
            // Initial APIC ID; TSC-deadline timer mode.
            Some(id) => {
                r[1] |= (id as u32) << 24;
                r[2] |= 1 << 24;
            }
            // No local APIC attached.
            None => r[3] &= !(1 << 9),
        }
    }
    c.gpr[reg::RAX] = r[0] as u64;
    c.gpr[reg::RBX] = r[1] as u64;
    c.gpr[reg::RCX] = r[2] as u64;
    c.gpr[reg::RDX] = r[3] as u64;
    Ok(())
}
