//! Runs cases on the software CPU (`vireo_emulator::cpu::Cpu`).
//!
//! Guest RAM holds a GDT, IDTs whose gates lead to `HLT` stubs, and page
//! tables identity-mapping the system pages, the code page and the data
//! buffer (nothing else is mapped, so a wrong effective address faults).
//! 64-bit cases run in long mode (CS.L), 32-bit cases in 32-bit protected
//! mode with 32-bit paging (flat CS with D), both at CPL 0, one instruction a
//! `Cpu::step` until RIP reaches the end of the sequence or an exception is
//! raised (`Cpu::last_exception`).

use super::{
    Case, FinalState, Outcome, X87State, CODE_ADDR, CODE_PAGES, CODE_SIZE, DATA_ADDR, DATA_SIZE,
};
use std::sync::Arc;
use vireo_emulator::bus::AddressSpace;
use vireo_emulator::cpu::{
    attr, cr0, cr4, efer, Cpu, CpuExit, DescriptorTable, Segment, CS, DS, ES, FS, GS, SS,
};
use vireo_emulator::memory::GuestRam;

const RAM_SIZE: u64 = 2 << 20;
const GDT: u64 = 0x1000;
const IDT64: u64 = 0x2000;
const IDT32: u64 = 0x3000;
const HANDLERS: u64 = 0x4000;
const PML4: u64 = 0x5000;
const PDPT: u64 = 0x6000;
const PD64: u64 = 0x7000;
const PT64: u64 = 0x8000;
const PD32: u64 = 0x9000;
const PT32: u64 = 0xa000;
const SYS_END: u64 = 0xb000;

const SEL_CODE64: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_CODE32: u16 = 0x18;

/// Steps allowed before a run counts as hung (REP loops may take one step per
/// iteration).
const MAX_STEPS: usize = 100_000;

/// Runs cases on a software CPU, reusing one guest memory.
pub struct EmuRunner {
    cpu: Cpu,
    space: Arc<AddressSpace>,
}

fn gate64(handler: u64, sel: u16) -> [u8; 16] {
    let lo = (handler & 0xffff)
        | ((sel as u64) << 16)
        | (0x8eu64 << 40)
        | (((handler >> 16) & 0xffff) << 48);
    let hi = handler >> 32;
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&lo.to_le_bytes());
    g[8..].copy_from_slice(&hi.to_le_bytes());
    g
}

fn gate32(handler: u64, sel: u16) -> [u8; 8] {
    let v = (handler & 0xffff)
        | ((sel as u64) << 16)
        | (0x8eu64 << 40)
        | (((handler >> 16) & 0xffff) << 48);
    v.to_le_bytes()
}

impl EmuRunner {
    /// Builds the guest memory (descriptor tables, handlers, page tables).
    pub fn new() -> Result<EmuRunner, String> {
        let ram = GuestRam::new(RAM_SIZE).map_err(|e| e.to_string())?;
        let space = Arc::new(AddressSpace::new(ram));
        let ram = &space.ram;
        let w64 = |a: u64, v: u64| ram.write_bytes(a, &v.to_le_bytes());
        // GDT: null, 64-bit code, data, 32-bit code (all DPL 0).
        w64(GDT + 8, 0x00af_9b00_0000_ffff);
        w64(GDT + 16, 0x00cf_9300_0000_ffff);
        w64(GDT + 24, 0x00cf_9b00_0000_ffff);
        // IDTs: vector v → HANDLERS + 16 v, which holds HLT.
        for v in 0..32u64 {
            let h = HANDLERS + 16 * v;
            ram.write_bytes(h, &[0xf4; 16]);
            ram.write_bytes(IDT64 + 16 * v, &gate64(h, SEL_CODE64));
            ram.write_bytes(IDT32 + 8 * v, &gate32(h, SEL_CODE32));
        }
        // Identity maps of the pages in use (4 KiB pages; RW; user for the
        // code and data pages).
        let mut pages: Vec<(u64, u64)> = (GDT..SYS_END).step_by(0x1000).map(|p| (p, 3)).collect();
        for p in (CODE_PAGES..CODE_PAGES + CODE_SIZE as u64).step_by(0x1000) {
            pages.push((p, 7));
        }
        for p in (DATA_ADDR..DATA_ADDR + DATA_SIZE as u64).step_by(0x1000) {
            pages.push((p, 7));
        }
        w64(PML4, PDPT | 7);
        w64(PDPT, PD64 | 7);
        w64(PD64, PT64 | 7);
        ram.write_u32(PD32, (PT32 | 7) as u32);
        for (p, f) in pages {
            w64(PT64 + 8 * ((p >> 12) & 0x1ff), p | f);
            ram.write_u32(PT32 + 4 * ((p >> 12) & 0x3ff), (p | f) as u32);
        }
        let cpu = Cpu::new(space.clone());
        Ok(EmuRunner { cpu, space })
    }

