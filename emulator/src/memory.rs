//! Guest physical memory: one anonymous host mapping backs guest RAM.
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

/// Guest RAM: `size` bytes at guest physical address 0.
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

    /// Host pointer to `gpa` if `gpa..gpa+len` lies in RAM.
    #[inline]
    pub fn ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        if end <= self.size {
            // SAFETY: gpa + len is within the mapping.
            Some(unsafe { self.base.add(gpa as usize) })
        } else {
            None
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
