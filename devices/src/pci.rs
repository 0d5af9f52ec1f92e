//! PCI bus 0 behind configuration mechanism #1 (PCI Local Bus Specification
//! 3.0 §3.2.2.3.2: CONFIG_ADDRESS at port 0xcf8, CONFIG_DATA at 0xcfc), the
//! type-0 configuration header (§6.1) with read-only and write-one-to-clear
//! bits, and the two functions every PC chipset of this kind has: the Intel
//! 440FX host bridge and the PIIX3 PCI-to-ISA bridge (their data sheets give
//! the IDs and the registers kept here).

use crate::{log_odd_access, BusDevice, Snapshot};
use std::sync::{Arc, Mutex};

/// Configuration-space registers (§6.1).
pub mod reg {
    /// Vendor ID (u16).
    pub const VENDOR: usize = 0x00;
    /// Device ID (u16).
    pub const DEVICE: usize = 0x02;
    /// Command (u16).
    pub const COMMAND: usize = 0x04;
    /// Status (u16).
    pub const STATUS: usize = 0x06;
    /// Revision ID (u8).
    pub const REVISION: usize = 0x08;
    /// Class code: programming interface, subclass, base class (3 bytes).
    pub const CLASS: usize = 0x09;
    /// Header type (u8; bit 7: multi-function).
    pub const HEADER_TYPE: usize = 0x0e;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR: usize = 0x2c;
    /// Interrupt line (u8, for software).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (u8; 1 = INTA#).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// The address space a base address register decodes in (§6.2.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// I/O ports.
    Io,
    /// Memory (32-bit BARs only here).
    Memory,
}

/// A window a function decodes now: `len` bytes at `base` in `space`, for
/// its BAR `index` (0-5; [`ROM_BAR`] is the expansion ROM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRegion {
    /// I/O or memory.
    pub space: Space,
    /// First address.
    pub base: u64,
    /// Size in bytes (a power of two).
    pub len: u64,
    /// Which BAR.
    pub index: usize,
}

/// The BAR index of the expansion ROM (register 0x30, §6.2.5.2).
pub const ROM_BAR: usize = 6;

/// One function's 256-byte configuration space with a mask of the bits the
/// guest may write and of the bits it clears by writing ones.
#[derive(Clone)]
pub struct ConfigSpace {
    data: [u8; 256],
    writable: [u8; 256],
    clear_on_write: [u8; 256],
    /// Declared BARs (0-5, then the ROM): space and size.
    bars: [Option<(Space, u64)>; 7],
}

