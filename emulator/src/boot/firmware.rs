//! PC firmware: SeaBIOS (`bios-256k.bin`) and its VGA BIOS
//! (`vgabios-stdvga.bin`) from Debian's `seabios` package, found on a
//! search path, and the state a PC's processor starts in at power-on
//! (Intel SDM Vol. 3A §9.1.4: CS.base 0xffff0000, IP 0xfff0).

use super::BootState;
use crate::cpu::{attr, Segment};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The system BIOS image's file name.
pub const BIOS_FILE: &str = "bios-256k.bin";
/// The VGA BIOS image for the standard VGA.
pub const VGABIOS_FILE: &str = "vgabios-stdvga.bin";

/// Errors finding or reading firmware.
#[derive(Debug, Error)]
pub enum FirmwareError {
    /// The BIOS is on none of the search path's directories.
    #[error(
        "Firmware {file} not found in {searched}: install Debian's seabios package \
         (apt-get install seabios) or give --firmware DIR"
    )]
    NotFound {
        /// The file looked for.
        file: &'static str,
        /// The directories searched, comma separated.
        searched: String,
    },
    /// The file exists but cannot be read.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// The BIOS image has an unusable size.
    #[error(
        "{0}: a BIOS image must be 64 KiB to 16 MiB, a multiple of 64 KiB (this one is {1} bytes)"
    )]
    BadSize(String, usize),
}

/// The firmware a PC boots from.
#[derive(Clone)]
pub struct Firmware {
    /// Where the BIOS came from.
    pub bios_path: PathBuf,
    /// The system BIOS, mapped to end at 4 GiB (its last 128 KiB also at
    /// 0xe0000).
    pub bios: Vec<u8>,
    /// The VGA BIOS (the VGA's expansion ROM), when found.
    pub vgabios: Option<Vec<u8>>,
}

/// The directories searched, in order: `dir` (from `--firmware`), then
/// `$VIREO_FIRMWARE_DIR`, then Debian's `/usr/share/seabios` and
/// `/usr/share/qemu`.
pub fn search_path(dir: Option<&Path>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Some(d) = dir {
        v.push(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("VIREO_FIRMWARE_DIR") {
        if !d.is_empty() {
            v.push(PathBuf::from(d));
        }
    }
    v.push("/usr/share/seabios".into());
    v.push("/usr/share/qemu".into());
    v
}

fn find(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(file)).find(|p| p.is_file())
}

impl Firmware {
    /// Loads SeaBIOS and the VGA BIOS from the search path (see
    /// [`search_path`]); `dir` is `--firmware`'s value.
    pub fn load(dir: Option<&Path>) -> Result<Firmware, FirmwareError> {
        let dirs = search_path(dir);
        let bios_path = find(&dirs, BIOS_FILE).ok_or_else(|| FirmwareError::NotFound {
            file: BIOS_FILE,
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let name = bios_path.display().to_string();
        let bios = std::fs::read(&bios_path).map_err(|e| FirmwareError::Read(name.clone(), e))?;
        if bios.len() < 0x1_0000 || bios.len() > 16 << 20 || bios.len() % 0x1_0000 != 0 {
            return Err(FirmwareError::BadSize(name, bios.len()));
        }
        let vgabios = match find(&dirs, VGABIOS_FILE) {
            Some(p) => Some(
                std::fs::read(&p).map_err(|e| FirmwareError::Read(p.display().to_string(), e))?,
            ),
            None => None,
        };
        Ok(Firmware {
            bios_path,
            bios,
            vgabios,
        })
    }
}

impl BootState {
    /// The processor's power-on state: real mode, executing at
    /// 0xfffffff0 (CS selector 0xf000 with base 0xffff0000, IP 0xfff0),
    /// EDX holding the family/model signature (Intel SDM Vol. 3A Table 9-1).
    pub fn reset_vector() -> Self {
        let data = Segment::real(0);
        let code = Segment {
            selector: 0xf000,
            base: 0xffff_0000,
            limit: 0xffff,
            attr: attr::P | attr::S | 0xb,
        };
        let mut gpr = [0u64; 16];
        gpr[crate::cpu::reg::RDX] = 0x600;
        BootState {
            gpr,
            rip: 0xfff0,
            rflags: 2,
            seg: [data, code, data, data, data, data],
            gdtr: crate::cpu::DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: crate::cpu::DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            cr0: 0x6000_0010,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_firmware_names_the_package() {
        let dir = std::env::temp_dir().join(format!("vireo-nofw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let dirs = [dir.clone()];
        assert!(find(&dirs, BIOS_FILE).is_none());
        // A directory given explicitly is searched first.
        std::fs::write(dir.join(BIOS_FILE), vec![0u8; 0x1_0000]).expect("write");
        let fw = Firmware::load(Some(&dir)).expect("found");
        assert_eq!(fw.bios_path, dir.join(BIOS_FILE));
        std::fs::write(dir.join(BIOS_FILE), vec![0u8; 1000]).expect("write");
        let e = Firmware::load(Some(&dir)).err().expect("bad size");
        assert!(e.to_string().contains("64 KiB"), "{e}");
        let e = FirmwareError::NotFound {
            file: BIOS_FILE,
            searched: "/x".into(),
        };
        assert!(e.to_string().contains("apt-get install seabios"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
