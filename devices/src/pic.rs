//! The PC's pair of Intel 8259A programmable interrupt controllers.
//!
//! The master (ports 0x20-0x21) drives the CPU's INTR pin; the slave (ports
//! 0xa0-0xa1) is cascaded on the master's IR2. Section references are to the
//! Intel 8259A datasheet (order number 231468); the edge/level control
//! registers at ports 0x4d0-0x4d1 are the PIIX/PIIX3 ELCR1/ELCR2.
//!
//! The pair is one object, shared as `Arc<Mutex<Pic>>` between the CPU (which
//! polls [`Pic::has_interrupt`] and calls [`Pic::acknowledge`]), the devices
//! (through [`PicIrqLine`]) and the port bus (through [`PicPorts`]).
//!
//! Edge-triggered requests stay latched in IRR when the line falls again
//! before the acknowledge, so [`IrqLine::pulse`] works; the datasheet's
//! "default IR7" for a vanished request applies to level-triggered lines.

use crate::{log_odd_access, BusDevice, IrqLine, Snapshot};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};

/// Base I/O port of the master 8259A.
pub const MASTER_PORT: u16 = 0x20;
/// Base I/O port of the slave 8259A.
pub const SLAVE_PORT: u16 = 0xa0;
/// I/O port of ELCR1 (master); ELCR2 (slave) follows it.
pub const ELCR_PORT: u16 = 0x4d0;
/// The master input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;

/// ELCR1 bits 0-2 (IRQ0-2) are reserved: those lines are always edge.
const MASTER_ELCR_MASK: u8 = 0xf8;
/// ELCR2 bits 0 and 5 (IRQ8, IRQ13) are reserved: always edge.
const SLAVE_ELCR_MASK: u8 = 0xde;

// Command word bits (datasheet "Programming the 8259A").
const ICW1_SELECT: u8 = 0x10;
const ICW1_IC4: u8 = 0x01;
const ICW1_SINGLE: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
const ICW4_8086: u8 = 0x01;
const ICW4_AUTO_EOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;
const OCW3_SELECT: u8 = 0x08;
const OCW3_READ_ISR: u8 = 0x01;
const OCW3_READ_REGISTER: u8 = 0x02;
const OCW3_POLL: u8 = 0x04;
const OCW3_SPECIAL_MASK: u8 = 0x20;
const OCW3_SET_SPECIAL_MASK: u8 = 0x40;

/// Where a chip is in its initialization sequence (datasheet Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum InitStep {
    Ready,
    ExpectIcw2,
    ExpectIcw3,
    ExpectIcw4,
}

/// One 8259A.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct I8259 {
    is_master: bool,
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Current levels of the IR inputs.
    input_levels: u8,
    /// PIIX edge/level control register: 1 = level-triggered.
    elcr: u8,
    /// The IR with the lowest priority (rotation, datasheet "Rotation").
    lowest_priority: u8,
    vector_base: u8,
    icw1: u8,
    icw3: u8,
    icw4: u8,
    init_step: InitStep,
    rotate_on_auto_eoi: bool,
    special_mask: bool,
    read_isr: bool,
    poll_pending: bool,
}

impl I8259 {
    fn new(is_master: bool) -> Self {
        Self {
            is_master,
            irr: 0,
            isr: 0,
            imr: 0,
            input_levels: 0,
            elcr: 0,
            lowest_priority: 7,
            vector_base: if is_master { 0x08 } else { 0x70 },
            icw1: ICW1_IC4,
            icw3: if is_master {
                1 << CASCADE_IRQ
            } else {
                CASCADE_IRQ
            },
            icw4: ICW4_8086,
            init_step: InitStep::Ready,
            rotate_on_auto_eoi: false,
            special_mask: false,
            read_isr: false,
            poll_pending: false,
        }
    }

    fn elcr_mask(&self) -> u8 {
        if self.is_master {
            MASTER_ELCR_MASK
        } else {
            SLAVE_ELCR_MASK
        }
    }

    fn single(&self) -> bool {
        self.icw1 & ICW1_SINGLE != 0
    }

    fn auto_eoi(&self) -> bool {
        self.icw4 & ICW4_AUTO_EOI != 0
    }

    /// Master with a slave on the cascade input (ICW3 bit set, datasheet
    /// "ICW3").
    fn cascades_on(&self, irq: u8) -> bool {
        self.is_master && !self.single() && self.icw3 & (1 << irq) != 0
    }

