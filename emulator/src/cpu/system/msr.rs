//! Model-specific registers and the fast system-call instructions (SDM
//! vol. 4 for the MSRs; vol. 2 SYSCALL, SYSRET, SYSENTER, SYSEXIT, SWAPGS).

use super::super::exec::Insn;
use super::super::flags;
use super::super::ops_basic::canonical;
use super::super::{attr, efer, reg, Cpu, Exc, Segment, GS, R, SS};
use super::control::PHYS_BITS;
use iced_x86::Code;
use std::collections::HashSet;
use std::sync::Mutex;

/// MSR indices (SDM vol. 4 ch. 2).
pub(crate) mod idx {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_PLATFORM_ID.
    pub const PLATFORM_ID: u32 = 0x17;
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_FEATURE_CONTROL.
    pub const FEATURE_CONTROL: u32 = 0x3a;
    /// IA32_BIOS_SIGN_ID (microcode revision).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// IA32_MTRRCAP.
    pub const MTRRCAP: u32 = 0xfe;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MCG_CAP.
    pub const MCG_CAP: u32 = 0x179;
    /// IA32_MCG_STATUS.
    pub const MCG_STATUS: u32 = 0x17a;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_PHYSBASE0 (variable ranges: base/mask pairs up to 0x20f).
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    /// IA32_MTRR_FIX64K_00000.
    pub const MTRR_FIX64K: u32 = 0x250;
    /// IA32_MTRR_FIX16K_80000.
    pub const MTRR_FIX16K_80000: u32 = 0x258;
    /// IA32_MTRR_FIX16K_A0000.
    pub const MTRR_FIX16K_A0000: u32 = 0x259;
    /// IA32_MTRR_FIX4K_C0000 (through 0x26f).
    pub const MTRR_FIX4K_C0000: u32 = 0x268;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// IA32_EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// IA32_STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// IA32_FMASK.
    pub const FMASK: u32 = 0xc000_0084;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC_AUX.
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// MTRRcap: 8 variable ranges, fixed ranges, write-combining.
const MTRRCAP_VALUE: u64 = 8 | (1 << 8) | (1 << 10);
/// IA32_MISC_ENABLE bits that always read as 1: BTS and PEBS unavailable.
const MISC_ENABLE_FIXED: u64 = (1 << 11) | (1 << 12);
/// Microcode revision reported in IA32_BIOS_SIGN_ID[63:32].
const MICROCODE_REV: u64 = 1;

/// Unknown MSRs already logged (each logged once per process).
static LOGGED: Mutex<Option<HashSet<(u32, bool)>>> = Mutex::new(None);

fn unknown(index: u32, write: bool) -> Exc {
    if let Ok(mut g) = LOGGED.lock() {
        if g.get_or_insert_with(HashSet::new).insert((index, write)) {
            // Guests probe MSRs and expect #GP for absent ones (Linux's
            // rdmsr_safe): worth a note, not a warning on the console.
            tracing::info!(
                "{} of unknown MSR {index:#x}: raising #GP(0)",
                if write { "WRMSR" } else { "RDMSR" }
            );
        }
    }
    Exc::gp(0)
}

/// Index into `Msrs::mtrr_fixed` of a fixed-range MTRR.
fn fixed_mtrr(index: u32) -> Option<usize> {
    match index {
        idx::MTRR_FIX64K => Some(0),
        idx::MTRR_FIX16K_80000 => Some(1),
        idx::MTRR_FIX16K_A0000 => Some(2),
        0x268..=0x26f => Some(3 + (index - idx::MTRR_FIX4K_C0000) as usize),
        _ => None,
    }
}

/// True when every byte of `v` is a valid memory type for MTRRs (UC, WC,
/// WT, WP, WB).
fn valid_mtrr_types(v: u64) -> bool {
    v.to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6))
}

/// Mask of physical-address bits.
fn phys_mask() -> u64 {
    (1u64 << PHYS_BITS) - 1
}

fn require_canonical(v: u64) -> R<u64> {
    if canonical(v) {
        Ok(v)
    } else {
        Err(Exc::gp(0))
    }
}

