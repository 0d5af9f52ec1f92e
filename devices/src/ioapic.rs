//! The Intel 82093AA I/O APIC: 24 interrupt pins turned into APIC messages.
//!
//! Section references are to the 82093AA datasheet (order number 290566);
//! the EOI register at offset 0x40 and version 0x20 are those of the ICH
//! family's I/O APIC (e.g. ICH9 datasheet §13.5), which Linux uses instead
//! of toggling the trigger mode to clear Remote IRR.
//!
//! The I/O APIC knows no local APICs: [`IoApic::set_irq`], [`IoApic::write`]
//! and [`IoApic::eoi`] return the messages for the machine's router to
//! deliver. Input levels are the electrical levels at the pins: an entry
//! programmed active-low (bit 13) treats a low pin as asserted.
//!
//! Simplifications: messages are delivered at once (delivery status reads
//! 0), and the ID register keeps all 8 bits (the 82093AA implements bits
//! 24-27; an 8-bit ID lets MP tables name more than 15 processors).

use crate::lapic::{ApicMessage, DeliveryMode, Shorthand};
use crate::{log_odd_access, Snapshot};
use serde::{Deserialize, Serialize};

/// Default physical address of the I/O APIC's registers.
pub const IOAPIC_DEFAULT_BASE: u64 = 0xfec0_0000;
/// Number of interrupt input pins.
pub const IOAPIC_PINS: usize = 24;
/// Version register: version 0x20, maximum redirection entry 23 (§3.2.2).
pub const IOAPIC_VERSION: u32 = 0x0017_0020;

// Memory-mapped registers (§3.1, Table 1; EOI from the ICH).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOEOI: u64 = 0x40;

// Indirect registers (§3.2).
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION: u8 = 0x10;

// Redirection table entry bits (§3.2.4).
const ENTRY_VECTOR: u64 = 0xff;
const ENTRY_MODE_SHIFT: u32 = 8;
const ENTRY_LOGICAL: u64 = 1 << 11;
const ENTRY_POLARITY_LOW: u64 = 1 << 13;
const ENTRY_REMOTE_IRR: u64 = 1 << 14;
const ENTRY_TRIGGER_LEVEL: u64 = 1 << 15;
const ENTRY_MASKED: u64 = 1 << 16;
const ENTRY_DEST_SHIFT: u32 = 56;
/// Bits software may write: all but delivery status (12) and Remote IRR (14).
const ENTRY_WRITABLE: u64 = 0xff00_0000_0001_afff;

/// The guest-visible state of an I/O APIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApicState {
    id: u8,
    ioregsel: u8,
    redirection: [u64; IOAPIC_PINS],
    /// Electrical pin levels, bit per pin.
    levels: u32,
}

/// One I/O APIC.
#[derive(Debug)]
pub struct IoApic {
    hw_id: u8,
    s: IoApicState,
}

impl IoApic {
    /// An I/O APIC with APIC ID `id`, in its reset state.
    pub fn new(id: u8) -> Self {
        Self {
            hw_id: id,
            s: Self::reset_state(id, 0),
        }
    }

    fn reset_state(id: u8, levels: u32) -> IoApicState {
        IoApicState {
            id,
            ioregsel: 0,
            redirection: [ENTRY_MASKED; IOAPIC_PINS],
            levels,
        }
    }

    /// Reset (§3.2.4): every entry masked, the ID back to the one given to
    /// [`Self::new`]. Pin levels are the board's and stay.
    pub fn reset(&mut self) {
        self.s = Self::reset_state(self.hw_id, self.s.levels);
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        self.s.id
    }

