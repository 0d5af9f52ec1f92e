//! Port-I/O and MMIO buses: dispatch an access by address range to a device.

use std::sync::{Arc, Mutex};
use thiserror::Error;
use vireo_devices::BusDevice;

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors registering devices.
#[derive(Debug, Error)]
pub enum BusError {
    /// The new range overlaps one already registered.
    #[error("Bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero-length range.
    #[error("Bus range at {0:#x} is empty")]
    Empty(u64),
}

#[derive(Clone)]
struct Entry {
    base: u64,
    len: u64,
    dev: SharedDevice,
}

/// An address space of devices (port I/O or MMIO), looked up by binary search.
#[derive(Clone, Default)]
pub struct Bus {
    entries: Vec<Entry>,
    /// Takes accesses no device (and, on the memory bus, no RAM) claims,
    /// with the absolute address as offset: PCI's subtractive decode.
    fallback: Option<SharedDevice>,
    /// No device lies in `gap.0..gap.1` (the RAM between the devices below
    /// 1 MiB and those near 4 GiB), so lookups there are skipped. Empty
    /// until a device is inserted.
    gap: (u64, u64),
}

/// Where [`Bus::gap`] starts looking.
const GAP_FROM: u64 = 1 << 20;

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dev` at `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, dev });
        let lo = self
            .entries
            .iter()
            .filter(|e| e.base < GAP_FROM)
            .map(|e| e.base.saturating_add(e.len))
            .max()
            .unwrap_or(0);
        let hi = self
            .entries
            .iter()
            .filter(|e| e.base >= GAP_FROM)
            .map(|e| e.base)
            .min()
            .unwrap_or(u64::MAX);
        self.gap = (lo, hi);
        Ok(())
    }

    /// Sends accesses nothing claims to `dev` (offset = the address).
    pub fn set_fallback(&mut self, dev: SharedDevice) {
        self.fallback = Some(dev);
    }

    #[inline]
    fn find(&self, addr: u64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr - e.base < e.len).then_some(e)
    }

    /// True if any device claims an address in `base..base+len`.
    pub fn overlaps(&self, base: u64, len: u64) -> bool {
        let end = base.saturating_add(len);
        self.entries
            .iter()
            .any(|e| base < e.base.saturating_add(e.len) && e.base < end)
    }

    /// True if a device claims `addr`.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        if addr >= self.gap.0 && addr < self.gap.1 {
            return false;
        }
        self.find(addr).is_some()
    }

    /// Reads from the device at `addr`; all ones where nothing answers.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some(e) => lock(&e.dev).read(addr - e.base, data),
            None => match &self.fallback {
                Some(f) => lock(f).read(addr, data),
                None => {
                    data.fill(0xff);
                    vireo_devices::log_odd_access!("unclaimed bus read at {addr:#x}");
                }
            },
        }
    }

    /// Writes to the device at `addr`; ignored where nothing answers.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some(e) => lock(&e.dev).write(addr - e.base, data),
            None => match &self.fallback {
                Some(f) => lock(f).write(addr, data),
                None => vireo_devices::log_odd_access!("unclaimed bus write at {addr:#x}"),
            },
        }
    }

    /// Reads `buf.len() / size` consecutive `size`-byte values from the
    /// device at `addr` (the same address each time, as REP INS does),
    /// looking it up and locking it once.
    pub fn read_repeated(&self, addr: u64, size: usize, buf: &mut [u8]) {
        if size == 0 {
            return;
        }
        match self.find(addr) {
            Some(e) => {
                let mut dev = lock(&e.dev);
                for chunk in buf.chunks_mut(size) {
                    dev.read(addr - e.base, chunk);
                }
            }
            None => {
                for chunk in buf.chunks_mut(size) {
                    self.read(addr, chunk);
                }
            }
        }
    }

    /// Reads a value of `size` bytes (1, 2, 4, 8) as a little-endian integer.
    pub fn read_value(&self, addr: u64, size: usize) -> u64 {
        let mut b = [0u8; 8];
        let n = size.min(8);
        self.read(addr, &mut b[..n]);
        u64::from_le_bytes(b)
    }

    /// Writes the low `size` bytes of `value`.
    pub fn write_value(&self, addr: u64, size: usize, value: u64) {
        let n = size.min(8);
        self.write(addr, &value.to_le_bytes()[..n]);
    }
}

