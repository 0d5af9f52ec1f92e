//! The PIIX3 IDE controller (PCI 8086:7010, class 01:01:80): two channels
//! in ISA-compatible ("legacy") mode at fixed ports with IRQ 14 and 15, and
//! the SFF-8038i bus-master DMA engine behind BAR 4; each channel has a
//! master and a slave slot for an ATA hard disk or an ATAPI CD-ROM.
//!
//! Implemented against ATA/ATAPI-6 (T13/1410D: register block §7, PIO,
//! DMA and PACKET protocols §9, commands §8), SFF-8038i (bus master IDE:
//! command, status and PRD table registers, PRD format), MMC-5 (packet
//! commands of CD/DVD devices, features, events) and SPC-3 (INQUIRY,
//! REQUEST SENSE, MODE SENSE).
//!
//! Everything happens synchronously: a command's data is ready as soon as
//! the command is written, a DMA transfer runs to completion when both the
//! drive's DMA command and the bus master's start bit are present. The
//! device never shows BSY except while software reset is asserted.

use crate::block::BlockBackend;
use crate::fw_cfg::DmaMemory;
use crate::pci::{reg, ConfigSpace, PciFunction, PciRegion, Space};
use crate::{log_odd_access, BusDevice, IrqLine, Snapshot};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Primary channel command block (8 ports: data, error/features, sector
/// count, LBA low/mid/high, device, status/command).
pub const PRIMARY_COMMAND: u64 = 0x1f0;
/// Primary channel control block (1 port: alternate status/device control).
pub const PRIMARY_CONTROL: u64 = 0x3f6;
/// Secondary channel command block.
pub const SECONDARY_COMMAND: u64 = 0x170;
/// Secondary channel control block.
pub const SECONDARY_CONTROL: u64 = 0x376;
/// ISA IRQ of the primary channel.
pub const PRIMARY_IRQ: u8 = 14;
/// ISA IRQ of the secondary channel.
pub const SECONDARY_IRQ: u8 = 15;
/// The BAR holding the bus-master registers (16 I/O ports).
pub const BMDMA_BAR: usize = 4;

// Status register bits (ATA-6 §7.15.6).
const BSY: u8 = 0x80;
const DRDY: u8 = 0x40;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
// Error register bits (§7.9).
const ABRT: u8 = 0x04;
const IDNF: u8 = 0x10;
const UNC: u8 = 0x40;
// Device control register bits (§7.8).
const NIEN: u8 = 0x02;
const SRST: u8 = 0x04;
const HOB: u8 = 0x80;
// Interrupt reason (sector count register of PACKET devices, §9.10).
const COD: u8 = 0x01;
const IO: u8 = 0x02;
// Bus master registers (SFF-8038i §2).
const BM_START: u8 = 0x01;
const BM_TO_MEMORY: u8 = 0x08;
const BM_ACTIVE: u8 = 0x01;
const BM_ERROR: u8 = 0x02;
const BM_INTR: u8 = 0x04;
const BM_CAPABLE: u8 = 0x60;

const SECTOR: u32 = 512;
const CD_SECTOR: u32 = 2048;
/// Largest READ/WRITE MULTIPLE block advertised.
const MAX_MULTIPLE: u8 = 16;
/// Largest buffer a transfer holds at once.
const CHUNK: usize = 128 * 1024;
/// A PRD table lives within one 64 KiB region: at most 8192 entries.
const MAX_PRD: u32 = 8192;
/// Discs with more sectors than a 99-minute CD are reported as DVDs.
const CD_MAX_SECTORS: u64 = 99 * 60 * 75;

// Sense keys (SPC-3 §4.5.6).
const NO_SENSE: u8 = 0;
const NOT_READY: u8 = 2;
const MEDIUM_ERROR: u8 = 3;
const ILLEGAL_REQUEST: u8 = 5;
const UNIT_ATTENTION: u8 = 6;

/// Sense data: key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sense {
    key: u8,
    asc: u8,
    ascq: u8,
}

const fn sense(key: u8, asc: u8, ascq: u8) -> Sense {
    Sense { key, asc, ascq }
}

const GOOD: Sense = sense(NO_SENSE, 0, 0);
const INVALID_OPCODE: Sense = sense(ILLEGAL_REQUEST, 0x20, 0);
const LBA_OUT_OF_RANGE: Sense = sense(ILLEGAL_REQUEST, 0x21, 0);
const INVALID_FIELD: Sense = sense(ILLEGAL_REQUEST, 0x24, 0);
const SAVING_NOT_SUPPORTED: Sense = sense(ILLEGAL_REQUEST, 0x39, 0);
const REMOVAL_PREVENTED: Sense = sense(ILLEGAL_REQUEST, 0x53, 0x02);
const MEDIUM_CHANGED: Sense = sense(UNIT_ATTENTION, 0x28, 0);
const READ_ERROR: Sense = sense(MEDIUM_ERROR, 0x11, 0);

// Media event codes (MMC-5 §6.7.2.4).
const EV_NONE: u8 = 0;
const EV_EJECT_REQUEST: u8 = 1;
const EV_NEW_MEDIA: u8 = 2;
const EV_MEDIA_REMOVAL: u8 = 3;

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// An ATA hard disk.
struct Disk {
    image: Box<dyn BlockBackend>,
    sectors: u64,
    /// Sectors per DRQ block of READ/WRITE MULTIPLE (0: disabled).
    multiple: u8,
    /// Current CHS translation (INITIALIZE DEVICE PARAMETERS).
    heads: u8,
    spt: u8,
}

/// An ATAPI CD-ROM drive.
struct Cd {
    medium: Option<Box<dyn BlockBackend>>,
    tray_open: bool,
    locked: bool,
    sense: Sense,
    unit_attention: bool,
    event: u8,
}

enum Kind {
    Disk(Disk),
    Cd(Cd),
}

/// A device in one of a channel's two slots: build one with
/// [`Drive::disk`] or [`Drive::cdrom`] and give it to [`Ide::attach`].
pub struct Drive {
    kind: Kind,
    status: u8,
    error: u8,
    /// Transfer mode chosen with SET FEATURES (ATA-6 §8.37.10).
    xfer_mode: u8,
}

impl Drive {
    /// An ATA hard disk over `image` (sector size 512).
    pub fn disk(image: Box<dyn BlockBackend>) -> Self {
        let sectors = image.len() / SECTOR as u64;
        Drive {
            kind: Kind::Disk(Disk {
                image,
                sectors,
                multiple: 0,
                heads: 16,
                spt: 63,
            }),
            status: DRDY | DSC,
            error: 1,
            xfer_mode: 0x22,
        }
    }

    /// An ATAPI CD-ROM drive (2048-byte sectors), with `medium` inserted
    /// or empty.
    pub fn cdrom(medium: Option<Box<dyn BlockBackend>>) -> Self {
        Drive {
            kind: Kind::Cd(Cd {
                tray_open: false,
                medium,
                locked: false,
                sense: Sense::default(),
                unit_attention: false,
                event: EV_NONE,
            }),
            status: 0,
            error: 1,
            xfer_mode: 0x22,
        }
    }

    fn is_cd(&self) -> bool {
        matches!(self.kind, Kind::Cd(_))
    }

    fn image(&mut self) -> Option<&mut (dyn BlockBackend + 'static)> {
        match &mut self.kind {
            Kind::Disk(d) => Some(&mut *d.image),
            Kind::Cd(c) => c.medium.as_deref_mut(),
        }
    }

    /// The reset signature (ATA-6 §9.12): sector count 1, LBA low 1, LBA
    /// mid/high 0 for ATA devices and 14h/EBh for PACKET devices.
    fn signature(&self, tf: &mut TaskFile) {
        *tf = TaskFile::default();
        tf.count[0] = 1;
        tf.lbal[0] = 1;
        if self.is_cd() {
            tf.lbam[0] = 0x14;
            tf.lbah[0] = 0xeb;
        }
    }

    /// Status after a reset: PACKET devices clear DRDY.
    fn reset_status(&self) -> u8 {
        if self.is_cd() {
            0
        } else {
            DRDY | DSC
        }
    }
}

/// One drive's copy of the command block registers; `[0]` is the value
/// last written, `[1]` the one before it (read with HOB set, §7.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TaskFile {
    feature: [u8; 2],
    count: [u8; 2],
    lbal: [u8; 2],
    lbam: [u8; 2],
    lbah: [u8; 2],
}

/// How the transfer in progress moves its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// ATA PIO: DRQ blocks of `block` sectors.
    Ata { block: u32 },
    /// Receiving the 12-byte command packet.
    Packet { dma: bool, limit: u32 },
    /// ATAPI PIO: DRQ phases of at most `limit` bytes.
    Atapi { limit: u32, phase_left: u32 },
    /// Waiting for (or done by) the bus master.
    Dma { atapi: bool },
}

/// A data transfer in progress: the buffered part of the data and where
/// the rest is on the medium.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Xfer {
    /// Host to device.
    write: bool,
    buf: Vec<u8>,
    pos: usize,
    /// Next sector to load (reads) or store (writes).
    lba: u64,
    /// Sectors not yet loaded into `buf` (reads) or not yet stored,
    /// including `buf` (writes).
    sectors_left: u64,
    sector_size: u32,
    mode: Mode,
}

impl Xfer {
    fn data(buf: Vec<u8>, mode: Mode) -> Self {
        Xfer {
            write: false,
            buf,
            pos: 0,
            lba: 0,
            sectors_left: 0,
            sector_size: SECTOR,
            mode,
        }
    }

    fn sectors(write: bool, lba: u64, count: u64, sector_size: u32, mode: Mode) -> Self {
        Xfer {
            write,
            buf: Vec::new(),
            pos: 0,
            lba,
            sectors_left: count,
            sector_size,
            mode,
        }
    }