impl ConfigSpace {
    /// A header with the given IDs and class (base, sub, interface); the
    /// command register and interrupt line are writable.
    pub fn new(vendor: u16, device: u16, revision: u8, class: [u8; 3]) -> Self {
        let mut c = ConfigSpace {
            data: [0; 256],
            writable: [0; 256],
            clear_on_write: [0; 256],
            bars: [None; 7],
        };
        c.data[reg::VENDOR..reg::VENDOR + 2].copy_from_slice(&vendor.to_le_bytes());
        c.data[reg::DEVICE..reg::DEVICE + 2].copy_from_slice(&device.to_le_bytes());
        c.data[reg::REVISION] = revision;
        c.data[reg::CLASS] = class[2];
        c.data[reg::CLASS + 1] = class[1];
        c.data[reg::CLASS + 2] = class[0];
        // Command: I/O, memory, bus master, SERR#, interrupt disable.
        c.set_writable(reg::COMMAND, &[0x07, 0x05]);
        // Status: the error bits are write-one-to-clear.
        c.clear_on_write[reg::STATUS + 1] = 0xf9;
        c.set_writable(reg::INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Sets bytes at `offset` (device-side: ignores the masks).
    pub fn set(&mut self, offset: usize, bytes: &[u8]) {
        if let Some(d) = self.data.get_mut(offset..offset + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }

    /// Makes the bits in `mask` at `offset` guest-writable.
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        if let Some(d) = self.writable.get_mut(offset..offset + mask.len()) {
            d.copy_from_slice(mask);
        }
    }

    /// Declares BAR `index` (0-5, or [`ROM_BAR`]) as a window of `len`
    /// bytes (a power of two, at least 16 for memory and 4 for I/O) in
    /// `space`: the guest sizes it by writing all ones and places it by
    /// writing its base (§6.2.5.1). A memory BAR may be `prefetchable`.
    pub fn declare_bar(&mut self, index: usize, space: Space, len: u64, prefetchable: bool) {
        let len = len.next_power_of_two().max(16);
        let (off, flags, mask) = match (index, space) {
            (ROM_BAR, _) => (0x30, 0u32, !(len as u32 - 1) | 1),
            (0..=5, Space::Io) => (0x10 + 4 * index, 1u32, !(len as u32 - 1) & !3),
            (0..=5, Space::Memory) => (
                0x10 + 4 * index,
                if prefetchable { 8 } else { 0 },
                !(len as u32 - 1) & !0xf,
            ),
            _ => return,
        };
        let space = if index == ROM_BAR {
            Space::Memory
        } else {
            space
        };
        self.bars[index] = Some((space, len));
        self.set(off, &flags.to_le_bytes());
        self.set_writable(off, &mask.to_le_bytes());
    }

    /// The BAR windows decoding now: I/O BARs when the command register
    /// enables I/O, memory BARs when it enables memory (the ROM also needs
    /// its own enable bit); unplaced (zero) BARs decode nothing.
    pub fn active_regions(&self, out: &mut Vec<PciRegion>) {
        let cmd = self.byte(reg::COMMAND);
        for (index, bar) in self.bars.iter().enumerate() {
            let Some((space, len)) = *bar else { continue };
            let off = if index == ROM_BAR {
                0x30
            } else {
                0x10 + 4 * index
            };
            let mut b = [0u8; 4];
            self.read(off, &mut b);
            let v = u32::from_le_bytes(b) as u64;
            let (enabled, base) = match space {
                _ if index == ROM_BAR => (cmd & 2 != 0 && v & 1 != 0, v & !0x7ff),
                Space::Io => (cmd & 1 != 0, v & !3),
                Space::Memory => (cmd & 2 != 0, v & !0xf),
            };
            let base = base & !(len - 1);
            if enabled && base != 0 && base.checked_add(len).is_some() {
                out.push(PciRegion {
                    space,
                    base,
                    len,
                    index,
                });
            }
        }
    }

    /// Byte `offset` as stored.
    pub fn byte(&self, offset: usize) -> u8 {
        self.data.get(offset).copied().unwrap_or(0xff)
    }

    /// A guest read of `data.len()` bytes at `offset`.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte(offset + i);
        }
    }

    /// A guest write: only writable bits change; write-one-to-clear bits
    /// written as one are cleared.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = offset + i;
            if o >= 256 {
                break;
            }
            let w = self.writable[o];
            self.data[o] = (self.data[o] & !w) | (v & w);
            self.data[o] &= !(v & self.clear_on_write[o]);
        }
    }
}

/// A PCI function: its configuration space as the guest reads and writes
/// it.
pub trait PciFunction: Send {
    /// Reads `data.len()` (1, 2 or 4) bytes at `offset` (aligned to the
    /// size by the bus).
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// Appends the windows the function decodes now (usually
    /// [`ConfigSpace::active_regions`]; some functions decode fixed or
    /// register-programmed ranges too). The bus asks again after every
    /// configuration write.
    fn regions(&self, _out: &mut Vec<PciRegion>) {}
    /// A guest read of `data.len()` bytes at `offset` in region `index`.
    fn region_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        log_odd_access!("pci: read of unimplemented region {index} at {offset:#x}");
    }
    /// A guest write at `offset` in region `index`.
    fn region_write(&mut self, index: usize, offset: u64, _data: &[u8]) {
        log_odd_access!("pci: write to unimplemented region {index} at {offset:#x}");
    }
}