/// Locks a device even if a previous holder panicked (a device panic must not
/// wedge the machine; its state is still plain data).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a CPU reaches: guest RAM, the MMIO bus and the port-I/O bus.
pub struct AddressSpace {
    /// Guest RAM from physical address 0.
    pub ram: crate::memory::GuestRam,
    /// Memory-mapped devices (checked before RAM).
    pub mmio: Bus,
    /// Port-I/O devices (0..=0xffff).
    pub pio: Bus,
}

impl AddressSpace {
    /// An address space with `ram` and no devices.
    pub fn new(ram: crate::memory::GuestRam) -> Self {
        Self {
            ram,
            mmio: Bus::new(),
            pio: Bus::new(),
        }
    }

    /// Reads `size` bytes of guest physical memory (RAM or MMIO).
    pub fn read_phys(&self, gpa: u64, size: usize) -> u64 {
        if !self.mmio.contains(gpa) {
            if let Some(p) = self.ram.ptr(gpa, size as u64) {
                let mut b = [0u8; 8];
                // SAFETY: `ptr` checked gpa..gpa+size lies in RAM; size <= 8.
                unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), size.min(8)) };
                return u64::from_le_bytes(b);
            }
        }
        self.mmio.read_value(gpa, size)
    }

    /// Writes `size` bytes of guest physical memory (RAM or MMIO).
    pub fn write_phys(&self, gpa: u64, size: usize, value: u64) {
        if !self.mmio.contains(gpa) {
            if let Some(p) = self.ram.ptr(gpa, size as u64) {
                // SAFETY: `ptr` checked the range; size <= 8.
                unsafe {
                    std::ptr::copy_nonoverlapping(value.to_le_bytes().as_ptr(), p, size.min(8))
                };
                return;
            }
        }
        self.mmio.write_value(gpa, size, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(1)))).unwrap();
        bus.insert(0x20, 2, Arc::new(Mutex::new(Reg(7)))).unwrap();
        assert_eq!(bus.read_value(0x12, 1), 3);
        assert_eq!(bus.read_value(0x21, 1), 8);
        assert_eq!(bus.read_value(0x14, 1), 0xff);
        bus.write_value(0x20, 1, 0x40);
        assert_eq!(bus.read_value(0x20, 1), 0x40);
    }

    /// The skipped gap between low and high devices never hides one.
    #[test]
    fn contains_agrees_with_the_device_ranges() {
        let mut bus = Bus::new();
        let ranges = [
            (0xa0000u64, 0x20000u64),
            (0xf0000, 0x20000),
            (0x0800_0000, 0x1000),
            (0xfec0_0000, 0x1000),
            (0xfffc_0000, 0x40000),
        ];
        for (b, l) in ranges {
            bus.insert(b, l, Arc::new(Mutex::new(Reg(0)))).unwrap();
        }
        let probe = [
            0,
            0x9ffff,
            0xa0000,
            0xfffff,
            0x100000,
            0x10ffff,
            0x110000,
            0x7ff_ffff,
            0x800_0000,
            0x800_0fff,
            0x800_1000,
            0xfebf_ffff,
            0xfec0_0000,
            0xffff_ffff,
            0x1_0000_0000,
        ];
        for a in probe {
            let want = ranges.iter().any(|&(b, l)| a >= b && a < b + l);
            assert_eq!(bus.contains(a), want, "{a:#x}");
        }
    }

    #[test]
    fn rejects_overlaps() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(1)))).unwrap();
        assert!(bus.insert(0x13, 4, Arc::new(Mutex::new(Reg(1)))).is_err());
        assert!(bus.insert(0x0, 0, Arc::new(Mutex::new(Reg(1)))).is_err());
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Reg(1))))
            .is_err());
    }
}
