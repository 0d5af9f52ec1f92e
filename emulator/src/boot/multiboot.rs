//! Multiboot (version 0.6.96) kernel loading: ELF32/ELF64 images and the
//! a.out kludge (header flag 16), modules, command line, memory map.
//!
//! Follows the Multiboot Specification §3.1 (OS image format), §3.2 (machine
//! state) and §3.3 (boot information format).

use super::BootState;
use crate::memory::GuestRam;
use thiserror::Error;

/// Header magic (§3.1.2).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Value of EAX at entry (§3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
const SEARCH_LEN: usize = 8192;

/// Errors loading a multiboot kernel. Messages name the file.
#[derive(Debug, Error)]
pub enum MultibootError {
    /// No header in the first 8 KiB.
    #[error(
        "{0}: not a kernel Vireo can boot: neither a Linux bzImage (no \"HdrS\" boot header) \
         nor a multiboot kernel (no multiboot header in its first 8 KiB)"
    )]
    NoHeader(String),
    /// The header or the ELF image is inconsistent.
    #[error("{0}: invalid kernel image: {1}")]
    Invalid(String, String),
    /// A required feature bit is unsupported.
    #[error("{0}: kernel requires unsupported multiboot features (flags {1:#x})")]
    Unsupported(String, u32),
    /// Does not fit in guest memory.
    #[error("{0}: does not fit in guest memory ({1})")]
    TooLarge(String, String),
}

/// A module to load after the kernel (QEMU's `-initrd "file args,..."`).
#[derive(Debug, Clone)]
pub struct Module {
    /// File contents.
    pub data: Vec<u8>,
    /// Its command line (path and arguments).
    pub cmdline: String,
}

fn rd32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn rd16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn rd64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Finds the multiboot header: returns its offset in the file.
pub fn find_header(image: &[u8]) -> Option<usize> {
    let end = image.len().min(SEARCH_LEN);
    (0..end.saturating_sub(11)).step_by(4).find(|&off| {
        let (Some(magic), Some(flags), Some(sum)) =
            (rd32(image, off), rd32(image, off + 4), rd32(image, off + 8))
        else {
            return false;
        };
        magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
    })
}

/// True if `image` carries a multiboot header.
pub fn is_multiboot(image: &[u8]) -> bool {
    find_header(image).is_some()
}

struct Loaded {
    entry: u32,
    /// First byte after everything loaded (kernel + bss).
    end: u64,
}

fn place(
    ram: &GuestRam,
    name: &str,
    addr: u64,
    data: &[u8],
    memsz: u64,
) -> Result<(), MultibootError> {
    let too_large = || {
        MultibootError::TooLarge(
            name.to_string(),
            format!(
                "segment at {addr:#x} of {memsz:#x} bytes, RAM is {:#x} bytes",
                ram.size()
            ),
        )
    };
    let end = addr
        .checked_add(memsz.max(data.len() as u64))
        .ok_or_else(too_large)?;
    if end > ram.below_4g() || addr < 0x1000 {
        return Err(too_large());
    }
    ram.write_bytes(addr, data);
    let zero_len = memsz.saturating_sub(data.len() as u64);
    if zero_len > 0 {
        let zeros = vec![0u8; zero_len as usize];
        ram.write_bytes(addr + data.len() as u64, &zeros);
    }
    Ok(())
}

