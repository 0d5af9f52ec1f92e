//! Linux x86 boot protocol loader for bzImage kernels.
//!
//! Follows the kernel's `Documentation/arch/x86/boot.rst` (boot protocol up
//! to 2.15) and `Documentation/arch/x86/zero-page.rst`: the real-mode setup
//! code is not run; instead the loader fills in the zero page
//! (`struct boot_params`) itself and enters the kernel through the 64-bit
//! boot protocol (or the 32-bit one for kernels without a 64-bit entry).
//!
//! Guest physical layout used here:
//!
//! | address | contents |
//! | --- | --- |
//! | `0x500` | GDT: null, null, `__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18 |
//! | `0x7000` | zero page (`struct boot_params`, 4 KiB) |
//! | `0x8000..0x9000` | initial stack (not required by the protocol) |
//! | `0x9000` | PML4 |
//! | `0xA000` | PDPT |
//! | `0xB000..0xF000` | four page directories, 2 MiB pages, identity map of 4 GiB |
//! | `0x20000` | kernel command line |
//! | `0x100000` | protected-mode kernel |
//! | below min(RAM, 3 GiB, `initrd_addr_max`) | initrd, page-aligned, as high as possible |
//!
//! Memory map assumption: the machine has a 1 GiB PCI hole from 3 GiB to
//! 4 GiB, and guest RAM beyond the first 3 GiB is (or will be) mapped at
//! 4 GiB. The e820 table written here describes exactly that.

use super::BootState;
use crate::cpu::{attr, cr0, cr4, efer, DescriptorTable, Segment};
use crate::memory::GuestRam;
use thiserror::Error;

/// Where the protected-mode kernel is loaded (boot.rst: "loaded at 0x100000").
pub const KERNEL_ADDR: u64 = 0x10_0000;
/// Zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// GDT.
pub const GDT_ADDR: u64 = 0x500;
/// PML4 of the identity map (its PDPT and page directories follow).
pub const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xA000;
const PD_ADDR: u64 = 0xB000;
const STACK_TOP: u64 = 0x9000;
/// Start of the PCI hole: RAM below it is mapped 1:1, RAM above it moves to 4 GiB.
pub const PCI_HOLE_START: u64 = 0xC000_0000;
const FOUR_GIB: u64 = 1 << 32;
/// End of conventional memory that the e820 table reports as usable.
const LOW_RAM_END: u64 = 0x9_fc00;
/// Command lines may use memory from `CMDLINE_ADDR` to the EBDA.
const CMDLINE_MAX: u64 = LOW_RAM_END - CMDLINE_ADDR;

/// Oldest protocol accepted: 2.06 adds `cmdline_size`.
pub const MIN_VERSION: u16 = 0x0206;

// Setup header offsets in the image and in the zero page (boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const VID_MODE: usize = 0x1fa;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// The zero page's copy of the setup header ends where `edd_mbr_sig_buffer`
/// starts (zero-page.rst).
const HEADER_LIMIT: usize = 0x290;

// Zero page fields outside the setup header (zero-page.rst).
const EXT_RAMDISK_IMAGE: u64 = 0x0c0;
const EXT_RAMDISK_SIZE: u64 = 0x0c4;
const EXT_CMD_LINE_PTR: u64 = 0x0c8;
const E820_ENTRIES: u64 = 0x1e8;
const E820_TABLE: u64 = 0x2d0;
const E820_MAX: usize = 128;

