//! QEMU's firmware configuration device (fw_cfg), as SeaBIOS and OVMF read
//! it, per QEMU's `docs/specs/fw_cfg.rst`: on the PC a 16-bit selector at
//! port 0x510, a byte-wide data port at 0x511 and the DMA address register
//! at 0x514–0x51b.
//!
//! Items are blobs under a 16-bit key; named files get keys from 0x20 on
//! and are listed by the file directory (key 0x19). The DMA interface reads
//! a `FWCfgDmaAccess` structure (big-endian control, length and address)
//! from guest memory and carries out select, read, skip and write.

use crate::{log_odd_access, BusDevice, Snapshot};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Guest memory as a DMA-capable device sees it.
pub trait DmaMemory: Send + Sync {
    /// Reads `buf.len()` bytes at guest-physical `addr`; false if any is not
    /// RAM.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at guest-physical `addr`; false if any is not RAM.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// Well-known item keys (fw_cfg.rst, "Firmware Configuration Items").
pub mod key {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bitmap (u32 LE): bit 0 traditional interface, bit 1 DMA.
    pub const ID: u16 = 0x01;
    /// Guest RAM size in bytes (u64 LE).
    pub const RAM_SIZE: u16 = 0x03;
    /// No graphical display (u16 LE).
    pub const NOGRAPHIC: u16 = 0x04;
    /// Number of boot vCPUs (u16 LE).
    pub const NB_CPUS: u16 = 0x05;
    /// Maximum number of vCPUs (u16 LE).
    pub const MAX_CPUS: u16 = 0x0f;
    /// Boot menu enabled (u16 LE).
    pub const BOOT_MENU: u16 = 0x0e;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// The first key given to files.
    pub const FILE_FIRST: u16 = 0x20;
    /// x86: the E820 table (legacy; "etc/e820" replaces it).
    pub const E820_TABLE: u16 = 0x8003;
}

/// `FW_CFG_ID` bits.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;

/// DMA control bits.
const DMA_ERROR: u32 = 0x01;
const DMA_READ: u32 = 0x02;
const DMA_SKIP: u32 = 0x04;
const DMA_SELECT: u32 = 0x08;
const DMA_WRITE: u32 = 0x10;

/// What the DMA register reads as: "QEMU CFG" (big-endian).
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

/// Length of a file name in the directory, NUL included.
pub const FILE_NAME_LEN: usize = 56;

/// Bytes copied per step of a DMA transfer (bounds the memory a guest can
/// make the host allocate).
const DMA_CHUNK: usize = 64 * 1024;

/// A failure to add an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    /// A file name longer than 55 bytes, or empty.
    #[error("fw_cfg file name {0:?} is empty or longer than 55 bytes")]
    BadName(String),
    /// No more file keys.
    #[error("fw_cfg has no room for file {0:?}")]
    Full(String),
}

#[derive(Debug, Clone, Default)]
struct Item {
    data: Vec<u8>,
    /// The guest may write it through DMA.
    writable: bool,
}

/// Saved state of the [`FwCfg`] (the items belong to the machine's
/// configuration and are rebuilt with it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FwCfgState {
    /// Selected key.
    pub selector: u16,
    /// Read offset in the selected item.
    pub offset: u32,
    /// High half of the DMA address as last written.
    pub dma_high: u32,
}

/// The fw_cfg device.
pub struct FwCfg {
    items: BTreeMap<u16, Item>,
    files: Vec<(String, u16)>,
    selector: u16,
    offset: u32,
    dma_high: u32,
    mem: Arc<dyn DmaMemory>,
}

impl FwCfg {
    /// A device with the signature, feature bitmap and an empty directory;
    /// DMA reaches guest memory through `mem`.
    pub fn new(mem: Arc<dyn DmaMemory>) -> Self {
        let mut f = FwCfg {
            items: BTreeMap::new(),
            files: Vec::new(),
            selector: 0,
            offset: 0,
            dma_high: 0,
            mem,
        };
        f.add_item(key::SIGNATURE, b"QEMU".to_vec());
        f.add_item(key::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        f.rebuild_dir();
        f
    }

    /// Sets item `key` (little-endian integers are the caller's to encode).
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(
            key,
            Item {
                data,
                writable: false,
            },
        );
    }