fn load_elf(ram: &GuestRam, name: &str, image: &[u8]) -> Result<Loaded, MultibootError> {
    let bad = |m: &str| MultibootError::Invalid(name.to_string(), m.to_string());
    if image.get(0..4) != Some(b"\x7fELF") {
        return Err(bad("neither an ELF file nor an a.out-kludge header"));
    }
    let class64 = match image.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad("unknown ELF class")),
    };
    if image.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF file"));
    }
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            rd64(image, 24).ok_or_else(|| bad("truncated ELF header"))?,
            rd64(image, 32).ok_or_else(|| bad("truncated ELF header"))?,
            rd16(image, 54).ok_or_else(|| bad("truncated ELF header"))? as u64,
            rd16(image, 56).ok_or_else(|| bad("truncated ELF header"))? as u64,
        )
    } else {
        (
            rd32(image, 24).ok_or_else(|| bad("truncated ELF header"))? as u64,
            rd32(image, 28).ok_or_else(|| bad("truncated ELF header"))? as u64,
            rd16(image, 42).ok_or_else(|| bad("truncated ELF header"))? as u64,
            rd16(image, 44).ok_or_else(|| bad("truncated ELF header"))? as u64,
        )
    };
    if phnum == 0 || phentsize < if class64 { 56 } else { 32 } {
        return Err(bad("no program headers"));
    }
    let mut end = 0u64;
    let mut loaded_any = false;
    let mut entry_phys = None;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .filter(|&p| p < image.len() as u64)
            .ok_or_else(|| bad("program header outside the file"))? as usize;
        let field = |o32: usize, o64: usize| -> Result<u64, MultibootError> {
            if class64 {
                rd64(image, ph + o64).ok_or_else(|| bad("truncated program header"))
            } else {
                rd32(image, ph + o32)
                    .map(|v| v as u64)
                    .ok_or_else(|| bad("truncated program header"))
            }
        };
        let p_type = rd32(image, ph).ok_or_else(|| bad("truncated program header"))?;
        if p_type != 1 {
            continue;
        }
        let offset = field(4, 8)?;
        let vaddr = field(8, 16)?;
        let paddr = field(12, 24)?;
        let filesz = field(16, 32)?;
        let memsz = field(20, 40)?;
        if filesz > memsz {
            return Err(bad("segment file size exceeds memory size"));
        }
        let data = offset
            .checked_add(filesz)
            .and_then(|e| image.get(offset as usize..e as usize))
            .ok_or_else(|| bad("segment extends past the end of the file"))?;
        place(ram, name, paddr, data, memsz)?;
        if entry >= vaddr && entry < vaddr.saturating_add(memsz) {
            entry_phys = Some(entry - vaddr + paddr);
        }
        end = end.max(paddr + memsz);
        loaded_any = true;
    }
    if !loaded_any {
        return Err(bad("no loadable segments"));
    }
    let entry = entry_phys.unwrap_or(entry);
    let entry = u32::try_from(entry).map_err(|_| bad("entry point above 4 GiB"))?;
    Ok(Loaded { entry, end })
}

