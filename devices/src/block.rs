//! Storage behind emulated disks: a byte-addressed backend trait, raw image
//! files and in-memory images.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A disk or disc image as the storage devices see it: a fixed-size array
/// of bytes.
pub trait BlockBackend: Send {
    /// The image size in bytes.
    fn len(&self) -> u64;
    /// True for an empty image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `buf.len()` bytes at `offset`; bytes past the end read as zero.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` (never past the end).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// True when writes are refused.
    fn read_only(&self) -> bool;
}

fn past_end() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "write past the end of the image",
    )
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "read-only image")
}

/// A raw image file.
pub struct FileBackend {
    file: File,
    len: u64,
    read_only: bool,
}

impl FileBackend {
    /// Opens the raw image at `path`, for reading only or for reading and
    /// writing.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = file.metadata()?.len();
        Ok(FileBackend {
            file,
            len,
            read_only,
        })
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let avail = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, tail) = buf.split_at_mut(avail);
        tail.fill(0);
        if !data.is_empty() {
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.read_exact(data)?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(refused());
        }
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= self.len => {}
            _ => return Err(past_end()),
        }
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// An image held in memory (for tests and scratch disks); writable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemBackend(pub Vec<u8>);

impl BlockBackend for MemBackend {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let start = offset.min(self.0.len() as u64) as usize;
        let n = (self.0.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| past_end())?;
        let end = start.checked_add(data.len()).ok_or_else(past_end)?;
        self.0
            .get_mut(start..end)
            .ok_or_else(past_end)?
            .copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn read_only(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_backend_reads_zero_past_end_and_refuses_to_grow() {
        let mut m = MemBackend(vec![1, 2, 3, 4]);
        let mut b = [9u8; 6];
        m.read_at(2, &mut b).unwrap();
        assert_eq!(b, [3, 4, 0, 0, 0, 0]);
        m.read_at(u64::MAX, &mut b).unwrap();
        assert_eq!(b, [0; 6]);
        m.write_at(1, &[7, 7]).unwrap();
        assert_eq!(m.0, [1, 7, 7, 4]);
        assert!(m.write_at(3, &[1, 1]).is_err());
        assert!(m.write_at(u64::MAX, &[1]).is_err());
    }

    #[test]
    fn file_backend_round_trip() {
        let path = std::env::temp_dir().join(format!("vireo-block-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1024]).unwrap();
        {
            let mut f = FileBackend::open(&path, false).unwrap();
            assert_eq!(f.len(), 1024);
            f.write_at(512, b"hello").unwrap();
            assert!(f.write_at(1020, b"hello").is_err());
            f.flush().unwrap();
            let mut b = [0u8; 8];
            f.read_at(1020, &mut b).unwrap();
            assert_eq!(b, [0; 8]);
        }
        let mut ro = FileBackend::open(&path, true).unwrap();
        assert!(ro.read_only());
        assert!(ro.write_at(0, b"x").is_err());
        let mut b = [0u8; 5];
        ro.read_at(512, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        std::fs::remove_file(&path).unwrap();
    }
}
