//! Guest physical memory: one anonymous host mapping backs guest RAM.
//!
//! As on a PC, RAM fills guest-physical addresses up to 3 GiB; the gigabyte
//! below 4 GiB is the PCI hole (device windows, the APICs), and RAM beyond
//! the first 3 GiB continues at 4 GiB.
//!
//! The soft CPU reads and writes RAM through raw host pointers (its TLB caches
//! them); KVM maps the same host range as a memory slot.

use thiserror::Error;

/// Errors creating guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The size is zero or not a multiple of 4 KiB.
    #[error("Memory size {0} bytes is invalid: it must be a non-zero multiple of 4 KiB")]
    BadSize(u64),
    /// The host refused the mapping.
    #[error("The host cannot provide {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Start of the PCI hole: RAM beyond this much continues at 4 GiB.
pub const PCI_HOLE_START: u64 = 3 << 30;
/// End of the PCI hole.
pub const PCI_HOLE_END: u64 = 4 << 30;

/// Guest RAM: `size` bytes from guest-physical 0, the part beyond 3 GiB at
/// 4 GiB.
pub struct GuestRam {
    base: *mut u8,
    size: u64,
}

// SAFETY: the mapping is owned by this struct and lives as long as it; guest
// memory is shared between threads by design (like real RAM), and all access
// goes through raw pointers with explicit, bounds-checked offsets.
unsafe impl Send for GuestRam {}
// SAFETY: see above; concurrent guest accesses race exactly as on hardware.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `size` bytes of zeroed RAM (lazily committed, with no swap
    /// reservation so that large sparse guests are cheap).
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || !size.is_multiple_of(4096) || size > (1 << 46) {
            return Err(MemoryError::BadSize(size));
        }
        // SAFETY: anonymous private mapping with no fixed address; the result
        // is checked for MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            base: ptr as *mut u8,
            size,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest physical address 0.
    pub fn host_base(&self) -> *mut u8 {
        self.base
    }

    /// Offset into the mapping of guest-physical `gpa..gpa+len`, if that
    /// range is RAM (it must not straddle the PCI hole).
    #[inline]
    fn offset(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        let off = if end <= PCI_HOLE_START {
            gpa
        } else if gpa >= PCI_HOLE_END {
            gpa - (PCI_HOLE_END - PCI_HOLE_START)
        } else {
            return None;
        };
        (off + len <= self.size).then_some(off)
    }

    /// Host pointer to `gpa` if `gpa..gpa+len` lies in RAM.
    #[inline]
    pub fn ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let off = self.offset(gpa, len)?;
        // SAFETY: `offset` checked that off + len is within the mapping.
        Some(unsafe { self.base.add(off as usize) })
    }

    /// RAM below the PCI hole, at guest-physical 0.
    pub fn below_4g(&self) -> u64 {
        self.size.min(PCI_HOLE_START)
    }

    /// RAM above 4 GiB.
    pub fn above_4g(&self) -> u64 {
        self.size - self.below_4g()
    }

    /// One past the highest guest-physical RAM address.
    pub fn phys_end(&self) -> u64 {
        match self.above_4g() {
            0 => self.size,
            n => PCI_HOLE_END + n,
        }
    }

    /// Copies `data` into RAM at `gpa`; false if it does not fit.
    pub fn write_bytes(&self, gpa: u64, data: &[u8]) -> bool {
        match self.ptr(gpa, data.len() as u64) {
            Some(p) => {
                // SAFETY: `ptr` checked the range; source and mapping never overlap.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
                true
            }
            None => false,
        }
    }

    /// Copies RAM at `gpa` into `data`; false if out of range.
    pub fn read_bytes(&self, gpa: u64, data: &mut [u8]) -> bool {
        match self.ptr(gpa, data.len() as u64) {
            Some(p) => {
                // SAFETY: `ptr` checked the range.
                unsafe { std::ptr::copy_nonoverlapping(p, data.as_mut_ptr(), data.len()) };
                true
            }
            None => false,
        }
    }

    /// Writes a little-endian u32; false if out of range.
    pub fn write_u32(&self, gpa: u64, v: u32) -> bool {
        self.write_bytes(gpa, &v.to_le_bytes())
    }

    /// Reads a little-endian u32 (0 if out of range).
    pub fn read_u32(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read_bytes(gpa, &mut b);
        u32::from_le_bytes(b)
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: base/size describe the mapping created in `new`.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.size as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_beyond_3g_continues_at_4g() {
        let ram = GuestRam::new(5 << 30).expect("map");
        assert_eq!(ram.below_4g(), 3 << 30);
        assert_eq!(ram.above_4g(), 2 << 30);
        assert_eq!(ram.phys_end(), 6 << 30);
        assert!(ram.ptr((3 << 30) - 4, 4).is_some());
        assert!(ram.ptr((3 << 30) - 2, 4).is_none(), "straddles the hole");
        assert!(ram.ptr(0xfee0_0000, 4).is_none(), "in the hole");
        assert!(ram.write_u32(4 << 30, 0x1234_5678));
        assert!(ram.write_u32((6 << 30) - 4, 0x9abc_def0));
        assert!(ram.ptr(6 << 30, 1).is_none());
        // 4 GiB maps right after the first 3 GiB of the mapping.
        // SAFETY: the offset is inside the 5 GiB mapping.
        let v = unsafe { (ram.host_base().add(3 << 30) as *const u32).read_unaligned() };
        assert_eq!(v, 0x1234_5678);
        let small = GuestRam::new(1 << 30).expect("map");
        assert_eq!(small.phys_end(), 1 << 30);
        assert!(small.ptr(4 << 30, 1).is_none());
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(GuestRam::new(0).is_err());
        assert!(GuestRam::new(4097).is_err());
    }

    #[test]
    fn reads_back_and_bounds_checks() {
        let ram = GuestRam::new(1 << 20).expect("map");
        assert!(ram.write_u32(0x1000, 0xdead_beef));
        assert_eq!(ram.read_u32(0x1000), 0xdead_beef);
        assert!(!ram.write_u32((1 << 20) - 2, 1));
        assert!(ram.ptr(u64::MAX, 2).is_none());
    }
}