/// `loadflags` bit 0: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0: the kernel has the legacy 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Errors loading a Linux kernel. Messages name the file.
#[derive(Debug, Error)]
pub enum LinuxBootError {
    /// No setup header signature or boot flag.
    #[error(
        "{0}: not a Linux bzImage (no \"HdrS\" setup header at offset 0x202 \
         and boot flag 0xAA55 at 0x1FE)"
    )]
    NotBzImage(String),
    /// Protocol version below [`MIN_VERSION`].
    #[error(
        "{name}: Linux boot protocol {major}.{minor:02} is too old: version 2.06 or newer \
         is required"
    )]
    TooOld {
        /// File name.
        name: String,
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The file ends before the data its header describes.
    #[error("{0}: truncated kernel image: {1}")]
    Truncated(String, String),
    /// The header is inconsistent or asks for something unsupported.
    #[error("{0}: invalid kernel image: {1}")]
    Invalid(String, String),
    /// The kernel (with its decompression area) does not fit in RAM.
    #[error(
        "{name}: the kernel needs guest RAM up to {needed:#x} ({} MiB) below 3 GiB, \
         but only {available:#x} ({} MiB) is available",
        needed.div_ceil(1 << 20), available >> 20
    )]
    KernelTooLarge {
        /// File name.
        name: String,
        /// End of the memory the kernel needs.
        needed: u64,
        /// End of usable RAM below the PCI hole.
        available: u64,
    },
    /// The initrd does not fit between the kernel and its highest address.
    #[error(
        "{name}: the initrd of {size} bytes does not fit in guest RAM: it must lie \
         between {low:#x} (end of the kernel) and {high:#x}, which leaves {available} bytes"
    )]
    InitrdTooLarge {
        /// Kernel file name.
        name: String,
        /// Initrd size.
        size: u64,
        /// Lowest address it may use.
        low: u64,
        /// Address its last byte must stay below.
        high: u64,
        /// Bytes in between.
        available: u64,
    },
    /// The command line exceeds what the kernel accepts.
    #[error(
        "{name}: the kernel command line is {len} bytes long, but this kernel accepts \
         at most {max} bytes"
    )]
    CmdlineTooLong {
        /// File name.
        name: String,
        /// Command line length.
        len: usize,
        /// Maximum (`cmdline_size`, or the room at 0x20000).
        max: u64,
    },
}

fn rd8(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}
fn rd16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn rd32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn rd64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// True if `image` looks like a bzImage: boot flag 0xAA55 at 0x1FE and the
/// "HdrS" signature at 0x202.
pub fn is_bzimage(image: &[u8]) -> bool {
    rd16(image, BOOT_FLAG) == Some(0xaa55) && image.get(HEADER..HEADER + 4) == Some(b"HdrS")
}

/// The setup header fields the loader uses.
#[derive(Debug, Clone)]
pub struct SetupHeader {
    /// Protocol version (major << 8 | minor).
    pub version: u16,
    /// Size of the real-mode setup code in bytes, boot sector included.
    pub setup_size: usize,
    /// Size of the protected-mode kernel in bytes (`syssize` × 16).
    pub kernel_size: u64,
    /// `loadflags`.
    pub loadflags: u8,
    /// `xloadflags` (0 before protocol 2.12).
    pub xloadflags: u16,
    /// Longest command line, terminating NUL excluded.
    pub cmdline_size: u32,
    /// Required alignment of a relocated kernel.
    pub kernel_alignment: u32,
    /// The kernel may be loaded at any `kernel_alignment`-aligned address.
    pub relocatable: bool,
    /// Preferred load address (0x100000 before protocol 2.10).
    pub pref_address: u64,
    /// Memory the kernel needs from its run address on while it decompresses
    /// (the protected-mode size before protocol 2.10).
    pub init_size: u64,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// End of the setup header in the file (0x202 + the byte at 0x201),
    /// capped at the zero page's header area.
    pub header_end: usize,
}

impl SetupHeader {
    /// True if the kernel has a 64-bit entry point at load address + 0x200.
    pub fn has_64bit_entry(&self) -> bool {
        self.xloadflags & XLF_KERNEL_64 != 0
    }
}

