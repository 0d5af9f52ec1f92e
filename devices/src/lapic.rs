//! The xAPIC local APIC of one processor, bus-agnostic.
//!
//! Section references are to the Intel 64 and IA-32 Architectures Software
//! Developer's Manual, Volume 3A, chapter 10 "Advanced Programmable Interrupt
//! Controller (APIC)" (chapter 11 in editions from 2023 on; the section
//! numbers are otherwise the same).
//!
//! The APIC is a register file plus latches: [`LocalApic::write`] returns
//! what the machine must do once the APIC's lock is released (send an IPI,
//! broadcast an EOI to the I/O APICs); messages arriving from other APICs or
//! an I/O APIC go through [`LocalApic::accept`]. The CPU asks
//! [`LocalApic::has_interrupt`] and takes vectors with
//! [`LocalApic::acknowledge`], and NMI, INIT and SIPI with the `take_*`
//! methods. The output line set with [`LocalApic::set_intr_output`] is high
//! exactly while any of those has something to give, so it can wake a halted
//! vCPU thread.
//!
//! The timer counts at 1 GHz divided by the divide configuration register
//! (one count every `divide` ns of the [`Clock`]); it is not stepped:
//! [`LocalApic::poll_timer`] fires it when due and says when next to poll.
//!
//! Simplifications: no x2APIC, no EOI-broadcast suppression (version bit 24
//! is 0), the CMCI, thermal and performance-counter LVT entries hold values
//! but never fire, interrupts are delivered at once (delivery-status bits
//! read 0), and SMIs are ignored.

use crate::{log_odd_access, Clock, IrqLine, NoIrq, Snapshot};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Default physical address of the APIC register page (§10.4.1).
pub const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
/// Version register value: version 0x14 (xAPIC), max LVT entry 5 (§10.4.8).
pub const APIC_VERSION: u32 = 0x0005_0014;
/// Periodic-timer poll deadlines are never closer than this, so a guest
/// programming a tiny period cannot make the host spin.
pub const MIN_PERIODIC_POLL_NS: u64 = 10_000;

/// IA32_APIC_BASE bits (§10.4.4, Figure 10-5).
pub const BASE_MSR_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE x2APIC enable (not supported: writes of it are ignored).
pub const BASE_MSR_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE global enable.
pub const BASE_MSR_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE base address field (MAXPHYADDR 52).
const BASE_MSR_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// Register offsets (§10.4.1, Table 10-1).
const REG_ID: u64 = 0x20;
const REG_VERSION: u64 = 0x30;
const REG_TPR: u64 = 0x80;
const REG_APR: u64 = 0x90;
const REG_PPR: u64 = 0xa0;
const REG_EOI: u64 = 0xb0;
const REG_RRD: u64 = 0xc0;
const REG_LDR: u64 = 0xd0;
const REG_DFR: u64 = 0xe0;
const REG_SVR: u64 = 0xf0;
const REG_ISR: u64 = 0x100;
const REG_TMR: u64 = 0x180;
const REG_IRR: u64 = 0x200;
const REG_ESR: u64 = 0x280;
const REG_LVT_CMCI: u64 = 0x2f0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_THERMAL: u64 = 0x330;
const REG_LVT_ERROR: u64 = 0x370;
const REG_INITIAL_COUNT: u64 = 0x380;
const REG_CURRENT_COUNT: u64 = 0x390;
const REG_DCR: u64 = 0x3e0;

// LVT indices: the registers 0x320..=0x370 in order (timer, thermal,
// performance counters, LINT0, LINT1, error), then CMCI.
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
const LVT_CMCI: usize = 6;
const LVT_COUNT: usize = 7;

// LVT bits (§10.5.1, Figure 10-8).
const LVT_VECTOR: u32 = 0xff;
const LVT_MODE_SHIFT: u32 = 8;
const LVT_POLARITY_LOW: u32 = 1 << 13;
const LVT_REMOTE_IRR: u32 = 1 << 14;
const LVT_TRIGGER_LEVEL: u32 = 1 << 15;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE_SHIFT: u32 = 17;

/// Writable bits of each LVT entry, by index.
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x0007_00ff, // timer: vector, mask, mode
    0x0001_07ff, // thermal: vector, delivery mode, mask
    0x0001_07ff, // performance counters
    0x0001_a7ff, // LINT0: vector, mode, polarity, trigger, mask
    0x0001_a7ff, // LINT1
    0x0001_00ff, // error: vector, mask
    0x0001_07ff, // CMCI
];

// SVR bits (§10.9, Figure 10-23): vector, APIC software enable, focus
// processor checking.
const SVR_WRITABLE: u32 = 0x3ff;
const SVR_ENABLE: u32 = 1 << 8;

// ICR bits (§10.6.1, Figure 10-12).
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
const ICR_LOGICAL: u32 = 1 << 11;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_SHORTHAND_SHIFT: u32 = 18;

// ESR bits (§10.5.3, Figure 10-9).
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// Destination format register model field values (§10.6.2.2).
const DFR_FLAT: u32 = 0xf;
const DFR_CLUSTER: u32 = 0x0;
const DFR_RESERVED_ONES: u32 = 0x0fff_ffff;

/// Divide configuration register writable bits (§10.5.4, Figure 10-10).
const DCR_WRITABLE: u32 = 0xb;

/// Delivery modes (SDM §10.6.1 ICR / §10.5.1 LVT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryMode {
    /// The vector in the message.
    Fixed,
    /// The vector, to the lowest-priority processor among the targets.
    LowestPriority,
    /// A system-management interrupt.
    Smi,
    /// A non-maskable interrupt.
    Nmi,
    /// An INIT request (or, with `deassert`, the INIT level de-assert).
    Init,
    /// A start-up IPI; the vector is the start page number.
    StartUp,
    /// An interrupt whose vector comes from an external 8259A.
    ExtInt,
}

impl DeliveryMode {
    /// Decodes a 3-bit delivery-mode field; `None` for the reserved 0b011.
    /// Callers reject the values their register reserves besides that
    /// (ExtINT in the ICR, start-up in LVTs and the I/O APIC).
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits & 7 {
            0 => Some(Self::Fixed),
            1 => Some(Self::LowestPriority),
            2 => Some(Self::Smi),
            4 => Some(Self::Nmi),
            5 => Some(Self::Init),
            6 => Some(Self::StartUp),
            7 => Some(Self::ExtInt),
            _ => None,
        }
    }

    /// The 3-bit field encoding.
    pub fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::StartUp => 6,
            Self::ExtInt => 7,
        }
    }
}

/// ICR destination shorthand (§10.6.1, bits 18-19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field names the targets.
    None,
    /// The sender only.
    SelfOnly,
    /// Every APIC, the sender included.
    AllIncludingSelf,
    /// Every APIC but the sender.
    AllExcludingSelf,
}

/// An interrupt message on the APIC bus, from an ICR write or an I/O APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicMessage {
    /// Vector (start page for SIPI; ignored for NMI, INIT, ExtINT).
    pub vector: u8,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// Destination: APIC ID (physical) or MDA (logical); 0xff broadcasts.
    pub dest: u8,
    /// Destination shorthand (always `None` from an I/O APIC).
    pub shorthand: Shorthand,
    /// Level-triggered: the receiver sets TMR and its EOI is broadcast.
    pub level_triggered: bool,
    /// INIT level de-assert (ignored by receivers).
    pub deassert: bool,
    /// APIC ID of the sender (the I/O APIC's ID for its messages).
    pub source: u8,
}

/// What a register write asks the machine to do after the APIC's lock is
/// released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicEffect {
    /// Nothing.
    None,
    /// Send this message to the targets it names.
    Ipi(ApicMessage),
    /// A level-triggered interrupt ended: tell the I/O APIC(s).
    Eoi(u8),
}

/// Timer mode, LVT timer bits 17-18 (§10.5.4, §10.5.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

fn timer_mode(lvt: u32) -> TimerMode {
    match (lvt >> LVT_TIMER_MODE_SHIFT) & 3 {
        1 => TimerMode::Periodic,
        2 => TimerMode::TscDeadline,
        _ => TimerMode::OneShot,
    }
}

/// log2 of the timer divider for a divide configuration value (§10.5.4,
/// Figure 10-10): bits 0, 1 and 3 give 2, 4, ... 128, and 0b1011 gives 1.
fn divide_shift(dcr: u32) -> u32 {
    let v = (dcr & 3) | ((dcr >> 1) & 4);
    (v + 1) & 7
}