fn load_aout(
    ram: &GuestRam,
    name: &str,
    image: &[u8],
    hdr: usize,
) -> Result<Loaded, MultibootError> {
    let bad = |m: &str| MultibootError::Invalid(name.to_string(), m.to_string());
    let f = |i: usize| rd32(image, hdr + 12 + 4 * i).ok_or_else(|| bad("truncated header"));
    let (header_addr, load_addr, load_end, bss_end, entry) = (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let file_off = (hdr as u64)
        .checked_sub((header_addr - load_addr) as u64)
        .ok_or_else(|| bad("header_addr/load_addr do not match the file"))?;
    let file_len = if load_end == 0 {
        (image.len() as u64).saturating_sub(file_off)
    } else {
        (load_end as u64)
            .checked_sub(load_addr as u64)
            .ok_or_else(|| bad("load_end_addr is below load_addr"))?
    };
    let data = file_off
        .checked_add(file_len)
        .and_then(|end| image.get(file_off as usize..end as usize))
        .ok_or_else(|| bad("load_end_addr is past the end of the file"))?;
    let memsz = if bss_end == 0 {
        file_len
    } else {
        (bss_end as u64)
            .checked_sub(load_addr as u64)
            .ok_or_else(|| bad("bss_end_addr is below load_addr"))?
            .max(file_len)
    };
    place(ram, name, load_addr as u64, data, memsz)?;
    Ok(Loaded {
        entry,
        end: load_addr as u64 + memsz,
    })
}

/// Loads a multiboot kernel and its modules into `ram`, writes the boot
/// information structure, and returns the entry state.
pub fn load(
    ram: &GuestRam,
    name: &str,
    image: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<BootState, MultibootError> {
    let hdr = find_header(image).ok_or_else(|| MultibootError::NoHeader(name.to_string()))?;
    let flags = rd32(image, hdr + 4).unwrap_or(0);
    // Bits 0–15 are requirements; we honour 0 (align modules), 1 (memory
    // info) and 2 (video info: ignored, text mode is all we offer).
    if flags & 0xfff8 != 0 {
        return Err(MultibootError::Unsupported(name.to_string(), flags));
    }
    let loaded = if flags & (1 << 16) != 0 {
        load_aout(ram, name, image, hdr)?
    } else {
        load_elf(ram, name, image)?
    };
    // Everything else goes page-aligned after the kernel.
    let mut next = (loaded.end + 0xfff) & !0xfff;
    let mut alloc = |len: u64| -> Result<u64, MultibootError> {
        let at = next;
        next = (next + len + 0xfff) & !0xfff;
        if next > ram.below_4g() {
            return Err(MultibootError::TooLarge(
                name.to_string(),
                format!("kernel, modules and boot information need {next:#x} bytes"),
            ));
        }
        Ok(at)
    };
    let put_str = |ram: &GuestRam, at: u64, s: &str| {
        ram.write_bytes(at, s.as_bytes());
        ram.write_bytes(at + s.len() as u64, &[0]);
    };
    let mbi = alloc(0x1000)?;
    let mut info = [0u32; 22];
    let mut mflags = 1 | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9);
    let ram_below_4g = ram.below_4g();
    info[1] = 640;
    info[2] = ((ram_below_4g - 0x10_0000) / 1024) as u32;
    let cmd_at = alloc(cmdline.len() as u64 + 1)?;
    put_str(ram, cmd_at, cmdline);
    info[4] = cmd_at as u32;
    let mods_at = alloc(16 * modules.len() as u64 + 16)?;
    for (i, m) in modules.iter().enumerate() {
        let data_at = alloc(m.data.len() as u64)?;
        ram.write_bytes(data_at, &m.data);
        let str_at = alloc(m.cmdline.len() as u64 + 1)?;
        put_str(ram, str_at, &m.cmdline);
        let e = mods_at + 16 * i as u64;
        ram.write_u32(e, data_at as u32);
        ram.write_u32(e + 4, (data_at + m.data.len() as u64) as u32);
        ram.write_u32(e + 8, str_at as u32);
        ram.write_u32(e + 12, 0);
    }
    info[5] = modules.len() as u32;
    info[6] = mods_at as u32;
    // Memory map (§3.3): size field then base, length, type.
    let regions: [(u64, u64, u32); 3] = [
        (0, 0x9fc00, 1),
        (0xf0000, 0x10000, 2),
        (0x10_0000, ram_below_4g - 0x10_0000, 1),
    ];
    let mut map = Vec::new();
    for (base, len, ty) in regions.iter() {
        map.extend_from_slice(&20u32.to_le_bytes());
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&len.to_le_bytes());
        map.extend_from_slice(&ty.to_le_bytes());
    }
    if ram.above_4g() > 0 {
        map.extend_from_slice(&20u32.to_le_bytes());
        map.extend_from_slice(&(1u64 << 32).to_le_bytes());
        map.extend_from_slice(&ram.above_4g().to_le_bytes());
        map.extend_from_slice(&1u32.to_le_bytes());
    }
    let map_at = alloc(map.len() as u64)?;
    ram.write_bytes(map_at, &map);
    info[11] = map.len() as u32;
    info[12] = map_at as u32;
    let name_at = alloc(16)?;
    put_str(ram, name_at, "Vireo");
    info[16] = name_at as u32;
    if modules.is_empty() {
        mflags &= !(1 << 3);
    }
    info[0] = mflags;
    for (i, v) in info.iter().enumerate() {
        ram.write_u32(mbi + 4 * i as u64, *v);
    }
    let mut state = BootState::protected32(loaded.entry);
    state.gpr[0] = BOOTLOADER_MAGIC as u64;
    state.gpr[3] = mbi;
    Ok(state)
}