    /// Bytes still to move.
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64 + self.sectors_left * self.sector_size as u64
    }

    /// Loads the next `max` sectors (at most) from `image` into `buf`.
    fn load(&mut self, image: Option<&mut (dyn BlockBackend + 'static)>, max: u64) -> bool {
        let n = self.sectors_left.min(max);
        self.buf.clear();
        self.buf.resize((n * self.sector_size as u64) as usize, 0);
        self.pos = 0;
        let Some(image) = image else { return false };
        let Some(off) = self.lba.checked_mul(self.sector_size as u64) else {
            return false;
        };
        if image.read_at(off, &mut self.buf).is_err() {
            return false;
        }
        self.lba += n;
        self.sectors_left -= n;
        true
    }

    /// Stores `buf` (whole sectors) to `image`.
    fn store(&mut self, image: Option<&mut (dyn BlockBackend + 'static)>) -> bool {
        let n = (self.buf.len() / self.sector_size as usize) as u64;
        let Some(image) = image else { return false };
        let Some(off) = self.lba.checked_mul(self.sector_size as u64) else {
            return false;
        };
        if image.write_at(off, &self.buf).is_err() {
            return false;
        }
        self.lba += n;
        self.sectors_left = self.sectors_left.saturating_sub(n);
        true
    }

    /// Sizes `buf` for the next block of at most `max` sectors to receive.
    fn next_out_block(&mut self, max: u64) {
        let n = self.sectors_left.min(max);
        self.buf.clear();
        self.buf.resize((n * self.sector_size as u64) as usize, 0);
        self.pos = 0;
    }

    fn is_sane(&self) -> bool {
        self.buf.len() <= CHUNK
            && self.pos <= self.buf.len()
            && matches!(self.sector_size, SECTOR | CD_SECTOR)
            && self.sectors_left <= u32::MAX as u64 + 1
            && match self.mode {
                Mode::Ata { block } => (1..=MAX_MULTIPLE as u32).contains(&block),
                Mode::Packet { limit, .. } | Mode::Atapi { limit, .. } => {
                    (2..=0xfffe).contains(&limit)
                }
                Mode::Dma { .. } => true,
            }
    }
}

/// Why a bus-master transfer stopped early.
enum DmaFail {
    /// The PRD table ended before the drive's data, or was unreadable.
    Prd,
    /// The medium failed.
    Medium,
}

/// A cursor over a PRD table (SFF-8038i §1.2: 32-bit physical base with
/// bit 0 clear, byte count in bits 15:1 with 0 meaning 64 KiB, EOT in bit
/// 31 of the second dword).
struct Prd {
    table: u32,
    index: u32,
    addr: u32,
    left: u32,
    eot: bool,
}

impl Prd {
    fn new(table: u32) -> Self {
        Prd {
            table,
            index: 0,
            addr: 0,
            left: 0,
            eot: false,
        }
    }

    /// The current region with bytes left, reading entries as needed.
    fn next(&mut self, mem: &dyn DmaMemory) -> Result<(u64, u32), DmaFail> {
        while self.left == 0 {
            if self.eot || self.index >= MAX_PRD {
                return Err(DmaFail::Prd);
            }
            let mut e = [0u8; 8];
            let at = self.table.wrapping_add(self.index * 8) as u64;
            if !mem.read(at, &mut e) {
                return Err(DmaFail::Prd);
            }
            self.index += 1;
            self.addr = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !1;
            let count = u16::from_le_bytes([e[4], e[5]]) as u32 & 0xfffe;
            self.left = if count == 0 { 0x10000 } else { count };
            self.eot = e[7] & 0x80 != 0;
        }
        Ok((self.addr as u64, self.left))
    }

    fn consume(&mut self, n: u32) {
        self.addr = self.addr.wrapping_add(n);
        self.left -= n;
    }

    fn exhausted(&self) -> bool {
        self.left == 0 && self.eot
    }
}

/// What an ATAPI packet command produced.
enum Reply {
    Done,
    Data(Vec<u8>),
    Read { lba: u64, sectors: u64 },
    Check(Sense),
}

fn truncated(mut v: Vec<u8>, alloc: usize) -> Reply {
    v.truncate(alloc);
    Reply::Data(v)
}

impl Cd {
    fn blocks(&self) -> Option<u64> {
        self.medium.as_ref().map(|m| m.len() / CD_SECTOR as u64)
    }

    fn not_ready(&self) -> Sense {
        sense(NOT_READY, 0x3a, if self.tray_open { 2 } else { 1 })
    }

    fn profile(&self) -> u16 {
        match self.blocks() {
            None => 0,
            Some(b) if b > CD_MAX_SECTORS => 0x0010,
            Some(_) => 0x0008,
        }
    }

    /// Runs a packet command (MMC-5 §6, SPC-3 §6) and records its sense.
    fn execute(&mut self, p: &[u8; 12]) -> Reply {
        let op = p[0];
        // A pending unit attention fails the next command, except those
        // MMC-5 §4.1.6.1 lets through.
        if self.unit_attention && !matches!(op, 0x03 | 0x12 | 0x46 | 0x4a) {
            self.unit_attention = false;
            self.sense = MEDIUM_CHANGED;
            return Reply::Check(MEDIUM_CHANGED);
        }
        if op == 0x03 {
            return self.request_sense(p);
        }
        let reply = self.command(p);
        self.sense = match reply {
            Reply::Check(s) => s,
            _ => GOOD,
        };
        reply
    }

    fn need_medium(&self) -> Result<u64, Reply> {
        self.blocks().ok_or(Reply::Check(self.not_ready()))
    }

    fn command(&mut self, p: &[u8; 12]) -> Reply {
        let r = match p[0] {
            // TEST UNIT READY, SEEK(10).
            0x00 | 0x2b => self.need_medium().map(|_| Reply::Done),
            0x12 => Ok(self.inquiry(p)),
            0x1a => Ok(self.mode_sense(p[2], p[4] as usize, false)),
            0x5a => Ok(self.mode_sense(p[2], be16(&p[7..]), true)),
            0x1b => Ok(self.start_stop(p[4])),
            0x1e => {
                self.locked = p[4] & 1 != 0;
                Ok(Reply::Done)
            }
            0x25 => self.need_medium().map(|b| {
                let mut v = (b.saturating_sub(1).min(u32::MAX as u64) as u32)
                    .to_be_bytes()
                    .to_vec();
                v.extend(CD_SECTOR.to_be_bytes());
                Reply::Data(v)
            }),
            0x28 => self.read(be32(&p[2..]) as u64, be16(&p[7..]) as u64),
            0xa8 => self.read(be32(&p[2..]) as u64, be32(&p[6..]) as u64),
            0xbe => {
                let count = u32::from_be_bytes([0, p[6], p[7], p[8]]) as u64;
                match p[9] & 0xf8 {
                    0 => self.need_medium().map(|_| Reply::Done),
                    0x10 => self.read(be32(&p[2..]) as u64, count),
                    _ => Ok(Reply::Check(INVALID_FIELD)),
                }
            }
            0x43 => self.read_toc(p),
            0x46 => Ok(self.get_configuration(p)),
            0x4a => Ok(self.event_status(p)),
            0x51 => self.disc_information(p),
            0xbb => Ok(Reply::Done),
            0xbd => {
                let v = vec![0, (self.tray_open as u8) << 4, 0, 0, 0, 0, 0, 0];
                Ok(truncated(v, be16(&p[8..])))
            }
            _ => Ok(Reply::Check(INVALID_OPCODE)),
        };
        r.unwrap_or_else(|e| e)
    }

    fn request_sense(&mut self, p: &[u8; 12]) -> Reply {
        if self.unit_attention {
            self.unit_attention = false;
            self.sense = MEDIUM_CHANGED;
        }
        let s = std::mem::take(&mut self.sense);
        let mut v = vec![0u8; 18];
        v[0] = 0x70;
        v[2] = s.key;
        v[7] = 10;
        v[12] = s.asc;
        v[13] = s.ascq;
        truncated(v, p[4] as usize)
    }

    fn inquiry(&self, p: &[u8; 12]) -> Reply {
        let alloc = be16(&p[3..]);
        if p[1] & 1 != 0 {
            // Vital product data: only the list of supported pages.
            return match p[2] {
                0 => truncated(vec![5, 0, 0, 1, 0], alloc),
                _ => Reply::Check(INVALID_FIELD),
            };
        }
        if p[2] != 0 {
            return Reply::Check(INVALID_FIELD);
        }
        let mut v = vec![0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0];
        v.extend(b"VIREO   CD-ROM          1.0 ");
        truncated(v, alloc)
    }

    fn start_stop(&mut self, flags: u8) -> Reply {
        match flags & 3 {
            // LoEj without Start: eject.
            2 => {
                if self.locked {
                    return Reply::Check(REMOVAL_PREVENTED);
                }
                if self.medium.take().is_some() {
                    self.event = EV_MEDIA_REMOVAL;
                }
                self.tray_open = true;
            }
            // LoEj with Start: close the tray.
            3 => self.tray_open = false,
            _ => {}
        }
        Reply::Done
    }

    fn read(&self, lba: u64, count: u64) -> Result<Reply, Reply> {
        let blocks = self.need_medium()?;
        if lba + count > blocks {
            return Ok(Reply::Check(LBA_OUT_OF_RANGE));
        }
        Ok(if count == 0 {
            Reply::Done
        } else {
            Reply::Read {
                lba,
                sectors: count,
            }
        })
    }

    /// READ TOC/PMA/ATIP (MMC-5 §6.26) for a single-session, single-track
    /// data disc.
    fn read_toc(&self, p: &[u8; 12]) -> Result<Reply, Reply> {
        let blocks = self.need_medium()?.min(u32::MAX as u64 - 150) as u32;
        let msf = p[1] & 2 != 0;
        let mut format = p[2] & 0x0f;
        if format == 0 {
            format = p[9] >> 6;
        }
        let track = p[6];
        let to_msf = |lba: u32| {
            let l = lba + 150;
            [
                0,
                (l / 4500).min(255) as u8,
                (l / 75 % 60) as u8,
                (l % 75) as u8,
            ]
        };
        let addr = |lba: u32| if msf { to_msf(lba) } else { lba.to_be_bytes() };
        let mut v = vec![0, 0, 1, 1];
        match format {
            0 => {
                if track > 1 && track != 0xaa {
                    return Ok(Reply::Check(INVALID_FIELD));
                }
                if track <= 1 {
                    v.extend([0, 0x14, 1, 0]);
                    v.extend(addr(0));
                }
                v.extend([0, 0x14, 0xaa, 0]);
                v.extend(addr(blocks));
            }
            1 => {
                v.extend([0, 0x14, 1, 0]);
                v.extend(addr(0));
            }
            2 => {
                let out = to_msf(blocks);
                for (point, pm, ps, pf) in [
                    (0xa0, 1, 0, 0),
                    (0xa1, 1, 0, 0),
                    (0xa2, out[1], out[2], out[3]),
                    (1, 0, 2, 0),
                ] {
                    v.extend([1, 0x14, 0, point, 0, 0, 0, 0, pm, ps, pf]);
                }
            }
            _ => return Ok(Reply::Check(INVALID_FIELD)),
        }
        let len = (v.len() - 2) as u16;
        v[..2].copy_from_slice(&len.to_be_bytes());
        Ok(truncated(v, be16(&p[7..])))
    }

    /// GET CONFIGURATION (MMC-5 §6.6) with the profile list, core,
    /// morphing, removable medium, random readable and CD/DVD read
    /// features.
    fn get_configuration(&self, p: &[u8; 12]) -> Reply {
        let rt = p[1] & 3;
        let start = be16(&p[2..]) as u16;
        let profile = self.profile();
        let present = profile != 0;
        let feature = |code: u16, version: u8, current: bool, data: &[u8]| {
            let mut d = code.to_be_bytes().to_vec();
            let persistent = (code < 0x10) as u8;
            d.push((version << 2) | (persistent << 1) | current as u8);
            d.push(data.len() as u8);
            d.extend_from_slice(data);
            (code, current, d)
        };
        let blocking: u8 = if profile == 0x0010 { 16 } else { 1 };
        let features = [
            feature(
                0x0000,
                0,
                true,
                &[
                    0,
                    0x10,
                    (profile == 0x10) as u8,
                    0,
                    0,
                    0x08,
                    (profile == 8) as u8,
                    0,
                ],
            ),
            feature(0x0001, 1, true, &[0, 0, 0, 2, 1, 0, 0, 0]),
            feature(0x0002, 1, true, &[2, 0, 0, 0]),
            feature(0x0003, 0, true, &[0x29, 0, 0, 0]),
            feature(0x0010, 0, present, &[0, 0, 8, 0, 0, blocking, 0, 0]),
            feature(0x001e, 0, profile == 8, &[]),
            feature(0x001f, 0, profile == 0x10, &[]),
        ];
        let mut v = vec![0u8; 8];
        v[6..8].copy_from_slice(&profile.to_be_bytes());
        for (code, current, d) in features {
            let take = match rt {
                0 => code >= start,
                1 => current && code >= start,
                2 => code == start,
                _ => return Reply::Check(INVALID_FIELD),
            };
            if take {
                v.extend(d);
            }
        }
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        truncated(v, be16(&p[7..]))
    }

    /// GET EVENT STATUS NOTIFICATION, polled, media class (MMC-5 §6.7).
    fn event_status(&mut self, p: &[u8; 12]) -> Reply {
        if p[1] & 1 == 0 {
            return Reply::Check(INVALID_FIELD);
        }
        let v = if p[4] & 0x10 != 0 {
            let event = std::mem::replace(&mut self.event, EV_NONE);
            let status = (self.medium.is_some() as u8) << 1 | self.tray_open as u8;
            vec![0, 6, 4, 0x10, event, status, 0, 0]
        } else {
            vec![0, 2, 0x80, 0x10]
        };
        truncated(v, be16(&p[7..]))
    }

    fn mode_sense(&self, page_control: u8, alloc: usize, ten: bool) -> Reply {
        let pc = page_control >> 6;
        let page = page_control & 0x3f;
        if pc == 3 {
            return Reply::Check(SAVING_NOT_SUPPORTED);
        }
        let recovery = vec![0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0];
        let speed = (16 * 176u16).to_be_bytes();
        let caps = vec![
            0x2a,
            0x14,
            0x08, // reads DVD-ROM
            0x00,
            0x70, // mode 2 form 1/2, multi-session
            0x00,
            0x29 | (self.locked as u8) << 1, // tray, eject, lock (+state)
            0x00,
            speed[0],
            speed[1],
            0,
            0,
            0x02, // 512 KiB buffer
            0x00,
            speed[0],
            speed[1],
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let mut pages = match page {
            0x01 => vec![recovery],
            0x2a => vec![caps],
            0x3f => vec![recovery, caps],
            _ => return Reply::Check(INVALID_FIELD),
        };
        if pc == 1 {
            // Changeable values: none.
            for p in &mut pages {
                p[2..].fill(0);
            }
        }
        let body: Vec<u8> = pages.concat();
        let mut v = if ten { vec![0u8; 8] } else { vec![0u8; 4] };
        v.extend(body);
        if ten {
            let len = (v.len() - 2) as u16;
            v[..2].copy_from_slice(&len.to_be_bytes());
        } else {
            v[0] = (v.len() - 1) as u8;
        }
        truncated(v, alloc)
    }

    fn disc_information(&self, p: &[u8; 12]) -> Result<Reply, Reply> {
        self.need_medium()?;
        if p[1] & 7 != 0 {
            return Ok(Reply::Check(INVALID_FIELD));
        }
        let mut v = vec![0u8; 34];
        v[1] = 32;
        v[2] = 0x0e; // last session complete, disc finalized
        v[3] = 1; // first track
        v[4] = 1; // sessions
        v[5] = 1; // first track of the last session
        v[6] = 1; // last track of the last session
        v[7] = 0x20; // unrestricted use
        v[16..24].fill(0xff);
        Ok(truncated(v, be16(&p[7..])))
    }
}

/// Word `i` of an IDENTIFY buffer with an ATA string (two characters per
/// word, first in the high byte, space padded).
fn put_string(id: &mut [u16; 256], word: usize, len_words: usize, s: &str) {
    let mut b = s.as_bytes().to_vec();
    b.resize(len_words * 2, b' ');
    for i in 0..len_words {
        id[word + i] = (b[2 * i] as u16) << 8 | b[2 * i + 1] as u16;
    }
}

/// The 512 bytes of an IDENTIFY buffer, with the integrity word (255).
fn identify_bytes(mut id: [u16; 256]) -> Vec<u8> {
    id[255] = 0xa5;
    let mut v: Vec<u8> = id.iter().flat_map(|w| w.to_le_bytes()).collect();
    let sum = v[..511].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    v[511] = sum.wrapping_neg();
    v
}

fn common_identify(id: &mut [u16; 256], channel: usize, slot: usize, model: &str, mode: u8) {
    put_string(id, 10, 10, &format!("VIREO-{channel}{slot}-0001"));
    put_string(id, 23, 4, "1.0");
    put_string(id, 27, 20, model);
    id[49] = 0x0b00; // IORDY, LBA, DMA
    id[51] = 0x0200;
    id[63] = 0x0007
        | if mode & 0xf8 == 0x20 {
            0x100 << (mode & 7)
        } else {
            0
        };
    id[64] = 0x0003;
    id[65..69].fill(120);
    id[80] = 0x007e;
    id[88] = 0x003f
        | if mode & 0xf8 == 0x40 {
            0x100 << (mode & 7)
        } else {
            0
        };
    id[93] = 0x6000 | if slot == 0 { 0x000b } else { 0x0b00 };
}

/// IDENTIFY DEVICE data of a disk (ATA-6 §8.15).
fn identify_disk(d: &Disk, channel: usize, slot: usize, mode: u8) -> Vec<u8> {
    let mut id = [0u16; 256];
    common_identify(&mut id, channel, slot, "VIREO HARDDISK", mode);
    let cyls = (d.sectors / (16 * 63)).clamp(1, 16383) as u16;
    id[0] = 0x0040;
    id[1] = cyls;
    id[3] = 16;
    id[6] = 63;
    id[47] = 0x8000 | MAX_MULTIPLE as u16;
    id[50] = 0x4000;
    id[53] = 0x0007;
    let (ccyl, cap) = current_chs(d);
    id[54] = ccyl;
    id[55] = d.heads as u16;
    id[56] = d.spt as u16;
    id[57] = cap as u16;
    id[58] = (cap >> 16) as u16;
    id[59] = if d.multiple != 0 {
        0x100 | d.multiple as u16
    } else {
        0
    };
    let lba28 = d.sectors.min(0x0fff_ffff) as u32;
    id[60] = lba28 as u16;
    id[61] = (lba28 >> 16) as u16;
    id[82] = 0x0020; // write cache
    id[83] = 0x7400; // LBA48, FLUSH CACHE (EXT)
    id[84] = 0x4000;
    id[85] = 0x0020;
    id[86] = 0x3400;
    id[87] = 0x4000;
    for i in 0..4 {
        id[100 + i] = (d.sectors >> (16 * i)) as u16;
    }
    identify_bytes(id)
}

/// Cylinders and capacity of the current CHS translation.
fn current_chs(d: &Disk) -> (u16, u32) {
    let per_cyl = d.heads as u64 * d.spt as u64;
    if per_cyl == 0 {
        return (0, 0);
    }
    let cyls = (d.sectors / per_cyl).min(65535);
    (cyls as u16, (cyls * per_cyl).min(u32::MAX as u64) as u32)
}

/// IDENTIFY PACKET DEVICE data of the CD-ROM (ATA-6 §8.16).
fn identify_cd(channel: usize, slot: usize, mode: u8) -> Vec<u8> {
    let mut id = [0u16; 256];
    common_identify(&mut id, channel, slot, "VIREO CD-ROM", mode);
    // ATAPI, CD-ROM, removable, DRQ within 50 us, 12-byte packets.
    id[0] = 0x85c0;
    id[53] = 0x0006;
    id[82] = 0x0010; // PACKET
    id[83] = 0x4000;
    id[84] = 0x4000;
    id[85] = 0x0010;
    id[87] = 0x4000;
    identify_bytes(id)
}

/// The LBA of an ATA command: 48-bit, 28-bit or translated from CHS with
/// `heads`/`spt` (ATA-6 §6.2); `None` for a CHS address outside the
/// translation.
fn ata_address(tf: &TaskFile, device: u8, ext: bool, heads: u8, spt: u8) -> Option<u64> {
    let b = |r: [u8; 2], i: usize| r[i] as u64;
    if ext {
        return Some(
            b(tf.lbal, 0)
                | b(tf.lbam, 0) << 8
                | b(tf.lbah, 0) << 16
                | b(tf.lbal, 1) << 24
                | b(tf.lbam, 1) << 32
                | b(tf.lbah, 1) << 40,
        );
    }
    if device & 0x40 != 0 {
        return Some(
            b(tf.lbal, 0)
                | b(tf.lbam, 0) << 8
                | b(tf.lbah, 0) << 16
                | ((device & 0x0f) as u64) << 24,
        );
    }
    let cyl = b(tf.lbam, 0) | b(tf.lbah, 0) << 8;
    let head = (device & 0x0f) as u64;
    let sect = b(tf.lbal, 0);
    let (heads, spt) = (heads as u64, spt as u64);
    if sect == 0 || sect > spt || head >= heads {
        return None;
    }
    Some((cyl * heads + head) * spt + sect - 1)
}

/// The sector count of an ATA command (0 means 256, or 65536 for EXT).
fn ata_count(tf: &TaskFile, ext: bool) -> u64 {
    if ext {
        match u16::from_le_bytes([tf.count[0], tf.count[1]]) {
            0 => 65536,
            n => n as u64,
        }
    } else {
        match tf.count[0] {
            0 => 256,
            n => n as u64,
        }
    }
}

/// One channel: two slots, their registers, the transfer in progress and
/// the channel's half of the bus master.
struct Channel {
    index: usize,
    drives: [Option<Drive>; 2],
    tf: [TaskFile; 2],
    device: u8,
    control: u8,
    intrq: bool,
    xfer: Option<Xfer>,
    bm_cmd: u8,
    bm_status: u8,
    bm_prd: u32,
    irq: Arc<dyn IrqLine>,
    dma: Arc<dyn DmaMemory>,
}

impl Channel {
    fn new(index: usize, irq: Arc<dyn IrqLine>, dma: Arc<dyn DmaMemory>) -> Self {
        Channel {
            index,
            drives: [None, None],
            tf: [TaskFile::default(); 2],
            device: 0,
            control: 0,
            intrq: false,
            xfer: None,
            bm_cmd: 0,
            bm_status: 0,
            bm_prd: 0,
            irq,
            dma,
        }
    }

    fn sel(&self) -> usize {
        (self.device >> 4 & 1) as usize
    }

    fn update_irq(&self) {
        self.irq.set_level(self.intrq && self.control & NIEN == 0);
    }

    /// The selected drive asserts INTRQ (which also sets the bus master's
    /// interrupt bit, SFF-8038i §2.1.2).
    fn raise(&mut self) {
        self.intrq = true;
        self.bm_status |= BM_INTR;
        self.update_irq();
    }

    fn lower(&mut self) {
        if self.intrq {
            self.intrq = false;
            self.update_irq();
        }
    }

    /// Ends the command on the selected drive.
    fn finish(&mut self, status: u8, error: u8, irq: bool) {
        let sel = self.sel();
        self.xfer = None;
        if let Some(d) = self.drives[sel].as_mut() {
            d.status = status;
            d.error = error;
        }
        if irq {
            self.raise();
        }
    }

    fn abort(&mut self, error: u8) {
        self.finish(DRDY | DSC | ERR, error, true);
    }

    /// Hardware or software reset of both slots (ATA-6 §9.2).
    fn reset_drives(&mut self) {
        self.xfer = None;
        self.device = 0;
        for (slot, d) in self.drives.iter_mut().enumerate() {
            if let Some(d) = d {
                d.signature(&mut self.tf[slot]);
                d.status = d.reset_status();
                d.error = 1;
            }
        }
    }

    fn hardware_reset(&mut self) {
        self.reset_drives();
        self.control = 0;
        self.bm_cmd = 0;
        self.bm_status = 0;
        self.bm_prd = 0;
        self.intrq = false;
        self.update_irq();
    }

    // ---- command block ----

    fn read_command(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            self.data_in(data);
            return;
        }
        data.fill(0xff);
        if data.len() != 1 {
            log_odd_access!("ide: {}-byte read of register {offset}", data.len());
        }
        let sel = self.sel();
        let v = if self.drives.iter().all(Option::is_none) {
            // Nobody drives the bus: it floats high.
            0xff
        } else if offset == 6 {
            self.device
        } else if let Some(d) = &self.drives[sel] {
            let tf = &self.tf[sel];
            let h = (self.control & HOB != 0) as usize;
            match offset {
                1 => d.error,
                2 => tf.count[h],
                3 => tf.lbal[h],
                4 => tf.lbam[h],
                5 => tf.lbah[h],
                7 => {
                    let s = d.status;
                    self.lower();
                    s
                }
                _ => 0xff,
            }
        } else {
            // Device 0 answers for an absent device 1 with zeros.
            0
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write_command(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.data_out(data);
            return;
        }
        let Some(&v) = data.first() else { return };
        if data.len() != 1 {
            log_odd_access!("ide: {}-byte write of register {offset}", data.len());
        }
        if self.control & SRST != 0 {
            return;
        }
        if (1..=5).contains(&offset) {
            self.control &= !HOB;
            for tf in &mut self.tf {
                let r = match offset {
                    1 => &mut tf.feature,
                    2 => &mut tf.count,
                    3 => &mut tf.lbal,
                    4 => &mut tf.lbam,
                    _ => &mut tf.lbah,
                };
                *r = [v, r[0]];
            }
        } else if offset == 6 {
            self.control &= !HOB;
            self.device = v;
        } else if offset == 7 {
            self.command(v);
        } else {
            log_odd_access!("ide: write of register {offset}");
        }
    }

    fn read_control(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset != 0 || data.is_empty() {
            log_odd_access!("ide: read of control block offset {offset}");
            return;
        }
        let sel = self.sel();
        data[0] = if self.drives.iter().all(Option::is_none) {
            0xff
        } else {
            self.drives[sel].as_ref().map_or(0, |d| d.status)
        };
    }

    fn write_control(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&v)) = (offset, data.first()) else {
            log_odd_access!("ide: write of control block offset {offset}");
            return;
        };
        let old = self.control;
        self.control = v & (NIEN | SRST | HOB);
        if v & SRST != 0 && old & SRST == 0 {
            self.xfer = None;
            self.intrq = false;
            for d in self.drives.iter_mut().flatten() {
                d.status = BSY;
            }
        } else if v & SRST == 0 && old & SRST != 0 {
            self.reset_drives();
        }
        self.update_irq();
    }

    // ---- data port ----

    fn data_in(&mut self, data: &mut [u8]) {
        for b in data.iter_mut() {
            *b = self.pio_in_byte().unwrap_or(0xff);
        }
    }

    fn data_out(&mut self, data: &[u8]) {
        for &b in data {
            self.pio_out_byte(b);
        }
    }

    fn pio_in_byte(&mut self) -> Option<u8> {
        let sel = self.sel();
        let x = self.xfer.as_mut()?;
        if x.write || matches!(x.mode, Mode::Dma { .. } | Mode::Packet { .. }) {
            return None;
        }
        if x.pos == x.buf.len() {
            // ATAPI reads refill lazily, a chunk at a time.
            if x.sectors_left == 0 {
                return None;
            }
            let max = (CHUNK / x.sector_size as usize) as u64;
            let image = self.drives[sel].as_mut().and_then(|d| d.image());
            if !x.load(image, max) {
                self.cd_check(READ_ERROR);
                return None;
            }
        }
        let v = x.buf[x.pos];
        x.pos += 1;
        let drained = x.pos == x.buf.len();
        let mode = x.mode;
        match mode {
            Mode::Ata { block } if drained => {
                if x.sectors_left == 0 {
                    self.finish(DRDY | DSC, 0, false);
                } else {
                    let image = self.drives[sel].as_mut().and_then(|d| d.image());
                    if x.load(image, block as u64) {
                        self.set_status(DRDY | DSC | DRQ);
                        self.raise();
                    } else {
                        self.abort(UNC);
                    }
                }
            }
            Mode::Atapi { limit, phase_left } => {
                let left = phase_left.saturating_sub(1);
                x.mode = Mode::Atapi {
                    limit,
                    phase_left: left,
                };
                if left == 0 {
                    self.atapi_phase();
                }
            }
            _ => {}
        }
        Some(v)
    }

    fn pio_out_byte(&mut self, v: u8) {
        let sel = self.sel();
        let Some(x) = self.xfer.as_mut() else { return };
        if !x.write || matches!(x.mode, Mode::Dma { .. }) || x.pos >= x.buf.len() {
            return;
        }
        x.buf[x.pos] = v;
        x.pos += 1;
        if x.pos < x.buf.len() {
            return;
        }
        let mode = x.mode;
        match mode {
            Mode::Ata { block } => {
                let image = self.drives[sel].as_mut().and_then(|d| d.image());
                if !x.store(image) {
                    self.abort(ABRT);
                } else if x.sectors_left == 0 {
                    self.finish(DRDY | DSC, 0, true);
                } else {
                    x.next_out_block(block as u64);
                    self.set_status(DRDY | DSC | DRQ);
                    self.raise();
                }
            }
            Mode::Packet { dma, limit } => {
                let mut p = [0u8; 12];
                let n = x.buf.len().min(12);
                p[..n].copy_from_slice(&x.buf[..n]);
                self.packet(&p, dma, limit);
            }
            _ => {}
        }
    }

    fn set_status(&mut self, status: u8) {
        let sel = self.sel();
        if let Some(d) = self.drives[sel].as_mut() {
            d.status = status;
        }
    }

    // ---- commands ----

    fn command(&mut self, cmd: u8) {
        let sel = self.sel();
        let Some(is_cd) = self.drives[sel].as_ref().map(Drive::is_cd) else {
            // EXECUTE DEVICE DIAGNOSTIC is for both devices; anything else
            // goes to the absent device.
            if cmd == 0x90 && self.drives.iter().any(Option::is_some) {
                self.diagnostic();
            }
            return;
        };
        self.xfer = None;
        self.lower();
        if cmd == 0x90 {
            self.diagnostic();
        } else if is_cd {
            self.cd_command(cmd);
        } else {
            self.disk_command(cmd);
        }
    }

    fn diagnostic(&mut self) {
        self.reset_drives();
        self.raise();
    }

    fn disk_command(&mut self, cmd: u8) {
        let sel = self.sel();
        let index = self.index;
        let feature = self.tf[sel].feature[0];
        let count = self.tf[sel].count[0];
        let Some(Drive {
            kind: Kind::Disk(d),
            xfer_mode,
            ..
        }) = self.drives[sel].as_mut()
        else {
            return;
        };
        let ext = matches!(cmd, 0x24 | 0x25 | 0x29 | 0x34 | 0x35 | 0x39 | 0x42);
        match cmd {
            0xec => {
                let buf = identify_disk(d, index, sel, *xfer_mode);
                self.xfer = Some(Xfer::data(buf, Mode::Ata { block: 1 }));
                self.set_status(DRDY | DSC | DRQ);
                self.raise();
            }
            // READ/WRITE SECTORS/MULTIPLE/DMA (EXT), READ VERIFY (EXT).
            0x20 | 0x21 | 0x24 | 0x29 | 0xc4 | 0x30 | 0x31 | 0x34 | 0x39 | 0xc5 | 0xc8 | 0xc9
            | 0x25 | 0xca | 0xcb | 0x35 | 0x40 | 0x41 | 0x42 => {
                let multiple = matches!(cmd, 0x29 | 0xc4 | 0x39 | 0xc5);
                let write = matches!(cmd, 0x30 | 0x31 | 0x34 | 0x39 | 0xc5 | 0xca | 0xcb | 0x35);
                let dma = matches!(cmd, 0xc8 | 0xc9 | 0x25 | 0xca | 0xcb | 0x35);
                let verify = matches!(cmd, 0x40..=0x42);
                if multiple && d.multiple == 0 || write && d.image.read_only() {
                    return self.abort(ABRT);
                }
                let block = if multiple { d.multiple as u32 } else { 1 };
                let (sectors, heads, spt) = (d.sectors, d.heads, d.spt);
                let tf = &self.tf[sel];
                let n = ata_count(tf, ext);
                let Some(lba) = ata_address(tf, self.device, ext, heads, spt) else {
                    return self.abort(IDNF);
                };
                if lba.checked_add(n).is_none_or(|end| end > sectors) {
                    return self.abort(IDNF);
                }
                if verify {
                    return self.finish(DRDY | DSC, 0, true);
                }
                if dma {
                    self.xfer = Some(Xfer::sectors(
                        write,
                        lba,
                        n,
                        SECTOR,
                        Mode::Dma { atapi: false },
                    ));
                    self.set_status(DRDY | DSC | DRQ);
                    self.try_dma();
                    return;
                }
                let mut x = Xfer::sectors(write, lba, n, SECTOR, Mode::Ata { block });
                if write {
                    x.next_out_block(block as u64);
                    self.xfer = Some(x);
                    self.set_status(DRDY | DSC | DRQ);
                } else if x.load(
                    self.drives[sel].as_mut().and_then(|d| d.image()),
                    block as u64,
                ) {
                    self.xfer = Some(x);
                    self.set_status(DRDY | DSC | DRQ);
                    self.raise();
                } else {
                    self.abort(UNC);
                }
            }
            0xe7 | 0xea => {
                if d.image.flush().is_ok() {
                    self.finish(DRDY | DSC, 0, true);
                } else {
                    self.abort(ABRT);
                }
            }
            0xc6 => {
                if count <= MAX_MULTIPLE && count.is_power_of_two() || count == 0 {
                    d.multiple = count;
                    self.finish(DRDY | DSC, 0, true);
                } else {
                    self.abort(ABRT);
                }
            }
            0x91 => {
                d.heads = (self.device & 0x0f) + 1;
                d.spt = count;
                if count == 0 {
                    self.abort(ABRT);
                } else {
                    self.finish(DRDY | DSC, 0, true);
                }
            }
            0xef => self.set_features(feature, count),
            // STANDBY/IDLE (IMMEDIATE), SLEEP, SEEK, RECALIBRATE.
            0x94..=0x97 | 0x99 | 0xe0..=0xe3 | 0xe6 | 0x70 | 0x10..=0x1f => {
                self.finish(DRDY | DSC, 0, true)
            }
            // CHECK POWER MODE: active.
            0x98 | 0xe5 => {
                self.tf[sel].count[0] = 0xff;
                self.finish(DRDY | DSC, 0, true);
            }
            _ => {
                log_odd_access!("ide: unsupported ATA command {cmd:#x}");
                self.abort(ABRT);
            }
        }
    }

    /// SET FEATURES (ATA-6 §8.37): transfer modes up to PIO 4, MWDMA 2 and
    /// UDMA 5; the cache and look-ahead switches are accepted.
    fn set_features(&mut self, feature: u8, count: u8) {
        let sel = self.sel();
        if feature == 0x03 {
            let ok = match count >> 3 {
                0 => count <= 1,
                1 => count & 7 <= 4,
                4 => count & 7 <= 2,
                8 => count & 7 <= 5,
                _ => false,
            };
            if !ok {
                return self.abort(ABRT);
            }
            if let Some(d) = self.drives[sel].as_mut() {
                if count >= 0x20 {
                    d.xfer_mode = count;
                }
            }
        }
        self.finish(DRDY | DSC, 0, true);
    }

    fn cd_command(&mut self, cmd: u8) {
        let sel = self.sel();
        let index = self.index;
        let Some(d) = self.drives[sel].as_ref() else {
            return;
        };
        match cmd {
            0xa1 => {
                let buf = identify_cd(index, sel, d.xfer_mode);
                self.xfer = Some(Xfer::data(buf, Mode::Ata { block: 1 }));
                self.set_status(DRDY | DSC | DRQ);
                self.raise();
            }
            0xa0 => {
                let tf = self.tf[sel];
                let limit = match u16::from_le_bytes([tf.lbam[0], tf.lbah[0]]) {
                    0 | 0xffff => 0xfffe,
                    n => (n & !1).max(2),
                } as u32;
                let dma = tf.feature[0] & 1 != 0;
                let mut x = Xfer::data(vec![0; 12], Mode::Packet { dma, limit });
                x.write = true;
                self.xfer = Some(x);
                self.tf[sel].count[0] = COD;
                self.set_status(DRDY | DRQ);
            }
            0x08 => {
                if let Some(d) = self.drives[sel].as_mut() {
                    d.signature(&mut self.tf[sel]);
                    d.status = 0;
                    d.error = 1;
                }
            }
            0xef => {
                let (f, c) = (self.tf[sel].feature[0], self.tf[sel].count[0]);
                self.set_features(f, c);
            }
            0xe0 | 0xe1 | 0xe6 | 0xe7 | 0x00 => self.finish(DRDY, 0, true),
            0xe5 => {
                self.tf[sel].count[0] = 0xff;
                self.finish(DRDY, 0, true);
            }
            _ => {
                // IDENTIFY DEVICE and the other ATA commands: aborted, with
                // the signature left for software to find (ATA-6 §8.15).
                if let Some(d) = &self.drives[sel] {
                    d.signature(&mut self.tf[sel]);
                }
                self.finish(DRDY | ERR, ABRT, true);
            }
        }
    }

    /// Ends a packet command with CHECK CONDITION.
    fn cd_check(&mut self, s: Sense) {
        let sel = self.sel();
        if let Some(Drive {
            kind: Kind::Cd(c), ..
        }) = self.drives[sel].as_mut()
        {
            c.sense = s;
        }
        self.tf[sel].count[0] = IO | COD;
        self.finish(DRDY | ERR, s.key << 4, true);
    }

    fn cd_done(&mut self) {
        let sel = self.sel();
        self.tf[sel].count[0] = IO | COD;
        self.finish(DRDY, 0, true);
    }

    fn packet(&mut self, p: &[u8; 12], dma: bool, limit: u32) {
        let sel = self.sel();
        let Some(Drive {
            kind: Kind::Cd(c), ..
        }) = self.drives[sel].as_mut()
        else {
            return;
        };
        let mode = if dma {
            Mode::Dma { atapi: true }
        } else {
            Mode::Atapi {
                limit,
                phase_left: 0,
            }
        };
        let x = match c.execute(p) {
            Reply::Done => return self.cd_done(),
            Reply::Check(s) => return self.cd_check(s),
            Reply::Data(v) if v.is_empty() => return self.cd_done(),
            Reply::Data(v) => Xfer::data(v, mode),
            Reply::Read { lba, sectors } => Xfer::sectors(false, lba, sectors, CD_SECTOR, mode),
        };
        self.xfer = Some(x);
        if dma {
            self.tf[sel].count[0] = IO;
            self.set_status(DRDY | DRQ);
            self.try_dma();
        } else {
            self.atapi_phase();
        }
    }

    /// Starts the next PIO data phase of a packet command, or ends it
    /// (ATA-6 §9.10): the byte count goes to LBA mid/high.
    fn atapi_phase(&mut self) {
        let sel = self.sel();
        let Some(x) = self.xfer.as_mut() else { return };
        let Mode::Atapi { limit, .. } = x.mode else {
            return;
        };
        let n = x.remaining().min(limit as u64) as u32;
        if n == 0 {
            return self.cd_done();
        }
        x.mode = Mode::Atapi {
            limit,
            phase_left: n,
        };
        let tf = &mut self.tf[sel];
        tf.lbam[0] = n as u8;
        tf.lbah[0] = (n >> 8) as u8;
        tf.count[0] = IO;
        self.set_status(DRDY | DRQ);
        self.raise();
    }

    // ---- bus master ----

    fn try_dma(&mut self) {
        let pending = matches!(
            self.xfer,
            Some(Xfer {
                mode: Mode::Dma { .. },
                ..
            })
        );
        if pending && self.bm_cmd & BM_START != 0 {
            self.run_dma();
        }
    }

    /// Moves the whole transfer through the PRD table (SFF-8038i §3).
    fn run_dma(&mut self) {
        let sel = self.sel();
        let Some(mut x) = self.xfer.take() else {
            return;
        };
        let Mode::Dma { atapi } = x.mode else {
            self.xfer = Some(x);
            return;
        };
        if (self.bm_cmd & BM_TO_MEMORY != 0) == x.write {
            log_odd_access!("ide: bus master direction differs from the command's");
        }
        let mem = self.dma.clone();
        let mut prd = Prd::new(self.bm_prd);
        let mut image = self.drives[sel].as_mut().and_then(|d| d.image());
        let max = (CHUNK / x.sector_size as usize) as u64;
        let result = (|| -> Result<(), DmaFail> {
            if x.write {
                while x.sectors_left > 0 {
                    x.next_out_block(max);
                    let mut filled = 0;
                    while filled < x.buf.len() {
                        let (addr, len) = prd.next(&*mem)?;
                        let n = len.min((x.buf.len() - filled) as u32);
                        if !mem.read(addr, &mut x.buf[filled..filled + n as usize]) {
                            return Err(DmaFail::Prd);
                        }
                        prd.consume(n);
                        filled += n as usize;
                    }
                    if !x.store(image.as_deref_mut()) {
                        return Err(DmaFail::Medium);
                    }
                }
            } else {
                loop {
                    if x.pos == x.buf.len() {
                        if x.sectors_left == 0 {
                            break;
                        }
                        if !x.load(image.as_deref_mut(), max) {
                            return Err(DmaFail::Medium);
                        }
                    }
                    let (addr, len) = prd.next(&*mem)?;
                    let n = len.min((x.buf.len() - x.pos) as u32);
                    if !mem.write(addr, &x.buf[x.pos..x.pos + n as usize]) {
                        return Err(DmaFail::Prd);
                    }
                    prd.consume(n);
                    x.pos += n as usize;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if prd.exhausted() {
                    self.bm_status &= !BM_ACTIVE;
                }
                if atapi {
                    self.cd_done();
                } else {
                    self.finish(DRDY | DSC, 0, true);
                }
            }
            Err(fail) => {
                self.bm_status &= !BM_ACTIVE;
                if matches!(fail, DmaFail::Prd) {
                    self.bm_status |= BM_ERROR;
                }
                match (atapi, fail) {
                    (true, DmaFail::Medium) => self.cd_check(READ_ERROR),
                    (true, DmaFail::Prd) => self.cd_check(sense(ILLEGAL_REQUEST, 0x00, 0)),
                    (false, DmaFail::Medium) => self.abort(if x.write { ABRT } else { UNC }),
                    (false, DmaFail::Prd) => self.abort(ABRT),
                }
            }
        }
    }

    fn bm_read(&self, offset: u64) -> u8 {
        match offset {
            0 => self.bm_cmd,
            2 => self.bm_status,
            4..=7 => (self.bm_prd >> (8 * (offset - 4))) as u8,
            _ => 0xff,
        }
    }

    fn bm_write(&mut self, offset: u64, v: u8) {
        match offset {
            0 => {
                let old = self.bm_cmd;
                self.bm_cmd = v & (BM_START | BM_TO_MEMORY);
                if v & BM_START != 0 && old & BM_START == 0 {
                    self.bm_status |= BM_ACTIVE;
                    self.try_dma();
                } else if v & BM_START == 0 {
                    self.bm_status &= !BM_ACTIVE;
                }
            }
            2 => {
                self.bm_status =
                    (self.bm_status & !BM_CAPABLE & !(v & (BM_ERROR | BM_INTR))) | (v & BM_CAPABLE);
            }
            4..=7 => {
                let shift = 8 * (offset - 4);
                self.bm_prd = (self.bm_prd & !(0xff << shift) | (v as u32) << shift) & !3;
            }
            _ => log_odd_access!("ide: bus master write at {offset:#x}"),
        }
    }
}

/// Saved state of one drive slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DriveState {
    status: u8,
    error: u8,
    xfer_mode: u8,
    multiple: u8,
    heads: u8,
    spt: u8,
    tray_open: bool,
    locked: bool,
    sense: Sense,
    unit_attention: bool,
    event: u8,
}

/// Saved state of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelState {
    tf: [TaskFile; 2],
    device: u8,
    control: u8,
    intrq: bool,
    xfer: Option<Xfer>,
    bm_cmd: u8,
    bm_status: u8,
    bm_prd: u32,
    drives: [Option<DriveState>; 2],
}

