//! Control and debug registers and the remaining privileged instructions
//! (SDM vol. 3 §2.5–2.8, vol. 2 MOV CR/DR, CLTS, LMSW, SMSW, INVLPG, RDTSC).

use super::super::exec::Insn;
use super::super::flags::size_mask;
use super::super::{cr0, cr4, efer, reg, Cpu, Exc, CS, R};
use super::{cr_dr_index, store_word_operand};
use iced_x86::OpKind;

/// CR0 bits that exist; the other low bits are ignored on writes.
const CR0_BITS: u64 = cr0::PE
    | cr0::MP
    | cr0::EM
    | cr0::TS
    | cr0::ET
    | cr0::NE
    | cr0::WP
    | cr0::AM
    | cr0::NW
    | cr0::CD
    | cr0::PG;

/// CR4 bits this CPU supports (matching CPUID); others raise #GP.
const CR4_BITS: u64 = cr4::TSD
    | cr4::DE
    | cr4::PSE
    | cr4::PAE
    | cr4::MCE
    | cr4::PGE
    | cr4::PCE
    | cr4::OSFXSR
    | cr4::OSXMMEXCPT;

/// Physical-address width reported by CPUID 0x80000008.
pub(crate) const PHYS_BITS: u32 = 40;

fn require_cpl0(c: &Cpu) -> R {
    if c.cpl != 0 {
        Err(Exc::gp(0))
    } else {
        Ok(())
    }
}

impl Cpu {
    /// Writes CR0 with the checks of MOV CR0 (SDM vol. 2 MOV CR; vol. 3
    /// §9.8.5 for IA-32e mode activation).
    pub(crate) fn write_cr0(&mut self, v: u64) -> R {
        if v >> 32 != 0 {
            return Err(Exc::gp(0));
        }
        let v = (v & CR0_BITS) | cr0::ET;
        if (v & cr0::PG != 0 && v & cr0::PE == 0) || (v & cr0::NW != 0 && v & cr0::CD == 0) {
            return Err(Exc::gp(0));
        }
        let old = self.cr0;
        let pg_on = old & cr0::PG == 0 && v & cr0::PG != 0;
        let pg_off = old & cr0::PG != 0 && v & cr0::PG == 0;
        if pg_on && self.efer & efer::LME != 0 {
            if self.cr4 & cr4::PAE == 0 || self.seg[CS].attr & super::super::attr::L != 0 {
                return Err(Exc::gp(0));
            }
            self.efer |= efer::LMA;
        }
        if pg_off && self.long_mode() {
            if self.mode64() {
                return Err(Exc::gp(0));
            }
            self.efer &= !efer::LMA;
        }
        self.cr0 = v;
        if v & cr0::PE == 0 {
            self.cpl = 0;
        }
        // Translations change with PG and WP only: PE alone (real-mode
        // switches, which BIOS callers make for every service) keeps
        // linear = physical, and PG cannot be on without PE.
        if (old ^ v) & (cr0::PG | cr0::WP) != 0 {
            self.flush_tlb(false);
        }
        self.stop_block = true;
        Ok(())
    }

    /// Writes CR3: reserved bits above the physical-address width raise #GP.
    pub(crate) fn write_cr3(&mut self, v: u64) -> R {
        if v >> PHYS_BITS != 0 {
            return Err(Exc::gp(0));
        }
        self.cr3 = v;
        self.flush_tlb(true);
        self.stop_block = true;
        Ok(())
    }

    /// Writes CR4: unsupported bits raise #GP; clearing PAE in IA-32e mode
    /// too.
    pub(crate) fn write_cr4(&mut self, v: u64) -> R {
        if v & !CR4_BITS != 0 || (self.long_mode() && v & cr4::PAE == 0) {
            return Err(Exc::gp(0));
        }
        let old = self.cr4;
        self.cr4 = v;
        if (old ^ v) & (cr4::PGE | cr4::PAE | cr4::PSE) != 0 {
            self.flush_tlb(false);
        }
        self.stop_block = true;
        Ok(())
    }
}

/// MOV CRn, reg.
pub(super) fn mov_to_cr(c: &mut Cpu, d: &Insn) -> R {
    require_cpl0(c)?;
    let n = cr_dr_index(d.ins.op0_register());
    let v = c.get_reg(d.ins.op1_register());
    match n {
        0 => c.write_cr0(v),
        2 => {
            c.cr2 = v;
            Ok(())
        }
        3 => c.write_cr3(v),
        4 => c.write_cr4(v),
        8 => {
            if v & !0xf != 0 {
                return Err(Exc::gp(0));
            }
            c.cr8 = v;
            if let Some(ic) = &c.intc {
                ic.set_tpr((v as u8) << 4);
            }
            c.stop_block = true;
            Ok(())
        }
        _ => Err(Exc::UD),
    }
}