    /// Inputs sensed by level: ICW1.LTIM for all, or ELCR per line.
    fn level_triggered_mask(&self) -> u8 {
        if self.icw1 & ICW1_LTIM != 0 {
            0xff
        } else {
            self.elcr
        }
    }

    /// Level-triggered IRR bits follow their inputs.
    fn refresh_level_requests(&mut self) {
        let level = self.level_triggered_mask();
        self.irr = (self.irr & !level) | (self.input_levels & level);
    }

    fn set_input(&mut self, irq: u8, level: bool) {
        let mask = 1u8 << (irq & 7);
        let was_high = self.input_levels & mask != 0;
        if level {
            self.input_levels |= mask;
        } else {
            self.input_levels &= !mask;
        }
        if self.level_triggered_mask() & mask != 0 {
            self.refresh_level_requests();
        } else if level && !was_high {
            self.irr |= mask;
        }
    }

    /// The IR in `bits` with the highest priority under the current rotation.
    fn highest_priority_in(&self, bits: u8) -> Option<u8> {
        (1..=8u8)
            .map(|step| self.lowest_priority.wrapping_add(step) & 7)
            .find(|&irq| bits & (1 << irq) != 0)
    }

    /// 0 for the highest priority, 7 for the lowest.
    fn priority_rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.lowest_priority).wrapping_sub(1) & 7
    }

    /// The request the chip would present now (datasheet "Interrupt
    /// Sequence", "Fully Nested Mode", "Special Mask Mode", "Special Fully
    /// Nested Mode"): the highest-priority unmasked request, if it outranks
    /// every in-service level that still blocks.
    fn deliverable(&self) -> Option<u8> {
        let request = self.highest_priority_in(self.irr & !self.imr)?;
        let mut blocking = self.isr;
        if self.special_mask {
            blocking &= !self.imr;
        }
        if self.is_master && self.icw4 & ICW4_SFNM != 0 {
            blocking &= !self.icw3;
        }
        match self.highest_priority_in(blocking) {
            Some(in_service) if self.priority_rank(in_service) <= self.priority_rank(request) => {
                None
            }
            _ => Some(request),
        }
    }

    /// The INTA cycle for `irq`: IRR edge latch cleared, ISR set unless in
    /// automatic EOI mode (datasheet "Automatic End of Interrupt Mode").
    fn acknowledge_irq(&mut self, irq: u8) {
        let mask = 1u8 << (irq & 7);
        self.irr &= !mask;
        self.refresh_level_requests();
        if self.auto_eoi() {
            if self.rotate_on_auto_eoi {
                self.lowest_priority = irq & 7;
            }
        } else {
            self.isr |= mask;
        }
    }

    /// A read in poll mode (datasheet "Poll Command").
    fn poll(&mut self) -> u8 {
        match self.deliverable() {
            Some(irq) => {
                self.acknowledge_irq(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read(&mut self, a0: bool) -> u8 {
        if self.poll_pending {
            self.poll_pending = false;
            return self.poll();
        }
        if a0 {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    fn write(&mut self, a0: bool, value: u8) {
        if a0 {
            self.write_data(value);
        } else if value & ICW1_SELECT != 0 {
            self.write_icw1(value);
        } else if value & OCW3_SELECT != 0 {
            self.write_ocw3(value);
        } else {
            self.write_ocw2(value);
        }
    }

    /// ICW1 starts initialization (datasheet "Initialization Command Words").
    fn write_icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.icw4 = 0;
        self.imr = 0;
        self.isr = 0;
        // The edge sense latches are reset: edge inputs need a new rising
        // edge; level inputs keep requesting.
        self.irr = 0;
        self.refresh_level_requests();
        self.lowest_priority = 7;
        self.special_mask = false;
        self.read_isr = false;
        self.poll_pending = false;
        self.rotate_on_auto_eoi = false;
        self.init_step = InitStep::ExpectIcw2;
        if value & 0x04 != 0 {
            log_odd_access!("8259A: ICW1 call address interval 4 ignored (8080 mode only)");
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            InitStep::ExpectIcw2 => {
                self.vector_base = value & 0xf8;
                self.init_step = if !self.single() {
                    InitStep::ExpectIcw3
                } else if self.icw1 & ICW1_IC4 != 0 {
                    InitStep::ExpectIcw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::ExpectIcw3 => {
                self.icw3 = value;
                self.init_step = if self.icw1 & ICW1_IC4 != 0 {
                    InitStep::ExpectIcw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::ExpectIcw4 => {
                self.icw4 = value;
                if value & ICW4_8086 == 0 {
                    log_odd_access!("8259A: MCS-80/85 mode requested; acting in 8086 mode");
                }
                self.init_step = InitStep::Ready;
            }
            InitStep::Ready => self.imr = value,
        }
    }

    /// OCW2: end of interrupt and rotation (datasheet Figure 7, OCW2).
    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Non-specific EOI, with rotation for 0b101.
            0b001 | 0b101 => {
                if let Some(irq) = self.highest_priority_in(self.isr) {
                    self.isr &= !(1 << irq);
                    if value & 0x80 != 0 {
                        self.lowest_priority = irq;
                    }
                }
            }
            // Specific EOI, with rotation for 0b111.
            0b011 | 0b111 => {
                self.isr &= !(1 << level);
                if value & 0x80 != 0 {
                    self.lowest_priority = level;
                }
            }
            0b100 => self.rotate_on_auto_eoi = true,
            0b000 => self.rotate_on_auto_eoi = false,
            0b110 => self.lowest_priority = level,
            _ => {} // 0b010: no operation.
        }
    }

    /// OCW3: register read select, poll, special mask mode.
    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_POLL != 0 {
            self.poll_pending = true;
        }
        if value & OCW3_READ_REGISTER != 0 {
            self.read_isr = value & OCW3_READ_ISR != 0;
        }
        if value & OCW3_SET_SPECIAL_MASK != 0 {
            self.special_mask = value & OCW3_SPECIAL_MASK != 0;
        }
    }
}

/// Saved state of a [`Pic`]: both chips' registers and modes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    master: I8259,
    slave: I8259,
}

/// The master/slave 8259A pair of a PC.
pub struct Pic {
    master: I8259,
    slave: I8259,
    intr_level: bool,
    intr_output: Option<Arc<dyn IrqLine>>,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// A pair cascaded on IR2 with vectors 0x08/0x70 (the BIOS's layout),
    /// everything unmasked, edge-triggered; guests reinitialize it anyway.
    pub fn new() -> Self {
        Self {
            master: I8259::new(true),
            slave: I8259::new(false),
            intr_level: false,
            intr_output: None,
        }
    }

    /// Returns both chips to the power-on state of [`Pic::new`], keeping
    /// input levels and the INTR output connection.
    pub fn reset(&mut self) {
        let master_levels = self.master.input_levels;
        let slave_levels = self.slave.input_levels;
        self.master = I8259::new(true);
        self.slave = I8259::new(false);
        self.master.input_levels = master_levels;
        self.slave.input_levels = slave_levels;
        self.update();
    }

    /// Connects the master's INT pin: `line` follows [`Pic::has_interrupt`]
    /// (e.g. to wake a halted CPU). It is called with the `Pic` locked, so it
    /// must not lock the `Pic` itself.
    pub fn set_intr_output(&mut self, line: Arc<dyn IrqLine>) {
        line.set_level(self.intr_level);
        self.intr_output = Some(line);
    }

    /// Sets the level of ISA interrupt line `irq` (0-15). IRQ2 is the cascade
    /// input and is ignored unless the master is in single mode.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IRQ if !self.master.single() => {
                log_odd_access!("8259A: IRQ2 is the cascade input; request ignored");
                return;
            }
            0..=7 => self.master.set_input(irq, level),
            8..=15 => self.slave.set_input(irq - 8, level),
            _ => {
                log_odd_access!("8259A: no IRQ {irq}");
                return;
            }
        }
        self.update();
    }

    /// The master's INT output: an interrupt is waiting for the CPU.
    pub fn has_interrupt(&self) -> bool {
        self.master.deliverable().is_some()
    }

    /// The CPU's interrupt acknowledge cycle: returns the vector and moves
    /// the request into service (datasheet "Interrupt Sequence"). With no
    /// request left the master answers IR7 and a cascaded request that
    /// vanished gets the slave's IR7, neither setting ISR (spurious IRQ7 and
    /// IRQ15).
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.deliverable() {
            None => self.master.vector_base | 7,
            Some(irq) => {
                self.master.acknowledge_irq(irq);
                if self.master.cascades_on(irq) && irq == CASCADE_IRQ {
                    let vector = match self.slave.deliverable() {
                        Some(slave_irq) => {
                            self.slave.acknowledge_irq(slave_irq);
                            self.slave.vector_base | slave_irq
                        }
                        None => self.slave.vector_base | 7,
                    };
                    // The slave's INT output drops during its INTA cycle; a
                    // request still pending afterwards is a new edge.
                    self.master.set_input(CASCADE_IRQ, false);
                    vector
                } else if self.master.cascades_on(irq) {
                    // ICW3 names a slave on an input with nothing attached:
                    // nobody drives the data bus.
                    0xff
                } else {
                    self.master.vector_base | irq
                }
            }
        };
        self.update();
        vector
    }

    /// Reads an I/O port of the pair: 0x20/0x21 (master), 0xa0/0xa1
    /// (slave), 0x4d0/0x4d1 (ELCR). Other ports read all ones.
    pub fn read_port(&mut self, port: u16) -> u8 {
        let value = match port {
            0x20 | 0x21 => self.master.read(port & 1 != 0),
            0xa0 | 0xa1 => self.slave.read(port & 1 != 0),
            0x4d0 | 0x4d1 => return self.read_elcr((port & 1) as u8),
            _ => {
                log_odd_access!("8259A: read of port {port:#x}");
                return 0xff;
            }
        };
        // A poll read acknowledges.
        self.update();
        value
    }

    /// Writes an I/O port of the pair (see [`Pic::read_port`]).
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            0x20 | 0x21 => self.master.write(port & 1 != 0, value),
            0xa0 | 0xa1 => self.slave.write(port & 1 != 0, value),
            0x4d0 | 0x4d1 => return self.write_elcr((port & 1) as u8, value),
            _ => {
                log_odd_access!("8259A: write {value:#x} to port {port:#x}");
                return;
            }
        }
        self.update();
    }

    /// Reads ELCR1 (`index` 0, IRQ0-7) or ELCR2 (`index` 1, IRQ8-15); a set
    /// bit makes that line level-triggered (PIIX3 datasheet, "ELCR1/ELCR2").
    pub fn read_elcr(&self, index: u8) -> u8 {
        match index {
            0 => self.master.elcr,
            1 => self.slave.elcr,
            _ => 0xff,
        }
    }

    /// Writes ELCR1 or ELCR2 (see [`Pic::read_elcr`]); reserved bits (IRQ0-2,
    /// IRQ8, IRQ13) stay 0.
    pub fn write_elcr(&mut self, index: u8, value: u8) {
        let chip = match index {
            0 => &mut self.master,
            1 => &mut self.slave,
            _ => {
                log_odd_access!("8259A: no ELCR {index}");
                return;
            }
        };
        chip.elcr = value & chip.elcr_mask();
        chip.refresh_level_requests();
        self.update();
    }

    /// The interrupt request registers, slave in the high byte.
    pub fn irr(&self) -> u16 {
        u16::from(self.master.irr) | (u16::from(self.slave.irr) << 8)
    }

    /// The in-service registers, slave in the high byte.
    pub fn isr(&self) -> u16 {
        u16::from(self.master.isr) | (u16::from(self.slave.isr) << 8)
    }

    /// The interrupt mask registers, slave in the high byte.
    pub fn imr(&self) -> u16 {
        u16::from(self.master.imr) | (u16::from(self.slave.imr) << 8)
    }

    /// Propagates the slave's INT to the master's IR2 and the master's INT
    /// to the CPU.
    fn update(&mut self) {
        if !self.master.single() {
            let slave_int = self.slave.deliverable().is_some();
            self.master.set_input(CASCADE_IRQ, slave_int);
        }
        let intr = self.has_interrupt();
        if intr != self.intr_level {
            self.intr_level = intr;
            if let Some(line) = &self.intr_output {
                line.set_level(intr);
            }
        }
    }
}

