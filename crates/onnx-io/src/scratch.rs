//! A file-backed scratch area for tensor bytes: a pass that finished rewriting a tensor stores the new
//! bytes here and keeps only a read-only mapped view of them, so a large model's modified weights live
//! in the page cache (which the kernel can write back and drop) rather than in anonymous memory.
//!
//! The file is created in a folder of the caller's choice (the CLI uses the output's folder, so the same
//! file system) and unlinked at once: nothing is left behind, even if the process dies. Each stored
//! region starts on a page boundary so it can be mapped on its own.

use crate::IoError;
use bytes::Bytes;
use memmap2::MmapOptions;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PAGE: u64 = 1 << 16;

/// An unlinked temporary file that tensor bytes are appended to.
pub struct Scratch {
    file: File,
    path: PathBuf,
    end: Mutex<u64>,
    /// (address of the mapped view, length, file offset) of every stored region, for [`Scratch::locate`].
    regions: Mutex<Vec<(usize, usize, u64)>>,
}

struct MapOwner(memmap2::Mmap);
impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Scratch {
    /// A new scratch file in `dir` (removed from the folder immediately; the open handle keeps it).
    pub fn new_in(dir: &Path) -> Result<Scratch, IoError> {
        let path = dir.join(format!(".sparsify-scratch-{}", std::process::id()));
        let werr = |source| IoError::Write { path: path.clone(), source };
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(werr)?;
        std::fs::remove_file(&path).map_err(werr)?;
        Ok(Scratch { file, path, end: Mutex::new(0), regions: Mutex::new(Vec::new()) })
    }

    /// Store `bytes` and return a read-only mapped view of the stored copy (empty input: empty bytes).
    pub fn store(&self, bytes: &[u8]) -> Result<Bytes, IoError> {
        if bytes.is_empty() {
            return Ok(Bytes::new());
        }
        let werr = |source| IoError::Write { path: self.path.clone(), source };
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
            let offset = end.div_ceil(PAGE) * PAGE;
            *end = offset + bytes.len() as u64;
            offset
        };
        self.file.write_all_at(bytes, offset).map_err(werr)?;
        // SAFETY: the region was just written and is never written again (each store appends past the
        // end); the file is private to this process (unlinked on creation).
        let map = unsafe { MmapOptions::new().offset(offset).len(bytes.len()).map(&self.file) }.map_err(werr)?;
        self.regions.lock().unwrap_or_else(|e| e.into_inner()).push((map.as_ptr() as usize, map.len(), offset));
        Ok(Bytes::from_owner(MapOwner(map)))
    }

    /// The file offset of `bytes` when they are (part of) a view this scratch returned.
    pub(crate) fn locate(&self, bytes: &[u8]) -> Option<u64> {
        let (p, n) = (bytes.as_ptr() as usize, bytes.len());
        let regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        regions.iter().find(|(a, len, _)| p >= *a && p + n <= a + len).map(|(a, _, off)| off + (p - a) as u64)
    }

    /// Append `len` stored bytes at `offset` to `out` in the kernel (`copy_file_range` through
    /// `std::io::copy`), without mapping them into this process.
    pub(crate) fn copy_to(&self, offset: u64, len: usize, out: &mut File) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut src = &self.file;
        src.seek(SeekFrom::Start(offset))?;
        let copied = std::io::copy(&mut src.take(len as u64), out)?;
        if copied != len as u64 {
            return Err(std::io::Error::other(format!("scratch file ended after {copied} of {len} bytes")));
        }
        Ok(())
    }

    /// Bytes stored so far (including alignment gaps).
    pub fn len(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_read_back_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scratch::new_in(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "unlinked at once");
        let a = s.store(&[1, 2, 3]).unwrap();
        let b = s.store(&vec![7u8; 100_000]).unwrap();
        assert_eq!(&a[..], &[1, 2, 3]);
        assert_eq!(b.len(), 100_000);
        assert!(b.iter().all(|&x| x == 7));
        assert!(s.len() >= PAGE + 100_000);
        assert!(s.store(&[]).unwrap().is_empty());
        assert_eq!(s.locate(&b[10..20]), Some(PAGE + 10));
        assert_eq!(s.locate(&[1u8, 2, 3]), None, "bytes elsewhere are not in the scratch");
        let out_path = dir.path().join("out");
        let mut out = File::create(&out_path).unwrap();
        s.copy_to(s.locate(&b).unwrap(), b.len(), &mut out).unwrap();
        s.copy_to(s.locate(&a).unwrap(), 3, &mut out).unwrap();
        drop(out);
        let back = std::fs::read(&out_path).unwrap();
        assert_eq!((back.len(), back[99_999], &back[100_000..]), (100_003, 7, &[1u8, 2, 3][..]));
    }
}