    /// Adds (or replaces) file `name`; returns its key.
    pub fn add_file(
        &mut self,
        name: &str,
        data: Vec<u8>,
        writable: bool,
    ) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        let key = match self.files.iter().find(|(n, _)| n == name) {
            Some((_, k)) => *k,
            None => {
                let next = key::FILE_FIRST as usize + self.files.len();
                if next >= 0x4000 {
                    return Err(FwCfgError::Full(name.to_string()));
                }
                self.files.push((name.to_string(), next as u16));
                next as u16
            }
        };
        self.items.insert(key, Item { data, writable });
        self.rebuild_dir();
        Ok(key)
    }

    /// The current contents of file `name` (what the guest may have written).
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let (_, k) = self.files.iter().find(|(n, _)| n == name)?;
        self.items.get(k).map(|i| i.data.as_slice())
    }

    /// The directory: big-endian count, then per file big-endian size and
    /// key, a reserved u16 and the NUL-padded name, sorted by name.
    fn rebuild_dir(&mut self) {
        let mut files = self.files.clone();
        files.sort();
        let mut d = (files.len() as u32).to_be_bytes().to_vec();
        for (name, k) in files {
            let size = self.items.get(&k).map_or(0, |i| i.data.len() as u32);
            d.extend_from_slice(&size.to_be_bytes());
            d.extend_from_slice(&k.to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            d.extend_from_slice(&n);
        }
        self.items.insert(
            key::FILE_DIR,
            Item {
                data: d,
                writable: false,
            },
        );
    }

    fn select(&mut self, k: u16) {
        // Bit 14 was the write channel of old versions: ignored.
        self.selector = k & !0x4000;
        self.offset = 0;
    }

    fn read_byte(&mut self) -> u8 {
        let v = self
            .items
            .get(&self.selector)
            .and_then(|i| i.data.get(self.offset as usize).copied())
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        v
    }

    /// Runs the DMA request whose descriptor is at guest-physical `addr`.
    fn dma(&mut self, addr: u64) {
        let mut desc = [0u8; 16];
        if !self.mem.read(addr, &mut desc) {
            log_odd_access!("fw_cfg: DMA descriptor at {addr:#x} is not in RAM");
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]);
        let mut buf_addr = u64::from_be_bytes([
            desc[8], desc[9], desc[10], desc[11], desc[12], desc[13], desc[14], desc[15],
        ]);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & DMA_READ != 0 {
            self.dma_read(&mut buf_addr, length)
        } else if control & DMA_WRITE != 0 {
            self.dma_write(buf_addr, length)
        } else if control & DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length);
            true
        } else {
            true
        };
        let done: u32 = if ok { 0 } else { DMA_ERROR };
        // Completion: the control field is cleared (or left at ERROR).
        if !self.mem.write(addr, &done.to_be_bytes()) {
            log_odd_access!("fw_cfg: DMA descriptor at {addr:#x} vanished");
        }
    }

    /// Copies `length` bytes of the selected item (zeros past its end) to
    /// guest memory.
    fn dma_read(&mut self, addr: &mut u64, length: u32) -> bool {
        let mut left = length as usize;
        let mut chunk = vec![0u8; left.min(DMA_CHUNK)];
        while left > 0 {
            let n = left.min(DMA_CHUNK);
            let buf = &mut chunk[..n];
            buf.fill(0);
            if let Some(item) = self.items.get(&self.selector) {
                let start = (self.offset as usize).min(item.data.len());
                let end = (start + n).min(item.data.len());
                buf[..end - start].copy_from_slice(&item.data[start..end]);
            }
            if !self.mem.write(*addr, buf) {
                return false;
            }
            self.offset = self.offset.saturating_add(n as u32);
            *addr = addr.wrapping_add(n as u64);
            left -= n;
        }
        true
    }

    /// Writes `length` bytes from guest memory into the selected item, if
    /// it is writable (within its current size).
    fn dma_write(&mut self, addr: u64, length: u32) -> bool {
        let offset = self.offset as usize;
        let Some(item) = self.items.get_mut(&self.selector) else {
            return false;
        };
        let end = offset.saturating_add(length as usize);
        if !item.writable || end > item.data.len() {
            return false;
        }
        if !self.mem.read(addr, &mut item.data[offset..end]) {
            return false;
        }
        self.offset = end as u32;
        true
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            1 => {
                for b in data.iter_mut() {
                    *b = self.read_byte();
                }
            }
            4..=11 => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                let start = (offset - 4) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(start + i).copied().unwrap_or(0);
                }
            }
            _ => log_odd_access!("fw_cfg: read of {} at offset {offset:#x}", data.len()),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (0, 1) => self.select(data[0] as u16),
            // Writes to the data port are ignored (fw_cfg.rst).
            (1, _) => {}
            (4, 4) => self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            (8, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = (self.dma_high as u64) << 32 | low as u64;
                self.dma_high = 0;
                self.dma(addr);
            }
            (4, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma_high = 0;
                self.dma(u64::from_be_bytes(b));
            }
            _ => log_odd_access!("fw_cfg: write of {} at offset {offset:#x}", data.len()),
        }
    }
}

