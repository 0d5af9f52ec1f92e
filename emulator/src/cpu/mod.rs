//! The software x86 CPU: an interpreter over `iced-x86`-decoded blocks.
//!
//! Decoded blocks are cached by physical address and invalidated when the
//! guest writes to a page holding code; a software TLB caches linear→host
//! translations; arithmetic flags are computed lazily ([`flags`]).
//!
//! Instruction semantics follow the Intel SDM vol. 2; system behaviour
//! (modes, paging, interrupts) vol. 3.

pub mod flags;
pub mod mmu;

mod atomic;
mod exec;
mod jit;
mod operand;
mod ops_basic;
mod ops_ext;
mod sse;
mod system;
mod x87;

#[cfg(test)]
mod tests;

pub use exec::{CpuExit, SharedCode};
pub use x87::X87;

use crate::bus::AddressSpace;
use flags::Flags;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Segment register indices, in the order of the x86 encoding.
pub const ES: usize = 0;
/// CS index.
pub const CS: usize = 1;
/// SS index.
pub const SS: usize = 2;
/// DS index.
pub const DS: usize = 3;
/// FS index.
pub const FS: usize = 4;
/// GS index.
pub const GS: usize = 5;

/// General-purpose register indices.
pub mod reg {
    /// RAX.
    pub const RAX: usize = 0;
    /// RCX.
    pub const RCX: usize = 1;
    /// RDX.
    pub const RDX: usize = 2;
    /// RBX.
    pub const RBX: usize = 3;
    /// RSP.
    pub const RSP: usize = 4;
    /// RBP.
    pub const RBP: usize = 5;
    /// RSI.
    pub const RSI: usize = 6;
    /// RDI.
    pub const RDI: usize = 7;
}

/// CR0 bits (SDM vol. 3 §2.5).
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// x87 emulation.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type.
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits (SDM vol. 3 §2.5).
pub mod cr4 {
    /// Virtual-8086 mode extensions.
    pub const VME: u64 = 1 << 0;
    /// Protected-mode virtual interrupts.
    pub const PVI: u64 = 1 << 1;
    /// Time stamp disable.
    pub const TSD: u64 = 1 << 2;
    /// Debugging extensions.
    pub const DE: u64 = 1 << 3;
    /// Page size extensions.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Machine check enable.
    pub const MCE: u64 = 1 << 6;
    /// Page global enable.
    pub const PGE: u64 = 1 << 7;
    /// Performance counter enable.
    pub const PCE: u64 = 1 << 8;
    /// FXSAVE/FXRSTOR and SSE enabled.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD FP exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
}

/// EFER bits (SDM vol. 3 §2.2.1).
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// Descriptor attribute bits as kept in [`Segment::attr`] (the layout of the
/// VMX access-rights field: descriptor bits 40–47 then 52–55).
pub mod attr {
    /// Accessed (data/code) or busy (TSS) bit.
    pub const ACCESSED: u16 = 1 << 0;
    /// Type field.
    pub const TYPE: u16 = 0xf;
    /// Code/data (1) or system (0) descriptor.
    pub const S: u16 = 1 << 4;
    /// Present.
    pub const P: u16 = 1 << 7;
    /// 64-bit code segment.
    pub const L: u16 = 1 << 13;
    /// Default operation size (D/B).
    pub const DB: u16 = 1 << 14;
    /// Granularity.
    pub const G: u16 = 1 << 15;
    /// Code segment type bit.
    pub const CODE: u16 = 1 << 3;
    /// Descriptor privilege level of attributes `a`.
    pub fn dpl(a: u16) -> u8 {
        ((a >> 5) & 3) as u8
    }
}

/// A segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (granularity already applied).
    pub limit: u32,
    /// Attributes ([`attr`]).
    pub attr: u16,
}

impl Segment {
    /// A real-mode segment for `selector` (base = selector × 16, 64 KiB limit).
    pub fn real(selector: u16) -> Self {
        Segment {
            selector,
            base: (selector as u64) << 4,
            limit: 0xffff,
            attr: attr::P | attr::S | 0x3,
        }
    }
    /// A flat 4 GiB ring-0 segment (code if `code`) with D/B set.
    pub fn flat32(selector: u16, code: bool) -> Self {
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            attr: attr::P | attr::S | attr::G | attr::DB | if code { 0xb } else { 0x3 },
        }
    }
}

