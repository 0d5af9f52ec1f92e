//! The POST code port (0x80): firmware writes progress codes and Linux uses
//! it as an I/O delay. Writes are kept (the last one is readable back, as on
//! many chipsets) and otherwise ignored.

use crate::{BusDevice, Snapshot};

/// Port 0x80.
#[derive(Debug, Default)]
pub struct PostCode {
    last: u8,
}

/// Saved state of [`PostCode`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct PostCodeState {
    /// The last code written.
    pub last: u8,
}

impl PostCode {
    /// A port that has seen no code yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code the guest wrote.
    pub fn last(&self) -> u8 {
        self.last
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(b) = data.first_mut() {
            *b = self.last;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.last = b;
        }
    }
}

impl Snapshot for PostCode {
    type State = PostCodeState;
    fn snapshot(&self) -> PostCodeState {
        PostCodeState { last: self.last }
    }
    fn restore(&mut self, s: PostCodeState) {
        self.last = s.last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_code() {
        let mut p = PostCode::new();
        p.write(0, &[0x42]);
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [0x42, 0xff]);
        p.write(0, &[]);
        assert_eq!(p.last(), 0x42);
        let s = p.snapshot();
        let mut q = PostCode::new();
        q.restore(s);
        assert_eq!(q.last(), 0x42);
    }
}