fn vector_bit(bits: &[u32; 8], v: u8) -> bool {
    bits[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

fn set_vector_bit(bits: &mut [u32; 8], v: u8, on: bool) {
    let word = &mut bits[usize::from(v >> 5)];
    if on {
        *word |= 1 << (v & 31);
    } else {
        *word &= !(1 << (v & 31));
    }
}

fn highest_vector(bits: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find_map(|i| {
        let word = bits[i];
        (word != 0).then(|| (i as u8) * 32 + (31 - word.leading_zeros() as u8))
    })
}

/// The guest-visible state of a local APIC (registers, timer, latches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LapicState {
    id: u8,
    base_msr: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as last latched by a write.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    initial_count: u32,
    dcr: u32,
    /// Clock time the current count-down (period) started from.
    timer_start: u64,
    /// One-shot/periodic: clock time of the next expiry, if counting.
    timer_next: Option<u64>,
    /// TSC-deadline mode: armed deadline in clock ns, 0 when disarmed.
    tsc_deadline: u64,
    lint_level: [bool; 2],
    pending_nmi: bool,
    pending_init: bool,
    pending_sipi: Option<u8>,
    pending_extint: bool,
}

impl LapicState {
    /// Register state after power-on, RESET or INIT (§10.4.7.1), with the
    /// LINT entries of the BSP as a BIOS leaves them for virtual-wire mode.
    fn power_on(id: u8, base_msr: u64) -> Self {
        let mut lvt = [LVT_MASKED; LVT_COUNT];
        if base_msr & BASE_MSR_BSP != 0 {
            lvt[LVT_LINT0] = DeliveryMode::ExtInt.bits() << LVT_MODE_SHIFT;
            lvt[LVT_LINT1] = DeliveryMode::Nmi.bits() << LVT_MODE_SHIFT;
        }
        Self {
            id,
            base_msr,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt,
            initial_count: 0,
            dcr: 0,
            timer_start: 0,
            timer_next: None,
            tsc_deadline: 0,
            lint_level: [false; 2],
            pending_nmi: false,
            pending_init: false,
            pending_sipi: None,
            pending_extint: false,
        }
    }
}

/// One processor's local APIC.
pub struct LocalApic {
    /// The hardware-assigned APIC ID, restored by a power-on reset.
    hw_id: u8,
    bsp: bool,
    clock: Arc<dyn Clock>,
    intr: Arc<dyn IrqLine>,
    /// Level last driven on `intr`.
    intr_level: bool,
    s: LapicState,
}

impl std::fmt::Debug for LocalApic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApic")
            .field("hw_id", &self.hw_id)
            .field("state", &self.s)
            .finish_non_exhaustive()
    }
}

impl LocalApic {
    /// `id`: APIC ID; `bsp`: bootstrap processor (BSP flag in the base MSR,
    /// LINT0 = ExtINT and LINT1 = NMI at reset like a BIOS's virtual-wire
    /// setup); `clock`: ns time base. The timer counts at 1 GHz before the
    /// divider, so CPUID leaf 0x15 can report a 1 GHz crystal.
    pub fn new(id: u8, bsp: bool, clock: Arc<dyn Clock>) -> Self {
        Self {
            hw_id: id,
            bsp,
            clock,
            intr: Arc::new(NoIrq),
            intr_level: false,
            s: LapicState::power_on(id, Self::reset_base_msr(bsp)),
        }
    }

    fn reset_base_msr(bsp: bool) -> u64 {
        APIC_DEFAULT_BASE | BASE_MSR_ENABLE | if bsp { BASE_MSR_BSP } else { 0 }
    }

    /// Connects the output that is high exactly while the APIC has something
    /// for the CPU: a deliverable interrupt ([`Self::has_interrupt`]) or a
    /// pending NMI, INIT or SIPI. The line is driven while the caller holds
    /// the APIC, so it must not lock the APIC itself.
    pub fn set_intr_output(&mut self, line: Arc<dyn IrqLine>) {
        self.intr = line;
        self.intr_level = self.wants_attention();
        self.intr.set_level(self.intr_level);
    }

    /// Power-on / RESET state (§10.4.7.1): the hardware APIC ID given to
    /// [`Self::new`], the default base MSR, all latches cleared.
    pub fn reset(&mut self) {
        let lint_level = self.s.lint_level;
        self.s = LapicState::power_on(self.hw_id, Self::reset_base_msr(self.bsp));
        self.s.lint_level = lint_level;
        self.update_output();
    }

    /// INIT state (§10.4.7.3): like [`Self::reset`] but keeps the APIC ID,
    /// the base MSR, and the pending NMI, INIT and SIPI latches (the CPU
    /// decides what to do with a SIPI).
    pub fn init_reset(&mut self) {
        let old = self.s.clone();
        self.s = LapicState::power_on(old.id, old.base_msr);
        self.s.lint_level = old.lint_level;
        self.s.pending_nmi = old.pending_nmi;
        self.s.pending_init = old.pending_init;
        self.s.pending_sipi = old.pending_sipi;
        self.update_output();
    }

    /// The APIC ID (ID register bits 24-31).
    pub fn id(&self) -> u8 {
        self.s.id
    }

    /// IA32_APIC_BASE MSR value (base | EN bit 11 | BSP bit 8).
    pub fn base_msr(&self) -> u64 {
        self.s.base_msr
    }

    /// The APIC register page's guest physical address.
    pub fn base_address(&self) -> u64 {
        self.s.base_msr & BASE_MSR_ADDR_MASK
    }

    /// Writes IA32_APIC_BASE (§10.4.4). BSP is read-only and x2APIC mode is
    /// not supported (the CPU should #GP on reserved bits first). Clearing EN
    /// disables the APIC and returns its registers to the power-on state;
    /// setting it again is allowed.
    pub fn set_base_msr(&mut self, v: u64) {
        if v & BASE_MSR_EXTD != 0 {
            log_odd_access!("lapic {}: x2APIC enable ignored", self.s.id);
        }
        let was_enabled = self.hw_enabled();
        self.s.base_msr =
            (v & (BASE_MSR_ADDR_MASK | BASE_MSR_ENABLE)) | (self.s.base_msr & BASE_MSR_BSP);
        if was_enabled && !self.hw_enabled() {
            let old = self.s.clone();
            self.s = LapicState::power_on(old.id, old.base_msr);
            self.s.lint_level = old.lint_level;
        }
        self.update_output();
    }

    /// The APIC is globally enabled (IA32_APIC_BASE EN).
    pub fn hw_enabled(&self) -> bool {
        self.s.base_msr & BASE_MSR_ENABLE != 0
    }

    /// The APIC is software-enabled (SVR bit 8) and globally enabled.
    pub fn sw_enabled(&self) -> bool {
        self.hw_enabled() && self.s.svr & SVR_ENABLE != 0
    }

    /// xAPIC register read at `offset` within the 4 KiB page (32-bit
    /// accesses at 16-byte aligned offsets; others read 0).
    pub fn read(&mut self, offset: u64) -> u32 {
        if !self.hw_enabled() {
            log_odd_access!("lapic {}: read {offset:#x} while disabled", self.s.id);
            return 0;
        }
        if offset & 0xf != 0 || offset >= 0x1000 {
            log_odd_access!("lapic {}: unaligned read at {offset:#x}", self.s.id);
            return 0;
        }
        let index = ((offset >> 4) & 7) as usize;
        match offset {
            REG_ID => u32::from(self.s.id) << 24,
            REG_VERSION => APIC_VERSION,
            REG_TPR => u32::from(self.s.tpr),
            REG_APR => u32::from(self.arbitration_priority()),
            REG_PPR => u32::from(self.ppr()),
            REG_EOI | REG_RRD => 0,
            REG_LDR => self.s.ldr,
            REG_DFR => self.s.dfr,
            REG_SVR => self.s.svr,
            REG_ISR..REG_TMR => self.s.isr[index],
            REG_TMR..REG_IRR => self.s.tmr[index],
            REG_IRR..REG_ESR => self.s.irr[index],
            REG_ESR => self.s.esr,
            REG_LVT_CMCI => self.s.lvt[LVT_CMCI],
            REG_ICR_LOW => self.s.icr_low,
            REG_ICR_HIGH => self.s.icr_high,
            REG_LVT_TIMER..=REG_LVT_ERROR => self.s.lvt[((offset - REG_LVT_TIMER) >> 4) as usize],
            REG_INITIAL_COUNT => self.s.initial_count,
            REG_CURRENT_COUNT => self.current_count(),
            REG_DCR => self.s.dcr,
            _ => {
                log_odd_access!("lapic {}: read of reserved {offset:#x}", self.s.id);
                0
            }
        }
    }

    /// xAPIC register write at `offset` within the 4 KiB page. After any
    /// write the machine should re-read [`Self::timer_deadline`] (a timer
    /// register may have changed) and carry out the returned effect.
    pub fn write(&mut self, offset: u64, value: u32) -> LapicEffect {
        if !self.hw_enabled() {
            log_odd_access!("lapic {}: write {offset:#x} while disabled", self.s.id);
            return LapicEffect::None;
        }
        if offset & 0xf != 0 || offset >= 0x1000 {
            log_odd_access!("lapic {}: unaligned write at {offset:#x}", self.s.id);
            return LapicEffect::None;
        }
        let mut effect = LapicEffect::None;
        match offset {
            REG_ID => self.s.id = (value >> 24) as u8,
            REG_TPR => self.s.tpr = value as u8,
            REG_EOI => effect = self.eoi(),
            REG_LDR => self.s.ldr = value & 0xff00_0000,
            REG_DFR => {
                self.s.dfr = value | DFR_RESERVED_ONES;
                if !matches!(value >> 28, DFR_FLAT | DFR_CLUSTER) {
                    log_odd_access!("lapic {}: reserved DFR model {value:#x}", self.s.id);
                }
            }
            REG_SVR => self.write_svr(value),
            REG_ESR => {
                self.s.esr = self.s.esr_pending;
                self.s.esr_pending = 0;
            }
            REG_LVT_CMCI => self.write_lvt(LVT_CMCI, value),
            REG_ICR_LOW => effect = self.write_icr(value),
            REG_ICR_HIGH => self.s.icr_high = value & 0xff00_0000,
            REG_LVT_TIMER => self.write_lvt_timer(value),
            REG_LVT_THERMAL..=REG_LVT_ERROR => {
                self.write_lvt(((offset - REG_LVT_TIMER) >> 4) as usize, value)
            }
            REG_INITIAL_COUNT => self.write_initial_count(value),
            REG_DCR => self.write_dcr(value),
            REG_VERSION | REG_APR | REG_PPR | REG_RRD | REG_CURRENT_COUNT | REG_ISR..REG_ESR => {
                log_odd_access!("lapic {}: write to read-only {offset:#x}", self.s.id);
            }
            _ => {
                log_odd_access!("lapic {}: write to reserved {offset:#x}", self.s.id);
                self.signal_error(ESR_ILLEGAL_REGISTER);
            }
        }
        self.update_output();
        effect
    }