/// A function that is nothing but its configuration header.
pub struct PlainFunction(pub ConfigSpace);

impl PciFunction for PlainFunction {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// A function shared with the machine (which reads its registers).
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// The Intel 82441FX (440FX) host bridge: 8086:1237, with its PAM, SMRAM
/// and DRAM-row registers kept for firmware to program.
pub fn i440fx_host_bridge() -> PlainFunction {
    let mut c = ConfigSpace::new(0x8086, 0x1237, 0x02, [0x06, 0x00, 0x00]);
    // Status: medium DEVSEL timing.
    c.set(reg::STATUS, &[0x00, 0x02]);
    // PMCCFG, DRB rows, FDHC, PAM0-6, SMRAM: plain read/write storage.
    c.set_writable(0x50, &[0xff; 0x30]);
    c.set(0x72, &[0x02]); // SMRAM: C_BASE_SEG = 010b (A0000h)
    PlainFunction(c)
}

/// PIIX3 function 0, the PCI-to-ISA bridge: 8086:7000, multi-function,
/// with the PIRQ[A-D]# routing registers (0x60-0x63) at their reset value
/// (routing disabled).
pub fn piix3_isa_bridge() -> PlainFunction {
    let mut c = ConfigSpace::new(0x8086, 0x7000, 0x00, [0x06, 0x01, 0x00]);
    c.set(reg::HEADER_TYPE, &[0x80]);
    c.set(reg::COMMAND, &[0x07, 0x00]);
    c.set(reg::STATUS, &[0x00, 0x02]);
    c.set(0x4c, &[0x4d]); // IORT
    c.set(0x4e, &[0x03]); // XBCS
    c.set(0x60, &[0x80; 4]); // PIRQRC[A:D]
    c.set(0x69, &[0x02]); // TOM
    c.set(0x6a, &[0x00, 0x00]); // MSTAT
    c.set(0x70, &[0x80; 2]); // MBIRQ0/1
    c.set(0x76, &[0x0c; 2]); // MBDMA
    c.set(0xa0, &[0x08]); // SMICNTL
    c.set_writable(0x4c, &[0xff; 4]);
    c.set_writable(0x60, &[0x8f; 4]);
    c.set_writable(0x69, &[0xfe, 0xff, 0xff]);
    c.set_writable(0x70, &[0xef; 2]);
    c.set_writable(0x76, &[0x8f; 2]);
    c.set_writable(0x80, &[0xff; 2]);
    c.set_writable(0xa0, &[0xff; 0x10]);
    PlainFunction(c)
}

/// The PIRQ line (0-3, for INTA#-INTD# after swizzling) a PIIX3 routes to
/// an ISA IRQ, from its routing register value; `None` when disabled.
pub fn piix3_pirq_target(route: u8) -> Option<u8> {
    let irq = route & 0x0f;
    (route & 0x80 == 0 && !matches!(irq, 0 | 1 | 2 | 8 | 13)).then_some(irq)
}

/// Saved state of the [`PciBus`]'s own register (the functions save their
/// own state).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PciBusState {
    /// CONFIG_ADDRESS.
    pub address: u32,
}

/// Bus 0 and configuration mechanism #1; register it at port 0xcf8 for 8
/// bytes (CONFIG_ADDRESS at offset 0, CONFIG_DATA at offsets 4-7).
pub struct PciBus {
    address: u32,
    /// Functions by device number (0-31) and function number (0-7).
    slots: Vec<[Option<SharedFunction>; 8]>,
    /// The windows the functions decode, shared with the [`PciWindow`]s.
    decode: Arc<Mutex<Decode>>,
}

/// Where the functions' windows are, rebuilt after configuration writes.
#[derive(Default)]
struct Decode {
    stale: bool,
    functions: Vec<SharedFunction>,
    regions: Vec<(PciRegion, SharedFunction)>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// An empty bus 0.
    pub fn new() -> Self {
        PciBus {
            address: 0,
            slots: (0..32).map(|_| Default::default()).collect(),
            decode: Arc::new(Mutex::new(Decode {
                stale: true,
                functions: Vec::new(),
                regions: Vec::new(),
            })),
        }
    }