/// GDTR/IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescriptorTable {
    /// Linear base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u16,
}

/// An exception raised by an instruction (vector and optional error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exc {
    /// Vector number.
    pub vector: u8,
    /// Error code pushed by the exception, if it has one.
    pub code: Option<u32>,
}

/// Exception vectors (SDM vol. 3 §6.3.1).
pub mod vec {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug.
    pub const DB: u8 = 1;
    /// Non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// Breakpoint.
    pub const BP: u8 = 3;
    /// Overflow.
    pub const OF: u8 = 4;
    /// BOUND range exceeded.
    pub const BR: u8 = 5;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Double fault.
    pub const DF: u8 = 8;
    /// Invalid TSS.
    pub const TS: u8 = 10;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating-point error.
    pub const MF: u8 = 16;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// Machine check.
    pub const MC: u8 = 18;
    /// SIMD floating-point exception.
    pub const XM: u8 = 19;
}

impl Exc {
    /// #UD.
    pub const UD: Exc = Exc {
        vector: vec::UD,
        code: None,
    };
    /// #DE.
    pub const DE: Exc = Exc {
        vector: vec::DE,
        code: None,
    };
    /// #NM.
    pub const NM: Exc = Exc {
        vector: vec::NM,
        code: None,
    };
    /// #GP(code).
    pub fn gp(code: u32) -> Exc {
        Exc {
            vector: vec::GP,
            code: Some(code),
        }
    }
    /// #SS(code).
    pub fn ss(code: u32) -> Exc {
        Exc {
            vector: vec::SS,
            code: Some(code),
        }
    }
    /// #NP(code).
    pub fn np(code: u32) -> Exc {
        Exc {
            vector: vec::NP,
            code: Some(code),
        }
    }
    /// #TS(code).
    pub fn ts(code: u32) -> Exc {
        Exc {
            vector: vec::TS,
            code: Some(code),
        }
    }
}

/// Result of executing an instruction.
pub type R<T = ()> = Result<T, Exc>;

/// Model-specific registers the CPU keeps (SDM vol. 4).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Msrs {
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR.
    pub lstar: u64,
    /// IA32_CSTAR.
    pub cstar: u64,
    /// IA32_FMASK.
    pub sfmask: u64,
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u64,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_TSC_AUX.
    pub tsc_aux: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// Fixed-range MTRRs (11 registers).
    pub mtrr_fixed: [u64; 11],
    /// Variable-range MTRR base/mask pairs (8).
    pub mtrr_var: [u64; 16],
    /// TSC offset: guest TSC = host-derived count + this.
    pub tsc_offset: u64,
}

/// Source of external interrupts: the PIC, or this CPU's local APIC (with
/// the PIC behind it).
pub trait InterruptController: Send + Sync {
    /// True when a maskable interrupt is pending (INTR).
    fn has_interrupt(&self) -> bool;
    /// [`PENDING_INTR`] and [`PENDING_EVENT`] in one call (the CPU asks at
    /// every block boundary).
    #[inline]
    fn pending(&self) -> u8 {
        let mut p = if self.has_interrupt() {
            PENDING_INTR
        } else {
            0
        };
        if self.has_event() {
            p |= PENDING_EVENT;
        }
        p
    }
    /// The INTA cycle: returns the vector, or `None` if the request vanished.
    fn acknowledge(&self) -> Option<u8>;
    /// True when an NMI, INIT or SIPI is pending (checked every block, so
    /// it must be cheap).
    fn has_event(&self) -> bool {
        false
    }
    /// Takes the pending non-maskable event, NMI/INIT before SIPI.
    fn take_event(&self) -> Option<CpuEvent> {
        None
    }
    /// RDMSR of an MSR the interrupt controller implements (APIC base,
    /// TSC deadline), given the CPU's TSC offset.
    fn read_msr(&self, _msr: u32, _tsc_offset: u64) -> Option<u64> {
        None
    }
    /// WRMSR of such an MSR; false if it is not one of them.
    fn write_msr(&self, _msr: u32, _value: u64, _tsc_offset: u64) -> bool {
        false
    }
    /// The task priority (CR8 is TPR[7:4]), if there is a local APIC.
    fn tpr(&self) -> Option<u8> {
        None
    }
    /// Sets the task priority.
    fn set_tpr(&self, _tpr: u8) {}
    /// The local APIC ID (CPUID leaf 1 EBX[31:24]), if there is one.
    fn apic_id(&self) -> Option<u8> {
        None
    }
    /// The atomic state the CPU may poll instead of calling
    /// [`InterruptController::pending`].
    fn irq_state(&self) -> Option<Arc<IrqState>> {
        None
    }
}