    /// MMIO read: IOREGSEL at 0x00, IOWIN at 0x10 (32-bit accesses); other
    /// offsets read 0.
    pub fn read(&mut self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.s.ioregsel),
            IOWIN => self.read_register(self.s.ioregsel),
            _ => {
                log_odd_access!("ioapic: read at {offset:#x}");
                0
            }
        }
    }

    /// MMIO write: IOREGSEL at 0x00, IOWIN at 0x10, EOI at 0x40. Returns the
    /// messages to deliver (unmasking an asserted level-triggered pin, an
    /// EOI with the pin still asserted).
    pub fn write(&mut self, offset: u64, value: u32) -> Vec<ApicMessage> {
        match offset {
            IOREGSEL => {
                self.s.ioregsel = value as u8;
                Vec::new()
            }
            IOWIN => self.write_register(self.s.ioregsel, value),
            IOEOI => self.eoi(value as u8),
            _ => {
                log_odd_access!("ioapic: write at {offset:#x}");
                Vec::new()
            }
        }
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            REG_ID => u32::from(self.s.id) << 24,
            REG_VERSION => IOAPIC_VERSION,
            REG_ARBITRATION => u32::from(self.s.id) << 24,
            _ => match Self::entry_index(index) {
                Some((pin, high)) => {
                    let entry = self.s.redirection[pin];
                    if high {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                None => {
                    log_odd_access!("ioapic: read of register {index:#x}");
                    0
                }
            },
        }
    }

    fn write_register(&mut self, index: u8, value: u32) -> Vec<ApicMessage> {
        if index == REG_ID {
            self.s.id = (value >> 24) as u8;
            return Vec::new();
        }
        let Some((pin, high)) = Self::entry_index(index) else {
            log_odd_access!("ioapic: write of register {index:#x}");
            return Vec::new();
        };
        let old = self.s.redirection[pin];
        let written = if high {
            (old & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        let mut entry = (old & !ENTRY_WRITABLE) | (written & ENTRY_WRITABLE);
        if entry & ENTRY_TRIGGER_LEVEL == 0 {
            entry &= !ENTRY_REMOTE_IRR;
        }
        self.s.redirection[pin] = entry;
        self.deliver_level(pin).into_iter().collect()
    }

    /// The pin and half (high dword?) a redirection register index names.
    fn entry_index(index: u8) -> Option<(usize, bool)> {
        let n = usize::from(index.checked_sub(REG_REDIRECTION)?);
        (n < 2 * IOAPIC_PINS).then_some((n / 2, n % 2 == 1))
    }

    fn asserted(&self, pin: usize) -> bool {
        let level = self.s.levels & (1 << pin) != 0;
        level ^ (self.s.redirection[pin] & ENTRY_POLARITY_LOW != 0)
    }

    /// A board IRQ line changed (`level` is the electrical level). Edge
    /// entries deliver on the assertion if unmasked (a masked edge is
    /// lost); level entries deliver while asserted with Remote IRR clear,
    /// then set Remote IRR (§3.2.4).
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Option<ApicMessage> {
        if pin >= IOAPIC_PINS {
            log_odd_access!("ioapic: no pin {pin}");
            return None;
        }
        let was = self.asserted(pin);
        if level {
            self.s.levels |= 1 << pin;
        } else {
            self.s.levels &= !(1 << pin);
        }
        let entry = self.s.redirection[pin];
        if entry & ENTRY_TRIGGER_LEVEL != 0 {
            self.deliver_level(pin)
        } else if self.asserted(pin) && !was && entry & ENTRY_MASKED == 0 {
            self.message(pin)
        } else {
            None
        }
    }

    /// A local APIC EOI'd `vector` (broadcast EOI, or a write to the EOI
    /// register): clears Remote IRR of the level entries with that vector
    /// and re-delivers those whose pin is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<ApicMessage> {
        let mut out = Vec::new();
        for pin in 0..IOAPIC_PINS {
            let entry = self.s.redirection[pin];
            if entry & ENTRY_REMOTE_IRR != 0 && (entry & ENTRY_VECTOR) as u8 == vector {
                self.s.redirection[pin] &= !ENTRY_REMOTE_IRR;
                out.extend(self.deliver_level(pin));
            }
        }
        out
    }

    /// Delivers a level-triggered pin if asserted, unmasked and not already
    /// in service (Remote IRR clear).
    fn deliver_level(&mut self, pin: usize) -> Option<ApicMessage> {
        let entry = self.s.redirection[pin];
        if entry & (ENTRY_TRIGGER_LEVEL | ENTRY_MASKED | ENTRY_REMOTE_IRR) != ENTRY_TRIGGER_LEVEL
            || !self.asserted(pin)
        {
            return None;
        }
        let msg = self.message(pin)?;
        self.s.redirection[pin] |= ENTRY_REMOTE_IRR;
        Some(msg)
    }

    /// The message pin `pin`'s entry describes, `None` for reserved modes.
    fn message(&self, pin: usize) -> Option<ApicMessage> {
        let entry = self.s.redirection[pin];
        let mode = match DeliveryMode::from_bits((entry >> ENTRY_MODE_SHIFT) as u32) {
            Some(DeliveryMode::StartUp) | None => {
                log_odd_access!("ioapic: pin {pin} has a reserved delivery mode");
                return None;
            }
            Some(mode) => mode,
        };
        Some(ApicMessage {
            vector: (entry & ENTRY_VECTOR) as u8,
            mode,
            logical: entry & ENTRY_LOGICAL != 0,
            dest: (entry >> ENTRY_DEST_SHIFT) as u8,
            shorthand: Shorthand::None,
            level_triggered: entry & ENTRY_TRIGGER_LEVEL != 0,
            deassert: false,
            source: self.s.id,
        })
    }
}

impl Snapshot for IoApic {
    type State = IoApicState;

    fn snapshot(&self) -> IoApicState {
        self.s.clone()
    }

    fn restore(&mut self, state: IoApicState) {
        self.s = state;
        for entry in &mut self.s.redirection {
            *entry &= ENTRY_WRITABLE | ENTRY_REMOTE_IRR;
        }
        self.s.levels &= (1 << IOAPIC_PINS) - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select_write(io: &mut IoApic, index: u8, value: u32) -> Vec<ApicMessage> {
        io.write(IOREGSEL, u32::from(index));
        io.write(IOWIN, value)
    }

    fn select_read(io: &mut IoApic, index: u8) -> u32 {
        io.write(IOREGSEL, u32::from(index));
        io.read(IOWIN)
    }

    /// Programs `pin`'s entry (low dword `low`, destination `dest`).
    fn program(io: &mut IoApic, pin: u8, low: u32, dest: u8) -> Vec<ApicMessage> {
        select_write(io, 0x11 + 2 * pin, u32::from(dest) << 24);
        select_write(io, 0x10 + 2 * pin, low)
    }

    #[test]
    fn reset_state() {
        let mut io = IoApic::new(4);
        assert_eq!(select_read(&mut io, 0), 4 << 24);
        assert_eq!(select_read(&mut io, 1), 0x0017_0020);
        assert_eq!(select_read(&mut io, 2), 4 << 24);
        for reg in 0x10..0x40u8 {
            let expected = if reg % 2 == 0 { 0x10000 } else { 0 };
            assert_eq!(select_read(&mut io, reg), expected, "{reg:#x}");
        }
        assert_eq!(io.read(IOREGSEL), 0x3f);
        assert_eq!(select_read(&mut io, 0x40), 0);
        for pin in 0..IOAPIC_PINS {
            assert_eq!(io.set_irq(pin, true), None, "masked");
        }
    }

    #[test]
    fn id_is_writable_and_reset_restores_it() {
        let mut io = IoApic::new(2);
        select_write(&mut io, 0, 0x0900_00ff);
        assert_eq!(select_read(&mut io, 0), 0x0900_0000);
        assert_eq!(io.id(), 9);
        select_write(&mut io, 1, 0);
        assert_eq!(select_read(&mut io, 1), IOAPIC_VERSION);
        program(&mut io, 3, 0x33, 0);
        io.reset();
        assert_eq!(io.id(), 2);
        assert_eq!(select_read(&mut io, 0x16), 0x10000);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge() {
        let mut io = IoApic::new(0);
        assert!(program(&mut io, 2, 0x30, 0).is_empty());
        let m = io.set_irq(2, true).unwrap();
        assert_eq!(
            m,
            ApicMessage {
                vector: 0x30,
                mode: DeliveryMode::Fixed,
                logical: false,
                dest: 0,
                shorthand: Shorthand::None,
                level_triggered: false,
                deassert: false,
                source: 0,
            }
        );
        assert_eq!(io.set_irq(2, true), None);
        assert_eq!(io.set_irq(2, false), None);
        assert!(io.set_irq(2, true).is_some());
        // A masked edge is lost, also after unmasking.
        io.set_irq(2, false);
        program(&mut io, 2, 0x10030, 0);
        assert_eq!(io.set_irq(2, true), None);
        assert!(program(&mut io, 2, 0x30, 0).is_empty());
        // EOI does nothing for edge entries.
        assert!(io.eoi(0x30).is_empty());
    }

    #[test]
    fn level_pin_uses_remote_irr() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x8041, 1);
        let m = io.set_irq(9, true).unwrap();
        assert!(m.level_triggered);
        assert_eq!(m.vector, 0x41);
        assert_eq!(select_read(&mut io, 0x22) & 0x4000, 0x4000, "Remote IRR");
        // Still high, in service: nothing more.
        assert_eq!(io.set_irq(9, true), None);
        // Other vectors' EOIs don't matter.
        assert!(io.eoi(0x42).is_empty());
        // EOI while still asserted re-delivers.
        let again = io.eoi(0x41);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].vector, 0x41);
        // Device deasserts, then EOI: Remote IRR clears, nothing sent.
        io.set_irq(9, false);
        assert!(io.write(IOEOI, 0x41).is_empty());
        assert_eq!(select_read(&mut io, 0x22) & 0x4000, 0);
        assert!(io.set_irq(9, true).is_some());
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new(0);
        program(&mut io, 5, 0x18050, 0);
        assert_eq!(io.set_irq(5, true), None);
        let out = program(&mut io, 5, 0x8050, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vector, 0x50);
        // Rewriting the entry while in service doesn't re-send.
        assert!(program(&mut io, 5, 0x8050, 0).is_empty());
        // Switching to edge clears Remote IRR.
        program(&mut io, 5, 0x0050, 0);
        assert_eq!(select_read(&mut io, 0x1a) & 0x4000, 0);
    }

    #[test]
    fn active_low_inverts_the_pin() {
        let mut io = IoApic::new(0);
        // Level, active low, pin idle high.
        io.set_irq(11, true);
        assert!(program(&mut io, 11, 0xa060, 0).is_empty());
        assert!(io.set_irq(11, false).is_some());
        io.set_irq(11, true);
        assert!(io.eoi(0x60).is_empty());
        // Edge, active low: the falling pin is the assertion.
        program(&mut io, 12, 0x2061, 0);
        io.set_irq(12, true);
        assert!(io.set_irq(12, true).is_none());
        assert!(io.set_irq(12, false).is_some());
    }

    #[test]
    fn message_fields() {
        let mut io = IoApic::new(7);
        // Logical, lowest priority, destination 0x0f.
        program(&mut io, 1, 0x0931, 0x0f);
        let m = io.set_irq(1, true).unwrap();
        assert_eq!(m.mode, DeliveryMode::LowestPriority);
        assert!(m.logical);
        assert_eq!(m.dest, 0x0f);
        assert_eq!(m.source, 7);
        program(&mut io, 0, 0x0700, 0xff);
        assert_eq!(io.set_irq(0, true).unwrap().mode, DeliveryMode::ExtInt);
        program(&mut io, 3, 0x0400, 0);
        assert_eq!(io.set_irq(3, true).unwrap().mode, DeliveryMode::Nmi);
        program(&mut io, 4, 0x0500, 0);
        assert_eq!(io.set_irq(4, true).unwrap().mode, DeliveryMode::Init);
        program(&mut io, 6, 0x0200, 0);
        assert_eq!(io.set_irq(6, true).unwrap().mode, DeliveryMode::Smi);
        // Reserved modes send nothing.
        program(&mut io, 7, 0x0600, 0);
        assert_eq!(io.set_irq(7, true), None);
        program(&mut io, 8, 0x0300, 0);
        assert_eq!(io.set_irq(8, true), None);
    }

    #[test]
    fn read_only_bits_and_full_entry_readback() {
        let mut io = IoApic::new(0);
        select_write(&mut io, 0x10, 0xffff_ffff);
        assert_eq!(select_read(&mut io, 0x10), 0x0001_afff);
        select_write(&mut io, 0x11, 0xffff_ffff);
        assert_eq!(select_read(&mut io, 0x11), 0xff00_0000);
        select_write(&mut io, 0x10, 0x0001_0000);
        assert_eq!(select_read(&mut io, 0x10), 0x0001_0000);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut io = IoApic::new(0);
        assert_eq!(io.read(0x04), 0);
        assert_eq!(io.read(0x40), 0);
        assert!(io.write(0x20, 1).is_empty());
        assert!(select_write(&mut io, 0x40, 1).is_empty());
        assert!(select_write(&mut io, 0xff, 1).is_empty());
        assert_eq!(select_read(&mut io, 0x03), 0);
        assert_eq!(io.set_irq(24, true), None);
        assert_eq!(io.set_irq(usize::MAX, true), None);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut io = IoApic::new(3);
        program(&mut io, 9, 0x8041, 1);
        io.set_irq(9, true);
        let state = io.snapshot();
        let mut other = IoApic::new(0);
        other.restore(state.clone());
        assert_eq!(other.snapshot(), state);
        assert_eq!(other.set_irq(9, true), None, "Remote IRR restored");
        assert_eq!(other.eoi(0x41).len(), 1);
    }

    #[test]
    fn random_spray_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x10a91c);
        let mut io = IoApic::new(0);
        for _ in 0..200_000 {
            match rng.gen_range(0..5) {
                0 => {
                    io.read(rng.gen_range(0..0x50));
                }
                1 => {
                    io.write(rng.gen_range(0..0x50), rng.gen());
                }
                2 => {
                    io.set_irq(rng.gen_range(0..30), rng.gen());
                }
                3 => {
                    io.eoi(rng.gen());
                }
                _ => {
                    io.write(IOREGSEL, rng.gen_range(0..0x45));
                    io.write(IOWIN, rng.gen());
                }
            }
        }
    }
}