/// A flat multiboot image (the a.out kludge, §3.1.3): a 32-byte header that
/// loads the whole file at 1 MiB and enters `code`, which follows it. For
/// small guest programs the project builds itself (test kernels).
pub fn flat_image(code: &[u8]) -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    let flags = 1u32 << 16;
    let words = [
        HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        LOAD,
        LOAD,
        0,
        0,
        LOAD + 32,
    ];
    let mut img: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    img.extend_from_slice(code);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aout_kernel() -> Vec<u8> {
        // Header at offset 0, loaded at 1 MiB, entry right after the header.
        let mut img = vec![0u8; 64];
        let flags = 1u32 << 16;
        let words = [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
            0x10_0000,
            0x10_0000,
            0,
            0x10_2000,
            0x10_0020,
        ];
        for (i, w) in words.iter().enumerate() {
            img[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        img[32] = 0xf4; // hlt
        img
    }

    #[test]
    fn loads_aout_kludge() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let mods = [Module {
            data: b"hello".to_vec(),
            cmdline: "mod1 arg".into(),
        }];
        let st = load(&ram, "k", &aout_kernel(), "console=ttyS0", &mods).unwrap();
        assert_eq!(st.rip, 0x10_0020);
        assert_eq!(st.gpr[0], BOOTLOADER_MAGIC as u64);
        let mbi = st.gpr[3];
        assert_eq!(ram.read_u32(mbi) & 0x24f, 0x24d);
        assert_eq!(ram.read_u32(mbi + 4), 640);
        assert_eq!(ram.read_u32(mbi + 8), 15 * 1024);
        assert_eq!(ram.read_u32(mbi + 20), 1);
        let m = ram.read_u32(mbi + 24) as u64;
        let start = ram.read_u32(m) as u64;
        let mut b = [0u8; 5];
        ram.read_bytes(start, &mut b);
        assert_eq!(&b, b"hello");
        let mut hlt = [0u8; 1];
        ram.read_bytes(0x10_0020, &mut hlt);
        assert_eq!(hlt[0], 0xf4);
    }

    #[test]
    fn rejects_non_kernels() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let e = load(&ram, "x.bin", b"just some text", "", &[]).unwrap_err();
        assert!(e.to_string().contains("nor a multiboot kernel"));
        let mut k = aout_kernel();
        k[24..28].copy_from_slice(&0x1000_0000u32.to_le_bytes()); // load_end far away
        assert!(load(&ram, "k", &k, "", &[]).is_err());
    }

    #[test]
    fn rejects_kernel_larger_than_ram() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert!(matches!(
            load(&ram, "k", &aout_kernel(), "", &[]),
            Err(MultibootError::TooLarge(..))
        ));
    }

    /// Mutation fuzzing of the loader on stable Rust: random byte flips and
    /// truncations of valid a.out and ELF images must give errors, never
    /// panics or out-of-range writes.
    #[test]
    fn mutated_images_never_panic() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let mut elf = vec![0u8; 0x200];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1;
        elf[5] = 1;
        elf[24..28].copy_from_slice(&0x10_0000u32.to_le_bytes());
        elf[28..32].copy_from_slice(&52u32.to_le_bytes());
        elf[42..44].copy_from_slice(&32u16.to_le_bytes());
        elf[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = [1u32, 0x100, 0x10_0000, 0x10_0000, 0x40, 0x1000, 7, 0x1000];
        for (i, w) in ph.iter().enumerate() {
            elf[52 + 4 * i..56 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        let hdr = [HEADER_MAGIC, 3, 0u32.wrapping_sub(HEADER_MAGIC + 3)];
        for (i, w) in hdr.iter().enumerate() {
            elf[0x100 + 4 * i..0x104 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        assert!(load(&ram, "elf", &elf, "", &[]).is_ok());
        let seeds = [aout_kernel(), elf];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut img = seeds[i % 2].clone();
            for _ in 0..(rnd() % 8 + 1) {
                let pos = (rnd() % img.len() as u64) as usize;
                img[pos] = rnd() as u8;
            }
            if rnd() % 4 == 0 {
                let keep = (rnd() % img.len() as u64) as usize;
                img.truncate(keep);
            }
            // Keep the header checksum valid half the time so the loader
            // gets past the header search.
            if rnd() % 2 == 0 {
                if let Some(h) = find_header(&seeds[i % 2]) {
                    if img.len() >= h + 12 {
                        let f = rd32(&img, h + 4).unwrap_or(0);
                        img[h..h + 4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
                        let sum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(f);
                        img[h + 8..h + 12].copy_from_slice(&sum.to_le_bytes());
                    }
                }
            }
            let _ = load(&ram, "fuzz", &img, "cmd", &[]);
        }
    }
}