impl Cpu {
    /// Reads MSR `index` (RDMSR semantics: unknown → #GP(0)).
    pub(crate) fn read_msr(&mut self, index: u32) -> R<u64> {
        if let Some(ic) = &self.intc {
            if let Some(v) = ic.read_msr(index, self.msr.tsc_offset) {
                return Ok(v);
            }
        }
        let m = &self.msr;
        Ok(match index {
            idx::TSC => self.tsc(),
            idx::PLATFORM_ID => 0,
            idx::APIC_BASE => m.apic_base,
            // Locked, VMX disabled.
            idx::FEATURE_CONTROL => 1,
            idx::BIOS_SIGN_ID => MICROCODE_REV << 32,
            idx::MTRRCAP => MTRRCAP_VALUE,
            idx::SYSENTER_CS => m.sysenter_cs,
            idx::SYSENTER_ESP => m.sysenter_esp,
            idx::SYSENTER_EIP => m.sysenter_eip,
            idx::MCG_CAP | idx::MCG_STATUS => 0,
            idx::MISC_ENABLE => m.misc_enable | MISC_ENABLE_FIXED,
            0x200..=0x20f => m.mtrr_var[(index - idx::MTRR_PHYS_BASE0) as usize],
            idx::PAT => m.pat,
            idx::MTRR_DEF_TYPE => m.mtrr_def_type,
            idx::EFER => self.efer,
            idx::STAR => m.star,
            idx::LSTAR => m.lstar,
            idx::CSTAR => m.cstar,
            idx::FMASK => m.sfmask,
            idx::FS_BASE => self.seg[super::super::FS].base,
            idx::GS_BASE => self.seg[GS].base,
            idx::KERNEL_GS_BASE => m.kernel_gs_base,
            idx::TSC_AUX => m.tsc_aux,
            _ => match fixed_mtrr(index) {
                Some(i) => m.mtrr_fixed[i],
                None => return Err(unknown(index, false)),
            },
        })
    }

    /// Writes MSR `index` (WRMSR semantics: reserved bits and unknown MSRs
    /// → #GP(0)).
    pub(crate) fn write_msr(&mut self, index: u32, v: u64) -> R {
        if let Some(ic) = &self.intc {
            if index == idx::APIC_BASE {
                let writable = (1 << 11) | (phys_mask() & !0xfff);
                if v & !(writable | (1 << 8)) != 0 {
                    return Err(Exc::gp(0));
                }
            }
            if ic.write_msr(index, v, self.msr.tsc_offset) {
                return Ok(());
            }
        }
        match index {
            idx::TSC => {
                let now = self.tsc();
                self.msr.tsc_offset = self.msr.tsc_offset.wrapping_add(v.wrapping_sub(now));
            }
            idx::APIC_BASE => {
                // Bit 8 (BSP) is read-only; x2APIC (bit 10) is not supported.
                let writable = (1 << 11) | (phys_mask() & !0xfff);
                if v & !(writable | (1 << 8)) != 0 {
                    return Err(Exc::gp(0));
                }
                self.msr.apic_base = (v & writable) | (self.msr.apic_base & (1 << 8));
            }
            // Writing 0 before CPUID(1) asks for the microcode revision.
            idx::BIOS_SIGN_ID => {}
            idx::SYSENTER_CS => self.msr.sysenter_cs = v & 0xffff_ffff,
            idx::SYSENTER_ESP => self.msr.sysenter_esp = require_canonical(v)?,
            idx::SYSENTER_EIP => self.msr.sysenter_eip = require_canonical(v)?,
            idx::MCG_STATUS if v == 0 => {}
            // Read-only registers.
            idx::PLATFORM_ID
            | idx::FEATURE_CONTROL
            | idx::MTRRCAP
            | idx::MCG_CAP
            | idx::MCG_STATUS => return Err(Exc::gp(0)),
            idx::MISC_ENABLE => self.msr.misc_enable = v,
            0x200..=0x20f => {
                let i = (index - idx::MTRR_PHYS_BASE0) as usize;
                let ok = if i.is_multiple_of(2) {
                    // PhysBase: type in 7:0, base from bit 12.
                    v & !(phys_mask() & !0xfff | 0xff) == 0 && matches!(v & 0xff, 0 | 1 | 4 | 5 | 6)
                } else {
                    // PhysMask: valid bit 11, mask from bit 12.
                    v & !(phys_mask() & !0xfff | 0x800) == 0
                };
                if !ok {
                    return Err(Exc::gp(0));
                }
                self.msr.mtrr_var[i] = v;
            }
            idx::PAT => {
                let ok = v
                    .to_le_bytes()
                    .iter()
                    .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7));
                if !ok {
                    return Err(Exc::gp(0));
                }
                self.msr.pat = v;
                self.flush_tlb(false);
            }
            idx::MTRR_DEF_TYPE => {
                if v & !0xcff != 0 || !matches!(v & 0xff, 0 | 1 | 4 | 5 | 6) {
                    return Err(Exc::gp(0));
                }
                self.msr.mtrr_def_type = v;
            }
            idx::EFER => {
                let writable = efer::SCE | efer::LME | efer::NXE;
                if v & !(writable | efer::LMA) != 0 {
                    return Err(Exc::gp(0));
                }
                if self.paging() && (v ^ self.efer) & efer::LME != 0 {
                    return Err(Exc::gp(0));
                }
                let old = self.efer;
                self.efer = (v & writable) | (old & efer::LMA);
                if (old ^ self.efer) & efer::NXE != 0 {
                    self.flush_tlb(false);
                }
            }
            idx::STAR => self.msr.star = v,
            idx::LSTAR => self.msr.lstar = require_canonical(v)?,
            idx::CSTAR => self.msr.cstar = require_canonical(v)?,
            idx::FMASK => self.msr.sfmask = v & 0xffff_ffff,
            idx::FS_BASE => self.seg[super::super::FS].base = require_canonical(v)?,
            idx::GS_BASE => self.seg[GS].base = require_canonical(v)?,
            idx::KERNEL_GS_BASE => self.msr.kernel_gs_base = require_canonical(v)?,
            idx::TSC_AUX => {
                if v >> 32 != 0 {
                    return Err(Exc::gp(0));
                }
                self.msr.tsc_aux = v;
            }
            _ => match fixed_mtrr(index) {
                Some(i) if valid_mtrr_types(v) => self.msr.mtrr_fixed[i] = v,
                Some(_) => return Err(Exc::gp(0)),
                None => return Err(unknown(index, true)),
            },
        }
        Ok(())
    }
}