    /// Physical/logical destination match for a message (§10.6.2): physical
    /// ID equal or 0xff; logical flat model LDR[31:24] AND MDA non-zero;
    /// cluster model equal cluster (high nibble) and overlapping low
    /// nibbles; logical 0xff broadcasts in both models.
    pub fn matches(&self, logical: bool, dest: u8) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        if dest == 0xff {
            return true;
        }
        if !logical {
            return dest == self.s.id;
        }
        let ldr = (self.s.ldr >> 24) as u8;
        match self.s.dfr >> 28 {
            DFR_FLAT => ldr & dest != 0,
            DFR_CLUSTER => ldr >> 4 == dest >> 4 && ldr & dest & 0xf != 0,
            _ => false,
        }
    }

    /// Whether `msg` is addressed to this APIC, shorthands included; `msg.source`
    /// identifies the sender by APIC ID.
    pub fn is_addressed(&self, msg: &ApicMessage) -> bool {
        match msg.shorthand {
            Shorthand::None => self.matches(msg.logical, msg.dest),
            Shorthand::SelfOnly => msg.source == self.s.id && self.hw_enabled(),
            Shorthand::AllIncludingSelf => self.hw_enabled(),
            Shorthand::AllExcludingSelf => msg.source != self.s.id && self.hw_enabled(),
        }
    }

    /// Arbitration priority for lowest-priority delivery (lower wins;
    /// §10.6.2.4, Figure 10-15).
    pub fn arbitration_priority(&self) -> u8 {
        let tpr = self.s.tpr >> 4;
        let isrv = highest_vector(&self.s.isr).unwrap_or(0) >> 4;
        let irrv = highest_vector(&self.s.irr).unwrap_or(0) >> 4;
        if tpr >= irrv && tpr > isrv {
            self.s.tpr
        } else {
            tpr.max(isrv).max(irrv) << 4
        }
    }

    /// Processor priority (§10.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = highest_vector(&self.s.isr).unwrap_or(0);
        if self.s.tpr >> 4 >= isrv >> 4 {
            self.s.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// Accepts a message addressed to this APIC (§10.6.1): Fixed and
    /// LowestPriority set IRR (and TMR if level-triggered, clear it
    /// otherwise) unless the APIC is software-disabled or the vector is
    /// below 16; NMI, INIT (not de-assert), SIPI and ExtINT set their
    /// pending latches. A globally disabled APIC accepts nothing.
    pub fn accept(&mut self, msg: &ApicMessage) {
        if !self.hw_enabled() {
            return;
        }
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept_vector(msg.vector, msg.level_triggered)
            }
            DeliveryMode::Smi => log_odd_access!("lapic {}: SMI ignored", self.s.id),
            DeliveryMode::Nmi => self.s.pending_nmi = true,
            DeliveryMode::Init => {
                if !msg.deassert {
                    self.s.pending_init = true;
                }
            }
            DeliveryMode::StartUp => self.s.pending_sipi = Some(msg.vector),
            DeliveryMode::ExtInt => self.s.pending_extint = true,
        }
        self.update_output();
    }

    /// True when an interrupt should be presented to the CPU: the highest
    /// IRR priority class is above the PPR class (§10.8.3.1) with the APIC
    /// software-enabled, or an ExtINT is pending.
    pub fn has_interrupt(&self) -> bool {
        (self.hw_enabled() && self.s.pending_extint) || self.deliverable().is_some()
    }

    fn deliverable(&self) -> Option<u8> {
        if !self.sw_enabled() {
            return None;
        }
        let v = highest_vector(&self.s.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// INTA (§10.8.4): moves the highest IRR vector to ISR and returns it;
    /// returns the spurious vector if nothing is deliverable any more. For a
    /// pending ExtINT it clears the latch and returns `None`: the caller
    /// then takes the vector from the 8259A.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if self.hw_enabled() && self.s.pending_extint {
            self.s.pending_extint = false;
            self.update_output();
            return None;
        }
        let vector = match self.deliverable() {
            Some(v) => {
                set_vector_bit(&mut self.s.irr, v, false);
                set_vector_bit(&mut self.s.isr, v, true);
                v
            }
            None => self.s.svr as u8,
        };
        self.update_output();
        Some(vector)
    }

    /// True while an NMI, INIT or SIPI waits for the CPU.
    pub fn has_event(&self) -> bool {
        self.s.pending_nmi || self.s.pending_init || self.s.pending_sipi.is_some()
    }

    /// Takes a pending ExtINT (the caller acknowledges the 8259A).
    pub fn take_extint(&mut self) -> bool {
        let taken = std::mem::take(&mut self.s.pending_extint);
        self.update_output();
        taken
    }

    /// Takes a pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        let taken = std::mem::take(&mut self.s.pending_nmi);
        self.update_output();
        taken
    }

    /// Takes a pending INIT (the CPU then resets itself and calls
    /// [`Self::init_reset`]).
    pub fn take_init(&mut self) -> bool {
        let taken = std::mem::take(&mut self.s.pending_init);
        self.update_output();
        taken
    }

    /// Takes the latest pending start-up vector.
    pub fn take_sipi(&mut self) -> Option<u8> {
        let taken = self.s.pending_sipi.take();
        self.update_output();
        taken
    }

    /// Sets a LINT input (LINT0 = the 8259A's INTR, LINT1 = the board's
    /// NMI), as the level at the pin (an active-low LVT inverts it). Fixed
    /// entries raise their vector on a rising edge, or while asserted with
    /// Remote IRR clear if level-triggered (LINT0 only); NMI and INIT
    /// entries act on a rising edge. ExtINT on LINT0 is a pass-through (see
    /// [`Self::pic_passthrough`]). With the APIC globally disabled, LINT1
    /// is the processor's NMI pin.
    pub fn set_lint(&mut self, pin: u8, level: bool) {
        let Some(index) = [0u8, 1].iter().position(|&p| p == pin) else {
            log_odd_access!("lapic {}: no LINT{pin}", self.s.id);
            return;
        };
        let old = std::mem::replace(&mut self.s.lint_level[index], level);
        if !self.hw_enabled() {
            if index == 1 && level && !old {
                self.s.pending_nmi = true;
            }
        } else {
            let lvt = self.s.lvt[LVT_LINT0 + index];
            let active_low = lvt & LVT_POLARITY_LOW != 0;
            let rising = (level ^ active_low) && !(old ^ active_low);
            self.lint_input(index, rising);
        }
        self.update_output();
    }

    /// Acts on a LINT input whose LVT may want it (`rising`: it was just
    /// asserted).
    fn lint_input(&mut self, index: usize, rising: bool) {
        let lvt_index = LVT_LINT0 + index;
        let lvt = self.s.lvt[lvt_index];
        if lvt & LVT_MASKED != 0 {
            return;
        }
        let asserted = self.s.lint_level[index] ^ (lvt & LVT_POLARITY_LOW != 0);
        let vector = (lvt & LVT_VECTOR) as u8;
        // Only LINT0 can be level-triggered (§10.5.1, trigger mode).
        let level = index == 0 && lvt & LVT_TRIGGER_LEVEL != 0;
        let mode = DeliveryMode::from_bits(lvt >> LVT_MODE_SHIFT);
        if mode == Some(DeliveryMode::Fixed) && level {
            if asserted && lvt & LVT_REMOTE_IRR == 0 {
                self.s.lvt[lvt_index] |= LVT_REMOTE_IRR;
                self.accept_vector(vector, true);
            }
            return;
        }
        if !rising {
            return;
        }
        match mode {
            Some(DeliveryMode::Fixed) => self.accept_vector(vector, false),
            Some(DeliveryMode::Nmi) => self.s.pending_nmi = true,
            Some(DeliveryMode::Init) => self.s.pending_init = true,
            Some(DeliveryMode::Smi) => {
                log_odd_access!("lapic {}: SMI from LINT{index} ignored", self.s.id)
            }
            _ => {}
        }
    }

    /// The 8259A's INTR reaches the CPU directly: LINT0 is programmed ExtINT
    /// and unmasked, or the APIC is globally disabled.
    pub fn pic_passthrough(&self) -> bool {
        let lint0 = self.s.lvt[LVT_LINT0];
        !self.hw_enabled()
            || (lint0 & LVT_MASKED == 0
                && DeliveryMode::from_bits(lint0 >> LVT_MODE_SHIFT) == Some(DeliveryMode::ExtInt))
    }

    /// Task priority (CR8 is TPR[7:4]).
    pub fn tpr(&self) -> u8 {
        self.s.tpr
    }

    /// Sets the task priority (a CR8 write `v` is `set_tpr(v << 4)`).
    pub fn set_tpr(&mut self, v: u8) {
        self.s.tpr = v;
        self.update_output();
    }

    /// TSC-deadline mode (§10.5.4.1): arms the timer for `deadline_ns` in the
    /// clock's ns (the CPU converts from its TSC); 0 disarms. Ignored unless
    /// the LVT timer is in TSC-deadline mode. A deadline already passed fires
    /// at once.
    pub fn set_tsc_deadline(&mut self, deadline_ns: u64) {
        if timer_mode(self.s.lvt[LVT_TIMER]) != TimerMode::TscDeadline {
            return;
        }
        self.s.tsc_deadline = deadline_ns;
        self.poll_timer();
    }

    /// The armed TSC deadline in clock ns (0 when disarmed, after it fired,
    /// or outside TSC-deadline mode).
    pub fn tsc_deadline(&self) -> u64 {
        self.s.tsc_deadline
    }

    /// Fires the timer if due (sets IRR for the LVT timer vector unless
    /// masked) and returns the next deadline in clock ns, or `None` if the
    /// timer is idle. Periodic mode skips missed periods instead of
    /// accumulating a backlog, and its returned deadline is at least
    /// [`MIN_PERIODIC_POLL_NS`] away.
    pub fn poll_timer(&mut self) -> Option<u64> {
        let now = self.clock.now_ns();
        let fired = match timer_mode(self.s.lvt[LVT_TIMER]) {
            TimerMode::TscDeadline => {
                let due = self.s.tsc_deadline != 0 && now >= self.s.tsc_deadline;
                if due {
                    self.s.tsc_deadline = 0;
                }
                due
            }
            TimerMode::OneShot => {
                let due = self.s.timer_next.is_some_and(|t| now >= t);
                if due {
                    self.s.timer_next = None;
                }
                due
            }
            TimerMode::Periodic => {
                let period = self.period_ns();
                match self.s.timer_next {
                    Some(t) if now >= t && period != 0 => {
                        let elapsed = now.saturating_sub(self.s.timer_start);
                        let periods = (elapsed / period).saturating_add(1);
                        self.s.timer_next = Some(
                            self.s
                                .timer_start
                                .saturating_add(periods.saturating_mul(period)),
                        );
                        true
                    }
                    Some(_) if period == 0 => {
                        self.s.timer_next = None;
                        false
                    }
                    _ => false,
                }
            }
        };
        if fired {
            let lvt = self.s.lvt[LVT_TIMER];
            if lvt & LVT_MASKED == 0 {
                self.accept_vector((lvt & LVT_VECTOR) as u8, false);
            }
            self.update_output();
        }
        let next = self.timer_deadline();
        match timer_mode(self.s.lvt[LVT_TIMER]) {
            TimerMode::Periodic => next.map(|t| t.max(now.saturating_add(MIN_PERIODIC_POLL_NS))),
            _ => next,
        }
    }

    /// The next expiry in clock ns without firing, or `None` if idle.
    pub fn timer_deadline(&self) -> Option<u64> {
        match timer_mode(self.s.lvt[LVT_TIMER]) {
            TimerMode::TscDeadline => (self.s.tsc_deadline != 0).then_some(self.s.tsc_deadline),
            _ => self.s.timer_next,
        }
    }

    /// The timer's divider as a shift.
    fn shift(&self) -> u32 {
        divide_shift(self.s.dcr)
    }

    /// Length of one count-down from the initial count, in ns.
    fn period_ns(&self) -> u64 {
        u64::from(self.s.initial_count) << self.shift()
    }

    /// The current-count register (§10.5.4), computed from the clock.
    fn current_count(&self) -> u32 {
        let Some(next) = self.s.timer_next else {
            return 0;
        };
        let now = self.clock.now_ns();
        let shift = self.shift();
        match timer_mode(self.s.lvt[LVT_TIMER]) {
            TimerMode::TscDeadline => 0,
            TimerMode::OneShot => {
                let left = next.saturating_sub(now).div_ceil(1 << shift);
                u32::try_from(left).unwrap_or(u32::MAX)
            }
            TimerMode::Periodic => {
                let initial = u64::from(self.s.initial_count);
                if initial == 0 {
                    return 0;
                }
                let ticks = now.saturating_sub(self.s.timer_start) >> shift;
                (initial - ticks % initial) as u32
            }
        }
    }

    fn write_initial_count(&mut self, value: u32) {
        if timer_mode(self.s.lvt[LVT_TIMER]) == TimerMode::TscDeadline {
            return;
        }
        let now = self.clock.now_ns();
        self.s.initial_count = value;
        self.s.timer_start = now;
        self.s.timer_next = (value != 0).then(|| now.saturating_add(self.period_ns()));
    }

    /// A new divider keeps the current count and goes on counting from it
    /// at the new rate.
    fn write_dcr(&mut self, value: u32) {
        self.poll_timer();
        let count = u64::from(self.current_count());
        let running = self.s.timer_next.is_some() && count != 0;
        self.s.dcr = value & DCR_WRITABLE;
        if !running {
            return;
        }
        let now = self.clock.now_ns();
        let shift = self.shift();
        let next = now.saturating_add(count << shift);
        self.s.timer_next = Some(next);
        let done = u64::from(self.s.initial_count).saturating_sub(count) << shift;
        self.s.timer_start = match timer_mode(self.s.lvt[LVT_TIMER]) {
            TimerMode::Periodic => now.saturating_sub(done),
            _ => next.saturating_sub(self.period_ns()),
        };
    }

    /// LVT timer write: moving between one-shot and periodic keeps the
    /// count-down going; entering or leaving TSC-deadline mode disarms the
    /// timer (§10.5.4.1).
    fn write_lvt_timer(&mut self, value: u32) {
        self.poll_timer();
        let old = self.s.lvt[LVT_TIMER];
        let mut value = value;
        if (value >> LVT_TIMER_MODE_SHIFT) & 3 == 3 {
            log_odd_access!("lapic {}: reserved timer mode {value:#x}", self.s.id);
            value = (value & !(3 << LVT_TIMER_MODE_SHIFT)) | (old & (3 << LVT_TIMER_MODE_SHIFT));
        }
        let (old_mode, new_mode) = (timer_mode(old), timer_mode(value));
        self.write_lvt(LVT_TIMER, value);
        if old_mode == new_mode {
            return;
        }
        if old_mode == TimerMode::TscDeadline || new_mode == TimerMode::TscDeadline {
            self.s.tsc_deadline = 0;
            self.s.timer_next = None;
            self.s.initial_count = 0;
        } else if new_mode == TimerMode::OneShot {
            if let Some(next) = self.s.timer_next {
                self.s.timer_start = next.saturating_sub(self.period_ns());
            }
        }
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let old = self.s.lvt[index];
        let writable = LVT_WRITABLE[index];
        let mut new = (old & !writable) | (value & writable);
        if !self.sw_enabled() {
            new |= LVT_MASKED;
        }
        if index == LVT_LINT0 || index == LVT_LINT1 {
            // Remote IRR is meaningless for edge-triggered entries.
            if new & LVT_TRIGGER_LEVEL == 0 {
                new &= !LVT_REMOTE_IRR;
            }
            self.s.lvt[index] = new;
            // A level-triggered LINT0 asserted while masked fires on unmask.
            self.lint_input(index - LVT_LINT0, false);
        } else {
            self.s.lvt[index] = new;
        }
    }

    /// SVR write (§10.9): clearing the software enable masks every LVT entry
    /// (§10.4.7.2).
    fn write_svr(&mut self, value: u32) {
        self.s.svr = value & SVR_WRITABLE;
        if self.s.svr & SVR_ENABLE == 0 {
            for lvt in &mut self.s.lvt {
                *lvt |= LVT_MASKED;
            }
        }
    }

    /// EOI write (§10.8.5): ends the highest in-service interrupt.
    fn eoi(&mut self) -> LapicEffect {
        let Some(vector) = highest_vector(&self.s.isr) else {
            return LapicEffect::None;
        };
        set_vector_bit(&mut self.s.isr, vector, false);
        // A level-triggered LINT0 with this vector may assert again.
        let lint0 = self.s.lvt[LVT_LINT0];
        if lint0 & LVT_REMOTE_IRR != 0 && (lint0 & LVT_VECTOR) as u8 == vector {
            self.s.lvt[LVT_LINT0] &= !LVT_REMOTE_IRR;
            self.lint_input(0, false);
        }
        if vector_bit(&self.s.tmr, vector) {
            LapicEffect::Eoi(vector)
        } else {
            LapicEffect::None
        }
    }

    /// ICR low write (§10.6.1): builds the message to send.
    fn write_icr(&mut self, value: u32) -> LapicEffect {
        self.s.icr_low = value & ICR_LOW_WRITABLE;
        let vector = value as u8;
        let mode = match DeliveryMode::from_bits(value >> 8) {
            Some(DeliveryMode::ExtInt) | None => {
                log_odd_access!("lapic {}: reserved ICR delivery mode {value:#x}", self.s.id);
                return LapicEffect::None;
            }
            Some(mode) => mode,
        };
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.signal_error(ESR_SEND_ILLEGAL_VECTOR);
            return LapicEffect::None;
        }
        let level_triggered = value & ICR_TRIGGER_LEVEL != 0;
        let shorthand = match (value >> ICR_SHORTHAND_SHIFT) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        LapicEffect::Ipi(ApicMessage {
            vector,
            mode,
            logical: value & ICR_LOGICAL != 0,
            dest: (self.s.icr_high >> 24) as u8,
            shorthand,
            level_triggered,
            deassert: mode == DeliveryMode::Init
                && level_triggered
                && value & ICR_LEVEL_ASSERT == 0,
            source: self.s.id,
        })
    }

    /// Sets IRR (and TMR for level) for a fixed interrupt (§10.8.3); vectors
    /// 0-15 are illegal (§10.5.3).
    fn accept_vector(&mut self, vector: u8, level: bool) {
        if !self.sw_enabled() {
            return;
        }
        if vector < 16 {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        set_vector_bit(&mut self.s.irr, vector, true);
        set_vector_bit(&mut self.s.tmr, vector, level);
    }

    /// Records an error for the next ESR write and raises the error LVT.
    fn signal_error(&mut self, bits: u32) {
        self.s.esr_pending |= bits;
        let lvt = self.s.lvt[LVT_ERROR];
        let vector = (lvt & LVT_VECTOR) as u8;
        if lvt & LVT_MASKED == 0 && vector >= 16 {
            self.accept_vector(vector, false);
        }
    }

    /// Something for the CPU: an interrupt, NMI, INIT or SIPI.
    fn wants_attention(&self) -> bool {
        self.has_interrupt()
            || self.s.pending_nmi
            || self.s.pending_init
            || self.s.pending_sipi.is_some()
    }

    fn update_output(&mut self) {
        let level = self.wants_attention();
        if level != self.intr_level {
            self.intr_level = level;
            self.intr.set_level(level);
        }
    }
}