impl Snapshot for Pic {
    type State = PicState;

    fn snapshot(&self) -> PicState {
        PicState {
            master: self.master.clone(),
            slave: self.slave.clone(),
        }
    }

    /// Restores both chips and drives the INTR output to the restored level.
    fn restore(&mut self, state: PicState) {
        self.master = state.master;
        self.slave = state.slave;
        self.master.is_master = true;
        self.slave.is_master = false;
        self.intr_level = self.has_interrupt();
        if let Some(line) = &self.intr_output {
            line.set_level(self.intr_level);
        }
    }
}

fn lock(pic: &Mutex<Pic>) -> MutexGuard<'_, Pic> {
    pic.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A device's interrupt line into the shared [`Pic`].
#[derive(Clone)]
pub struct PicIrqLine {
    /// The controller pair.
    pub pic: Arc<Mutex<Pic>>,
    /// The ISA IRQ number (0-15).
    pub irq: u8,
}

impl PicIrqLine {
    /// Line `irq` (0-15) of `pic`.
    pub fn new(pic: Arc<Mutex<Pic>>, irq: u8) -> Self {
        Self { pic, irq }
    }
}

impl IrqLine for PicIrqLine {
    fn set_level(&self, level: bool) {
        lock(&self.pic).set_irq(self.irq, level);
    }