/// RDMSR.
pub(super) fn rdmsr(c: &mut Cpu, _: &Insn) -> R {
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    let v = c.read_msr(c.gpr[reg::RCX] as u32)?;
    c.gpr[reg::RAX] = v & 0xffff_ffff;
    c.gpr[reg::RDX] = v >> 32;
    Ok(())
}

/// WRMSR.
pub(super) fn wrmsr(c: &mut Cpu, _: &Insn) -> R {
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    let v = (c.gpr[reg::RDX] << 32) | (c.gpr[reg::RAX] & 0xffff_ffff);
    c.write_msr(c.gpr[reg::RCX] as u32, v)?;
    c.stop_block = true;
    Ok(())
}

/// SWAPGS: exchanges GS.base and IA32_KERNEL_GS_BASE.
pub(super) fn swapgs(c: &mut Cpu, _: &Insn) -> R {
    if !c.mode64() {
        return Err(Exc::UD);
    }
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    std::mem::swap(&mut c.seg[GS].base, &mut c.msr.kernel_gs_base);
    Ok(())
}

/// A flat 4 GiB code segment at privilege `dpl`: 64-bit or 32-bit.
fn flat_code(sel: u16, dpl: u8, long: bool) -> Segment {
    let size = if long { attr::L } else { attr::DB };
    Segment {
        selector: sel,
        base: 0,
        limit: 0xffff_ffff,
        attr: attr::P | attr::S | attr::G | size | ((dpl as u16) << 5) | 0xb,
    }
}

/// A flat 4 GiB writable data (stack) segment at privilege `dpl`.
fn flat_data(sel: u16, dpl: u8) -> Segment {
    Segment {
        selector: sel,
        base: 0,
        limit: 0xffff_ffff,
        attr: attr::P | attr::S | attr::G | attr::DB | ((dpl as u16) << 5) | 0x3,
    }
}