/// Interrupt state a controller publishes for its CPU in one atomic byte, so
/// the CPU polls it at every block boundary without a call: raw inputs, and
/// the [`PENDING_INTR`] / [`PENDING_EVENT`] bits derived from them.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct IrqState(std::sync::atomic::AtomicU8);

impl IrqState {
    /// The local APIC has a deliverable interrupt.
    pub const APIC_INTR: u8 = 1 << 2;
    /// The 8259 pair asserts INTR.
    pub const PIC_INTR: u8 = 1 << 3;
    /// The 8259's INTR passes through the local APIC (LINT0 ExtINT).
    pub const PASSTHROUGH: u8 = 1 << 4;
    /// An NMI, INIT or SIPI is pending.
    pub const EVENT: u8 = 1 << 5;

    /// The derived [`PENDING_INTR`] | [`PENDING_EVENT`] bits.
    #[inline(always)]
    pub fn pending(&self) -> u8 {
        self.0.load(Ordering::Acquire) & (PENDING_INTR | PENDING_EVENT)
    }

    /// True if the raw input `bit` is set.
    #[inline]
    pub fn has(&self, bit: u8) -> bool {
        self.0.load(Ordering::Acquire) & bit != 0
    }

    /// Sets the raw inputs in `mask` to `value`'s bits and recomputes the
    /// derived ones; returns the derived bits that were not set before.
    pub fn update(&self, mask: u8, value: u8) -> u8 {
        let old = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let raw = (old & !mask) | (value & mask);
                let intr = raw & Self::APIC_INTR != 0
                    || raw & (Self::PIC_INTR | Self::PASSTHROUGH)
                        == Self::PIC_INTR | Self::PASSTHROUGH;
                let mut v = raw & !(PENDING_INTR | PENDING_EVENT);
                if intr {
                    v |= PENDING_INTR;
                }
                if raw & Self::EVENT != 0 {
                    v |= PENDING_EVENT;
                }
                Some(v)
            })
            .unwrap_or_else(|v| v);
        self.pending() & !old
    }
}

/// [`InterruptController::pending`]: a maskable interrupt is pending.
pub const PENDING_INTR: u8 = 1;
/// [`InterruptController::pending`]: an NMI, INIT or SIPI is pending.
pub const PENDING_EVENT: u8 = 2;

/// Events a local APIC hands the CPU outside the maskable-interrupt path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuEvent {
    /// Non-maskable interrupt.
    Nmi,
    /// INIT: reset to the wait-for-SIPI state (SDM vol. 3 §8.4.1).
    Init,
    /// Start-up IPI with its vector (start at vector × 4096 in real mode).
    Sipi(u8),
}

