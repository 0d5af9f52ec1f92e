//! QEMU-compatible `isa-debug-exit` device.
//!
//! Not a hardware part but a test convention: a guest write of value `v` to
//! the device ends the machine with exit status `(v << 1) | 1`, so a test
//! harness can tell guest-reported results (always odd) from an emulator
//! failure. Usually placed at port 0xf4 with an I/O size of 1.

use crate::{log_odd_access, BusDevice, Snapshot, SystemControl};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The usual I/O port of the device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The `isa-debug-exit` device: writes end the machine, reads return all ones.
pub struct DebugExit {
    control: Arc<dyn SystemControl>,
    iosize: u8,
}

/// Saved state of [`DebugExit`]: the device has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugExitState {}

impl DebugExit {
    /// A device occupying one port (QEMU's default `iosize=1`).
    pub fn new(control: Arc<dyn SystemControl>) -> Self {
        Self::with_iosize(control, 1)
    }

    /// A device occupying `iosize` ports (1, 2 or 4; other values become 1).
    pub fn with_iosize(control: Arc<dyn SystemControl>, iosize: u8) -> Self {
        let iosize = match iosize {
            1 | 2 | 4 => iosize,
            _ => 1,
        };
        Self { control, iosize }
    }

    /// The number of ports to register the device for.
    pub fn iosize(&self) -> u8 {
        self.iosize
    }

    /// The exit status for a written value: `(value << 1) | 1`, truncated to
    /// 32 bits as a C `int`.
    pub fn exit_status(value: u64) -> i32 {
        ((value << 1) | 1) as u32 as i32
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(self.iosize) || data.is_empty() || data.len() > 8 {
            log_odd_access!(
                "isa-debug-exit: ignored write of {} bytes at offset {offset:#x}",
                data.len()
            );
            return;
        }
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        self.control.request_exit(Self::exit_status(value));
    }
}

impl Snapshot for DebugExit {
    type State = DebugExitState;

    fn snapshot(&self) -> DebugExitState {
        DebugExitState {}
    }

    fn restore(&mut self, _state: DebugExitState) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{spray, RecordingControl};

    #[test]
    fn byte_write_exits_with_shifted_status() {
        let control = RecordingControl::new();
        let mut dev = DebugExit::new(control.clone());
        dev.write(0, &[0x10]);
        assert_eq!(control.last_exit(), Some(0x21));
        dev.write(0, &[0]);
        assert_eq!(control.last_exit(), Some(1));
    }

    #[test]
    fn value_is_taken_from_the_written_width() {
        let control = RecordingControl::new();
        let mut dev = DebugExit::with_iosize(control.clone(), 4);
        dev.write(0, &0x1234u16.to_le_bytes());
        assert_eq!(control.last_exit(), Some(0x2469));
        dev.write(0, &0x4000_0001u32.to_le_bytes());
        assert_eq!(control.last_exit(), Some(0x8000_0003u32 as i32));
        // High bits shifted out of an int are lost, as in C.
        dev.write(0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(control.last_exit(), Some(-1));
    }

    #[test]
    fn writes_outside_the_window_are_ignored() {
        let control = RecordingControl::new();
        let mut dev = DebugExit::new(control.clone());
        dev.write(1, &[5]);
        dev.write(0, &[]);
        assert_eq!(control.last_exit(), None);
        let mut dev4 = DebugExit::with_iosize(control.clone(), 4);
        dev4.write(3, &[2]);
        assert_eq!(control.last_exit(), Some(5));
    }

    #[test]
    fn invalid_iosize_falls_back_to_one() {
        let control = RecordingControl::new();
        assert_eq!(DebugExit::with_iosize(control.clone(), 3).iosize(), 1);
        assert_eq!(DebugExit::with_iosize(control, 2).iosize(), 2);
    }

    #[test]
    fn reads_return_all_ones() {
        let mut dev = DebugExit::new(RecordingControl::new());
        let mut buf = [0u8; 4];
        dev.read(0, &mut buf);
        assert_eq!(buf, [0xff; 4]);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut dev = DebugExit::new(RecordingControl::new());
        let state = dev.snapshot();
        dev.restore(state);
        assert_eq!(state, DebugExitState {});
    }

    #[test]
    fn spray_never_panics() {
        let mut dev = DebugExit::with_iosize(RecordingControl::new(), 4);
        spray(&mut dev, 0xdeb9, 20);
    }
}
