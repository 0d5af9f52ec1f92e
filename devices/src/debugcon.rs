//! The debug console port (Bochs' and QEMU's `debugcon`, port 0x402 for
//! SeaBIOS): reads return 0xe9 so firmware knows the port is there, and
//! each byte written is handed to the host, which logs it.

use crate::BusDevice;

/// What a read returns: the "port present" signature firmware checks.
pub const SIGNATURE: u8 = 0xe9;

/// Where the bytes written go.
pub type DebugSink = Box<dyn FnMut(u8) + Send>;

/// The debug console.
pub struct DebugCon {
    sink: DebugSink,
}

impl DebugCon {
    /// A console handing every byte to `sink`.
    pub fn new(sink: DebugSink) -> Self {
        DebugCon { sink }
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = SIGNATURE;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            (self.sink)(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn answers_its_signature_and_passes_bytes_on() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let mut d = DebugCon::new(Box::new(move |b| g.lock().unwrap().push(b)));
        let mut r = [0u8; 1];
        d.read(0, &mut r);
        assert_eq!(r[0], SIGNATURE);
        d.write(0, b"h");
        d.write(0, b"i");
        d.write(0, &[]);
        assert_eq!(*got.lock().unwrap(), b"hi");
    }
}