/// The software CPU.
pub struct Cpu {
    /// RAX..R15.
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS.
    pub flags: Flags,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    /// LDTR.
    pub ldtr: Segment,
    /// Task register.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR2 (page-fault linear address).
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (task priority).
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
    /// DR0–DR7.
    pub dr: [u64; 8],
    /// Other MSRs.
    pub msr: Msrs,
    /// Current privilege level.
    pub cpl: u8,
    /// x87/MMX state.
    pub x87: X87,
    /// XMM0–XMM15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
    /// Waiting for an interrupt after HLT.
    pub halted: bool,
    /// Waiting for a start-up IPI (an application processor after INIT).
    pub wait_sipi: bool,
    /// NMIs are blocked until the next IRET.
    pub(crate) nmi_blocked: bool,
    /// An NMI waits for delivery.
    pub(crate) nmi_pending: bool,
    /// The memory operand of the locked instruction being executed.
    pub(crate) lock_cell: Option<atomic::LockCell>,
    /// Guest instructions retired.
    pub icount: u64,
    /// Set from another thread to make [`Cpu::run`] return soon.
    pub exit_request: Arc<AtomicBool>,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS).
    pub(crate) irq_inhibit: bool,
    /// Stop executing the current block after this instruction.
    pub(crate) stop_block: bool,
    /// A triple fault happened.
    pub(crate) shutdown: bool,
    /// Exception being delivered (for double/triple fault detection).
    pub(crate) delivering: Option<u8>,
    pub(crate) tlb: mmu::Tlb,
    pub(crate) cache: exec::CodeCache,
    pub(crate) space: Arc<AddressSpace>,
    pub(crate) intc: Option<Arc<dyn InterruptController>>,
    pub(crate) irq_state: Option<Arc<IrqState>>,
    pub(crate) tsc_start: std::time::Instant,
    /// Code-cache state shared with the other vCPUs.
    pub(crate) code: Arc<SharedCode>,
    /// This vCPU's index among the machine's vCPUs.
    pub(crate) index: usize,
    /// More than one vCPU: LOCKed instructions must be atomic on the host.
    pub(crate) smp: bool,
    /// RIPs of the most recent blocks, for diagnosing triple faults.
    pub(crate) recent_blocks: [u64; 16],
    pub(crate) recent_pos: usize,
    /// The most recent exception raised (for tests and diagnostics).
    pub last_exception: Option<Exc>,
    /// Vectors logged as unimplemented (each logged once).
    pub(crate) logged_ud: std::collections::HashSet<u32>,
    /// The translator (made when the first block gets hot).
    pub(crate) jit: Option<Box<jit::Jit>>,
    /// The thread that compiles this vCPU's hot blocks (made when the
    /// first block gets hot, unless every block compiles at its first run).
    pub(crate) jit_worker: Option<Box<jit::worker::Worker>>,
    /// Host code the compiling thread keeps before starting afresh (tests
    /// lower it).
    pub(crate) jit_max_code: usize,
    /// Runs of a block before it is translated; 0: never translate.
    pub(crate) jit_hot: u32,
    /// Set by translated code that left a block for the interpreter (a
    /// memory access off the fast path): the next block is interpreted.
    pub(crate) jit_skip: bool,
    /// The last translated block that ran to its end (a `*const Block`).
    pub(crate) jit_last: usize,
    /// Translated blocks enter their successor directly only while
    /// `icount` is at most this (a block has at most 64 instructions).
    pub(crate) jit_chain_limit: u64,
    /// Bytes translated code polls before entering a successor (set at
    /// each `run`): the exit request, this vCPU's code-message flag, and
    /// the interrupt state (bit 0: INTR, bit 1: event).
    pub(crate) jit_exit_ptr: usize,
    /// The data-read TLB table and the jump-cache table for the current
    /// privilege level (see [`Cpu::jit_tables`]).
    pub(crate) jit_tlb: usize,
    pub(crate) jit_jmp: usize,
    pub(crate) jit_code_ptr: usize,
    pub(crate) jit_irq_ptr: usize,
}

/// Interrupt state for a CPU whose controller publishes none: always look.
static IRQ_UNKNOWN: u8 = PENDING_INTR | PENDING_EVENT;
/// Interrupt state for a CPU with no interrupt controller.
static IRQ_NONE: u8 = 0;

impl Cpu {
    /// A CPU in the state after RESET (SDM vol. 3 §9.1.1), executing from
    /// `space`.
    pub fn new(space: Arc<AddressSpace>) -> Self {
        let code = SharedCode::new(space.ram.phys_end(), 1);
        Self::new_vcpu(space, code, 0, std::time::Instant::now())
    }