    /// The bus's windows in `space`, as a device for the machine to put
    /// where nothing else answers (PCI's subtractive decode of the hole
    /// and of unclaimed I/O ports).
    pub fn window(&self, space: Space) -> PciWindow {
        PciWindow {
            space,
            decode: self.decode.clone(),
        }
    }

    /// Marks the windows for recomputation (after a configuration write or
    /// a reset of the functions).
    pub fn invalidate_windows(&self) {
        lock_decode(&self.decode).stale = true;
    }

    /// Puts `f` at device `dev`, function `func`.
    pub fn attach(&mut self, dev: usize, func: usize, f: SharedFunction) {
        if let Some(slot) = self.slots.get_mut(dev).and_then(|s| s.get_mut(func)) {
            *slot = Some(f);
        }
        lock_decode(&self.decode).functions =
            self.slots.iter().flatten().flatten().cloned().collect();
        self.invalidate_windows();
    }

    /// The function CONFIG_ADDRESS selects, with the register offset.
    fn selected(&self) -> Option<(&SharedFunction, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let dev = ((a >> 11) & 0x1f) as usize;
        let func = ((a >> 8) & 7) as usize;
        let f = self.slots[dev][func].as_ref()?;
        Some((f, (a & 0xfc) as usize))
    }
}

fn lock(f: &SharedFunction) -> std::sync::MutexGuard<'_, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_decode(d: &Mutex<Decode>) -> std::sync::MutexGuard<'_, Decode> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PCI functions' BAR windows in one address space, as one bus device
/// registered at address 0 over the whole space (offsets are absolute
/// addresses): an access goes to the function whose window holds it.
pub struct PciWindow {
    space: Space,
    decode: Arc<Mutex<Decode>>,
}

impl PciWindow {
    /// The function and region holding `addr`, with the offset into it.
    fn find(&self, addr: u64) -> Option<(SharedFunction, usize, u64)> {
        let mut d = lock_decode(&self.decode);
        if d.stale {
            let mut regions = Vec::new();
            let mut out = Vec::new();
            for f in &d.functions {
                out.clear();
                lock(f).regions(&mut out);
                regions.extend(out.iter().map(|r| (*r, f.clone())));
            }
            d.regions = regions;
            d.stale = false;
        }
        d.regions
            .iter()
            .find(|(r, _)| r.space == self.space && addr >= r.base && addr - r.base < r.len)
            .map(|(r, f)| (f.clone(), r.index, addr - r.base))
    }
}

impl BusDevice for PciWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.find(offset) {
            Some((f, index, off)) => lock(&f).region_read(index, off, data),
            None => {
                data.fill(0xff);
                log_odd_access!("pci: read of {} at unclaimed {offset:#x}", data.len());
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match self.find(offset) {
            Some((f, index, off)) => lock(&f).region_write(index, off, data),
            None => log_odd_access!("pci: write of {} at unclaimed {offset:#x}", data.len()),
        }
    }
}

impl BusDevice for PciBus {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => {
                let sub = (offset - 4) as usize;
                match self.selected() {
                    // Nothing there: a master abort reads all ones.
                    None => data.fill(0xff),
                    Some((f, reg)) if sub + data.len() <= 4 => {
                        lock(f).config_read(reg + sub, data);
                    }
                    Some(_) => data.fill(0xff),
                }
            }
            _ => {
                data.fill(0xff);
                log_odd_access!("pci: read of {} at offset {offset:#x}", data.len());
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & 0x80ff_fffc;
            }
            4..=7 => {
                let sub = (offset - 4) as usize;
                if let Some((f, reg)) = self.selected() {
                    if sub + data.len() <= 4 {
                        lock(f).config_write(reg + sub, data);
                        self.invalidate_windows();
                    }
                }
            }
            _ => log_odd_access!("pci: write of {} at offset {offset:#x}", data.len()),
        }
    }
}