    fn pulse(&self) {
        let mut pic = lock(&self.pic);
        pic.set_irq(self.irq, true);
        pic.set_irq(self.irq, false);
    }
}

/// A [`BusDevice`] window onto the shared [`Pic`]'s ports: offset `n` is
/// port `base + n`. Register one at 0x20 (2 ports), 0xa0 (2) and 0x4d0 (2).
/// Wider accesses use their low byte; the other bytes read all ones.
pub struct PicPorts {
    pic: Arc<Mutex<Pic>>,
    base: u16,
}

impl PicPorts {
    /// Ports starting at `base`.
    pub fn new(pic: Arc<Mutex<Pic>>, base: u16) -> Self {
        Self { pic, base }
    }

    /// The master's ports 0x20-0x21.
    pub fn master(pic: Arc<Mutex<Pic>>) -> Self {
        Self::new(pic, MASTER_PORT)
    }

    /// The slave's ports 0xa0-0xa1.
    pub fn slave(pic: Arc<Mutex<Pic>>) -> Self {
        Self::new(pic, SLAVE_PORT)
    }

    /// The ELCR ports 0x4d0-0x4d1.
    pub fn elcr(pic: Arc<Mutex<Pic>>) -> Self {
        Self::new(pic, ELCR_PORT)
    }