    /// vCPU `index` of a machine whose vCPUs share `code`; the TSC counts
    /// nanoseconds since `tsc_origin` (the same for every vCPU).
    pub fn new_vcpu(
        space: Arc<AddressSpace>,
        code: Arc<SharedCode>,
        index: usize,
        tsc_origin: std::time::Instant,
    ) -> Self {
        let smp = code.vcpus() > 1;
        let mut cpu = Cpu {
            gpr: [0; 16],
            rip: 0,
            flags: Flags::default(),
            seg: [Segment::default(); 6],
            ldtr: Segment::default(),
            tr: Segment::default(),
            gdtr: DescriptorTable::default(),
            idtr: DescriptorTable::default(),
            cr0: 0,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0; 8],
            msr: Msrs::default(),
            cpl: 0,
            x87: X87::default(),
            xmm: [0; 16],
            mxcsr: 0x1f80,
            halted: false,
            wait_sipi: false,
            nmi_blocked: false,
            nmi_pending: false,
            lock_cell: None,
            icount: 0,
            exit_request: Arc::new(AtomicBool::new(false)),
            irq_inhibit: false,
            stop_block: false,
            shutdown: false,
            delivering: None,
            tlb: mmu::Tlb::new(),
            cache: exec::CodeCache::new(),
            space,
            intc: None,
            irq_state: None,
            tsc_start: tsc_origin,
            code,
            index,
            smp,
            logged_ud: Default::default(),
            last_exception: None,
            recent_blocks: [0; 16],
            recent_pos: 0,
            jit: None,
            jit_worker: None,
            jit_max_code: jit::MAX_CODE,
            jit_hot: jit::default_hot(),
            jit_skip: false,
            jit_last: 0,
            jit_chain_limit: 0,
            jit_exit_ptr: &IRQ_NONE as *const u8 as usize,
            jit_tlb: 0,
            jit_jmp: 0,
            jit_code_ptr: &IRQ_NONE as *const u8 as usize,
            jit_irq_ptr: &IRQ_NONE as *const u8 as usize,
        };
        cpu.reset();
        cpu
    }

    /// Puts the CPU in its power-on state: real mode at F000:FFF0.
    pub fn reset(&mut self) {
        self.gpr = [0; 16];
        self.gpr[reg::RDX] = 0x600; // family 6
        self.rip = 0xfff0;
        self.flags = Flags::default();
        for s in self.seg.iter_mut() {
            *s = Segment::real(0);
            s.attr = attr::P | attr::S | 0x3;
        }
        self.seg[CS] = Segment {
            selector: 0xf000,
            base: 0xffff_0000,
            limit: 0xffff,
            attr: attr::P | attr::S | 0xb,
        };
        self.ldtr = Segment {
            attr: attr::P | 0x2,
            limit: 0xffff,
            ..Default::default()
        };
        self.tr = Segment {
            attr: attr::P | 0xb,
            limit: 0xffff,
            ..Default::default()
        };
        self.gdtr = DescriptorTable {
            base: 0,
            limit: 0xffff,
        };
        self.idtr = self.gdtr;
        self.cr0 = cr0::ET | cr0::CD | cr0::NW;
        self.cr2 = 0;
        self.cr3 = 0;
        self.cr4 = 0;
        self.cr8 = 0;
        self.efer = 0;
        self.dr = [0; 8];
        self.dr[6] = 0xffff_0ff0;
        self.dr[7] = 0x400;
        self.msr = Msrs {
            apic_base: 0xfee0_0900,
            pat: 0x0007_0406_0007_0406,
            misc_enable: 1,
            ..Default::default()
        };
        self.cpl = 0;
        self.x87 = X87::at_reset();
        self.xmm = [0; 16];
        self.mxcsr = 0x1f80;
        self.halted = false;
        self.wait_sipi = false;
        self.nmi_blocked = false;
        self.nmi_pending = false;
        self.lock_cell = None;
        self.irq_inhibit = false;
        self.stop_block = false;
        self.shutdown = false;
        self.delivering = None;
        self.tlb.flush_all();
        self.cache.clear();
    }

    /// Turns the translator on (blocks run `hot` times are compiled to host
    /// code; `Some(1)` compiles every block at its first run) or off.
    pub fn set_jit(&mut self, hot: Option<u32>) {
        self.jit_hot = hot.map_or(0, |h| h.max(1));
    }

    /// Blocks translated to host code so far.
    pub fn jit_blocks(&self) -> u64 {
        self.jit.as_ref().map_or(0, |j| j.blocks)
            + self
                .jit_worker
                .as_ref()
                .map_or(0, |w| w.blocks.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Points translated code at the flags it polls (they live behind
    /// `Arc`s, so the addresses hold while this CPU holds them).
    pub(crate) fn jit_poll_setup(&mut self) {
        self.jit_exit_ptr = Arc::as_ptr(&self.exit_request) as usize;
        self.jit_code_ptr = self.code.pending_flag(self.index);
        self.jit_irq_ptr = match (&self.irq_state, &self.intc) {
            (Some(s), _) => Arc::as_ptr(s) as usize,
            (None, Some(_)) => &IRQ_UNKNOWN as *const u8 as usize,
            (None, None) => &IRQ_NONE as *const u8 as usize,
        };
    }

    /// Points translated code at the TLB and jump-cache tables of the
    /// current privilege level (before entering it, and after anything in
    /// it that may change the level).
    #[inline(always)]
    pub(crate) fn jit_tables(&mut self) {
        let user = self.user() as usize;
        self.jit_tlb = self.tlb.table(mmu::Access::Read, user != 0);
        self.jit_jmp = self.cache.jmp[user].as_ptr() as usize;
    }

    /// Connects the source of external interrupts.
    pub fn set_interrupt_controller(&mut self, intc: Arc<dyn InterruptController>) {
        self.irq_state = intc.irq_state();
        self.intc = Some(intc);
    }

    /// The guest memory and buses this CPU runs against.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// Asks [`Cpu::run`] to return at the next block boundary (any thread).
    pub fn request_exit(&self) {
        self.exit_request.store(true, Ordering::Release);
    }

    /// True in IA-32e mode (EFER.LMA).
    #[inline(always)]
    pub fn long_mode(&self) -> bool {
        self.efer & efer::LMA != 0
    }

    /// True when executing 64-bit code.
    #[inline(always)]
    pub fn mode64(&self) -> bool {
        self.long_mode() && self.seg[CS].attr & attr::L != 0
    }

    /// True in protected mode (CR0.PE).
    #[inline(always)]
    pub fn protected(&self) -> bool {
        self.cr0 & cr0::PE != 0
    }

    /// True in virtual-8086 mode.
    #[inline(always)]
    pub fn v86(&self) -> bool {
        self.protected() && self.flags.sys(flags::VM)
    }

    /// Code size in bits: 16, 32 or 64.
    #[inline(always)]
    pub fn bitness(&self) -> u32 {
        if self.mode64() {
            64
        } else if self.seg[CS].attr & attr::DB != 0 && !self.v86() {
            32
        } else {
            16
        }
    }

    /// Stack address size in bytes (2, 4 or 8).
    #[inline(always)]
    pub fn stack_size(&self) -> u8 {
        if self.mode64() {
            8
        } else if self.seg[SS].attr & attr::DB != 0 && !self.v86() {
            4
        } else {
            2
        }
    }

    /// The time-stamp counter.
    pub fn tsc(&self) -> u64 {
        // A fixed nominal 1 GHz rate derived from host time.
        (self.tsc_start.elapsed().as_nanos() as u64).wrapping_add(self.msr.tsc_offset)
    }

    /// Logs an unimplemented instruction once per opcode and returns #UD.
    pub(crate) fn unimplemented(&mut self, ins: &iced_x86::Instruction) -> Exc {
        let key = ins.code() as u32;
        if self.logged_ud.insert(key) {
            tracing::warn!(
                "unimplemented instruction {:?} ({}) at {:#x}: raising #UD",
                ins.code(),
                ins,
                ins.ip()
            );
        }
        Exc::UD
    }
}