impl Snapshot for PciBus {
    type State = PciBusState;
    fn snapshot(&self) -> PciBusState {
        PciBusState {
            address: self.address,
        }
    }
    fn restore(&mut self, state: PciBusState) {
        self.address = state.address & 0x80ff_fffc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> PciBus {
        let mut b = PciBus::new();
        b.attach(0, 0, Arc::new(Mutex::new(i440fx_host_bridge())));
        b.attach(1, 0, Arc::new(Mutex::new(piix3_isa_bridge())));
        b
    }

    fn cfg_addr(dev: u32, func: u32, reg: u32) -> u32 {
        0x8000_0000 | dev << 11 | func << 8 | reg
    }

    fn read32(b: &mut PciBus, dev: u32, func: u32, reg: u32) -> u32 {
        b.write(0, &cfg_addr(dev, func, reg).to_le_bytes());
        let mut d = [0u8; 4];
        b.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn enumerates_the_chipset() {
        let mut b = bus();
        assert_eq!(read32(&mut b, 0, 0, 0), 0x1237_8086);
        assert_eq!(read32(&mut b, 0, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(read32(&mut b, 1, 0, 0), 0x7000_8086);
        assert_eq!(read32(&mut b, 1, 0, 8) >> 8, 0x06_01_00);
        assert_eq!((read32(&mut b, 1, 0, 0x0c) >> 16) & 0xff, 0x80);
        // Empty slots, other buses and disabled accesses read all ones.
        assert_eq!(read32(&mut b, 2, 0, 0), 0xffff_ffff);
        assert_eq!(read32(&mut b, 1, 1, 0), 0xffff_ffff);
        b.write(0, &(cfg_addr(0, 0, 0) | 1 << 16).to_le_bytes());
        let mut d = [0u8; 4];
        b.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // CONFIG_ADDRESS reads back without its reserved low bits.
        b.write(0, &(cfg_addr(3, 2, 0x40) | 3).to_le_bytes());
        let mut d = [0u8; 4];
        b.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), cfg_addr(3, 2, 0x40));
    }

    #[test]
    fn byte_and_word_accesses_and_read_only_ids() {
        let mut b = bus();
        b.write(0, &cfg_addr(0, 0, 0).to_le_bytes());
        let mut w = [0u8; 2];
        b.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1237);
        b.write(4, &0xdead_beefu32.to_le_bytes());
        assert_eq!(read32(&mut b, 0, 0, 0), 0x1237_8086);
        // PAM registers are storage for the firmware.
        b.write(0, &cfg_addr(0, 0, 0x58).to_le_bytes());
        b.write(5, &[0x30]);
        assert_eq!((read32(&mut b, 0, 0, 0x58) >> 8) & 0xff, 0x30);
        // Interrupt line is writable, interrupt pin is not.
        b.write(0, &cfg_addr(1, 0, 0x3c).to_le_bytes());
        b.write(4, &[0x0b, 0x04]);
        assert_eq!(read32(&mut b, 1, 0, 0x3c) & 0xffff, 0x000b);
    }

    #[test]
    fn piix3_pirq_routing() {
        let mut b = bus();
        assert_eq!(read32(&mut b, 1, 0, 0x60), 0x8080_8080);
        b.write(0, &cfg_addr(1, 0, 0x60).to_le_bytes());
        b.write(4, &[0x0a, 0x0b, 0x8b, 0x02]);
        let v = read32(&mut b, 1, 0, 0x60).to_le_bytes();
        assert_eq!(piix3_pirq_target(v[0]), Some(10));
        assert_eq!(piix3_pirq_target(v[1]), Some(11));
        assert_eq!(piix3_pirq_target(v[2]), None);
        assert_eq!(piix3_pirq_target(v[3]), None); // IRQ 2 is reserved
    }

    #[test]
    fn status_error_bits_clear_on_write_one() {
        let mut c = ConfigSpace::new(1, 2, 0, [0, 0, 0]);
        c.set(reg::STATUS, &[0x00, 0xf9]);
        c.write(reg::STATUS, &[0x00, 0x08]);
        assert_eq!(c.byte(reg::STATUS + 1), 0xf1);
    }

    /// A function with an I/O BAR and a memory BAR that records accesses.
    struct Bars {
        cfg: ConfigSpace,
        seen: Vec<(usize, u64)>,
    }

    impl PciFunction for Bars {
        fn config_read(&mut self, offset: usize, data: &mut [u8]) {
            self.cfg.read(offset, data)
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.cfg.write(offset, data)
        }
        fn regions(&self, out: &mut Vec<PciRegion>) {
            self.cfg.active_regions(out)
        }
        fn region_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
            self.seen.push((index, offset));
            data.fill(index as u8);
        }
    }