impl Snapshot for LocalApic {
    type State = LapicState;

    fn snapshot(&self) -> LapicState {
        self.s.clone()
    }

    /// Restores the state; timer times are in the machine clock's ns, so the
    /// clock must be restored along with it.
    fn restore(&mut self, state: LapicState) {
        self.s = state;
        self.s.dcr &= DCR_WRITABLE;
        self.intr_level = self.wants_attention();
        self.intr.set_level(self.intr_level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RecordingIrq;
    use crate::ManualClock;

    struct Fixture {
        apic: LocalApic,
        clock: Arc<ManualClock>,
        intr: Arc<RecordingIrq>,
    }

    fn fixture(id: u8, bsp: bool) -> Fixture {
        let clock = Arc::new(ManualClock::default());
        clock.set(1_000_000);
        let mut apic = LocalApic::new(id, bsp, clock.clone());
        let intr = RecordingIrq::new();
        apic.set_intr_output(intr.clone());
        Fixture { apic, clock, intr }
    }

    /// A software-enabled AP with spurious vector 0xff.
    fn enabled() -> Fixture {
        let mut f = fixture(1, false);
        assert_eq!(f.apic.write(REG_SVR, 0x1ff), LapicEffect::None);
        f
    }

    fn fixed(vector: u8, level: bool) -> ApicMessage {
        ApicMessage {
            vector,
            mode: DeliveryMode::Fixed,
            logical: false,
            dest: 1,
            shorthand: Shorthand::None,
            level_triggered: level,
            deassert: false,
            source: 0,
        }
    }

    fn eoi(apic: &mut LocalApic) -> LapicEffect {
        apic.write(REG_EOI, 0)
    }

    fn ipi(effect: LapicEffect) -> ApicMessage {
        match effect {
            LapicEffect::Ipi(msg) => msg,
            other => panic!("expected an IPI, got {other:?}"),
        }
    }

    #[test]
    fn reset_state_of_bsp_and_ap() {
        let mut f = fixture(0, true);
        let a = &mut f.apic;
        assert_eq!(a.base_msr(), 0xfee0_0900);
        assert_eq!(a.read(REG_ID), 0);
        assert_eq!(a.read(REG_VERSION), 0x0005_0014);
        assert_eq!(a.read(REG_SVR), 0xff);
        assert_eq!(a.read(REG_DFR), 0xffff_ffff);
        assert_eq!(a.read(REG_LDR), 0);
        assert_eq!(a.read(REG_TPR), 0);
        assert_eq!(a.read(0x350), 0x700);
        assert_eq!(a.read(0x360), 0x400);
        for off in [0x2f0, 0x320, 0x330, 0x340, 0x370] {
            assert_eq!(a.read(off), 0x10000, "{off:#x}");
        }
        assert!(a.pic_passthrough());
        assert!(!a.sw_enabled());

        let mut f = fixture(3, false);
        let a = &mut f.apic;
        assert_eq!(a.base_msr(), 0xfee0_0800);
        assert_eq!(a.read(REG_ID), 3 << 24);
        assert_eq!(a.read(0x350), 0x10000);
        assert_eq!(a.read(0x360), 0x10000);
        assert!(!a.pic_passthrough());
        assert!(!f.intr.level());
    }

    #[test]
    fn reset_restores_hardware_id_but_init_keeps_id_and_base() {
        let mut f = enabled();
        f.apic.write(REG_ID, 7 << 24);
        f.apic.set_base_msr(0xfed0_0800);
        f.apic.write(REG_TPR, 0x20);
        f.apic.init_reset();
        assert_eq!(f.apic.id(), 7);
        assert_eq!(f.apic.base_msr(), 0xfed0_0800);
        assert_eq!(f.apic.read(REG_TPR), 0);
        assert_eq!(f.apic.read(REG_SVR), 0xff);
        f.apic.reset();
        assert_eq!(f.apic.id(), 1);
        assert_eq!(f.apic.base_msr(), 0xfee0_0800);
        assert_eq!(f.apic.base_address(), APIC_DEFAULT_BASE);
    }

    #[test]
    fn acknowledge_moves_irr_to_isr() {
        let mut f = enabled();
        f.apic.accept(&fixed(0x41, false));
        assert_eq!(f.apic.read(REG_IRR + 0x20), 1 << 1);
        assert!(f.apic.has_interrupt());
        assert!(f.intr.level());
        assert_eq!(f.apic.acknowledge(), Some(0x41));
        assert_eq!(f.apic.read(REG_IRR + 0x20), 0);
        assert_eq!(f.apic.read(REG_ISR + 0x20), 1 << 1);
        assert_eq!(f.apic.read(REG_PPR), 0x40);
        assert!(!f.apic.has_interrupt());
        assert!(!f.intr.level());
        assert_eq!(eoi(&mut f.apic), LapicEffect::None);
        assert_eq!(f.apic.read(REG_ISR + 0x20), 0);
        assert_eq!(f.apic.read(REG_PPR), 0);
    }

    #[test]
    fn priority_classes_nest() {
        let mut f = enabled();
        f.apic.accept(&fixed(0x40, false));
        assert_eq!(f.apic.acknowledge(), Some(0x40));
        // Same class: blocked until the EOI.
        f.apic.accept(&fixed(0x4f, false));
        assert!(!f.apic.has_interrupt());
        // Higher class nests.
        f.apic.accept(&fixed(0x80, false));
        assert!(f.apic.has_interrupt());
        assert_eq!(f.apic.acknowledge(), Some(0x80));
        assert_eq!(f.apic.read(REG_PPR), 0x80);
        assert!(!f.apic.has_interrupt());
        // The EOI ends the highest in-service one first.
        eoi(&mut f.apic);
        assert_eq!(f.apic.read(REG_ISR + 0x40), 0);
        assert_eq!(f.apic.read(REG_ISR + 0x20), 1);
        assert!(!f.apic.has_interrupt());
        eoi(&mut f.apic);
        assert!(f.apic.has_interrupt());
        assert_eq!(f.apic.acknowledge(), Some(0x4f));
        eoi(&mut f.apic);
        assert!(!f.apic.has_interrupt());
        // An EOI with nothing in service does nothing.
        assert_eq!(eoi(&mut f.apic), LapicEffect::None);
    }

    #[test]
    fn highest_irr_vector_goes_first() {
        let mut f = enabled();
        for v in [0x31, 0x92, 0x55, 0xfe] {
            f.apic.accept(&fixed(v, false));
        }
        assert_eq!(f.apic.acknowledge(), Some(0xfe));
        eoi(&mut f.apic);
        assert_eq!(f.apic.acknowledge(), Some(0x92));
        eoi(&mut f.apic);
        assert_eq!(f.apic.acknowledge(), Some(0x55));
        eoi(&mut f.apic);
        assert_eq!(f.apic.acknowledge(), Some(0x31));
        eoi(&mut f.apic);
        assert_eq!(f.apic.acknowledge(), Some(0xff), "spurious");
    }

    #[test]
    fn tpr_blocks_lower_classes() {
        let mut f = enabled();
        f.apic.write(REG_TPR, 0x50);
        f.apic.accept(&fixed(0x45, false));
        f.apic.accept(&fixed(0x5f, false));
        assert!(!f.apic.has_interrupt());
        assert!(!f.intr.level());
        assert_eq!(f.apic.read(REG_PPR), 0x50);
        f.apic.accept(&fixed(0x61, false));
        assert!(f.apic.has_interrupt());
        f.apic.set_tpr(0x70);
        assert!(!f.apic.has_interrupt());
        assert!(!f.intr.level());
        assert_eq!(f.apic.tpr(), 0x70);
        f.apic.set_tpr(0x10);
        assert!(f.intr.level());
        assert_eq!(f.apic.acknowledge(), Some(0x61));
        eoi(&mut f.apic);
        assert_eq!(f.apic.acknowledge(), Some(0x5f));
        // PPR follows ISR when ISR's class is above TPR's.
        assert_eq!(f.apic.read(REG_PPR), 0x50);
    }

    #[test]
    fn spurious_vector_when_nothing_is_deliverable() {
        let mut f = enabled();
        f.apic.write(REG_SVR, 0x1e7);
        assert_eq!(f.apic.acknowledge(), Some(0xe7));
        f.apic.write(REG_TPR, 0xf0);
        f.apic.accept(&fixed(0x80, false));
        assert_eq!(f.apic.acknowledge(), Some(0xe7));
        assert_eq!(f.apic.read(REG_IRR + 0x40), 1, "still requested");
        assert_eq!(f.apic.read(REG_ISR + 0x40), 0);
    }

    #[test]
    fn arbitration_priority_follows_tpr_isr_and_irr() {
        let mut f = enabled();
        assert_eq!(f.apic.arbitration_priority(), 0);
        f.apic.write(REG_TPR, 0x35);
        assert_eq!(f.apic.read(REG_APR), 0x35);
        f.apic.accept(&fixed(0x62, false));
        assert_eq!(f.apic.arbitration_priority(), 0x60);
        assert_eq!(f.apic.acknowledge(), Some(0x62));
        assert_eq!(f.apic.arbitration_priority(), 0x60);
        eoi(&mut f.apic);
        assert_eq!(f.apic.arbitration_priority(), 0x35);
    }

    #[test]
    fn level_triggered_eoi_is_reported() {
        let mut f = enabled();
        f.apic.accept(&fixed(0x39, true));
        assert_eq!(f.apic.read(REG_TMR + 0x10), 1 << 25);
        assert_eq!(f.apic.acknowledge(), Some(0x39));
        assert_eq!(eoi(&mut f.apic), LapicEffect::Eoi(0x39));
        // The same vector edge-triggered clears TMR.
        f.apic.accept(&fixed(0x39, false));
        assert_eq!(f.apic.read(REG_TMR + 0x10), 0);
        assert_eq!(f.apic.acknowledge(), Some(0x39));
        assert_eq!(eoi(&mut f.apic), LapicEffect::None);
    }

    #[test]
    fn illegal_vectors_are_refused_and_latched_in_esr() {
        let mut f = enabled();
        f.apic.accept(&fixed(0x0e, false));
        assert!(!f.apic.has_interrupt());
        assert_eq!(f.apic.read(REG_IRR), 0);
        assert_eq!(f.apic.read(REG_ESR), 0, "not latched before a write");
        f.apic.write(REG_ESR, 0);
        assert_eq!(f.apic.read(REG_ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        f.apic.write(REG_ICR_LOW, 0x0000_0005);
        f.apic.write(REG_ESR, 0);
        assert_eq!(f.apic.read(REG_ESR), ESR_SEND_ILLEGAL_VECTOR);
        f.apic.write(REG_ESR, 0);
        assert_eq!(f.apic.read(REG_ESR), 0);
        // With the error LVT unmasked the error raises its vector.
        f.apic.write(REG_LVT_ERROR, 0xfe);
        f.apic.write(0x3f0, 1);
        assert_eq!(f.apic.acknowledge(), Some(0xfe));
        f.apic.write(REG_ESR, 0);
        assert_eq!(f.apic.read(REG_ESR), ESR_ILLEGAL_REGISTER);
    }

    #[test]
    fn icr_encodes_init_sipi_and_fixed() {
        let mut f = enabled();
        f.apic.write(REG_ICR_HIGH, 0x0312_3456);
        assert_eq!(f.apic.read(REG_ICR_HIGH), 0x0300_0000);
        // INIT assert, level, physical: Linux's wakeup sequence.
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0000_c500));
        assert_eq!(m.mode, DeliveryMode::Init);
        assert_eq!(m.dest, 3);
        assert!(!m.logical);
        assert!(!m.deassert);
        assert_eq!(m.shorthand, Shorthand::None);
        assert_eq!(m.source, 1);
        // INIT de-assert.
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0000_8500));
        assert_eq!(m.mode, DeliveryMode::Init);
        assert!(m.deassert);
        // SIPI to page 0x9a.
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0000_069a));
        assert_eq!(m.mode, DeliveryMode::StartUp);
        assert_eq!(m.vector, 0x9a);
        // Delivery status reads idle.
        assert_eq!(f.apic.read(REG_ICR_LOW) & (1 << 12), 0);
        assert_eq!(f.apic.read(REG_ICR_LOW), 0x069a);
        // Fixed, logical, all-excluding-self.
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x000c_08fd));
        assert_eq!(m.mode, DeliveryMode::Fixed);
        assert_eq!(m.vector, 0xfd);
        assert!(m.logical);
        assert_eq!(m.shorthand, Shorthand::AllExcludingSelf);
        assert!(!m.level_triggered);
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0008_0030));
        assert_eq!(m.shorthand, Shorthand::AllIncludingSelf);
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0000_0402));
        assert_eq!(m.mode, DeliveryMode::Nmi);
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0000_0141));
        assert_eq!(m.mode, DeliveryMode::LowestPriority);
        // Reserved delivery modes send nothing.
        assert_eq!(f.apic.write(REG_ICR_LOW, 0x0000_0340), LapicEffect::None);
        assert_eq!(f.apic.write(REG_ICR_LOW, 0x0000_0740), LapicEffect::None);
    }

    #[test]
    fn self_ipi_is_accepted_by_the_sender() {
        let mut f = enabled();
        let m = ipi(f.apic.write(REG_ICR_LOW, 0x0004_0077));
        assert_eq!(m.shorthand, Shorthand::SelfOnly);
        assert!(f.apic.is_addressed(&m));
        f.apic.accept(&m);
        assert!(f.intr.level());
        assert_eq!(f.apic.acknowledge(), Some(0x77));
        let mut other = enabled();
        other.apic.write(REG_ID, 2 << 24);
        assert!(!other.apic.is_addressed(&m));
        let all_but = ApicMessage {
            shorthand: Shorthand::AllExcludingSelf,
            ..m
        };
        assert!(!f.apic.is_addressed(&all_but));
        assert!(other.apic.is_addressed(&all_but));
    }

    #[test]
    fn nmi_init_sipi_latches() {
        let mut f = fixture(1, false);
        // Accepted while software-disabled.
        let mut m = fixed(0, false);
        m.mode = DeliveryMode::Nmi;
        f.apic.accept(&m);
        assert!(f.intr.level());
        assert!(!f.apic.has_interrupt());
        assert!(f.apic.take_nmi());
        assert!(!f.apic.take_nmi());
        assert!(!f.intr.level());
        m.mode = DeliveryMode::Init;
        m.deassert = true;
        f.apic.accept(&m);
        assert!(!f.apic.take_init(), "de-assert is ignored");
        m.deassert = false;
        f.apic.accept(&m);
        assert!(f.intr.level());
        assert!(f.apic.take_init());
        m.mode = DeliveryMode::StartUp;
        m.vector = 0x10;
        f.apic.accept(&m);
        m.vector = 0x9a;
        f.apic.accept(&m);
        assert!(f.intr.level());
        assert_eq!(f.apic.take_sipi(), Some(0x9a));
        assert_eq!(f.apic.take_sipi(), None);
        assert!(!f.intr.level());
        // A fixed interrupt is dropped while software-disabled.
        f.apic.accept(&fixed(0x50, false));
        assert_eq!(f.apic.read(REG_IRR + 0x20), 0);
    }

    #[test]
    fn extint_is_left_to_the_pic() {
        let mut f = enabled();
        let mut m = fixed(0, false);
        m.mode = DeliveryMode::ExtInt;
        f.apic.accept(&m);
        assert!(f.apic.has_interrupt());
        assert!(f.intr.level());
        assert_eq!(f.apic.acknowledge(), None);
        assert!(!f.apic.has_interrupt());
        assert!(!f.intr.level());
        f.apic.accept(&m);
        assert!(f.apic.take_extint());
        assert!(!f.apic.take_extint());
    }

    #[test]
    fn physical_and_logical_matching() {
        let mut f = enabled();
        f.apic.write(REG_ID, 5 << 24);
        assert!(f.apic.matches(false, 5));
        assert!(!f.apic.matches(false, 4));
        assert!(f.apic.matches(false, 0xff));
        // Flat model.
        f.apic.write(REG_LDR, 0x0400_0000);
        assert!(f.apic.matches(true, 0x04));
        assert!(f.apic.matches(true, 0x0f));
        assert!(!f.apic.matches(true, 0x0b));
        assert!(f.apic.matches(true, 0xff));
        // Cluster model: cluster 2, member bit 1.
        f.apic.write(REG_DFR, 0x0fff_ffff);
        assert_eq!(f.apic.read(REG_DFR), 0x0fff_ffff);
        f.apic.write(REG_LDR, 0x2200_0000);
        assert!(f.apic.matches(true, 0x22));
        assert!(f.apic.matches(true, 0x2f));
        assert!(!f.apic.matches(true, 0x21));
        assert!(!f.apic.matches(true, 0x32));
        assert!(f.apic.matches(true, 0xff));
        // Reserved model matches only broadcasts.
        f.apic.write(REG_DFR, 0x5fff_ffff);
        assert!(!f.apic.matches(true, 0x22));
        // A globally disabled APIC matches nothing.
        f.apic.set_base_msr(APIC_DEFAULT_BASE);
        assert!(!f.apic.matches(false, 0xff));
    }

    #[test]
    fn divide_configuration_values() {
        for (dcr, divide) in [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ] {
            let mut f = enabled();
            f.apic.write(REG_DCR, dcr | 0xf0);
            assert_eq!(f.apic.read(REG_DCR), dcr);
            f.apic.write(REG_LVT_TIMER, 0x30);
            f.apic.write(REG_INITIAL_COUNT, 100);
            let start = f.clock.now_ns();
            assert_eq!(f.apic.timer_deadline(), Some(start + 100 * divide));
            f.clock.advance(10 * divide);
            assert_eq!(f.apic.read(REG_CURRENT_COUNT), 90, "divide {divide}");
            f.clock.advance(divide - 1);
            assert_eq!(f.apic.read(REG_CURRENT_COUNT), 90, "divide {divide}");
            f.clock.advance(1);
            assert_eq!(f.apic.read(REG_CURRENT_COUNT), 89, "divide {divide}");
        }
    }

    #[test]
    fn one_shot_timer() {
        let mut f = enabled();
        f.apic.write(REG_DCR, 0b1011);
        f.apic.write(REG_LVT_TIMER, 0x30);
        assert_eq!(f.apic.poll_timer(), None);
        let start = f.clock.now_ns();
        f.apic.write(REG_INITIAL_COUNT, 1000);
        assert_eq!(f.apic.read(REG_INITIAL_COUNT), 1000);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 1000);
        f.clock.advance(300);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 700);
        assert_eq!(f.apic.poll_timer(), Some(start + 1000));
        assert!(!f.apic.has_interrupt());
        f.clock.advance(700);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 0);
        assert_eq!(f.apic.poll_timer(), None);
        assert!(f.intr.level());
        assert_eq!(f.apic.acknowledge(), Some(0x30));
        eoi(&mut f.apic);
        f.clock.advance(5000);
        assert_eq!(f.apic.poll_timer(), None);
        assert!(!f.apic.has_interrupt(), "fires once");
        // A zero initial count stops a running timer.
        f.apic.write(REG_INITIAL_COUNT, 50);
        assert!(f.apic.timer_deadline().is_some());
        f.apic.write(REG_INITIAL_COUNT, 0);
        assert_eq!(f.apic.timer_deadline(), None);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 0);
    }

    #[test]
    fn periodic_timer_skips_missed_periods() {
        let mut f = enabled();
        f.apic.write(REG_DCR, 0b0000); // divide by 2
        f.apic.write(REG_LVT_TIMER, 0x20040);
        let start = f.clock.now_ns();
        f.apic.write(REG_INITIAL_COUNT, 50_000); // 100 us
        assert_eq!(f.apic.poll_timer(), Some(start + 100_000));
        f.clock.advance(100_000);
        assert_eq!(f.apic.poll_timer(), Some(start + 200_000));
        assert_eq!(f.apic.acknowledge(), Some(0x40));
        eoi(&mut f.apic);
        // Count reloads: 30 us into the second period.
        f.clock.advance(30_000);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 35_000);
        // Ten periods late: one interrupt, next deadline on the grid.
        f.clock.advance(1_000_000);
        assert_eq!(f.apic.poll_timer(), Some(start + 1_200_000));
        assert_eq!(f.apic.acknowledge(), Some(0x40));
        eoi(&mut f.apic);
        assert_eq!(f.apic.acknowledge(), Some(0xff), "no backlog");
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 35_000);
    }

    #[test]
    fn tiny_periodic_timer_does_not_spin_the_host() {
        let mut f = enabled();
        f.apic.write(REG_DCR, 0b1011);
        f.apic.write(REG_LVT_TIMER, 0x20040);
        f.apic.write(REG_INITIAL_COUNT, 1);
        f.clock.advance(1);
        let now = f.clock.now_ns();
        let next = f.apic.poll_timer().unwrap();
        assert!(next >= now + MIN_PERIODIC_POLL_NS);
        assert!(f.apic.has_interrupt());
    }

    #[test]
    fn masked_timer_counts_without_interrupting() {
        let mut f = enabled();
        f.apic.write(REG_DCR, 0b1011);
        f.apic.write(REG_LVT_TIMER, 0x10030);
        f.apic.write(REG_INITIAL_COUNT, 100);
        f.clock.advance(40);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 60);
        f.clock.advance(100);
        assert_eq!(f.apic.poll_timer(), None);
        assert!(!f.apic.has_interrupt());
        assert_eq!(f.apic.read(REG_IRR + 0x10), 0);
        assert!(!f.intr.level());
    }

    #[test]
    fn tsc_deadline_timer() {
        let mut f = enabled();
        // Ignored outside TSC-deadline mode.
        f.apic.set_tsc_deadline(f.clock.now_ns() + 10);
        assert_eq!(f.apic.tsc_deadline(), 0);
        f.apic.write(REG_LVT_TIMER, 0x40050);
        let deadline = f.clock.now_ns() + 5_000;
        f.apic.set_tsc_deadline(deadline);
        assert_eq!(f.apic.tsc_deadline(), deadline);
        assert_eq!(f.apic.timer_deadline(), Some(deadline));
        // Initial count writes are ignored, current count reads 0.
        f.apic.write(REG_INITIAL_COUNT, 1234);
        assert_eq!(f.apic.read(REG_INITIAL_COUNT), 0);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 0);
        f.clock.advance(4_999);
        assert_eq!(f.apic.poll_timer(), Some(deadline));
        assert!(!f.apic.has_interrupt());
        f.clock.advance(1);
        assert_eq!(f.apic.poll_timer(), None);
        assert_eq!(f.apic.tsc_deadline(), 0, "disarmed after firing");
        assert_eq!(f.apic.acknowledge(), Some(0x50));
        eoi(&mut f.apic);
        // A deadline in the past fires at once.
        f.apic.set_tsc_deadline(1);
        assert!(f.apic.has_interrupt());
        assert_eq!(f.apic.acknowledge(), Some(0x50));
        eoi(&mut f.apic);
        // Leaving the mode disarms.
        f.apic.set_tsc_deadline(f.clock.now_ns() + 100);
        f.apic.write(REG_LVT_TIMER, 0x50);
        assert_eq!(f.apic.tsc_deadline(), 0);
        assert_eq!(f.apic.timer_deadline(), None);
        // 0 disarms.
        f.apic.write(REG_LVT_TIMER, 0x40050);
        f.apic.set_tsc_deadline(f.clock.now_ns() + 100);
        f.apic.set_tsc_deadline(0);
        assert_eq!(f.apic.timer_deadline(), None);
    }

    #[test]
    fn entering_tsc_deadline_mode_stops_the_count_down() {
        let mut f = enabled();
        f.apic.write(REG_LVT_TIMER, 0x30);
        f.apic.write(REG_INITIAL_COUNT, 1000);
        f.apic.write(REG_LVT_TIMER, 0x40030);
        assert_eq!(f.apic.timer_deadline(), None);
        f.clock.advance(100_000);
        f.apic.poll_timer();
        assert!(!f.apic.has_interrupt());
    }

    #[test]
    fn switching_periodic_to_one_shot_ends_the_current_period() {
        let mut f = enabled();
        f.apic.write(REG_DCR, 0b1011);
        f.apic.write(REG_LVT_TIMER, 0x20030);
        let start = f.clock.now_ns();
        f.apic.write(REG_INITIAL_COUNT, 100);
        f.clock.advance(250);
        f.apic.poll_timer();
        assert_eq!(f.apic.acknowledge(), Some(0x30));
        eoi(&mut f.apic);
        f.apic.write(REG_LVT_TIMER, 0x30);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 50);
        assert_eq!(f.apic.timer_deadline(), Some(start + 300));
        f.clock.advance(50);
        assert_eq!(f.apic.poll_timer(), None);
        assert_eq!(f.apic.acknowledge(), Some(0x30));
    }

    #[test]
    fn changing_the_divider_keeps_the_count() {
        let mut f = enabled();
        f.apic.write(REG_DCR, 0b1011);
        f.apic.write(REG_LVT_TIMER, 0x30);
        f.apic.write(REG_INITIAL_COUNT, 1000);
        f.clock.advance(400);
        f.apic.write(REG_DCR, 0b0001); // divide by 4
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 600);
        let now = f.clock.now_ns();
        assert_eq!(f.apic.timer_deadline(), Some(now + 2400));
        f.clock.advance(400);
        assert_eq!(f.apic.read(REG_CURRENT_COUNT), 500);
    }

    #[test]
    fn software_disable_masks_lvts_and_drops_fixed() {
        let mut f = enabled();
        f.apic.write(REG_LVT_TIMER, 0x30);
        f.apic.write(0x350, 0x700);
        assert!(f.apic.pic_passthrough());
        f.apic.accept(&fixed(0x60, false));
        f.apic.write(REG_SVR, 0xff);
        assert!(!f.apic.sw_enabled());
        for off in [0x2f0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_ne!(f.apic.read(off) & LVT_MASKED, 0, "{off:#x}");
        }
        assert!(!f.apic.pic_passthrough());
        // Can't unmask while disabled.
        f.apic.write(REG_LVT_TIMER, 0x31);
        assert_eq!(f.apic.read(REG_LVT_TIMER), 0x10031);
        // Held IRR is not presented; new fixed interrupts are dropped.
        assert!(!f.apic.has_interrupt());
        assert!(!f.intr.level());
        f.apic.accept(&fixed(0x70, false));
        assert_eq!(f.apic.read(REG_IRR + 0x30), 1, "0x60 held, 0x70 dropped");
        // Re-enabling presents the held one.
        f.apic.write(REG_SVR, 0x1ff);
        assert!(f.intr.level());
        assert_eq!(f.apic.acknowledge(), Some(0x60));
    }

    #[test]
    fn lint0_passthrough_and_lint1_nmi() {
        let mut f = fixture(0, true);
        assert!(f.apic.pic_passthrough());
        f.apic.set_lint(0, true);
        assert!(
            !f.apic.has_interrupt(),
            "the PIC's INTR goes straight to the CPU"
        );
        f.apic.set_lint(1, true);
        assert!(f.intr.level());
        assert!(f.apic.take_nmi());
        f.apic.set_lint(1, true);
        assert!(!f.apic.take_nmi(), "edge only");
        f.apic.set_lint(1, false);
        f.apic.set_lint(1, true);
        assert!(f.apic.take_nmi());
        // Masked LINT0: no pass-through.
        f.apic.write(REG_SVR, 0x1ff);
        f.apic.write(0x350, 0x10700);
        assert!(!f.apic.pic_passthrough());
        // Globally disabled: pass-through, LINT1 is the NMI pin.
        f.apic.set_base_msr(APIC_DEFAULT_BASE | BASE_MSR_BSP);
        assert!(f.apic.pic_passthrough());
        assert!(!f.apic.hw_enabled());
        assert_eq!(f.apic.base_msr(), 0xfee0_0100);
        f.apic.set_lint(1, false);
        f.apic.set_lint(1, true);
        assert!(f.apic.take_nmi());
        assert_eq!(f.apic.read(REG_VERSION), 0);
        assert_eq!(f.apic.write(REG_ICR_LOW, 0x4030), LapicEffect::None);
        f.apic.set_lint(7, true);
    }

    #[test]
    fn lint_fixed_edge_and_level() {
        let mut f = enabled();
        f.apic.write(0x360, 0x55);
        f.apic.set_lint(1, true);
        assert_eq!(f.apic.acknowledge(), Some(0x55));
        eoi(&mut f.apic);
        f.apic.set_lint(1, true);
        assert!(!f.apic.has_interrupt());
        // Level-triggered LINT0 with Remote IRR.
        f.apic.write(0x350, 0x8066);
        f.apic.set_lint(0, true);
        assert_ne!(f.apic.read(0x350) & LVT_REMOTE_IRR, 0);
        assert_eq!(f.apic.acknowledge(), Some(0x66));
        assert_eq!(eoi(&mut f.apic), LapicEffect::Eoi(0x66));
        // Still asserted: requested again.
        assert_eq!(f.apic.acknowledge(), Some(0x66));
        f.apic.set_lint(0, false);
        eoi(&mut f.apic);
        assert_eq!(f.apic.read(0x350) & LVT_REMOTE_IRR, 0);
        assert!(!f.apic.has_interrupt());
        // Active-low LINT1 NMI: falling pin level is the assertion.
        f.apic.write(0x360, 0x2400);
        f.apic.set_lint(1, false);
        assert!(f.apic.take_nmi());
    }

    #[test]
    fn base_msr_disable_resets_registers() {
        let mut f = enabled();
        f.apic.write(REG_TPR, 0x40);
        f.apic.accept(&fixed(0x90, false));
        f.apic.set_base_msr(0xfee0_0000);
        assert!(!f.apic.hw_enabled());
        assert!(!f.apic.has_interrupt());
        assert!(!f.intr.level());
        f.apic.accept(&fixed(0x90, false));
        f.apic
            .set_base_msr(0xfee0_0800 | BASE_MSR_EXTD | BASE_MSR_BSP);
        assert_eq!(f.apic.base_msr(), 0xfee0_0800);
        assert_eq!(f.apic.read(REG_TPR), 0);
        assert_eq!(f.apic.read(REG_IRR + 0x40), 0);
        assert_eq!(f.apic.read(REG_SVR), 0xff);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut f = enabled();
        assert_eq!(f.apic.read(0x21), 0);
        assert_eq!(f.apic.read(0x1000), 0);
        assert_eq!(f.apic.read(0x400), 0);
        assert_eq!(f.apic.write(0x84, 0xff), LapicEffect::None);
        assert_eq!(f.apic.read(REG_TPR), 0);
        f.apic.write(REG_VERSION, 0);
        assert_eq!(f.apic.read(REG_VERSION), APIC_VERSION);
        f.apic.write(REG_IRR + 0x70, 0xffff_ffff);
        assert_eq!(f.apic.read(REG_IRR + 0x70), 0);
    }

    #[test]
    fn intr_output_follows_state() {
        let mut f = enabled();
        assert!(!f.intr.level());
        f.apic.accept(&fixed(0x80, false));
        assert!(f.intr.level());
        assert_eq!(f.intr.take_edges(), 1);
        f.apic.acknowledge();
        assert!(!f.intr.level());
        f.apic.accept(&fixed(0x90, false));
        assert!(f.intr.level());
        f.apic.write(REG_TPR, 0xa0);
        assert!(!f.intr.level());
        f.apic.write(REG_TPR, 0);
        assert!(f.intr.level());
        f.apic.write(REG_SVR, 0xff);
        assert!(!f.intr.level());
    }

    #[test]
    fn snapshot_round_trip() {
        let mut f = enabled();
        f.apic.write(REG_LDR, 0x0800_0000);
        f.apic.write(REG_LVT_TIMER, 0x20030);
        f.apic.write(REG_INITIAL_COUNT, 5000);
        f.apic.accept(&fixed(0x44, true));
        let state = f.apic.snapshot();
        let mut g = fixture(1, false);
        g.clock.set(f.clock.now_ns());
        g.apic.restore(state.clone());
        assert!(g.intr.level());
        assert_eq!(g.apic.snapshot(), state);
        for off in (0..0x400).step_by(16) {
            assert_eq!(g.apic.read(off), f.apic.read(off), "{off:#x}");
        }
        assert_eq!(g.apic.timer_deadline(), f.apic.timer_deadline());
    }

    #[test]
    fn random_register_spray_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x1a9c);
        let mut f = fixture(0, true);
        for _ in 0..200_000 {
            let offset = match rng.gen_range(0..4) {
                0 => rng.gen::<u64>(),
                1 => rng.gen_range(0..0x1000),
                _ => rng.gen_range(0..0x40) * 16,
            };
            let value = rng.gen::<u32>();
            match rng.gen_range(0..16) {
                0..=5 => {
                    f.apic.read(offset);
                }
                6..=10 => {
                    f.apic.write(offset, value);
                }
                11 => f.clock.advance(rng.gen_range(0..1_000_000)),
                12 => {
                    f.apic.poll_timer();
                    f.apic.acknowledge();
                    f.apic.set_tsc_deadline(rng.gen());
                }
                13 => f.apic.set_lint(rng.gen_range(0..3), rng.gen()),
                14 => {
                    let mode = DeliveryMode::from_bits(value).unwrap_or(DeliveryMode::Fixed);
                    f.apic.accept(&ApicMessage {
                        vector: value as u8,
                        mode,
                        logical: rng.gen(),
                        dest: rng.gen(),
                        shorthand: Shorthand::None,
                        level_triggered: rng.gen(),
                        deassert: rng.gen(),
                        source: 0,
                    });
                }
                _ => {
                    if rng.gen_range(0..50) == 0 {
                        f.apic.set_base_msr(rng.gen());
                    }
                    f.apic.take_nmi();
                    f.apic.take_sipi();
                    f.apic.take_init();
                }
            }
            assert_eq!(
                f.intr.level(),
                f.apic.has_interrupt()
                    || f.apic.s.pending_nmi
                    || f.apic.s.pending_init
                    || f.apic.s.pending_sipi.is_some()
            );
        }
    }
}
