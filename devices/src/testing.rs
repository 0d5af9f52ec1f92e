//! Test doubles shared by the device unit tests.

use crate::{BusDevice, IrqLine, SystemControl};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// An [`IrqLine`] that records its level and counts rising edges.
#[derive(Debug, Default)]
pub struct RecordingIrq {
    level: AtomicBool,
    rising_edges: AtomicU32,
}

impl RecordingIrq {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    /// Rising edges seen since the last call.
    pub fn take_edges(&self) -> u32 {
        self.rising_edges.swap(0, Ordering::SeqCst)
    }
}

impl IrqLine for RecordingIrq {
    fn set_level(&self, level: bool) {
        if level && !self.level.swap(true, Ordering::SeqCst) {
            self.rising_edges.fetch_add(1, Ordering::SeqCst);
        }
        self.level.store(level, Ordering::SeqCst);
    }
}

/// A [`SystemControl`] that records requests.
#[derive(Debug, Default)]
pub struct RecordingControl {
    pub resets: AtomicU32,
    pub exit_status: Mutex<Option<i32>>,
    pub exits: AtomicI32,
}

impl RecordingControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn resets(&self) -> u32 {
        self.resets.load(Ordering::SeqCst)
    }
    pub fn last_exit(&self) -> Option<i32> {
        *self.exit_status.lock().unwrap()
    }
}

impl SystemControl for RecordingControl {
    fn request_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
    fn request_exit(&self, status: i32) {
        self.exits.fetch_add(1, Ordering::SeqCst);
        *self.exit_status.lock().unwrap() = Some(status);
    }
}

/// A small deterministic xorshift generator for fuzz-style tests.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Sprays reads and writes of every width at offsets 0..16 with random data.
pub fn spray(dev: &mut dyn BusDevice, seed: u64, rounds: usize) {
    let mut rng = XorShift::new(seed);
    for _ in 0..rounds {
        for offset in 0..16u64 {
            for len in [1usize, 2, 4, 8] {
                let value = rng.next_u64().to_le_bytes();
                if rng.next_u64() & 1 == 0 {
                    dev.write(offset, &value[..len]);
                } else {
                    let mut buf = [0u8; 8];
                    dev.read(offset, &mut buf[..len]);
                }
            }
        }
        // Odd lengths and far offsets too.
        let mut empty = [0u8; 0];
        dev.read(rng.next_u64(), &mut empty);
        dev.write(rng.next_u64(), &[]);
        let mut three = [0u8; 3];
        dev.read(rng.next_u64() % 32, &mut three);
        dev.write(u64::MAX, &[0xff; 8]);
    }
}
