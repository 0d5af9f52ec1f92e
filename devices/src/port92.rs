//! System Control Port A at port 0x92 (the "fast A20 and reset" port of
//! PS/2-compatible chipsets, as the PIIX3 data sheet describes it): bit 1
//! gates address line 20, a 0→1 write of bit 0 resets the system.
//!
//! The A20 bit is kept so firmware reads back what it wrote; memory always
//! behaves as with A20 enabled (what every OS since the 1990s asks for).

use crate::{log_odd_access, BusDevice, Snapshot, SystemControl};
use std::sync::Arc;

/// Bit 0: fast reset (on a 0→1 transition).
const RESET: u8 = 0x01;
/// Bit 1: A20 gate.
const A20: u8 = 0x02;

/// Saved state of [`Port92`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Port92State {
    /// The register's value.
    pub value: u8,
}

/// System Control Port A.
pub struct Port92 {
    value: u8,
    control: Arc<dyn SystemControl>,
}

impl Port92 {
    /// The port at its reset value (A20 gated off, as at power-on).
    pub fn new(control: Arc<dyn SystemControl>) -> Self {
        Port92 { value: 0, control }
    }

    /// True when the guest asked for A20 enabled.
    pub fn a20(&self) -> bool {
        self.value & A20 != 0
    }

    /// Back to the power-on value.
    pub fn reset(&mut self) {
        self.value = 0;
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (offset, data.first_mut()) {
            (0, Some(b)) => *b = self.value,
            _ => log_odd_access!("port 0x92: read at offset {offset:#x}"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&v)) = (offset, data.first()) else {
            log_odd_access!("port 0x92: write at offset {offset:#x}");
            return;
        };
        let old = self.value;
        self.value = v & (A20 | RESET);
        if v & RESET != 0 && old & RESET == 0 {
            self.control.request_reset();
        }
    }
}

impl Snapshot for Port92 {
    type State = Port92State;
    fn snapshot(&self) -> Port92State {
        Port92State { value: self.value }
    }
    fn restore(&mut self, state: Port92State) {
        self.value = state.value & (A20 | RESET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RecordingControl;

    #[test]
    fn a20_reads_back_and_bit_0_resets_on_a_rising_edge() {
        let control = RecordingControl::new();
        let mut p = Port92::new(control.clone());
        p.write(0, &[A20]);
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b[0], A20);
        assert!(p.a20());
        assert_eq!(control.resets(), 0);
        p.write(0, &[A20 | RESET]);
        assert_eq!(control.resets(), 1);
        p.write(0, &[A20 | RESET]); // no new edge
        assert_eq!(control.resets(), 1);
        p.write(0, &[A20]);
        p.write(0, &[RESET]);
        assert_eq!(control.resets(), 2);
        p.reset();
        assert!(!p.a20());
    }

    #[test]
    fn odd_accesses_and_snapshot() {
        let control = RecordingControl::new();
        let mut p = Port92::new(control.clone());
        p.write(3, &[0xff]);
        p.write(0, &[]);
        let mut b = [0u8; 4];
        p.read(1, &mut b);
        assert_eq!(b, [0; 4]);
        p.write(0, &[0xfe]);
        let s = p.snapshot();
        assert_eq!(s.value, A20);
        let mut q = Port92::new(control);
        q.restore(s);
        assert!(q.a20());
    }
}