    fn port(&self, offset: u64) -> Option<u16> {
        if offset >= 2 {
            log_odd_access!("8259A: access at offset {offset:#x} of {:#x}", self.base);
            return None;
        }
        Some(self.base.wrapping_add(offset as u16))
    }
}

impl BusDevice for PicPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(first), Some(port)) = (data.first_mut(), self.port(offset)) {
            *first = lock(&self.pic).read_port(port);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Some(port)) = (data.first(), self.port(offset)) {
            lock(&self.pic).write_port(port, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spray, RecordingIrq, XorShift};

    /// Linux's initialization: vectors 0x30/0x38, cascade on IR2, 8086 mode.
    fn initialized() -> Pic {
        let mut pic = Pic::new();
        for (port, value) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x38),
            (0xa1, 0x02),
            (0xa1, 0x01),
        ] {
            pic.write_port(port, value);
        }
        pic
    }

    fn eoi_master(pic: &mut Pic) {
        pic.write_port(0x20, 0x20);
    }

    fn eoi_slave(pic: &mut Pic) {
        pic.write_port(0xa0, 0x20);
    }

    #[test]
    fn edge_interrupt_is_delivered_once() {
        let mut pic = initialized();
        assert!(!pic.has_interrupt());
        pic.set_irq(1, true);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x31);
        assert_eq!(pic.isr(), 0x02);
        assert_eq!(pic.irr() & 0x02, 0);
        assert!(!pic.has_interrupt());
        // Still high: no new edge.
        pic.set_irq(1, true);
        eoi_master(&mut pic);
        assert!(!pic.has_interrupt());
        assert_eq!(pic.isr(), 0);
        // A pulse latches a request.
        pic.set_irq(1, false);
        pic.set_irq(1, true);
        pic.set_irq(1, false);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x31);
    }

    #[test]
    fn fixed_priority_and_nesting() {
        let mut pic = initialized();
        pic.set_irq(5, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x33);
        // IR5 is lower than IR3 in service: waits.
        assert!(!pic.has_interrupt());
        eoi_master(&mut pic);
        assert_eq!(pic.acknowledge(), 0x35);
        // A higher request nests over IR5.
        pic.set_irq(0, true);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x30);
        assert_eq!(pic.isr(), 0x21);
        // Non-specific EOI ends the highest in service (IR0).
        eoi_master(&mut pic);
        assert_eq!(pic.isr(), 0x20);
    }

    #[test]
    fn imr_masks_requests() {
        let mut pic = initialized();
        pic.write_port(0x21, 0x10);
        pic.set_irq(4, true);
        assert!(!pic.has_interrupt());
        assert_eq!(pic.read_port(0x21), 0x10);
        assert_eq!(pic.imr(), 0x0010);
        pic.write_port(0x21, 0x00);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x34);
    }

    #[test]
    fn slave_interrupt_cascades_through_ir2() {
        let mut pic = initialized();
        pic.set_irq(12, true);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x3c);
        assert_eq!(pic.isr(), 0x1004);
        assert!(!pic.has_interrupt());
        eoi_slave(&mut pic);
        eoi_master(&mut pic);
        assert_eq!(pic.isr(), 0);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn second_slave_request_after_eoi_is_delivered() {
        let mut pic = initialized();
        pic.set_irq(12, true);
        pic.set_irq(14, true);
        assert_eq!(pic.acknowledge(), 0x3c);
        eoi_slave(&mut pic);
        assert!(!pic.has_interrupt(), "master IR2 still in service");
        eoi_master(&mut pic);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x3e);
    }

    #[test]
    fn slave_auto_eoi_keeps_later_requests() {
        let mut pic = initialized();
        pic.write_port(0xa0, 0x11);
        pic.write_port(0xa1, 0x38);
        pic.write_port(0xa1, 0x02);
        pic.write_port(0xa1, 0x03);
        pic.set_irq(9, true);
        pic.set_irq(10, true);
        assert_eq!(pic.acknowledge(), 0x39);
        eoi_master(&mut pic);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x3a);
    }

    #[test]
    fn level_triggered_lines_follow_the_input() {
        let mut pic = initialized();
        pic.write_elcr(1, 0x08); // IRQ11 level
        assert_eq!(pic.read_elcr(1), 0x08);
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), 0x3b);
        eoi_slave(&mut pic);
        eoi_master(&mut pic);
        // Still asserted: requested again.
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x3b);
        pic.set_irq(11, false);
        eoi_slave(&mut pic);
        eoi_master(&mut pic);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn ltim_makes_every_line_level_triggered() {
        let mut pic = Pic::new();
        pic.write_port(0x20, 0x19); // ICW1 with LTIM
        pic.write_port(0x21, 0x08);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x01);
        pic.set_irq(3, true);
        pic.set_irq(3, false);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn elcr_reserved_bits_stay_clear() {
        let mut pic = Pic::new();
        pic.write_port(0x4d0, 0xff);
        pic.write_port(0x4d1, 0xff);
        assert_eq!(pic.read_port(0x4d0), 0xf8);
        assert_eq!(pic.read_port(0x4d1), 0xde);
        assert_eq!(pic.read_elcr(7), 0xff);
        pic.write_elcr(9, 0xff);
    }

    #[test]
    fn vanished_level_request_gives_spurious_irq7() {
        let mut pic = initialized();
        pic.write_elcr(0, 0x20); // IRQ5 level
        pic.set_irq(5, true);
        assert!(pic.has_interrupt());
        pic.set_irq(5, false);
        assert_eq!(pic.acknowledge(), 0x37);
        assert_eq!(pic.isr(), 0, "spurious IRQ7 sets no ISR bit");
    }

    #[test]
    fn vanished_slave_request_gives_spurious_irq15() {
        let mut pic = initialized();
        pic.write_elcr(1, 0x04); // IRQ10 level
        pic.set_irq(10, true);
        // The CPU saw INTR; the device drops its line before INTA. The
        // master's edge latch on IR2 still holds the request.
        pic.set_irq(10, false);
        assert_eq!(pic.acknowledge(), 0x3f);
        assert_eq!(pic.isr(), 0x0004, "master IR2 in service, slave nothing");
        eoi_master(&mut pic);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn ocw3_selects_irr_or_isr() {
        let mut pic = initialized();
        pic.write_port(0x21, 0xff);
        pic.set_irq(6, true);
        assert_eq!(pic.read_port(0x20), 0x40, "IRR by default");
        pic.write_port(0x21, 0x00);
        pic.acknowledge();
        pic.set_irq(7, true);
        pic.write_port(0x20, 0x0b);
        assert_eq!(pic.read_port(0x20), 0x40, "ISR");
        pic.write_port(0x20, 0x0a);
        assert_eq!(pic.read_port(0x20), 0x80, "IRR");
        // OCW3 without RR keeps the selection.
        pic.write_port(0x20, 0x08);
        assert_eq!(pic.read_port(0x20), 0x80);
    }

    #[test]
    fn poll_mode_acknowledges_on_read() {
        let mut pic = initialized();
        pic.set_irq(4, true);
        pic.write_port(0x20, 0x0c);
        assert_eq!(pic.read_port(0x20), 0x84);
        assert_eq!(pic.isr(), 0x10);
        assert!(!pic.has_interrupt());
        // Poll with nothing pending.
        pic.write_port(0x20, 0x0c);
        assert_eq!(pic.read_port(0x21), 0x00);
        // Poll is one-shot: next read of port A0=1 is IMR again.
        assert_eq!(pic.read_port(0x21), 0x00);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut pic = Pic::new();
        pic.write_port(0x20, 0x11);
        pic.write_port(0x21, 0x20);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x03);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x23);
        assert_eq!(pic.isr(), 0);
        pic.set_irq(4, true);
        assert!(pic.has_interrupt());
    }

    #[test]
    fn rotate_in_auto_eoi_mode() {
        let mut pic = Pic::new();
        pic.write_port(0x20, 0x11);
        pic.write_port(0x21, 0x20);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x03);
        pic.write_port(0x20, 0x80); // rotate in AEOI: set
        pic.set_irq(1, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x21);
        // IR1 is now lowest: IR3 next, then a new IR1 loses to IR4.
        pic.set_irq(1, false);
        pic.set_irq(1, true);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x23);
        assert_eq!(pic.acknowledge(), 0x24);
        assert_eq!(pic.acknowledge(), 0x21);
        pic.write_port(0x20, 0x00); // rotate in AEOI: clear
        pic.set_irq(5, true);
        pic.set_irq(6, true);
        assert_eq!(pic.acknowledge(), 0x25);
        assert_eq!(pic.acknowledge(), 0x26);
    }

    #[test]
    fn rotation_commands_change_priorities() {
        let mut pic = initialized();
        // Set priority: IR4 lowest, so IR5 is highest.
        pic.write_port(0x20, 0xc4);
        pic.set_irq(0, true);
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), 0x35);
        // Rotate on non-specific EOI: IR5 becomes lowest, IR6 highest.
        pic.write_port(0x20, 0xa0);
        assert_eq!(pic.isr(), 0);
        pic.set_irq(6, true);
        assert_eq!(pic.acknowledge(), 0x36);
        // Rotate on specific EOI for IR6: IR7 is now highest, then IR0.
        pic.write_port(0x20, 0xe6);
        pic.set_irq(7, true);
        assert_eq!(pic.acknowledge(), 0x37);
        pic.write_port(0x20, 0x67); // specific EOI IR7
        assert_eq!(pic.acknowledge(), 0x30);
        pic.write_port(0x20, 0x60);
        assert_eq!(pic.isr(), 0);
        pic.write_port(0x20, 0x40); // no operation
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_through() {
        let mut pic = initialized();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x33);
        pic.set_irq(6, true);
        assert!(!pic.has_interrupt());
        // Handler masks its own level and enters special mask mode.
        pic.write_port(0x21, 0x08);
        pic.write_port(0x20, 0x68);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), 0x36);
        // Leave special mask mode: IR3 and IR6 in service block again.
        pic.write_port(0x20, 0x48);
        pic.write_port(0x20, 0x66);
        pic.set_irq(7, true);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn special_fully_nested_mode_lets_higher_slave_requests_nest() {
        for (icw4, nests) in [(0x11, true), (0x01, false)] {
            let mut pic = Pic::new();
            pic.write_port(0x20, 0x11);
            pic.write_port(0x21, 0x30);
            pic.write_port(0x21, 0x04);
            pic.write_port(0x21, icw4);
            pic.write_port(0xa0, 0x11);
            pic.write_port(0xa1, 0x38);
            pic.write_port(0xa1, 0x02);
            pic.write_port(0xa1, 0x01);
            pic.set_irq(12, true);
            assert_eq!(pic.acknowledge(), 0x3c);
            pic.set_irq(9, true);
            assert_eq!(pic.has_interrupt(), nests, "icw4 {icw4:#x}");
            if nests {
                assert_eq!(pic.acknowledge(), 0x39);
            }
        }
    }

    #[test]
    fn icw1_resets_masks_and_requests() {
        let mut pic = initialized();
        pic.write_port(0x21, 0xff);
        pic.set_irq(3, true);
        pic.write_port(0x20, 0x11);
        assert_eq!(pic.read_port(0x20), 0, "IRR cleared");
        pic.write_port(0x21, 0x50);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x01);
        assert_eq!(pic.read_port(0x21), 0, "IMR cleared");
        // An edge input needs a new rising edge.
        assert!(!pic.has_interrupt());
        pic.set_irq(3, false);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x53);
    }

    #[test]
    fn single_mode_skips_icw3_and_icw4_is_optional() {
        let mut pic = Pic::new();
        pic.write_port(0x20, 0x12); // single, no ICW4
        pic.write_port(0x21, 0x40);
        pic.write_port(0x21, 0xfb); // OCW1 already
        assert_eq!(pic.read_port(0x21), 0xfb);
        pic.set_irq(2, true);
        assert_eq!(
            pic.acknowledge(),
            0x42,
            "IR2 is a plain input in single mode"
        );
    }

    #[test]
    fn irq2_and_out_of_range_lines_are_ignored() {
        let mut pic = initialized();
        pic.set_irq(2, true);
        pic.set_irq(16, true);
        pic.set_irq(255, true);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn spurious_irq7_without_any_request() {
        let mut pic = initialized();
        assert_eq!(pic.acknowledge(), 0x37);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn intr_output_follows_has_interrupt() {
        let mut pic = initialized();
        let intr = RecordingIrq::new();
        pic.set_intr_output(intr.clone());
        assert!(!intr.level());
        pic.set_irq(0, true);
        assert!(intr.level());
        pic.acknowledge();
        assert!(!intr.level());
    }

    #[test]
    fn irq_lines_and_port_windows_share_the_pair() {
        let pic = Arc::new(Mutex::new(initialized()));
        let line = PicIrqLine::new(pic.clone(), 4);
        let mut master = PicPorts::master(pic.clone());
        let mut slave = PicPorts::slave(pic.clone());
        let mut elcr = PicPorts::elcr(pic.clone());
        line.pulse();
        assert!(lock(&pic).has_interrupt());
        let mut b = [0u8; 2];
        master.read(0, &mut b);
        assert_eq!(b, [0x10, 0xff], "IRR, upper byte all ones");
        master.write(1, &[0x10, 0x00]);
        assert!(!lock(&pic).has_interrupt());
        slave.write(1, &[0x55]);
        slave.read(1, &mut b[..1]);
        assert_eq!(b[0], 0x55);
        elcr.write(1, &[0x08]);
        elcr.read(1, &mut b[..1]);
        assert_eq!(b[0], 0x08);
        master.read(2, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        let line12 = PicIrqLine::new(pic.clone(), 12);
        line12.set_level(true);
        assert_eq!(lock(&pic).irr() & 0x1000, 0x1000);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut pic = initialized();
        pic.write_elcr(1, 0x08);
        pic.write_port(0x21, 0x80);
        pic.set_irq(11, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x3b);
        pic.set_irq(0, true);
        let saved = pic.snapshot();
        let mut other = Pic::new();
        let intr = RecordingIrq::new();
        other.set_intr_output(intr.clone());
        other.restore(saved.clone());
        assert_eq!(other.snapshot(), saved);
        assert!(intr.level(), "restored INTR is driven");
        assert_eq!(other.acknowledge(), pic.acknowledge());
    }

    #[test]
    fn reset_returns_to_power_on() {
        let mut pic = initialized();
        pic.write_port(0x21, 0xff);
        pic.reset();
        assert_eq!(pic.imr(), 0);
        pic.set_irq(0, true);
        assert_eq!(pic.acknowledge(), 0x08);
    }

    #[test]
    fn spray_never_panics() {
        let pic = Arc::new(Mutex::new(initialized()));
        for (seed, base) in [(1, MASTER_PORT), (2, SLAVE_PORT), (3, ELCR_PORT), (4, 0)] {
            let mut ports = PicPorts::new(pic.clone(), base);
            spray(&mut ports, seed, 50);
        }
        let mut rng = XorShift::new(99);
        let mut pic = lock(&pic);
        for _ in 0..10_000 {
            let r = rng.next_u64();
            match r % 5 {
                0 => pic.write_port(r as u16 >> 3, (r >> 24) as u8),
                1 => {
                    pic.read_port(r as u16 >> 3);
                }
                2 => pic.set_irq((r >> 8) as u8 % 20, r & 0x100 != 0),
                3 => {
                    pic.acknowledge();
                }
                _ => pic.write_port(
                    0x20 + ((r >> 8) & 0x80) as u16 + ((r >> 9) & 1) as u16,
                    (r >> 16) as u8,
                ),
            }
        }
    }
}