/// Saved state of the controller: configuration space, registers and the
/// transfer in progress (not the media's contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeState {
    config: Vec<u8>,
    channels: Vec<ChannelState>,
}

/// The PIIX3 IDE function with its two channels.
pub struct Ide {
    cfg: ConfigSpace,
    channels: [Channel; 2],
}

fn ide_config() -> ConfigSpace {
    // PIIX3 data sheet §2.3 (IDE function): 8086:7010, mass storage, IDE,
    // interface 80h (bus master, both channels in compatibility mode).
    let mut c = ConfigSpace::new(0x8086, 0x7010, 0x00, [0x01, 0x01, 0x80]);
    c.set(reg::STATUS, &[0x80, 0x02]);
    c.declare_bar(BMDMA_BAR, Space::Io, 16, false);
    // IDETIM (primary 40h, secondary 42h) with IDE decode enabled, and
    // SIDETIM (44h): storage for the drivers' timing programming.
    c.set(0x40, &[0x00, 0x80, 0x00, 0x80]);
    c.set_writable(0x40, &[0xff; 5]);
    c
}

impl Ide {
    /// The controller with empty slots: bus-master DMA reaches guest RAM
    /// through `dma`; the primary channel interrupts on `irq14`, the
    /// secondary on `irq15`.
    pub fn new(dma: Arc<dyn DmaMemory>, irq14: Arc<dyn IrqLine>, irq15: Arc<dyn IrqLine>) -> Self {
        Ide {
            cfg: ide_config(),
            channels: [
                Channel::new(0, irq14, dma.clone()),
                Channel::new(1, irq15, dma),
            ],
        }
    }