impl Snapshot for FwCfg {
    type State = FwCfgState;

    fn snapshot(&self) -> FwCfgState {
        FwCfgState {
            selector: self.selector,
            offset: self.offset,
            dma_high: self.dma_high,
        }
    }

    fn restore(&mut self, state: FwCfgState) {
        self.selector = state.selector;
        self.offset = state.offset;
        self.dma_high = state.dma_high;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// 64 KiB of "RAM" at address 0.
    struct Ram(Mutex<Vec<u8>>);
    impl DmaMemory for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let m = self.0.lock().expect("ram");
            let Some(end) = (addr as usize).checked_add(buf.len()) else {
                return false;
            };
            match m.get(addr as usize..end) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn write(&self, addr: u64, data: &[u8]) -> bool {
            let mut m = self.0.lock().expect("ram");
            let Some(end) = (addr as usize).checked_add(data.len()) else {
                return false;
            };
            match m.get_mut(addr as usize..end) {
                Some(s) => {
                    s.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    fn dev() -> (FwCfg, Arc<Ram>) {
        let ram = Arc::new(Ram(Mutex::new(vec![0; 65536])));
        (FwCfg::new(ram.clone()), ram)
    }

    fn read_item(f: &mut FwCfg, k: u16, n: usize) -> Vec<u8> {
        f.write(0, &k.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0];
                f.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    /// Writes a DMA descriptor at 0x100 and triggers it the two-half way.
    fn dma(f: &mut FwCfg, ram: &Ram, control: u32, len: u32, addr: u64) -> u32 {
        let mut d = control.to_be_bytes().to_vec();
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        assert!(ram.write(0x100, &d));
        f.write(4, &0u32.to_be_bytes());
        f.write(8, &0x100u32.to_be_bytes());
        let mut c = [0u8; 4];
        assert!(ram.read(0x100, &mut c));
        u32::from_be_bytes(c)
    }

    #[test]
    fn signature_id_and_dma_signature() {
        let (mut f, _) = dev();
        assert_eq!(read_item(&mut f, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, key::ID, 4), 3u32.to_le_bytes());
        let mut sig = [0u8; 8];
        f.read(4, &mut sig);
        assert_eq!(&sig, b"QEMU CFG");
        // Past an item's end: zeros.
        assert_eq!(read_item(&mut f, key::SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut f, 0x1234, 2), [0, 0]);
    }

    #[test]
    fn file_directory_is_sorted_and_big_endian() {
        let (mut f, _) = dev();
        let kb = f.add_file("etc/b", vec![1, 2, 3], false).expect("add");
        let ka = f.add_file("etc/a", vec![9; 5], false).expect("add");
        assert_eq!((kb, ka), (0x20, 0x21));
        let d = read_item(&mut f, key::FILE_DIR, 4 + 2 * 64);
        assert_eq!(&d[..4], &2u32.to_be_bytes());
        assert_eq!(&d[4..8], &5u32.to_be_bytes());
        assert_eq!(&d[8..10], &0x21u16.to_be_bytes());
        assert_eq!(&d[12..17], b"etc/a");
        assert_eq!(d[17], 0);
        assert_eq!(&d[68..72], &3u32.to_be_bytes());
        assert_eq!(&d[76..81], b"etc/b");
        assert_eq!(read_item(&mut f, kb, 3), [1, 2, 3]);
        // Replacing keeps the key.
        assert_eq!(f.add_file("etc/b", vec![7], false), Ok(0x20));
        assert!(matches!(
            f.add_file("", vec![], false),
            Err(FwCfgError::BadName(_))
        ));
        assert!(f.add_file(&"x".repeat(56), vec![], false).is_err());
    }

    #[test]
    fn dma_select_read_skip_and_write() {
        let (mut f, ram) = dev();
        let k = f
            .add_file("etc/data", (0..=255u8).collect(), false)
            .expect("add");
        let w = f.add_file("etc/rw", vec![0; 8], true).expect("add");
        // Select + read 16 bytes to 0x1000.
        let c = DMA_SELECT | DMA_READ | ((k as u32) << 16);
        assert_eq!(dma(&mut f, &ram, c, 16, 0x1000), 0);
        let mut got = [0u8; 16];
        ram.read(0x1000, &mut got);
        assert_eq!(got.to_vec(), (0..16).collect::<Vec<u8>>());
        // Skip 100, then read 4 more from there.
        assert_eq!(dma(&mut f, &ram, DMA_SKIP, 100, 0), 0);
        assert_eq!(dma(&mut f, &ram, DMA_READ, 4, 0x2000), 0);
        let mut got = [0u8; 4];
        ram.read(0x2000, &mut got);
        assert_eq!(got, [116, 117, 118, 119]);
        // Reading past the end fills zeros.
        assert_eq!(dma(&mut f, &ram, DMA_SKIP, 1000, 0), 0);
        ram.write(0x3000, &[0xaa; 8]);
        assert_eq!(dma(&mut f, &ram, DMA_READ, 8, 0x3000), 0);
        let mut got = [0u8; 8];
        ram.read(0x3000, &mut got);
        assert_eq!(got, [0; 8]);
        // Write into a writable file; not into a read-only one.
        ram.write(0x4000, &[1, 2, 3, 4]);
        let c = DMA_SELECT | DMA_WRITE | ((w as u32) << 16);
        assert_eq!(dma(&mut f, &ram, c, 4, 0x4000), 0);
        assert_eq!(f.file("etc/rw"), Some(&[1, 2, 3, 4, 0, 0, 0, 0][..]));
        let c = DMA_SELECT | DMA_WRITE | ((k as u32) << 16);
        assert_eq!(dma(&mut f, &ram, c, 4, 0x4000), DMA_ERROR);
        // Past RAM: an error, nothing else.
        let c = DMA_SELECT | DMA_READ | ((k as u32) << 16);
        assert_eq!(dma(&mut f, &ram, c, 0x10000, 0xf000), DMA_ERROR);
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let (mut f, ram) = dev();
        f.add_file("etc/x", vec![1; 100], true).expect("add");
        let mut x = 0x9e37_79b9u32;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let off = (x % 14) as u64;
            let len = [1usize, 2, 4, 8][(x >> 8) as usize % 4];
            if x & 0x1000 != 0 {
                // Random descriptors, huge lengths included.
                let d: Vec<u8> = (0..16).map(|i| (x.rotate_left(i * 3) >> 5) as u8).collect();
                ram.write(0x100, &d);
                let bytes = x.to_be_bytes();
                f.write(off, &bytes[..len.min(4)]);
            } else {
                let mut b = vec![0u8; len];
                f.read(off, &mut b);
            }
        }
    }

    #[test]
    fn snapshot_round_trips() {
        let (mut f, ram) = dev();
        f.write(0, &key::SIGNATURE.to_le_bytes());
        let mut b = [0];
        f.read(1, &mut b);
        let s = f.snapshot();
        let mut g = FwCfg::new(ram.clone());
        g.restore(s);
        g.read(1, &mut b);
        assert_eq!(b[0], b'E');
    }
}