    #[test]
    fn bars_are_sized_placed_and_decoded() {
        let mut b = bus();
        let mut cfg = ConfigSpace::new(0x1234, 0x1111, 0, [3, 0, 0]);
        cfg.declare_bar(0, Space::Memory, 16 << 20, true);
        cfg.declare_bar(4, Space::Io, 16, false);
        cfg.declare_bar(ROM_BAR, Space::Memory, 64 << 10, false);
        let f = Arc::new(Mutex::new(Bars {
            cfg,
            seen: Vec::new(),
        }));
        b.attach(2, 0, f.clone());
        let mut mem = b.window(Space::Memory);
        let mut io = b.window(Space::Io);
        let write32 = |b: &mut PciBus, reg: u32, v: u32| {
            b.write(0, &cfg_addr(2, 0, reg).to_le_bytes());
            b.write(4, &v.to_le_bytes());
        };
        // Sizing: all ones reads back the size mask with the type bits.
        write32(&mut b, 0x10, !0);
        assert_eq!(read32(&mut b, 2, 0, 0x10), 0xff00_0008);
        write32(&mut b, 0x20, !0);
        assert_eq!(read32(&mut b, 2, 0, 0x20), 0xffff_fff1);
        write32(&mut b, 0x30, !0);
        assert_eq!(read32(&mut b, 2, 0, 0x30), 0xffff_0001);
        // Placed but not enabled: nothing decodes.
        write32(&mut b, 0x10, 0xfd00_0000);
        write32(&mut b, 0x20, 0xc000);
        write32(&mut b, 0x30, 0xfeb0_0000);
        let mut d = [0u8; 4];
        mem.read(0xfd00_0010, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Enable I/O and memory: BAR 0 and BAR 4 answer; the ROM needs its bit.
        write32(&mut b, 0x04, 3);
        mem.read(0xfd00_0010, &mut d);
        assert_eq!(d, [0; 4]);
        io.read(0xc00f, &mut d[..1]);
        assert_eq!(d[0], 4);
        mem.read(0xfeb0_0000, &mut d);
        assert_eq!(d, [0xff; 4]);
        write32(&mut b, 0x30, 0xfeb0_0001);
        mem.read(0xfeb0_0004, &mut d);
        assert_eq!(d, [ROM_BAR as u8; 4]);
        // Moving a BAR moves its window.
        write32(&mut b, 0x10, 0xe000_0000);
        mem.read(0xfd00_0000, &mut d);
        assert_eq!(d, [0xff; 4]);
        mem.read(0xe0ff_fffc, &mut d);
        let seen = f.lock().unwrap().seen.clone();
        assert_eq!(
            seen,
            vec![(0, 0x10), (4, 0xf), (ROM_BAR, 4), (0, 0xff_fffc)]
        );
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut b = bus();
        let mut x = 0x1357_9bdfu32;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let off = (x % 9) as u64;
            let len = [1usize, 2, 4][(x >> 8) as usize % 3];
            let v = x.rotate_left(7).to_le_bytes();
            if x & 0x10 != 0 {
                b.write(off, &v[..len]);
            } else {
                let mut d = vec![0u8; len];
                b.read(off, &mut d);
            }
        }
    }
}