    /// Puts `drive` in slot `drive_slot` (0 master, 1 slave) of `channel`
    /// (0 primary, 1 secondary), replacing what was there.
    pub fn attach(&mut self, channel: usize, drive_slot: usize, drive: Drive) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(slot) = ch.drives.get_mut(drive_slot) else {
            return;
        };
        drive.signature(&mut ch.tf[drive_slot]);
        *slot = Some(drive);
    }

    fn cd(&mut self, channel: usize, slot: usize) -> Result<&mut Cd, &'static str> {
        match self
            .channels
            .get_mut(channel)
            .and_then(|c| c.drives.get_mut(slot))
            .and_then(Option::as_mut)
        {
            Some(Drive {
                kind: Kind::Cd(c), ..
            }) => Ok(c),
            _ => Err("no CD-ROM drive in that slot"),
        }
    }

    /// Inserts a new medium (or leaves the drive empty with `None`) in the
    /// CD-ROM at `channel`/`slot`, closing its tray. The guest sees a new
    /// medium as UNIT ATTENTION, NOT READY TO READY CHANGE (28h) on its
    /// next command and as a "new media" event (MMC-5 §6.7.2.4).
    pub fn change_medium(
        &mut self,
        channel: usize,
        slot: usize,
        medium: Option<Box<dyn BlockBackend>>,
    ) -> Result<(), &'static str> {
        let c = self.cd(channel, slot)?;
        let had = c.medium.is_some();
        c.tray_open = false;
        c.unit_attention = medium.is_some();
        c.event = match (&medium, had) {
            (Some(_), _) => EV_NEW_MEDIA,
            (None, true) => EV_MEDIA_REMOVAL,
            (None, false) => c.event,
        };
        c.medium = medium;
        Ok(())
    }

    /// Ejects the CD-ROM's medium as the drive's button would: refused
    /// while the guest prevents removal (PREVENT ALLOW MEDIUM REMOVAL),
    /// unless `force`. A refusal posts an "eject request" event for the
    /// guest.
    pub fn eject(&mut self, channel: usize, slot: usize, force: bool) -> Result<(), &'static str> {
        let c = self.cd(channel, slot)?;
        if c.locked && !force {
            c.event = EV_EJECT_REQUEST;
            return Err("the guest has locked the medium in");
        }
        if c.medium.take().is_some() {
            c.event = EV_MEDIA_REMOVAL;
        }
        c.tray_open = true;
        c.unit_attention = false;
        Ok(())
    }

    /// True when the CD-ROM at `channel`/`slot` holds a medium (false after
    /// the guest ejected it with START STOP UNIT).
    pub fn medium_present(&self, channel: usize, slot: usize) -> bool {
        matches!(
            self.channels
                .get(channel)
                .and_then(|c| c.drives.get(slot))
                .and_then(Option::as_ref),
            Some(Drive {
                kind: Kind::Cd(Cd {
                    medium: Some(_),
                    ..
                }),
                ..
            })
        )
    }

    /// True when the guest locked the CD-ROM's medium in.
    pub fn medium_locked(&self, channel: usize, slot: usize) -> bool {
        matches!(
            self.channels
                .get(channel)
                .and_then(|c| c.drives.get(slot))
                .and_then(Option::as_ref),
            Some(Drive {
                kind: Kind::Cd(Cd { locked: true, .. }),
                ..
            })
        )
    }

    /// Machine reset: registers and configuration space to their power-on
    /// values; drives and media stay.
    pub fn reset(&mut self) {
        self.cfg = ide_config();
        for ch in &mut self.channels {
            ch.hardware_reset();
            for d in ch.drives.iter_mut().flatten() {
                d.xfer_mode = 0x22;
                match &mut d.kind {
                    Kind::Disk(disk) => {
                        disk.multiple = 0;
                        disk.heads = 16;
                        disk.spt = 63;
                    }
                    Kind::Cd(c) => {
                        c.locked = false;
                        c.sense = Sense::default();
                    }
                }
            }
        }
    }

    /// The bus devices of the legacy ports, as (base, length, device):
    /// both command blocks (8 ports) and control blocks (1 port).
    pub fn legacy_ports(ide: &Arc<Mutex<Ide>>) -> Vec<(u64, u64, IdePort)> {
        vec![
            (PRIMARY_COMMAND, 8, IdePort::command(ide.clone(), 0)),
            (PRIMARY_CONTROL, 1, IdePort::control(ide.clone(), 0)),
            (SECONDARY_COMMAND, 8, IdePort::command(ide.clone(), 1)),
            (SECONDARY_CONTROL, 1, IdePort::control(ide.clone(), 1)),
        ]
    }
}