/// SYSCALL: in IA-32e mode only (64-bit via LSTAR, compatibility via CSTAR).
pub(super) fn syscall(c: &mut Cpu, _: &Insn) -> R {
    if c.efer & efer::SCE == 0 || !c.long_mode() {
        return Err(Exc::UD);
    }
    let sel = ((c.msr.star >> 32) as u16) & 0xfffc;
    let from64 = c.mode64();
    c.gpr[reg::RCX] = c.rip;
    c.gpr[11] = c.flags.get() & !flags::RF;
    let target = if from64 { c.msr.lstar } else { c.msr.cstar };
    let mask = c.msr.sfmask | flags::RF | flags::VM;
    c.flags.set_masked(0, mask);
    c.seg[SS] = flat_data(sel.wrapping_add(8), 0);
    c.commit_cs(flat_code(sel, 0, true), 0, target);
    Ok(())
}

/// SYSRET: back to ring 3 in 64-bit (REX.W) or compatibility mode.
pub(super) fn sysret(c: &mut Cpu, d: &Insn) -> R {
    if c.efer & efer::SCE == 0 || !c.mode64() {
        return Err(Exc::UD);
    }
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    let to64 = d.ins.code() == Code::Sysretq;
    let rcx = c.gpr[reg::RCX];
    if to64 && !canonical(rcx) {
        return Err(Exc::gp(0));
    }
    let base = (c.msr.star >> 48) as u16;
    let (cs, rip) = if to64 {
        (flat_code(base.wrapping_add(16) | 3, 3, true), rcx)
    } else {
        (flat_code(base | 3, 3, false), rcx & 0xffff_ffff)
    };
    // SS keeps a flat ring-3 data descriptor; only its selector comes from STAR.
    c.seg[SS] = flat_data(base.wrapping_add(8) | 3, 3);
    c.flags.set((c.gpr[11] & 0x3c_7fd7) | 2);
    c.commit_cs(cs, 3, rip);
    Ok(())
}

/// SYSENTER: to ring 0 with CS/EIP/ESP from the SYSENTER MSRs.
pub(super) fn sysenter(c: &mut Cpu, _: &Insn) -> R {
    let sel = (c.msr.sysenter_cs as u16) & 0xfffc;
    if !c.protected() || sel == 0 {
        return Err(Exc::gp(0));
    }
    let long = c.long_mode();
    c.flags.set_masked(0, flags::VM | flags::IF | flags::RF);
    c.seg[SS] = flat_data(sel.wrapping_add(8), 0);
    let (rip, rsp) = if long {
        (c.msr.sysenter_eip, c.msr.sysenter_esp)
    } else {
        (
            c.msr.sysenter_eip & 0xffff_ffff,
            c.msr.sysenter_esp & 0xffff_ffff,
        )
    };
    c.gpr[reg::RSP] = rsp;
    c.commit_cs(flat_code(sel, 0, long), 0, rip);
    Ok(())
}

/// SYSEXIT: to ring 3 with EIP = EDX, ESP = ECX (RDX/RCX with REX.W).
pub(super) fn sysexit(c: &mut Cpu, d: &Insn) -> R {
    let sel = (c.msr.sysenter_cs as u16) & 0xfffc;
    if !c.protected() || c.v86() || c.cpl != 0 || sel == 0 {
        return Err(Exc::gp(0));
    }
    let to64 = d.ins.code() == Code::Sysexitq;
    let (rip, rsp) = (c.gpr[reg::RDX], c.gpr[reg::RCX]);
    if to64 && (!canonical(rip) || !canonical(rsp)) {
        return Err(Exc::gp(0));
    }
    let (cs, ss, rip, rsp) = if to64 {
        (
            flat_code(sel.wrapping_add(32) | 3, 3, true),
            flat_data(sel.wrapping_add(40) | 3, 3),
            rip,
            rsp,
        )
    } else {
        (
            flat_code(sel.wrapping_add(16) | 3, 3, false),
            flat_data(sel.wrapping_add(24) | 3, 3),
            rip & 0xffff_ffff,
            rsp & 0xffff_ffff,
        )
    };
    c.seg[SS] = ss;
    c.gpr[reg::RSP] = rsp;
    c.commit_cs(cs, 3, rip);
    Ok(())
}
