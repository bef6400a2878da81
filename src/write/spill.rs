//! The spill file of a draft: a local copy of the blocks it has uploaded but not committed.
//!
//! The file is created in `--spill-dir` and unlinked at once, so a crash leaves nothing
//! behind. Whole, page-aligned blocks (what a sequential writer produces) are written with
//! `O_DIRECT`: the disk reads them straight from the block buffer, where a buffered write would
//! copy every byte into the page cache (measured: the largest single cost of writing a file).
//! Anything else, and every read, goes through an ordinary descriptor of the same file; the
//! kernel keeps the two coherent. Where `O_DIRECT` is not available (tmpfs), both are buffered.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment `O_DIRECT` needs of the buffer, the length and the offset.
pub const ALIGN: usize = 4096;

pub struct Spill {
    buffered: File,
    direct: Option<File>,
}

impl Spill {
    pub fn create(dir: &Path, tag: &str) -> io::Result<Spill> {
        let path = dir.join(format!("batchfs-{}-{tag}", std::process::id()));
        let direct = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        let (buffered, direct) = match direct {
            Ok(d) => {
                let b = OpenOptions::new().read(true).write(true).open(&path);
                (b, Some(d))
            }
            Err(_) => {
                let b = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path);
                (b, None)
            }
        };
        let _ = std::fs::remove_file(&path);
        Ok(Spill {
            buffered: buffered?,
            direct,
        })
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let aligned = (data.as_ptr() as usize).is_multiple_of(ALIGN)
            && data.len().is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64);
        match &self.direct {
            Some(d) if aligned => d.write_all_at(data, offset),
            _ => self.buffered.write_all_at(data, offset),
        }
    }

    pub fn read_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.buffered.read_exact_at(&mut v, offset)?;
        Ok(v)
    }

    /// Drops the content (after a commit); the file stays for the next blocks.
    pub fn clear(&self) {
        let _ = self.buffered.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_unaligned_writes_read_back() {
        let dir = std::env::temp_dir();
        let s = Spill::create(&dir, "spill-test").unwrap();
        let mut block = bytes::BytesMut::with_capacity(2 * ALIGN);
        let pad = block.as_ptr().align_offset(ALIGN);
        block.resize(pad, 0);
        bytes::Buf::advance(&mut block, pad);
        block.resize(ALIGN, 7);
        s.write_at(&block, 0).unwrap();
        s.write_at(b"tail", ALIGN as u64).unwrap();
        assert_eq!(s.read_at(ALIGN, 0).unwrap(), vec![7; ALIGN]);
        assert_eq!(s.read_at(4, ALIGN as u64).unwrap(), b"tail");
        assert!(
            !std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("spill-test")),
            "the spill file is unlinked at once"
        );
    }
}