impl PciFunction for Ide {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.cfg.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cfg.write(offset, data);
    }

    fn regions(&self, out: &mut Vec<PciRegion>) {
        self.cfg.active_regions(out);
    }

    fn region_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        if index != BMDMA_BAR {
            data.fill(0xff);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            *b = match self.channels.get((o / 8) as usize) {
                Some(ch) => ch.bm_read(o % 8),
                None => 0xff,
            };
        }
    }

    fn region_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index != BMDMA_BAR {
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            let o = offset + i as u64;
            if let Some(ch) = self.channels.get_mut((o / 8) as usize) {
                ch.bm_write(o % 8, b);
            }
        }
    }
}

/// One channel's command block or control block on the port bus.
pub struct IdePort {
    ide: Arc<Mutex<Ide>>,
    channel: usize,
    control: bool,
}

impl IdePort {
    /// The command block of `channel` (register it for 8 ports).
    pub fn command(ide: Arc<Mutex<Ide>>, channel: usize) -> Self {
        IdePort {
            ide,
            channel: channel.min(1),
            control: false,
        }
    }

    /// The control block of `channel` (register it for 1 port).
    pub fn control(ide: Arc<Mutex<Ide>>, channel: usize) -> Self {
        IdePort {
            ide,
            channel: channel.min(1),
            control: true,
        }
    }
}

impl BusDevice for IdePort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut ide = self.ide.lock().unwrap_or_else(|e| e.into_inner());
        let ch = &mut ide.channels[self.channel];
        if self.control {
            ch.read_control(offset, data);
        } else if offset < 8 {
            ch.read_command(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut ide = self.ide.lock().unwrap_or_else(|e| e.into_inner());
        let ch = &mut ide.channels[self.channel];
        if self.control {
            ch.write_control(offset, data);
        } else if offset < 8 {
            ch.write_command(offset, data);
        }
    }
}

impl Snapshot for Ide {
    type State = IdeState;

    fn snapshot(&self) -> IdeState {
        let mut config = vec![0u8; 256];
        self.cfg.read(0, &mut config);
        let channels = self
            .channels
            .iter()
            .map(|ch| ChannelState {
                tf: ch.tf,
                device: ch.device,
                control: ch.control,
                intrq: ch.intrq,
                xfer: ch.xfer.clone(),
                bm_cmd: ch.bm_cmd,
                bm_status: ch.bm_status,
                bm_prd: ch.bm_prd,
                drives: std::array::from_fn(|i| {
                    ch.drives[i].as_ref().map(|d| {
                        let mut s = DriveState {
                            status: d.status,
                            error: d.error,
                            xfer_mode: d.xfer_mode,
                            multiple: 0,
                            heads: 0,
                            spt: 0,
                            tray_open: false,
                            locked: false,
                            sense: Sense::default(),
                            unit_attention: false,
                            event: 0,
                        };
                        match &d.kind {
                            Kind::Disk(k) => {
                                s.multiple = k.multiple;
                                s.heads = k.heads;
                                s.spt = k.spt;
                            }
                            Kind::Cd(c) => {
                                s.tray_open = c.tray_open;
                                s.locked = c.locked;
                                s.sense = c.sense;
                                s.unit_attention = c.unit_attention;
                                s.event = c.event;
                            }
                        }
                        s
                    })
                }),
            })
            .collect();
        IdeState { config, channels }
    }