/// Parses and checks the setup header of `image`.
pub fn parse_header(name: &str, image: &[u8]) -> Result<SetupHeader, LinuxBootError> {
    if !is_bzimage(image) {
        return Err(LinuxBootError::NotBzImage(name.to_string()));
    }
    let truncated = |what: &str| LinuxBootError::Truncated(name.to_string(), what.to_string());
    let version = rd16(image, VERSION).ok_or_else(|| truncated("no protocol version"))?;
    if version < MIN_VERSION {
        return Err(LinuxBootError::TooOld {
            name: name.to_string(),
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    let sects = match rd8(image, SETUP_SECTS) {
        Some(0) | None => 4,
        Some(n) => n as usize,
    };
    let setup_size = (sects + 1) * 512;
    if image.len() < setup_size {
        return Err(truncated(&format!(
            "the setup code is {setup_size:#x} bytes but the file has only {:#x}",
            image.len()
        )));
    }
    // The whole setup area is present, so every header field below
    // 0x290 can be read; `field` still guards against header offsets beyond
    // a short setup area.
    let header_end = (HEADER + rd8(image, JUMP + 1).unwrap_or(0) as usize).min(HEADER_LIMIT);
    let f16 = |off| rd16(image, off).ok_or_else(|| truncated("setup header"));
    let f32 = |off| rd32(image, off).ok_or_else(|| truncated("setup header"));
    let at_least = |v: u16| version >= v;
    let loadflags = rd8(image, LOADFLAGS).ok_or_else(|| truncated("setup header"))?;
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxBootError::Invalid(
            name.to_string(),
            "a zImage (loaded at 0x10000, loadflags bit 0 clear) is not supported; \
             use a bzImage"
                .to_string(),
        ));
    }
    let kernel_size = f32(SYSSIZE)? as u64 * 16;
    if kernel_size == 0 {
        return Err(LinuxBootError::Invalid(
            name.to_string(),
            "syssize is 0: there is no protected-mode kernel".to_string(),
        ));
    }
    let available = (image.len() - setup_size) as u64;
    if kernel_size > available {
        return Err(truncated(&format!(
            "the protected-mode kernel is {kernel_size:#x} bytes (syssize) but the file \
             holds only {available:#x} after the setup code"
        )));
    }
    let relocatable = rd8(image, RELOCATABLE_KERNEL).ok_or_else(|| truncated("setup header"))? != 0;
    let kernel_alignment = f32(KERNEL_ALIGNMENT)?;
    if relocatable && !kernel_alignment.is_power_of_two() {
        return Err(LinuxBootError::Invalid(
            name.to_string(),
            format!("kernel_alignment {kernel_alignment:#x} is not a power of two"),
        ));
    }
    let (pref_address, init_size) = if at_least(0x020a) {
        let pref = rd64(image, PREF_ADDRESS).ok_or_else(|| truncated("setup header"))?;
        (pref, f32(INIT_SIZE)? as u64)
    } else {
        (KERNEL_ADDR, kernel_size)
    };
    Ok(SetupHeader {
        version,
        setup_size,
        kernel_size,
        loadflags,
        xloadflags: if at_least(0x020c) {
            f16(XLOADFLAGS)?
        } else {
            0
        },
        cmdline_size: f32(CMDLINE_SIZE)?,
        kernel_alignment,
        relocatable,
        pref_address: if pref_address == 0 {
            KERNEL_ADDR
        } else {
            pref_address
        },
        init_size,
        initrd_addr_max: f32(INITRD_ADDR_MAX)?,
        header_end,
    })
}

/// The end of the memory the kernel may use while it starts: the loaded
/// image, and `init_size` bytes from the address it decompresses to. A
/// relocatable kernel runs at its load address rounded up to
/// `kernel_alignment`, but not below `pref_address` (the kernel's
/// `LOAD_PHYSICAL_ADDR`); a fixed one runs at `pref_address`.
fn kernel_end(hdr: &SetupHeader) -> Option<u64> {
    let run = if hdr.relocatable {
        let mask = hdr.kernel_alignment as u64 - 1;
        (KERNEL_ADDR.checked_add(mask)? & !mask).max(hdr.pref_address)
    } else {
        hdr.pref_address
    };
    let end = run.checked_add(hdr.init_size)?;
    Some(end.max(KERNEL_ADDR + hdr.kernel_size))
}

/// The e820 map for `ram_size` bytes of RAM (see the module documentation
/// for the PCI hole assumption): (base, length, type).
pub fn e820_map(ram_size: u64) -> Vec<(u64, u64, u32)> {
    let below = ram_size.min(PCI_HOLE_START);
    let mut map = vec![
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, 0xa_0000 - LOW_RAM_END, E820_RESERVED),
        (0xf_0000, 0x1_0000, E820_RESERVED),
    ];
    if below > KERNEL_ADDR {
        map.push((KERNEL_ADDR, below - KERNEL_ADDR, E820_RAM));
    }
    if ram_size > below {
        map.push((FOUR_GIB, ram_size - below, E820_RAM));
    }
    map
}