/// MOV reg, CRn.
pub(super) fn mov_from_cr(c: &mut Cpu, d: &Insn) -> R {
    require_cpl0(c)?;
    let v = match cr_dr_index(d.ins.op1_register()) {
        0 => c.cr0,
        2 => c.cr2,
        3 => c.cr3,
        4 => c.cr4,
        8 => match c.intc.as_ref().and_then(|ic| ic.tpr()) {
            Some(tpr) => (tpr >> 4) as u64,
            None => c.cr8,
        },
        _ => return Err(Exc::UD),
    };
    let r = d.ins.op0_register();
    c.set_reg(r, v & size_mask(r.size() as u8));
    Ok(())
}

/// Debug register index after DR4/DR5 aliasing (#UD with CR4.DE).
fn dr_index(c: &Cpu, n: usize) -> R<usize> {
    match n {
        0..=3 | 6 | 7 => Ok(n),
        4 | 5 if c.cr4 & cr4::DE == 0 => Ok(n + 2),
        _ => Err(Exc::UD),
    }
}

/// MOV DRn, reg (breakpoints are stored, not armed).
pub(super) fn mov_to_dr(c: &mut Cpu, d: &Insn) -> R {
    require_cpl0(c)?;
    let n = dr_index(c, cr_dr_index(d.ins.op0_register()))?;
    let v = c.get_reg(d.ins.op1_register());
    match n {
        6 | 7 if v >> 32 != 0 => return Err(Exc::gp(0)),
        6 => c.dr[6] = (v & 0xe00f) | 0xffff_0ff0,
        7 => c.dr[7] = (v & 0xffff_2bff) | 0x400,
        _ => c.dr[n] = v,
    }
    Ok(())
}

/// MOV reg, DRn.
pub(super) fn mov_from_dr(c: &mut Cpu, d: &Insn) -> R {
    require_cpl0(c)?;
    let n = dr_index(c, cr_dr_index(d.ins.op1_register()))?;
    let r = d.ins.op0_register();
    c.set_reg(r, c.dr[n] & size_mask(r.size() as u8));
    Ok(())
}

/// CLTS.
pub(super) fn clts(c: &mut Cpu, _: &Insn) -> R {
    require_cpl0(c)?;
    c.cr0 &= !cr0::TS;
    Ok(())
}

/// LMSW: loads PE, MP, EM, TS; cannot clear PE.
pub(super) fn lmsw(c: &mut Cpu, d: &Insn) -> R {
    require_cpl0(c)?;
    let v = c.rd(d, 0, 2)? & 0xf;
    let new = (c.cr0 & !0xe) | v;
    c.write_cr0(new)
}

/// SMSW: stores CR0 (16 bits to memory).
pub(super) fn smsw(c: &mut Cpu, d: &Insn) -> R {
    if d.ins.op0_kind() == OpKind::Register {
        let r = d.ins.op0_register();
        c.set_reg(r, c.cr0 & size_mask(r.size() as u8));
        Ok(())
    } else {
        let v = c.cr0;
        store_word_operand(c, d, v)
    }
}

/// INVLPG.
pub(super) fn invlpg(c: &mut Cpu, d: &Insn) -> R {
    require_cpl0(c)?;
    if d.ins.op0_kind() != OpKind::Memory {
        return Err(Exc::UD);
    }
    let lin = c.lin(c.mem_seg(d), c.ea(d));
    c.tlb.flush_page(lin);
    c.cache.jmp_flush_page(lin);
    c.stop_block = true;
    Ok(())
}

/// WBINVD/INVD: caches are not modelled.
pub(super) fn wbinvd(c: &mut Cpu, _: &Insn) -> R {
    require_cpl0(c)
}

fn check_tsd(c: &Cpu) -> R {
    if c.cr4 & cr4::TSD != 0 && c.cpl != 0 && c.protected() {
        Err(Exc::gp(0))
    } else {
        Ok(())
    }
}

fn set_edx_eax(c: &mut Cpu, v: u64) {
    c.gpr[reg::RAX] = v & 0xffff_ffff;
    c.gpr[reg::RDX] = v >> 32;
}

/// RDTSC.
pub(super) fn rdtsc(c: &mut Cpu, _: &Insn) -> R {
    check_tsd(c)?;
    let t = c.tsc();
    set_edx_eax(c, t);
    Ok(())
}

/// RDTSCP: RDTSC plus IA32_TSC_AUX in ECX.
pub(super) fn rdtscp(c: &mut Cpu, _: &Insn) -> R {
    check_tsd(c)?;
    let t = c.tsc();
    set_edx_eax(c, t);
    c.gpr[reg::RCX] = c.msr.tsc_aux & 0xffff_ffff;
    Ok(())
}

/// RDPMC: no performance counters exist.
pub(super) fn rdpmc(_: &mut Cpu, _: &Insn) -> R {
    Err(Exc::gp(0))
}