    fn setup(&mut self, c: &Case) {
        let cpu = &mut self.cpu;
        cpu.reset();
        let long = c.bitness == 64;
        cpu.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
        cpu.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT | if long { cr4::PAE } else { 0 };
        cpu.efer = if long { efer::LME | efer::LMA } else { 0 };
        cpu.cr3 = if long { PML4 } else { PD32 };
        cpu.gdtr = DescriptorTable {
            base: GDT,
            limit: 31,
        };
        // An empty IDT: an exception escalates to a triple fault before
        // anything is pushed, so the CPU stops at the faulting instruction
        // with its state (and the data buffer) exactly as the fault left
        // them, and `last_exception` names the instruction's exception.
        cpu.idtr = DescriptorTable {
            base: if long { IDT64 } else { IDT32 },
            limit: 0,
        };
        let data = Segment::flat32(SEL_DATA, false);
        for s in [ES, SS, DS, FS, GS] {
            cpu.seg[s] = data;
        }
        cpu.seg[CS] = if long {
            Segment {
                selector: SEL_CODE64,
                base: 0,
                limit: 0xffff_ffff,
                attr: attr::P | attr::S | attr::G | attr::L | 0xb,
            }
        } else {
            Segment::flat32(SEL_CODE32, true)
        };
        cpu.cpl = 0;
        let mask = if long { u64::MAX } else { 0xffff_ffff };
        for (i, g) in cpu.gpr.iter_mut().enumerate() {
            *g = if long || i < 8 {
                c.init.gpr[i] & mask
            } else {
                0
            };
        }
        cpu.rip = CODE_ADDR;
        cpu.flags
            .set((c.init.rflags & super::fl::COMPARED) | super::fl::IF | 2);
        cpu.xmm = c.init.xmm;
        if !long {
            for x in cpu.xmm[8..].iter_mut() {
                *x = 0;
            }
        }
        cpu.mxcsr = c.init.mxcsr;
        let x = &c.init.x87;
        cpu.x87.regs = x.regs;
        cpu.x87.top = x.top();
        cpu.x87.cw = x.cw;
        cpu.x87.sw = x.sw & !0x3800;
        cpu.x87.tag = x.tag_word();
        cpu.x87.fip = 0;
        cpu.x87.fcs = 0;
        cpu.x87.fdp = 0;
        cpu.x87.fds = 0;
        cpu.x87.fop = 0;
        cpu.last_exception = None;
        let ram = &self.space.ram;
        let mut page = vec![0xccu8; CODE_SIZE];
        let at = (CODE_ADDR - CODE_PAGES) as usize;
        page[at..at + c.code.len()].copy_from_slice(&c.code);
        // HLT after the sequence: where `run_blocks` stops.
        page[at + c.code.len()] = 0xf4;
        ram.write_bytes(CODE_PAGES, &page);
        ram.write_bytes(DATA_ADDR, &c.init.data);
    }