/// Writes the GDT (null, null, code at 0x10, data at 0x18) and returns the
/// code and data segments. `long` selects a 64-bit code segment.
fn write_gdt(ram: &GuestRam, long: bool) -> (Segment, Segment) {
    let code: u64 = if long {
        0x00af_9b00_0000_ffff
    } else {
        0x00cf_9b00_0000_ffff
    };
    let data: u64 = 0x00cf_9300_0000_ffff;
    for (i, d) in [0u64, 0, code, data].iter().enumerate() {
        ram.write_bytes(GDT_ADDR + 8 * i as u64, &d.to_le_bytes());
    }
    let mut cs = Segment::flat32(0x10, true);
    cs.attr |= attr::ACCESSED;
    if long {
        cs.attr = (cs.attr & !attr::DB) | attr::L;
    }
    let mut ds = Segment::flat32(0x18, false);
    ds.attr |= attr::ACCESSED;
    (cs, ds)
}

/// Builds an identity map of the first 4 GiB with 2 MiB pages and returns
/// the CR3 value.
fn write_page_tables(ram: &GuestRam) -> u64 {
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let mut pml4 = [0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_ADDR | P_RW).to_le_bytes());
    ram.write_bytes(PML4_ADDR, &pml4);
    let mut pdpt = [0u8; 4096];
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 0x1000;
        pdpt[8 * i as usize..8 * i as usize + 8].copy_from_slice(&(pd | P_RW).to_le_bytes());
        let mut dir = [0u8; 4096];
        for j in 0..512u64 {
            let addr = ((i << 9) + j) << 21;
            dir[8 * j as usize..8 * j as usize + 8]
                .copy_from_slice(&(addr | P_RW | PS).to_le_bytes());
        }
        ram.write_bytes(pd, &dir);
    }
    ram.write_bytes(PDPT_ADDR, &pdpt);
    PML4_ADDR
}

