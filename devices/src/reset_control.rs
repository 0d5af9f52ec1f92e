//! The PIIX3 Reset Control register at port 0xcf9 (82371SB data sheet
//! §4.1.3, "RC"): bit 1 selects a hard reset, and a 0→1 transition of
//! bit 2 (RCPU) resets the system. The ACPI FADT names it as the reset
//! register (value 0x06).

use crate::{log_odd_access, BusDevice, Snapshot, SystemControl};
use std::sync::Arc;

/// Bit 1: system (hard) reset rather than a CPU-only soft reset.
const SYS_RST: u8 = 0x02;
/// Bit 2: reset CPU, on a 0→1 transition.
const RST_CPU: u8 = 0x04;

/// Saved state of [`ResetControl`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResetControlState {
    /// The register's value.
    pub value: u8,
}

/// Port 0xcf9.
pub struct ResetControl {
    value: u8,
    control: Arc<dyn SystemControl>,
}

impl ResetControl {
    /// The register at its reset value (0).
    pub fn new(control: Arc<dyn SystemControl>) -> Self {
        ResetControl { value: 0, control }
    }

    /// Back to the power-on value.
    pub fn reset(&mut self) {
        self.value = 0;
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match (offset, data.first_mut()) {
            (0, Some(b)) => *b = self.value,
            _ => log_odd_access!("reset control: read at offset {offset:#x}"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&v)) = (offset, data.first()) else {
            log_odd_access!("reset control: write at offset {offset:#x}");
            return;
        };
        let old = self.value;
        self.value = v & (SYS_RST | RST_CPU);
        if v & RST_CPU != 0 && old & RST_CPU == 0 {
            // Soft and hard resets both restart the machine here: no
            // state survives a CPU-only reset that an OS relies on.
            self.control.request_reset();
            self.value &= !RST_CPU;
        }
    }
}

impl Snapshot for ResetControl {
    type State = ResetControlState;
    fn snapshot(&self) -> ResetControlState {
        ResetControlState { value: self.value }
    }
    fn restore(&mut self, state: ResetControlState) {
        self.value = state.value & SYS_RST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Resets(AtomicUsize);
    impl SystemControl for Resets {
        fn request_reset(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn request_exit(&self, _status: i32) {}
    }

    #[test]
    fn rising_rcpu_resets() {
        let r = Arc::new(Resets::default());
        let mut rc = ResetControl::new(r.clone());
        rc.write(0, &[SYS_RST]);
        assert_eq!(r.0.load(Ordering::SeqCst), 0);
        let mut b = [0u8; 1];
        rc.read(0, &mut b);
        assert_eq!(b[0], SYS_RST);
        rc.write(0, &[0x06]);
        assert_eq!(r.0.load(Ordering::SeqCst), 1);
        // RCPU reads back clear, so the next 0x06 resets again.
        rc.write(0, &[0x06]);
        assert_eq!(r.0.load(Ordering::SeqCst), 2);
        rc.write(1, &[0x06]);
        rc.write(0, &[]);
        assert_eq!(r.0.load(Ordering::SeqCst), 2);
    }
}