    fn state(&self, bitness: u32) -> FinalState {
        let cpu = &self.cpu;
        let mut gpr = cpu.gpr;
        let mut xmm = cpu.xmm;
        let mut rip = cpu.rip;
        let mut rflags = cpu.flags.get();
        if bitness == 32 {
            for g in gpr.iter_mut() {
                *g &= 0xffff_ffff;
            }
            for g in gpr[8..].iter_mut() {
                *g = 0;
            }
            for x in xmm[8..].iter_mut() {
                *x = 0;
            }
            rip &= 0xffff_ffff;
            rflags &= 0xffff_ffff;
        }
        let x = &cpu.x87;
        let mut valid = 0u8;
        for i in 0..8 {
            if (x.tag >> (2 * i)) & 3 != 3 {
                valid |= 1 << i;
            }
        }
        let x87 = X87State {
            cw: x.cw,
            sw: (x.sw & !0x3800) | (((x.top & 7) as u16) << 11),
            valid,
            regs: x.regs,
        };
        let mut data = vec![0u8; DATA_SIZE];
        self.space.ram.read_bytes(DATA_ADDR, &mut data);
        FinalState {
            gpr,
            rip,
            rflags,
            xmm,
            mxcsr: cpu.mxcsr,
            x87,
            data,
        }
    }

    /// Runs one case with `Cpu::run` (whole decoded blocks, as a guest
    /// runs) until the `HLT` placed after the sequence, or an exception.
    pub fn run_blocks(&mut self, c: &Case) -> Outcome {
        if c.bitness != 32 && c.bitness != 64 {
            return Outcome::Error(format!("bitness {} not supported", c.bitness));
        }
        if c.code.len() > super::MAX_CODE || c.init.data.len() != DATA_SIZE {
            return Outcome::Error("case too large or data buffer of the wrong size".into());
        }
        self.setup(c);
        let end = CODE_ADDR + c.code.len() as u64;
        let exit = self.cpu.run(MAX_STEPS as u64);
        if let Some(e) = self.cpu.last_exception.take() {
            let rip = self.cpu.rip;
            if (CODE_ADDR..end).contains(&rip) {
                return Outcome::Fault(e.vector, self.state(c.bitness));
            }
            return Outcome::Error(format!(
                "emulator (run mode): {} delivered, cannot report the state at the fault",
                super::vector_name(e.vector)
            ));
        }
        match exit {
            CpuExit::Halted if self.cpu.rip == end + 1 => {
                let mut st = self.state(c.bitness);
                st.rip = end;
                Outcome::Done(st)
            }
            e => Outcome::Error(format!(
                "emulator (run mode): stopped with {e:?} at {:#x}",
                self.cpu.rip
            )),
        }
    }

    /// Runs one case, one `Cpu::step` at a time.
    pub fn run(&mut self, c: &Case) -> Outcome {
        if c.bitness != 32 && c.bitness != 64 {
            return Outcome::Error(format!("bitness {} not supported", c.bitness));
        }
        if c.code.len() > super::MAX_CODE || c.init.data.len() != DATA_SIZE {
            return Outcome::Error("case too large or data buffer of the wrong size".into());
        }
        self.setup(c);
        let end = CODE_ADDR + c.code.len() as u64;
        for _ in 0..MAX_STEPS {
            if self.cpu.rip == end {
                return Outcome::Done(self.state(c.bitness));
            }
            let before = self.state(c.bitness);
            self.cpu.last_exception = None;
            let exit = self.cpu.step();
            if let Some(e) = self.cpu.last_exception.take() {
                let rip = self.cpu.rip;
                // Without delivery the CPU stops at the faulting instruction;
                // with delivery it enters a handler: report the state before.
                let st = if (CODE_ADDR..end).contains(&rip) {
                    self.state(c.bitness)
                } else {
                    before
                };
                return Outcome::Fault(e.vector, st);
            }
            match exit {
                CpuExit::Shutdown => {
                    return Outcome::Error("emulator: shutdown without an exception".into())
                }
                CpuExit::Halted => return Outcome::Error("emulator: halted".into()),
                _ => {}
            }
            let rip = self.cpu.rip;
            if !(CODE_ADDR..=end).contains(&rip) {
                return Outcome::Error(format!("emulator: RIP left the sequence ({rip:#x})"));
            }
        }
        Outcome::Error(format!(
            "emulator: did not reach the end in {MAX_STEPS} steps"
        ))
    }
}