/// Loads the bzImage `image` into `ram` with `cmdline` and an optional
/// initrd, builds the zero page, and returns the entry state: 64-bit long
/// mode at load address + 0x200 if the kernel supports it, else 32-bit
/// protected mode at the load address; RSI points at the zero page.
pub fn load(
    ram: &GuestRam,
    name: &str,
    image: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<BootState, LinuxBootError> {
    let hdr = parse_header(name, image)?;
    let cmd_max = (hdr.cmdline_size as u64).min(CMDLINE_MAX - 1);
    if cmdline.len() as u64 > cmd_max {
        return Err(LinuxBootError::CmdlineTooLong {
            name: name.to_string(),
            len: cmdline.len(),
            max: cmd_max,
        });
    }
    let below = ram.size().min(PCI_HOLE_START);
    let kend = kernel_end(&hdr).unwrap_or(u64::MAX);
    if kend > below {
        return Err(LinuxBootError::KernelTooLarge {
            name: name.to_string(),
            needed: kend,
            available: below,
        });
    }
    // Initrd: page-aligned, as high as allowed, above the kernel's area.
    let ramdisk = match initrd {
        Some(data) if !data.is_empty() => {
            let size = data.len() as u64;
            let low = kend.next_multiple_of(0x1000);
            let high = (hdr.initrd_addr_max as u64 + 1).min(below);
            let at = high.checked_sub(size).map(|a| a & !0xfff);
            match at {
                Some(at) if at >= low => {
                    ram.write_bytes(at, data);
                    Some((at, size))
                }
                _ => {
                    return Err(LinuxBootError::InitrdTooLarge {
                        name: name.to_string(),
                        size,
                        low,
                        high,
                        available: high.saturating_sub(low),
                    })
                }
            }
        }
        _ => None,
    };
    // Protected-mode kernel (the file may carry more after it, e.g. a
    // signature; only syssize × 16 bytes belong to the kernel).
    let start = hdr.setup_size;
    let end = start + hdr.kernel_size as usize;
    ram.write_bytes(KERNEL_ADDR, &image[start..end]);

    // Zero page: zeroed, with the setup header copied to 0x1f1.
    let mut zp = vec![0u8; 4096];
    zp[SETUP_SECTS..hdr.header_end].copy_from_slice(&image[SETUP_SECTS..hdr.header_end]);
    let put = |zp: &mut [u8], off: usize, bytes: &[u8]| {
        zp[off..off + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut zp, VID_MODE, &0xffffu16.to_le_bytes());
    zp[TYPE_OF_LOADER] = 0xff;
    put(&mut zp, CMD_LINE_PTR, &(CMDLINE_ADDR as u32).to_le_bytes());
    put(&mut zp, EXT_CMD_LINE_PTR as usize, &0u32.to_le_bytes());
    let (rd_at, rd_size) = ramdisk.unwrap_or((0, 0));
    put(&mut zp, RAMDISK_IMAGE, &(rd_at as u32).to_le_bytes());
    put(&mut zp, RAMDISK_SIZE, &(rd_size as u32).to_le_bytes());
    put(
        &mut zp,
        EXT_RAMDISK_IMAGE as usize,
        &((rd_at >> 32) as u32).to_le_bytes(),
    );
    put(
        &mut zp,
        EXT_RAMDISK_SIZE as usize,
        &((rd_size >> 32) as u32).to_le_bytes(),
    );
    let map = e820_map(ram.size());
    debug_assert!(map.len() <= E820_MAX);
    zp[E820_ENTRIES as usize] = map.len() as u8;
    for (i, (base, len, ty)) in map.iter().enumerate() {
        let off = E820_TABLE as usize + 20 * i;
        put(&mut zp, off, &base.to_le_bytes());
        put(&mut zp, off + 8, &len.to_le_bytes());
        put(&mut zp, off + 16, &ty.to_le_bytes());
    }
    ram.write_bytes(ZERO_PAGE_ADDR, &zp);

    ram.write_bytes(CMDLINE_ADDR, cmdline.as_bytes());
    ram.write_bytes(CMDLINE_ADDR + cmdline.len() as u64, &[0]);

    let long = hdr.has_64bit_entry();
    let (cs, ds) = write_gdt(ram, long);
    let mut state = BootState {
        rflags: 2,
        seg: [ds, cs, ds, ds, ds, ds],
        gdtr: DescriptorTable {
            base: GDT_ADDR,
            limit: 4 * 8 - 1,
        },
        ..Default::default()
    };
    state.gpr[4] = STACK_TOP;
    state.gpr[6] = ZERO_PAGE_ADDR;
    if long {
        state.rip = KERNEL_ADDR + 0x200;
        state.cr3 = write_page_tables(ram);
        state.cr0 = cr0::PE | cr0::ET | cr0::PG;
        state.cr4 = cr4::PAE;
        state.efer = efer::LME | efer::LMA;
    } else {
        // 32-bit protocol: paging off; EBP, EDI and EBX zero (they are).
        state.rip = KERNEL_ADDR;
        state.cr0 = cr0::PE | cr0::ET;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETUP: usize = 5 * 512;
    const PM_SIZE: usize = 0x1000;

    /// A minimal protocol-2.15 bzImage: 4 setup sectors, a 4 KiB
    /// protected-mode kernel starting with a marker.
    fn bzimage() -> Vec<u8> {
        let mut img = vec![0u8; SETUP + PM_SIZE];
        let w16 = |img: &mut Vec<u8>, off: usize, v: u16| {
            img[off..off + 2].copy_from_slice(&v.to_le_bytes())
        };
        let w32 = |img: &mut Vec<u8>, off: usize, v: u32| {
            img[off..off + 4].copy_from_slice(&v.to_le_bytes())
        };
        img[SETUP_SECTS] = 4;
        w32(&mut img, SYSSIZE, (PM_SIZE / 16) as u32);
        w16(&mut img, BOOT_FLAG, 0xaa55);
        img[JUMP] = 0xeb;
        img[JUMP + 1] = 0x6a;
        img[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        w16(&mut img, VERSION, 0x020f);
        img[LOADFLAGS] = LOADED_HIGH;
        w32(&mut img, INITRD_ADDR_MAX, 0x7fff_ffff);
        w32(&mut img, KERNEL_ALIGNMENT, 0x20_0000);
        img[RELOCATABLE_KERNEL] = 1;
        w16(&mut img, XLOADFLAGS, 0x3);
        w32(&mut img, CMDLINE_SIZE, 2047);
        img[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        w32(&mut img, INIT_SIZE, 0x80_0000);
        img[SETUP..SETUP + 4].copy_from_slice(b"KERN");
        img
    }

    fn rd_ram(ram: &GuestRam, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        assert!(ram.read_bytes(at, &mut b));
        b
    }
    fn rd_u64(ram: &GuestRam, at: u64) -> u64 {
        u64::from_le_bytes(rd_ram(ram, at, 8).try_into().unwrap())
    }
    fn rd_u16(ram: &GuestRam, at: u64) -> u16 {
        u16::from_le_bytes(rd_ram(ram, at, 2).try_into().unwrap())
    }

    fn e820(ram: &GuestRam) -> Vec<(u64, u64, u32)> {
        let n = rd_ram(ram, ZERO_PAGE_ADDR + E820_ENTRIES, 1)[0] as u64;
        (0..n)
            .map(|i| {
                let e = ZERO_PAGE_ADDR + E820_TABLE + 20 * i;
                (rd_u64(ram, e), rd_u64(ram, e + 8), ram.read_u32(e + 16))
            })
            .collect()
    }

    /// Walks the guest page tables for `va` (4-level, 2 MiB pages).
    fn translate(ram: &GuestRam, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3 & !0xfff;
        for level in [39u32, 30, 21] {
            let e = rd_u64(ram, table + 8 * ((va >> level) & 0x1ff));
            if e & 1 == 0 {
                return None;
            }
            if level == 21 {
                assert_ne!(e & 0x80, 0, "2 MiB page expected");
                return Some((e & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff));
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        None
    }

    #[test]
    fn detects_bzimage() {
        assert!(is_bzimage(&bzimage()));
        assert!(!is_bzimage(b"\x7fELF"));
        let mut k = bzimage();
        k[BOOT_FLAG] = 0;
        assert!(!is_bzimage(&k));
    }

    #[test]
    fn loads_synthetic_kernel_64bit() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let initrd: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let st = load(&ram, "k", &bzimage(), "console=ttyS0 quiet", Some(&initrd)).unwrap();
        // Kernel at 1 MiB.
        assert_eq!(rd_ram(&ram, KERNEL_ADDR, 4), b"KERN");
        // Zero page: header copy, loader fields.
        let zp = ZERO_PAGE_ADDR;
        assert_eq!(rd_ram(&ram, zp + HEADER as u64, 4), b"HdrS");
        assert_eq!(rd_u16(&ram, zp + VERSION as u64), 0x020f);
        assert_eq!(rd_u16(&ram, zp + BOOT_FLAG as u64), 0xaa55);
        assert_eq!(ram.read_u32(zp + INIT_SIZE as u64), 0x80_0000);
        assert_eq!(rd_ram(&ram, zp + TYPE_OF_LOADER as u64, 1)[0], 0xff);
        assert_eq!(rd_ram(&ram, zp + 0x1ef, 1)[0], 0, "sentinel");
        // Command line.
        assert_eq!(ram.read_u32(zp + CMD_LINE_PTR as u64), CMDLINE_ADDR as u32);
        assert_eq!(ram.read_u32(zp + EXT_CMD_LINE_PTR), 0);
        assert_eq!(rd_ram(&ram, CMDLINE_ADDR, 20), b"console=ttyS0 quiet\0");
        // Initrd: page aligned, as high as possible, above the kernel's
        // decompression area (16 MiB + 8 MiB).
        let at = ram.read_u32(zp + RAMDISK_IMAGE as u64) as u64;
        assert_eq!(ram.read_u32(zp + RAMDISK_SIZE as u64), 5000);
        assert_eq!(ram.read_u32(zp + EXT_RAMDISK_IMAGE), 0);
        assert_eq!(ram.read_u32(zp + EXT_RAMDISK_SIZE), 0);
        assert_eq!(at % 4096, 0);
        assert_eq!(at, (64 << 20) - 8192);
        assert!(at >= 24 << 20);
        assert_eq!(rd_ram(&ram, at, 5000), initrd);
        // e820.
        assert_eq!(
            e820(&ram),
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0xf0000, 0x10000, 2),
                (0x10_0000, (64 << 20) - 0x10_0000, 1),
            ]
        );
        // Entry state.
        assert_eq!(st.rip, KERNEL_ADDR + 0x200);
        assert_eq!(st.gpr[6], ZERO_PAGE_ADDR);
        assert_eq!(st.rflags & (1 << 9), 0, "interrupts off");
        assert_eq!(st.cr0, cr0::PE | cr0::PG | cr0::ET);
        assert_eq!(st.cr4, cr4::PAE);
        assert_eq!(st.efer, efer::LME | efer::LMA);
        assert_eq!(st.cr3, PML4_ADDR);
        let cs = st.seg[1];
        assert_eq!(cs.selector, 0x10);
        assert_ne!(cs.attr & attr::L, 0);
        assert_eq!(cs.attr & attr::DB, 0);
        for i in [0, 2, 3] {
            assert_eq!(st.seg[i].selector, 0x18);
        }
        assert_eq!(st.gdtr.base, GDT_ADDR);
        assert_eq!(st.gdtr.limit, 31);
        assert_eq!(rd_u64(&ram, GDT_ADDR + 0x10), 0x00af_9b00_0000_ffff);
        assert_eq!(rd_u64(&ram, GDT_ADDR + 0x18), 0x00cf_9300_0000_ffff);
        // Identity map of the first 4 GiB.
        for va in [
            0u64,
            ZERO_PAGE_ADDR,
            KERNEL_ADDR + 0x200,
            at,
            0x4020_1234,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&ram, st.cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&ram, st.cr3, 1 << 32), None);
    }

    #[test]
    fn e820_splits_around_the_pci_hole() {
        // 5 GiB of RAM: 3 GiB below the hole, 2 GiB from 4 GiB. The mapping
        // is lazy, so this costs only the pages written.
        let ram = GuestRam::new(5 << 30).unwrap();
        let st = load(&ram, "k", &bzimage(), "", Some(b"x")).unwrap();
        let map = e820(&ram);
        assert_eq!(map[3], (0x10_0000, 0xc000_0000 - 0x10_0000, 1));
        assert_eq!(map[4], (1 << 32, 2 << 30, 1));
        // The initrd goes below 2 GiB (initrd_addr_max 0x7fffffff).
        let at = ram.read_u32(ZERO_PAGE_ADDR + RAMDISK_IMAGE as u64);
        assert_eq!(at, 0x7fff_f000);
        assert_eq!(st.rip, 0x10_0200);
    }

    #[test]
    fn initrd_stays_below_3gib_and_initrd_addr_max() {
        let ram = GuestRam::new(4 << 30).unwrap();
        let mut k = bzimage();
        k[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        load(&ram, "k", &k, "", Some(&[1u8; 0x1800])).unwrap();
        let at = ram.read_u32(ZERO_PAGE_ADDR + RAMDISK_IMAGE as u64);
        assert_eq!(at, 0xc000_0000 - 0x2000);
        let map = e820(&ram);
        assert_eq!(map[4], (1 << 32, 1 << 30, 1));
    }

    #[test]
    fn kernel_without_64bit_entry_uses_32bit_protocol() {
        let ram = GuestRam::new(32 << 20).unwrap();
        let mut k = bzimage();
        k[XLOADFLAGS] = 0;
        let st = load(&ram, "k", &k, "", None).unwrap();
        assert_eq!(st.rip, KERNEL_ADDR);
        assert_eq!(st.gpr[6], ZERO_PAGE_ADDR);
        assert_eq!(st.gpr[3] | st.gpr[5] | st.gpr[7], 0);
        assert_eq!(st.cr0, cr0::PE | cr0::ET);
        assert_eq!(st.efer, 0);
        assert_eq!(st.seg[1].selector, 0x10);
        assert_ne!(st.seg[1].attr & attr::DB, 0);
        assert_eq!(rd_u64(&ram, GDT_ADDR + 0x10), 0x00cf_9b00_0000_ffff);
        assert_eq!(ram.read_u32(ZERO_PAGE_ADDR + RAMDISK_IMAGE as u64), 0);
    }

    #[test]
    fn error_cases() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let e = load(&ram, "a.txt", b"hello", "", None).unwrap_err();
        assert!(matches!(e, LinuxBootError::NotBzImage(_)));
        assert!(e.to_string().starts_with("a.txt: not a Linux bzImage"));

        let mut k = bzimage();
        k.truncate(SETUP + 100);
        let e = load(&ram, "k", &k, "", None).unwrap_err();
        assert!(matches!(e, LinuxBootError::Truncated(..)), "{e}");
        assert!(e.to_string().contains("syssize"), "{e}");
        let e = load(&ram, "k", &bzimage()[..0x300], "", None).unwrap_err();
        assert!(matches!(e, LinuxBootError::Truncated(..)), "{e}");

        let mut k = bzimage();
        k[VERSION..VERSION + 2].copy_from_slice(&0x0204u16.to_le_bytes());
        let e = load(&ram, "old", &k, "", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "old: Linux boot protocol 2.04 is too old: version 2.06 or newer is required"
        );

        // An initrd larger than RAM.
        let big = vec![0u8; 65 << 20];
        let e = load(&ram, "k", &bzimage(), "", Some(&big)).unwrap_err();
        assert!(matches!(e, LinuxBootError::InitrdTooLarge { .. }), "{e}");
        assert!(
            e.to_string().contains(&format!("{} bytes", 65 << 20)),
            "{e}"
        );

        let long = "x".repeat(2048);
        let e = load(&ram, "k", &bzimage(), &long, None).unwrap_err();
        assert!(matches!(
            e,
            LinuxBootError::CmdlineTooLong {
                len: 2048,
                max: 2047,
                ..
            }
        ));
        assert!(load(&ram, "k", &bzimage(), &long[..2047], None).is_ok());

        // Kernel larger than RAM: 16 MiB RAM, the kernel needs 24 MiB.
        let small = GuestRam::new(16 << 20).unwrap();
        let e = load(&small, "k", &bzimage(), "", None).unwrap_err();
        assert!(
            e.to_string().contains("up to 0x1800000 (24 MiB)")
                && e.to_string().contains("only 0x1000000 (16 MiB)"),
            "{e}"
        );
    }

    /// The real Debian kernel, if there is one: `VIREO_TEST_BZIMAGE`, else
    /// `/boot/vmlinuz-*`.
    #[test]
    fn loads_real_kernel_if_present() {
        let path = match std::env::var_os("VIREO_TEST_BZIMAGE") {
            Some(p) => std::path::PathBuf::from(p),
            None => {
                let found = std::fs::read_dir("/boot").ok().and_then(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("vmlinuz-"))
                        })
                        .max()
                });
                match found {
                    Some(p) => p,
                    None => {
                        eprintln!(
                            "skipped: no real kernel (set VIREO_TEST_BZIMAGE or install \
                             one in /boot/vmlinuz-*)"
                        );
                        return;
                    }
                }
            }
        };
        let image = match std::fs::read(&path) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("skipped: cannot read {}: {e}", path.display());
                return;
            }
        };
        let name = path.display().to_string();
        assert!(is_bzimage(&image), "{name}");
        let hdr = parse_header(&name, &image).unwrap();
        assert!(hdr.version >= 0x020f, "{name}: version {:#x}", hdr.version);
        assert!(hdr.has_64bit_entry());
        let ram = GuestRam::new(512 << 20).unwrap();
        let st = load(&ram, &name, &image, "console=ttyS0", Some(b"initrd")).unwrap();
        assert_eq!(st.rip, KERNEL_ADDR + 0x200);
        assert_eq!(
            rd_ram(&ram, KERNEL_ADDR, 64),
            image[hdr.setup_size..hdr.setup_size + 64]
        );
        let at = ram.read_u32(ZERO_PAGE_ADDR + RAMDISK_IMAGE as u64) as u64;
        assert_eq!(at, (512 << 20) - 4096);
        eprintln!(
            "{name}: protocol {}.{:02}, init_size {:#x}, loaded",
            hdr.version >> 8,
            hdr.version & 0xff,
            hdr.init_size
        );
    }

    /// Random byte flips and truncations of the synthetic image give errors
    /// or successful loads, never panics or out-of-range writes.
    #[test]
    fn mutated_images_never_panic() {
        let ram = GuestRam::new(32 << 20).unwrap();
        let seed = bzimage();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut ok = 0;
        for _ in 0..20_000 {
            let mut img = seed.clone();
            for _ in 0..(rnd() % 8 + 1) {
                // Mostly hit the setup header, where the fields are.
                let pos = if rnd() % 4 == 0 {
                    (rnd() % img.len() as u64) as usize
                } else {
                    SETUP_SECTS + (rnd() % (HEADER_LIMIT - SETUP_SECTS) as u64) as usize
                };
                img[pos] = rnd() as u8;
            }
            if rnd() % 4 == 0 {
                let keep = (rnd() % img.len() as u64) as usize;
                img.truncate(keep);
            }
            let initrd = vec![0u8; (rnd() % 0x4000) as usize];
            if load(&ram, "fuzz", &img, "console=ttyS0", Some(&initrd)).is_ok() {
                ok += 1;
            }
        }
        eprintln!("{ok} of 20000 mutated images loaded");
        assert!(ok > 0, "some mutations should still load");
    }
}