    fn restore(&mut self, state: IdeState) {
        if state.config.len() == 256 {
            self.cfg.set(0, &state.config);
        }
        for (ch, s) in self.channels.iter_mut().zip(state.channels) {
            ch.tf = s.tf;
            ch.device = s.device;
            ch.control = s.control & (NIEN | SRST | HOB);
            ch.intrq = s.intrq;
            ch.xfer = s.xfer.filter(Xfer::is_sane);
            ch.bm_cmd = s.bm_cmd & (BM_START | BM_TO_MEMORY);
            ch.bm_status = s.bm_status & (BM_ACTIVE | BM_ERROR | BM_INTR | BM_CAPABLE);
            ch.bm_prd = s.bm_prd & !3;
            for (d, ds) in ch.drives.iter_mut().zip(s.drives) {
                let (Some(d), Some(ds)) = (d.as_mut(), ds) else {
                    continue;
                };
                d.status = ds.status;
                d.error = ds.error;
                d.xfer_mode = ds.xfer_mode;
                match &mut d.kind {
                    Kind::Disk(k) => {
                        k.multiple = ds.multiple.min(MAX_MULTIPLE);
                        k.heads = ds.heads;
                        k.spt = ds.spt;
                    }
                    Kind::Cd(c) => {
                        c.tray_open = ds.tray_open;
                        c.locked = ds.locked;
                        c.sense = ds.sense;
                        c.unit_attention = ds.unit_attention;
                        c.event = ds.event;
                    }
                }
            }
            if ch.drives[ch.sel()].is_none() {
                ch.xfer = None;
            }
            ch.update_irq();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemBackend;
    use crate::testing::{RecordingIrq, XorShift};

    const P: u64 = PRIMARY_COMMAND;
    const PC: u64 = PRIMARY_CONTROL;
    const S: u64 = SECONDARY_COMMAND;
    const SC: u64 = SECONDARY_CONTROL;
    const DISK_SECTORS: u64 = 8192;
    const CD_BLOCKS: u64 = 40;

    /// Guest RAM for the bus master.
    struct VecMem(Mutex<Vec<u8>>);

    impl DmaMemory for VecMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let m = self.0.lock().unwrap();
            let Some(end) = addr.checked_add(buf.len() as u64) else {
                return false;
            };
            match m.get(addr as usize..end as usize) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn write(&self, addr: u64, data: &[u8]) -> bool {
            let mut m = self.0.lock().unwrap();
            let Some(end) = addr.checked_add(data.len() as u64) else {
                return false;
            };
            match m.get_mut(addr as usize..end as usize) {
                Some(s) => {
                    s.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    fn pattern(lba: u64, size: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..size)
            .map(|j| (lba as u8).wrapping_mul(31) ^ (j as u8).wrapping_add((j >> 8) as u8))
            .collect();
        v[..8].copy_from_slice(&lba.to_le_bytes());
        v
    }

    fn image(sectors: u64, size: usize) -> Box<MemBackend> {
        Box::new(MemBackend(
            (0..sectors).flat_map(|l| pattern(l, size)).collect(),
        ))
    }

    struct Rig {
        ide: Arc<Mutex<Ide>>,
        ports: Vec<(u64, u64, IdePort)>,
        mem: Arc<VecMem>,
        irq14: Arc<RecordingIrq>,
        irq15: Arc<RecordingIrq>,
    }

    /// A disk as primary master, a CD-ROM (with a medium) as secondary
    /// master.
    fn rig() -> Rig {
        let r = bare();
        {
            let mut ide = r.ide.lock().unwrap();
            ide.attach(0, 0, Drive::disk(image(DISK_SECTORS, 512)));
            ide.attach(1, 0, Drive::cdrom(Some(image(CD_BLOCKS, 2048))));
        }
        r
    }

    fn bare() -> Rig {
        let mem = Arc::new(VecMem(Mutex::new(vec![0; 1 << 20])));
        let irq14 = RecordingIrq::new();
        let irq15 = RecordingIrq::new();
        let ide = Arc::new(Mutex::new(Ide::new(
            mem.clone(),
            irq14.clone(),
            irq15.clone(),
        )));
        let ports = Ide::legacy_ports(&ide);
        Rig {
            ide,
            ports,
            mem,
            irq14,
            irq15,
        }
    }

    impl Rig {
        fn port(&mut self, port: u64) -> (&mut IdePort, u64) {
            let (base, _, dev) = self
                .ports
                .iter_mut()
                .find(|(b, l, _)| port >= *b && port < b + l)
                .expect("an IDE port");
            (dev, port - *base)
        }
        fn inb(&mut self, port: u64) -> u8 {
            let mut b = [0u8];
            let (d, o) = self.port(port);
            d.read(o, &mut b);
            b[0]
        }
        fn outb(&mut self, port: u64, v: u8) {
            let (d, o) = self.port(port);
            d.write(o, &[v]);
        }
        fn inw(&mut self, port: u64) -> u16 {
            let mut b = [0u8; 2];
            let (d, o) = self.port(port);
            d.read(o, &mut b);
            u16::from_le_bytes(b)
        }
        fn outw(&mut self, port: u64, v: u16) {
            let (d, o) = self.port(port);
            d.write(o, &v.to_le_bytes());
        }
        fn read_bytes(&mut self, base: u64, n: usize) -> Vec<u8> {
            (0..n.div_ceil(2))
                .flat_map(|_| self.inw(base).to_le_bytes())
                .take(n)
                .collect()
        }
        fn write_bytes(&mut self, base: u64, data: &[u8]) {
            for w in data.chunks(2) {
                self.outw(base, u16::from_le_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
        }
        fn bm_write(&mut self, off: u64, data: &[u8]) {
            self.ide.lock().unwrap().region_write(BMDMA_BAR, off, data);
        }
        fn bm_read(&mut self, off: u64) -> u8 {
            let mut b = [0u8];
            self.ide.lock().unwrap().region_read(BMDMA_BAR, off, &mut b);
            b[0]
        }
        /// Sets up an LBA28 command's registers and issues it.
        fn ata(&mut self, base: u64, cmd: u8, lba: u32, count: u8) {
            self.outb(base + 2, count);
            self.outb(base + 3, lba as u8);
            self.outb(base + 4, (lba >> 8) as u8);
            self.outb(base + 5, (lba >> 16) as u8);
            self.outb(base + 6, 0xe0 | (lba >> 24) as u8 & 0xf);
            self.outb(base + 7, cmd);
        }
        /// Sets up an LBA48 command's registers and issues it.
        fn ata48(&mut self, base: u64, cmd: u8, lba: u64, count: u16) {
            let b = lba.to_le_bytes();
            self.outb(base + 2, (count >> 8) as u8);
            self.outb(base + 2, count as u8);
            for i in 0..3 {
                self.outb(base + 3 + i, b[3 + i as usize]);
            }
            for i in 0..3 {
                self.outb(base + 3 + i, b[i as usize]);
            }
            self.outb(base + 6, 0x40);
            self.outb(base + 7, cmd);
        }
        /// Issues PACKET and sends `cdb`; returns the status after it.
        fn packet(&mut self, base: u64, cdb: &[u8], limit: u16, dma: bool) -> u8 {
            self.outb(base + 1, dma as u8);
            self.outb(base + 4, limit as u8);
            self.outb(base + 5, (limit >> 8) as u8);
            self.outb(base + 7, 0xa0);
            assert_eq!(self.inb(base + 7) & (DRQ | BSY), DRQ);
            assert_eq!(self.inb(base + 2) & 3, COD);
            let mut p = [0u8; 12];
            p[..cdb.len()].copy_from_slice(cdb);
            self.write_bytes(base, &p);
            self.inb(base + 0x206) // alternate status
        }
        /// Reads every PIO data phase of a packet command: the data and
        /// the phase sizes; ends on the completion status.
        fn atapi_in(&mut self, base: u64) -> (Vec<u8>, Vec<usize>, u8) {
            let mut data = Vec::new();
            let mut phases = Vec::new();
            loop {
                let st = self.inb(base + 7);
                if st & DRQ == 0 {
                    assert_eq!(self.inb(base + 2) & 3, IO | COD, "completion reason");
                    return (data, phases, st);
                }
                assert_eq!(self.inb(base + 2) & 3, IO, "data-in reason");
                let n = self.inb(base + 4) as usize | (self.inb(base + 5) as usize) << 8;
                phases.push(n);
                data.extend(self.read_bytes(base, n));
            }
        }
        fn request_sense(&mut self, base: u64) -> (u8, u8, u8) {
            self.packet(base, &[0x03, 0, 0, 0, 18], 0xfffe, false);
            let (d, _, st) = self.atapi_in(base);
            assert_eq!(st & ERR, 0);
            (d[2] & 0xf, d[12], d[13])
        }
    }

    fn word(id: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([id[2 * i], id[2 * i + 1]])
    }

    fn ata_string(id: &[u8], word: usize, words: usize) -> String {
        (word..word + words)
            .flat_map(|i| [id[2 * i + 1], id[2 * i]])
            .map(|b| b as char)
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    #[test]
    fn identify_disk_cd_and_absent_drives() {
        let mut r = rig();
        r.outb(P + 6, 0xa0);
        r.outb(P + 7, 0xec);
        assert_eq!(r.inb(P + 7), DRDY | DSC | DRQ);
        assert_eq!(r.irq14.take_edges(), 1);
        let id = r.read_bytes(P, 512);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        assert_eq!(ata_string(&id, 27, 20), "VIREO HARDDISK");
        assert_eq!(word(&id, 0), 0x0040);
        assert_eq!((word(&id, 3), word(&id, 6)), (16, 63));
        assert_eq!(word(&id, 1), (DISK_SECTORS / (16 * 63)) as u16);
        assert_eq!(
            word(&id, 60) as u64 | (word(&id, 61) as u64) << 16,
            DISK_SECTORS
        );
        assert_eq!(word(&id, 100) as u64, DISK_SECTORS);
        assert_ne!(word(&id, 83) & 0x0400, 0, "LBA48");
        assert_eq!(word(&id, 47) & 0xff, MAX_MULTIPLE as u16);
        assert_eq!(id[510], 0xa5);
        assert_eq!(id.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        // The CD aborts IDENTIFY DEVICE and shows its signature.
        r.outb(S + 6, 0xa0);
        r.outb(S + 7, 0xec);
        assert_eq!(r.inb(S + 7) & ERR, ERR);
        assert_eq!(r.inb(S + 1), ABRT);
        assert_eq!((r.inb(S + 4), r.inb(S + 5)), (0x14, 0xeb));
        r.outb(S + 7, 0xa1);
        assert_eq!(r.inb(S + 7) & DRQ, DRQ);
        let id = r.read_bytes(S, 512);
        assert_eq!(word(&id, 0), 0x85c0);
        assert_eq!(ata_string(&id, 27, 20), "VIREO CD-ROM");
        assert_eq!(r.inb(S + 7), DRDY | DSC);
        // The absent primary slave: zeros, and the registers do not hold
        // what is written (Linux's and SeaBIOS's presence test).
        r.outb(P + 6, 0xb0);
        r.outb(P + 2, 0x55);
        r.outb(P + 3, 0xaa);
        assert_eq!((r.inb(P + 2), r.inb(P + 3), r.inb(P + 7)), (0, 0, 0));
        assert_eq!(r.inb(P + 6), 0xb0);
        r.outb(P + 7, 0xec);
        assert_eq!(r.inb(PC), 0);
        // The master still holds them.
        r.outb(P + 6, 0xa0);
        assert_eq!((r.inb(P + 2), r.inb(P + 3)), (0x55, 0xaa));
        // A channel with nothing on it floats.
        let mut e = bare();
        assert_eq!(e.inb(P + 7), 0xff);
        assert_eq!(e.inb(S + 2), 0xff);
    }

    #[test]
    fn soft_reset_gives_signatures() {
        let mut r = rig();
        r.outb(PC, SRST);
        assert_eq!(r.inb(P + 7), BSY);
        r.outb(PC, 0);
        assert_eq!(r.inb(P + 1), 1);
        assert_eq!(
            (r.inb(P + 2), r.inb(P + 3), r.inb(P + 4), r.inb(P + 5)),
            (1, 1, 0, 0)
        );
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.outb(SC, SRST);
        r.outb(SC, 0);
        assert_eq!(
            (r.inb(S + 2), r.inb(S + 3), r.inb(S + 4), r.inb(S + 5)),
            (1, 1, 0x14, 0xeb)
        );
        assert_eq!(r.inb(S + 7), 0);
        // DEVICE RESET on the CD does the same, without an interrupt.
        r.outb(S + 4, 0);
        r.outb(S + 7, 0x08);
        assert_eq!((r.inb(S + 4), r.inb(S + 5)), (0x14, 0xeb));
        assert_eq!(r.irq15.take_edges(), 0);
        // EXECUTE DEVICE DIAGNOSTIC: code 01h, interrupt.
        r.outb(P + 7, 0x90);
        assert_eq!(r.inb(P + 1), 1);
        assert_eq!(r.irq14.take_edges(), 1);
    }

    #[test]
    fn pio_read_and_write_lba28_and_lba48() {
        let mut r = rig();
        r.ata(P, 0x20, 100, 3);
        let mut got = Vec::new();
        for _ in 0..3 {
            assert_eq!(r.inb(P + 7), DRDY | DSC | DRQ);
            got.extend(r.read_bytes(P, 512));
        }
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        assert_eq!(r.irq14.take_edges(), 3);
        let want: Vec<u8> = (100..103).flat_map(|l| pattern(l, 512)).collect();
        assert_eq!(got, want);
        // WRITE SECTORS: first block without an interrupt, then one per block.
        r.ata(P, 0x30, 7, 2);
        assert_eq!(r.inb(PC), DRDY | DSC | DRQ);
        assert_eq!(r.irq14.take_edges(), 0);
        r.write_bytes(P, &[0x11; 512]);
        assert_eq!(r.irq14.take_edges(), 1);
        assert_eq!(r.inb(P + 7) & DRQ, DRQ);
        r.write_bytes(P, &[0x22; 512]);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        assert_eq!(r.irq14.take_edges(), 1);
        // LBA48: sectors 7-8 back, with a count of 2 split over HOB.
        r.ata48(P, 0x24, 7, 2);
        let d = r.read_bytes(P, 1024);
        assert!(d[..512].iter().all(|&b| b == 0x11) && d[512..].iter().all(|&b| b == 0x22));
        // HOB reads the earlier value of each register.
        r.outb(P + 2, 0x12);
        r.outb(P + 2, 0x34);
        r.outb(PC, HOB);
        assert_eq!(r.inb(P + 2), 0x12);
        r.outb(PC, 0);
        assert_eq!(r.inb(P + 2), 0x34);
        // WRITE SECTORS EXT at the last sector.
        r.ata48(P, 0x34, DISK_SECTORS - 1, 1);
        r.write_bytes(P, &[0x5a; 512]);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.ata48(P, 0x24, DISK_SECTORS - 1, 1);
        assert!(r.read_bytes(P, 512).iter().all(|&b| b == 0x5a));
        // CHS: cylinder 1, head 2, sector 3 with 16 heads and 63 sectors.
        r.outb(P + 2, 1);
        r.outb(P + 3, 3);
        r.outb(P + 4, 1);
        r.outb(P + 5, 0);
        r.outb(P + 6, 0xa2);
        r.outb(P + 7, 0x20);
        assert_eq!(r.read_bytes(P, 512), pattern((16 + 2) * 63 + 2, 512));
    }

    #[test]
    fn read_multiple_interrupts_per_block() {
        let mut r = rig();
        r.ata(P, 0xc4, 0, 4);
        assert_eq!(r.inb(P + 7) & ERR, ERR, "multiple mode is off");
        r.ata(P, 0xc6, 0, 3);
        assert_eq!(r.inb(P + 1), ABRT, "not a power of two");
        r.ata(P, 0xc6, 0, 4);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.irq14.take_edges();
        r.ata(P, 0xc4, 20, 10);
        let mut got = Vec::new();
        for block in [4, 4, 2] {
            assert_eq!(r.inb(P + 7) & DRQ, DRQ);
            got.extend(r.read_bytes(P, 512 * block));
        }
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        assert_eq!(r.irq14.take_edges(), 3);
        assert_eq!(
            got,
            (20..30).flat_map(|l| pattern(l, 512)).collect::<Vec<_>>()
        );
        // WRITE MULTIPLE EXT of 6 sectors: blocks of 4 and 2.
        r.ata48(P, 0x39, 200, 6);
        r.write_bytes(P, &[0x77; 2048]);
        assert_eq!(r.inb(P + 7) & DRQ, DRQ);
        r.write_bytes(P, &[0x77; 1024]);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.ata(P, 0x20, 205, 1);
        assert!(r.read_bytes(P, 512).iter().all(|&b| b == 0x77));
    }

    #[test]
    fn errors_past_the_end_and_unknown_commands() {
        let mut r = rig();
        r.irq14.take_edges();
        r.ata(P, 0x20, DISK_SECTORS as u32 - 1, 2);
        assert_eq!(r.inb(P + 7), DRDY | DSC | ERR);
        assert_eq!(r.inb(P + 1), IDNF);
        assert_eq!(r.irq14.take_edges(), 1);
        r.ata48(P, 0x25, 1 << 40, 1);
        assert_eq!(r.inb(P + 1), IDNF);
        r.ata(P, 0x40, DISK_SECTORS as u32, 1);
        assert_eq!(r.inb(P + 1), IDNF);
        r.ata(P, 0x40, 0, 8);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.outb(P + 7, 0xb0); // SMART: not offered
        assert_eq!(r.inb(P + 7), DRDY | DSC | ERR);
        assert_eq!(r.inb(P + 1), ABRT);
        r.outb(P + 7, 0xa0); // PACKET to a disk
        assert_eq!(r.inb(P + 1), ABRT);
        // The cheap ones succeed.
        for cmd in [0xe7, 0xea, 0xe0, 0xe1, 0x70, 0x10] {
            r.outb(P + 7, cmd);
            assert_eq!(r.inb(P + 7), DRDY | DSC, "command {cmd:#x}");
        }
        r.outb(P + 7, 0xe5);
        assert_eq!(r.inb(P + 2), 0xff);
        r.outb(P + 1, 0x03);
        r.outb(P + 2, 0x22);
        r.outb(P + 7, 0xef);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.outb(P + 2, 0x4f);
        r.outb(P + 7, 0xef);
        assert_eq!(r.inb(P + 1), ABRT, "UDMA 7 is not offered");
        // INITIALIZE DEVICE PARAMETERS changes the CHS translation.
        r.outb(P + 2, 32);
        r.outb(P + 6, 0xa0 | 7);
        r.outb(P + 7, 0x91);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.outb(P + 2, 1);
        r.outb(P + 3, 1);
        r.outb(P + 4, 1);
        r.outb(P + 5, 0);
        r.outb(P + 6, 0xa0);
        r.outb(P + 7, 0x20);
        assert_eq!(r.read_bytes(P, 512), pattern(8 * 32, 512));
    }

    #[test]
    fn interrupts_follow_nien_and_clear_on_status_read() {
        let mut r = rig();
        r.outb(PC, NIEN);
        r.ata(P, 0x40, 0, 1);
        assert!(!r.irq14.level());
        r.outb(PC, 0);
        assert!(r.irq14.level(), "still pending once unmasked");
        r.inb(PC);
        assert!(r.irq14.level(), "alternate status does not acknowledge");
        r.inb(P + 7);
        assert!(!r.irq14.level());
        r.ata(P, 0x40, 0, 1);
        assert!(r.irq14.level());
        assert_ne!(r.bm_read(2) & BM_INTR, 0);
        r.outb(P + 7, 0xe7); // a new command drops the pending one
        r.inb(P + 7);
        assert!(!r.irq14.level());
        assert!(!r.irq15.level());
    }

    /// Writes a PRD table at `table` from (address, length, eot).
    fn prd_table(r: &Rig, table: u64, entries: &[(u32, u32, bool)]) {
        let mut t = Vec::new();
        for &(addr, len, eot) in entries {
            t.extend(addr.to_le_bytes());
            t.extend((len as u16).to_le_bytes());
            t.extend([0, if eot { 0x80 } else { 0 }]);
        }
        assert!(r.mem.write(table, &t));
    }

    #[test]
    fn bus_master_dma_read_and_write() {
        let mut r = rig();
        prd_table(
            &r,
            0x1000,
            &[
                (0x10000, 1024, false),
                (0x20000, 2048, false),
                (0x30000, 1024, true),
            ],
        );
        r.bm_write(4, &0x1000u32.to_le_bytes());
        r.bm_write(0, &[BM_TO_MEMORY]);
        r.ata(P, 0xc8, 50, 8);
        assert_eq!(r.inb(PC) & DRQ, DRQ, "waits for the bus master");
        assert_eq!(r.irq14.take_edges(), 0);
        r.bm_write(0, &[BM_TO_MEMORY | BM_START]);
        assert_eq!(r.bm_read(2) & 7, BM_INTR, "done, table used up");
        assert_eq!(r.irq14.take_edges(), 1);
        r.bm_write(0, &[0]);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.bm_write(2, &[BM_INTR | BM_ERROR | 0x20]);
        assert_eq!(
            r.bm_read(2),
            0x20,
            "write one to clear; capable bits stored"
        );
        let want: Vec<u8> = (50..58).flat_map(|l| pattern(l, 512)).collect();
        let mut got = vec![0u8; 4096];
        r.mem.read(0x10000, &mut got[..1024]);
        r.mem.read(0x20000, &mut got[1024..3072]);
        r.mem.read(0x30000, &mut got[3072..]);
        assert_eq!(got, want);
        // WRITE DMA EXT from memory, start first then command (either
        // order works), with a table larger than the transfer.
        assert!(r.mem.write(0x40000, &[0xab; 1536]));
        prd_table(&r, 0x2000, &[(0x40000, 512, false), (0x40200, 0, true)]);
        r.bm_write(4, &0x2000u32.to_le_bytes());
        r.bm_write(0, &[BM_START]);
        r.ata48(P, 0x35, 300, 3);
        assert_eq!(
            r.bm_read(2) & 7,
            BM_INTR | BM_ACTIVE,
            "table longer than data"
        );
        r.bm_write(0, &[0]);
        assert_eq!(r.bm_read(2) & BM_ACTIVE, 0);
        assert_eq!(r.inb(P + 7), DRDY | DSC);
        r.ata(P, 0x20, 300, 3);
        assert!(r.read_bytes(P, 1536).iter().all(|&b| b == 0xab));
        assert_eq!(r.ide.lock().unwrap().channels[0].bm_prd, 0x2000);
        // A table too short for the data: bus master error, command aborted.
        r.bm_write(2, &[BM_INTR | BM_ERROR]);
        prd_table(&r, 0x3000, &[(0x50000, 512, true)]);
        r.bm_write(4, &0x3000u32.to_le_bytes());
        r.bm_write(0, &[BM_TO_MEMORY]);
        r.ata(P, 0xc8, 0, 2);
        r.bm_write(0, &[BM_TO_MEMORY | BM_START]);
        assert_eq!(r.bm_read(2) & 7, BM_INTR | BM_ERROR);
        assert_eq!(r.inb(P + 7) & ERR, ERR);
        // A region outside RAM: the same.
        r.bm_write(0, &[0]);
        r.bm_write(2, &[BM_INTR | BM_ERROR]);
        prd_table(&r, 0x3000, &[(0xfff0_0000, 1024, true)]);
        r.ata(P, 0xc8, 0, 2);
        r.bm_write(0, &[BM_TO_MEMORY | BM_START]);
        assert_eq!(r.bm_read(2) & 7, BM_INTR | BM_ERROR);
    }

    #[test]
    fn atapi_inquiry_and_capacity_in_small_phases() {
        let mut r = rig();
        r.irq15.take_edges();
        r.packet(S, &[0x12, 0, 0, 0, 36], 8, false);
        let (d, phases, st) = r.atapi_in(S);
        assert_eq!(phases, [8, 8, 8, 8, 4]);
        assert_eq!(st, DRDY);
        assert_eq!(r.irq15.take_edges(), 6, "one per phase and one at the end");
        assert_eq!((d[0], d[1]), (5, 0x80));
        assert_eq!(&d[8..16], b"VIREO   ");
        assert_eq!(&d[16..32], b"CD-ROM          ");
        r.packet(S, &[0x25], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(be32(&d), CD_BLOCKS as u32 - 1);
        assert_eq!(be32(&d[4..]), 2048);
        // Odd limits are rounded down to even.
        r.packet(S, &[0x12, 0, 0, 0, 36], 11, false);
        let (_, phases, _) = r.atapi_in(S);
        assert_eq!(phases, [10, 10, 10, 6]);
    }

    #[test]
    fn atapi_read10_and_read12_over_several_phases() {
        let mut r = rig();
        r.packet(S, &[0x28, 0, 0, 0, 0, 5, 0, 0, 3], 3000, false);
        let (d, phases, st) = r.atapi_in(S);
        assert_eq!(phases, [3000, 3000, 144]);
        assert_eq!(st & ERR, 0);
        assert_eq!(d, (5..8).flat_map(|l| pattern(l, 2048)).collect::<Vec<_>>());
        // SeaBIOS's way: one sector per phase.
        r.packet(S, &[0xa8, 0, 0, 0, 0, 38, 0, 0, 0, 2], 2048, false);
        let (d, phases, _) = r.atapi_in(S);
        assert_eq!(phases, [2048, 2048]);
        assert_eq!(&d[..8], &38u64.to_le_bytes());
        // READ CD, user data only.
        r.packet(S, &[0xbe, 0, 0, 0, 0, 1, 0, 0, 1, 0x10], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d, pattern(1, 2048));
        // Past the end: ILLEGAL REQUEST, LBA out of range.
        let st = r.packet(S, &[0x28, 0, 0, 0, 0, 39, 0, 0, 2], 0xfffe, false);
        assert_eq!(st, DRDY | ERR);
        assert_eq!(r.inb(S + 1) >> 4, ILLEGAL_REQUEST);
        assert_eq!(r.inb(S + 2) & 3, IO | COD);
        assert_eq!(r.request_sense(S), (ILLEGAL_REQUEST, 0x21, 0));
        // Unknown opcode.
        r.packet(S, &[0xff], 0xfffe, false);
        assert_eq!(r.request_sense(S), (ILLEGAL_REQUEST, 0x20, 0));
        assert_eq!(r.request_sense(S), (NO_SENSE, 0, 0), "sense is consumed");
    }

    #[test]
    fn atapi_read_by_dma() {
        let mut r = rig();
        prd_table(&r, 0x1000, &[(0x10000, 3000, false), (0x20000, 3144, true)]);
        r.bm_write(8 + 4, &0x1000u32.to_le_bytes());
        r.bm_write(8, &[BM_TO_MEMORY]);
        let st = r.packet(S, &[0x28, 0, 0, 0, 0, 10, 0, 0, 3], 0, true);
        assert_eq!(st & DRQ, DRQ);
        assert_eq!(r.irq15.take_edges(), 0);
        r.bm_write(8, &[BM_TO_MEMORY | BM_START]);
        assert_eq!(r.irq15.take_edges(), 1);
        assert_eq!(r.bm_read(8 + 2) & 7, BM_INTR);
        assert_eq!(r.inb(S + 7), DRDY);
        assert_eq!(r.inb(S + 2) & 3, IO | COD);
        let mut got = vec![0u8; 6144];
        r.mem.read(0x10000, &mut got[..3000]);
        r.mem.read(0x20000, &mut got[3000..]);
        assert_eq!(
            got,
            (10..13).flat_map(|l| pattern(l, 2048)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn atapi_read_toc() {
        let mut r = rig();
        r.packet(S, &[0x43, 0, 0, 0, 0, 0, 0, 0, 100], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d.len(), 20);
        assert_eq!(&d[..4], &[0, 18, 1, 1]);
        assert_eq!(&d[4..12], &[0, 0x14, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&d[12..16], &[0, 0x14, 0xaa, 0]);
        assert_eq!(be32(&d[16..]), CD_BLOCKS as u32);
        // MSF: track 1 at 00:02:00, lead-out at (40 + 150) frames.
        r.packet(S, &[0x43, 2, 0, 0, 0, 0, 0, 0, 100], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(&d[8..12], &[0, 0, 2, 0]);
        assert_eq!(&d[16..20], &[0, 0, 2, 40]);
        // Session information.
        r.packet(S, &[0x43, 0, 1, 0, 0, 0, 0, 0, 12], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d, [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
        // Allocation length truncates; lead-out only from track AAh.
        r.packet(S, &[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 4], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d, [0, 10, 1, 1]);
        r.packet(S, &[0x43, 0, 0, 0, 0, 0, 2, 0, 100], 0xfffe, false);
        assert_eq!(r.request_sense(S), (ILLEGAL_REQUEST, 0x24, 0));
    }

    #[test]
    fn atapi_configuration_mode_pages_and_more() {
        let mut r = rig();
        r.packet(S, &[0x46, 0, 0, 0, 0, 0, 0, 0x10, 0], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(be16(&d[6..]), 0x0008, "current profile: CD-ROM");
        assert_eq!(be32(&d) as usize, d.len() - 4);
        // Profile list first: DVD-ROM not current, CD-ROM current.
        assert_eq!(&d[8..12], &[0, 0, 0x03, 8]);
        assert_eq!(&d[12..20], &[0, 0x10, 0, 0, 0, 8, 1, 0]);
        // Just the removable medium feature.
        r.packet(S, &[0x46, 2, 0, 3, 0, 0, 0, 0, 100], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(&d[8..], &[0, 3, 0x03, 4, 0x29, 0, 0, 0]);
        // A DVD-sized medium is a DVD-ROM.
        r.ide
            .lock()
            .unwrap()
            .change_medium(1, 0, Some(Box::new(MemBackend(vec![0; 2048 * 500_000]))))
            .unwrap();
        r.packet(S, &[0x46, 1, 0, 0, 0, 0, 0, 0, 100], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(be16(&d[6..]), 0x0010);
        assert_eq!(tur(&mut r), DRDY | ERR, "unit attention after the change");
        // MODE SENSE(10) page 2Ah.
        r.packet(S, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128], 0xfffe, false);
        let (d, _, st) = r.atapi_in(S);
        assert_eq!(st & ERR, 0);
        assert_eq!(be16(&d) + 2, d.len());
        assert_eq!((d[8], d[9]), (0x2a, 0x14));
        assert_eq!(d[8 + 6] & 0x09, 0x09, "lock and eject");
        // MODE SENSE(6) all pages.
        r.packet(S, &[0x1a, 0, 0x3f, 0, 255], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d[0] as usize + 1, d.len());
        assert_eq!((d[4], d[12]), (0x01, 0x2a));
        r.packet(S, &[0x1a, 0, 0x05, 0, 255], 0xfffe, false);
        assert_eq!(r.request_sense(S), (ILLEGAL_REQUEST, 0x24, 0));
        // READ DISC INFORMATION, MECHANISM STATUS, SET CD SPEED.
        r.packet(S, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!((d.len(), d[2], d[3]), (34, 0x0e, 1));
        r.packet(S, &[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d.len(), 8);
        assert_eq!(r.packet(S, &[0xbb, 0, 0xff, 0xff], 0xfffe, false), DRDY);
    }

    fn tur(r: &mut Rig) -> u8 {
        r.packet(S, &[0], 0xfffe, false)
    }

    fn gesn(r: &mut Rig) -> (u8, u8) {
        r.packet(S, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe, false);
        let (d, _, _) = r.atapi_in(S);
        assert_eq!(d[2], 4, "media class");
        (d[4], d[5])
    }

    #[test]
    fn media_change_unit_attention_and_no_medium() {
        let mut r = bare();
        r.ide.lock().unwrap().attach(1, 0, Drive::cdrom(None));
        assert_eq!(tur(&mut r), DRDY | ERR);
        assert_eq!(r.inb(S + 1) >> 4, NOT_READY);
        assert_eq!(r.request_sense(S), (NOT_READY, 0x3a, 1));
        r.packet(S, &[0x25], 0xfffe, false);
        assert_eq!(r.request_sense(S), (NOT_READY, 0x3a, 1));
        assert_eq!(gesn(&mut r), (EV_NONE, 0));
        // Insert: the next command sees UNIT ATTENTION, then all is well.
        r.ide
            .lock()
            .unwrap()
            .change_medium(1, 0, Some(image(CD_BLOCKS, 2048)))
            .unwrap();
        assert!(r.ide.lock().unwrap().medium_present(1, 0));
        // INQUIRY passes through without clearing it.
        r.packet(S, &[0x12, 0, 0, 0, 36], 0xfffe, false);
        assert_eq!(r.atapi_in(S).2, DRDY);
        assert_eq!(gesn(&mut r), (EV_NEW_MEDIA, 2));
        assert_eq!(gesn(&mut r), (EV_NONE, 2));
        assert_eq!(tur(&mut r), DRDY | ERR);
        assert_eq!(r.inb(S + 1) >> 4, UNIT_ATTENTION);
        assert_eq!(r.request_sense(S), (UNIT_ATTENTION, 0x28, 0));
        assert_eq!(tur(&mut r), DRDY);
        // REQUEST SENSE as the first command reports the attention too.
        r.ide
            .lock()
            .unwrap()
            .change_medium(1, 0, Some(image(CD_BLOCKS, 2048)))
            .unwrap();
        assert_eq!(r.request_sense(S), (UNIT_ATTENTION, 0x28, 0));
        assert_eq!(tur(&mut r), DRDY);
        // GESN needs the polled bit.
        r.packet(S, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe, false);
        assert_eq!(r.request_sense(S), (ILLEGAL_REQUEST, 0x24, 0));
    }

    #[test]
    fn eject_honours_the_lock() {
        let mut r = rig();
        // PREVENT MEDIUM REMOVAL.
        assert_eq!(r.packet(S, &[0x1e, 0, 0, 0, 1], 0xfffe, false), DRDY);
        assert!(r.ide.lock().unwrap().medium_locked(1, 0));
        assert!(r.ide.lock().unwrap().eject(1, 0, false).is_err());
        assert_eq!(gesn(&mut r), (EV_EJECT_REQUEST, 2));
        // The guest's own eject is refused too.
        r.packet(S, &[0x1b, 0, 0, 0, 2], 0xfffe, false);
        assert_eq!(r.request_sense(S), (ILLEGAL_REQUEST, 0x53, 2));
        assert!(r.ide.lock().unwrap().medium_present(1, 0));
        // Forced: out it goes.
        r.ide.lock().unwrap().eject(1, 0, true).unwrap();
        assert!(!r.ide.lock().unwrap().medium_present(1, 0));
        assert_eq!(gesn(&mut r), (EV_MEDIA_REMOVAL, 1));
        assert_eq!(tur(&mut r), DRDY | ERR);
        assert_eq!(r.request_sense(S), (NOT_READY, 0x3a, 2));
        // Unlocked, the guest ejects: the machine can tell.
        r.ide
            .lock()
            .unwrap()
            .change_medium(1, 0, Some(image(CD_BLOCKS, 2048)))
            .unwrap();
        r.request_sense(S);
        r.packet(S, &[0x1e, 0, 0, 0, 0], 0xfffe, false);
        assert_eq!(r.packet(S, &[0x1b, 0, 0, 0, 2], 0xfffe, false), DRDY);
        assert!(!r.ide.lock().unwrap().medium_present(1, 0));
        // Closing the tray (LoEj + Start) is accepted.
        assert_eq!(r.packet(S, &[0x1b, 0, 0, 0, 3], 0xfffe, false), DRDY);
        assert!(r.ide.lock().unwrap().eject(0, 0, false).is_err(), "a disk");
        assert!(
            r.ide.lock().unwrap().change_medium(0, 1, None).is_err(),
            "empty"
        );
    }

    #[test]
    fn pci_function_header_and_bar4() {
        let mut r = rig();
        let mut ide = r.ide.lock().unwrap();
        let mut d = [0u8; 4];
        ide.config_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x7010_8086);
        ide.config_read(8, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 8, 0x01_01_80);
        ide.config_read(0x40, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_8000);
        ide.config_write(0x40, &0x0000_a307u32.to_le_bytes());
        ide.config_read(0x40, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0000_a307);
        ide.config_write(0x20, &[0xff; 4]);
        ide.config_read(0x20, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_fff1);
        ide.config_write(0x20, &0xc000u32.to_le_bytes());
        let mut regions = Vec::new();
        ide.regions(&mut regions);
        assert!(regions.is_empty(), "I/O decode off");
        ide.config_write(4, &[0x05, 0]);
        ide.regions(&mut regions);
        assert_eq!(
            regions,
            [PciRegion {
                space: Space::Io,
                base: 0xc000,
                len: 16,
                index: 4
            }]
        );
        // PRD address: dword-aligned, byte and dword accesses.
        ide.region_write(4, 12, &0x1234_5677u32.to_le_bytes());
        ide.region_read(4, 12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_5674);
        ide.reset();
        ide.config_read(0x40, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_8000);
        drop(ide);
        assert_eq!(r.bm_read(12), 0);
    }

    #[test]
    fn machine_wiring_through_the_pci_bus() {
        let mut r = rig();
        let mut bus = crate::pci::PciBus::new();
        bus.attach(1, 1, r.ide.clone());
        let mut io = bus.window(Space::Io);
        let cfg = |bus: &mut crate::pci::PciBus, reg: u32, v: u32| {
            bus.write(0, &(0x8000_0000u32 | 1 << 11 | 1 << 8 | reg).to_le_bytes());
            bus.write(4, &v.to_le_bytes());
        };
        cfg(&mut bus, 0x20, 0xc040);
        cfg(&mut bus, 0x04, 0x05);
        io.write(0xc040 + 4, &0x1234_5678u32.to_le_bytes());
        assert_eq!(r.ide.lock().unwrap().channels[0].bm_prd, 0x1234_5678);
        r.outb(P + 7, 0xec);
        let mut st = [0u8];
        io.read(0xc040 + 2, &mut st);
        assert_eq!(st[0] & BM_INTR, BM_INTR);
    }

    #[test]
    fn snapshot_mid_transfer_round_trips() {
        let mut r = rig();
        r.ata(P, 0x20, 10, 2);
        let first = r.read_bytes(P, 100);
        assert_eq!(first, pattern(10, 512)[..100]);
        r.bm_write(4, &0x4000u32.to_le_bytes());
        let state = r.ide.lock().unwrap().snapshot();
        let mut q = rig();
        q.ide.lock().unwrap().restore(state.clone());
        assert_eq!(q.ide.lock().unwrap().snapshot(), state);
        let rest = q.read_bytes(P, 924);
        assert_eq!(rest[..412], pattern(10, 512)[100..]);
        assert_eq!(rest[412..], pattern(11, 512)[..]);
        assert_eq!(q.bm_read(4), 0);
        assert_eq!(q.bm_read(5), 0x40);
        // Nonsense in a saved transfer is dropped, not trusted.
        let mut bad = state;
        if let Some(x) = bad.channels[0].xfer.as_mut() {
            x.pos = 1 << 40;
        }
        q.ide.lock().unwrap().restore(bad);
        assert!(q.ide.lock().unwrap().channels[0].xfer.is_none());
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut r = rig();
        r.ide.lock().unwrap().attach(0, 1, Drive::cdrom(None));
        let mut rng = XorShift::new(0x1de_1de);
        let ports = [P, PC, S, SC];
        let commands = [
            0x20, 0x24, 0x29, 0x30, 0x34, 0x39, 0xc4, 0xc5, 0xc6, 0xc8, 0x25, 0xca, 0x35, 0xec,
            0xa1, 0xa0, 0x08, 0x90, 0x91, 0xef, 0x40, 0xe7,
        ];
        for round in 0..200_000u32 {
            let v = rng.next_u64();
            let bytes = v.to_le_bytes();
            let len = [1usize, 2, 4][(v >> 8) as usize % 3];
            match v % 16 {
                0..=5 => {
                    let base = ports[(v >> 4) as usize % 4];
                    let off = if base & 0xf == 6 { 0 } else { (v >> 16) % 9 };
                    let (d, o) = r.port(base);
                    if v & 0x100_0000 != 0 {
                        d.write(o + off, &bytes[3..3 + len]);
                    } else {
                        let mut b = [0u8; 4];
                        d.read(o + off, &mut b[..len]);
                    }
                }
                6..=8 => {
                    // Data port traffic, which moves transfers along.
                    let base = [P, S][(v >> 4) as usize & 1];
                    for _ in 0..(v >> 20) % 600 {
                        if v & 0x40 != 0 {
                            r.inw(base);
                        } else {
                            r.outw(base, v as u16);
                        }
                    }
                }
                9 => {
                    let base = [P, S][(v >> 4) as usize & 1];
                    let cmd = commands[(v >> 8) as usize % commands.len()];
                    r.outb(base + 7, cmd);
                }
                10 => {
                    // A random packet with a plausible opcode.
                    let base = [P, S][(v >> 4) as usize & 1];
                    let ops = [
                        0x00, 0x03, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x43, 0x46, 0x4a, 0x51,
                        0x5a, 0xa8, 0xbb, 0xbd, 0xbe,
                    ];
                    r.outb(base + 1, (v >> 40) as u8 & 1);
                    r.outb(base + 4, (v >> 32) as u8);
                    r.outb(base + 5, (v >> 48) as u8);
                    r.outb(base + 7, 0xa0);
                    let mut p = rng.next_u64().to_le_bytes().to_vec();
                    p.extend(&rng.next_u64().to_le_bytes()[..4]);
                    p[0] = ops[(v >> 12) as usize % ops.len()];
                    r.write_bytes(base, &p);
                }
                11 | 12 => {
                    // Bus master registers, PRD tables anywhere.
                    let off = (v >> 8) % 16;
                    r.bm_write(off, &bytes[4..4 + len]);
                }
                13 => {
                    let table = (v >> 8) % (1 << 20);
                    let n = 1 + (v >> 40) as usize % 6;
                    let e: Vec<_> = (0..n)
                        .map(|_| {
                            let x = rng.next_u64();
                            ((x as u32) % (1 << 21), (x >> 32) as u32, x >> 63 != 0)
                        })
                        .collect();
                    let _ = r.mem.write(table, &[]);
                    let mut t = Vec::new();
                    for &(a, l, eot) in &e {
                        t.extend(a.to_le_bytes());
                        t.extend((l as u16).to_le_bytes());
                        t.extend([0, if eot { 0x80 } else { 0 }]);
                    }
                    let _ = r.mem.write(table, &t);
                    r.bm_write(4 + 8 * ((v >> 7) & 1), &(table as u32).to_le_bytes());
                }
                14 => {
                    let mut ide = r.ide.lock().unwrap();
                    match (v >> 8) % 4 {
                        0 => {
                            let _ = ide.eject(1, 0, v & 0x1000 != 0);
                        }
                        1 => {
                            let _ = ide.change_medium(1, 0, Some(image(CD_BLOCKS, 2048)));
                        }
                        2 => {
                            let mut d = [0u8; 4];
                            ide.config_read(((v >> 16) % 256) as usize & !3, &mut d);
                            ide.config_write(((v >> 24) % 256) as usize, &bytes[..len]);
                        }
                        _ => {
                            if round % 1000 == 0 {
                                ide.reset();
                            }
                        }
                    }
                }
                _ => {
                    let mut ide = r.ide.lock().unwrap();
                    let mut d = [0u8; 4];
                    ide.region_read(4, (v >> 8) % 20, &mut d[..len]);
                }
            }
            let ide = r.ide.lock().unwrap();
            for ch in &ide.channels {
                if let Some(x) = &ch.xfer {
                    assert!(x.buf.len() <= CHUNK && x.pos <= x.buf.len());
                }
            }
        }
    }
}
