//! External data: resolve `location` safely inside the model's folder and map the file lazily.
//!
//! Every mapped file is remembered (weakly) so that the writer can find out whether some bytes are
//! still an input file's own bytes and copy them file to file in the kernel ([`copy_mapped`]) instead
//! of through this process — what makes an unchanged tensor cost what `cp` costs.

use crate::IoError;
use bytes::Bytes;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// A mapped file and its handle, owned so `Bytes` can slice it without copying.
struct Mapped {
    map: Mmap,
    file: File,
    path: PathBuf,
}

struct MapOwner(Arc<Mapped>);
impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

/// Every live mapping made by [`map_file`].
static MAPPED: Mutex<Vec<Weak<Mapped>>> = Mutex::new(Vec::new());

/// Map a whole file read-only into `Bytes` (empty files become empty `Bytes`).
pub fn map_file(path: &Path) -> Result<Bytes, std::io::Error> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; the tool never writes to its inputs. Another process truncating the
    // file while it is mapped is outside what any reader can defend against.
    let map = unsafe { Mmap::map(&file)? };
    let mapped = Arc::new(Mapped { map, file, path: path.to_path_buf() });
    let mut all = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&mapped));
    Ok(Bytes::from_owner(MapOwner(mapped)))
}

/// The path of a file mapped by [`map_file`] (some tensor still reads from it) that `dest` is (same
/// device and inode), if any: writing over it would change the input under the model reading it.
pub(crate) fn mapped_file_at(dest: &Path) -> Option<PathBuf> {
    let d = std::fs::metadata(dest).ok()?;
    let all = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .filter_map(Weak::upgrade)
        .find_map(|m| crate::same_inode(&m.file.metadata().ok()?, &d).then(|| m.path.clone()))
}

/// Copy `bytes` to `out` (at `out_offset`, or at its current position when `None`) in the kernel when
/// they lie inside a file mapped by [`map_file`]. `Ok(false)`: not a mapped file's bytes, or the kernel
/// cannot copy between these files — the caller writes them itself.
pub(crate) fn copy_mapped(bytes: &[u8], out: &File, out_offset: Option<u64>) -> std::io::Result<bool> {
    match with_mapped_source(bytes, |file, off| copy_range(file, off, out, out_offset, bytes.len())) {
        Some(copied) => copied,
        None => Ok(false),
    }
}

/// `f(file, offset)` for the mapped input file `bytes` lie in and their offset in it; `None` when they
/// are not a mapped file's bytes.
pub(crate) fn with_mapped_source<R>(bytes: &[u8], f: impl FnOnce(&File, u64) -> R) -> Option<R> {
    let found = {
        let all = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
        let p = bytes.as_ptr() as usize;
        all.iter().filter_map(Weak::upgrade).find_map(|m| {
            let a = m.map.as_ptr() as usize;
            (p >= a && p + bytes.len() <= a + m.map.len()).then(|| (p - a) as u64).map(|off| (m, off))
        })
    };
    found.map(|(m, off)| f(&m.file, off))
}

/// Share `len` bytes of `src` at `src_off` with `dst` at `dst_off` (`FICLONERANGE`: file systems with
/// reflinks, such as btrfs and XFS, copy no data). Only tried when the offsets and the length are
/// multiples of 4096 (clones work on whole blocks); `false` when not done (other file systems, blocks
/// not aligned, different file systems).
pub(crate) fn clone_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> bool {
    if !(src_off.is_multiple_of(4096) && dst_off.is_multiple_of(4096) && len.is_multiple_of(4096)) || len == 0 {
        return false;
    }
    clone_blocks(src, src_off, dst, dst_off, len)
}

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
fn clone_blocks(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    /// `struct file_clone_range` of linux/fs.h.
    #[repr(C)]
    struct FileCloneRange {
        src_fd: i64,
        src_offset: u64,
        src_length: u64,
        dest_offset: u64,
    }
    /// `_IOW(0x94, 13, struct file_clone_range)` in the generic ioctl encoding of these architectures.
    const FICLONERANGE: libc::c_ulong = 0x4020_940d;
    let arg = FileCloneRange {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: `arg` is a live, correctly laid out `file_clone_range`; both descriptors are open files
    // owned by the callers for the call's duration. The kernel only reads `arg`.
    unsafe { libc::ioctl(dst.as_raw_fd(), FICLONERANGE as _, &arg as *const FileCloneRange) == 0 }
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))))]
fn clone_blocks(_: &File, _: u64, _: &File, _: u64, _: u64) -> bool {
    false
}

/// `copy_file_range(2)` of `len` bytes from `src` at `src_off` to `dst` (at `dst_off`, or its current
/// position), looping over short copies. `Ok(false)` when the kernel refuses before anything was copied
/// (no support, different file systems).
pub(crate) fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: Option<u64>,
    len: usize,
) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut off_in = src_off as libc::loff_t;
    let mut off_out = dst_off.unwrap_or(0) as libc::loff_t;
    let mut left = len;
    while left > 0 {
        let out_ptr = if dst_off.is_some() { &mut off_out as *mut libc::loff_t } else { std::ptr::null_mut() };
        // SAFETY: both descriptors are open files owned by the callers for the call's duration; the
        // offset pointers point to live locals (or are null: use and advance the file position).
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), out_ptr, left, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            let unsupported =
                matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP));
            if left == len && unsupported {
                return Ok(false);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::other(format!("source ended after {} of {len} bytes", len - left)));
        }
        left -= n as usize;
    }
    Ok(true)
}

/// Resolves external-data locations relative to one folder, mapping each file once.
pub struct Resolver {
    base: Option<PathBuf>,
    files: BTreeMap<PathBuf, Bytes>,
}

impl Resolver {
    pub fn new(base: Option<PathBuf>) -> Resolver {
        Resolver { base, files: BTreeMap::new() }
    }

    /// Bytes `[offset, offset+length)` of `location`, after checking the path stays inside the folder.
    pub fn slice(&mut self, tensor: &str, location: &str, offset: u64, length: Option<u64>) -> Result<Bytes, IoError> {
        let err = |what: String| IoError::External { tensor: tensor.to_string(), what };
        let Some(base) = &self.base else {
            return Err(err(format!("'{location}' cannot be resolved: the model was not loaded from a file")));
        };
        let rel = Path::new(location);
        if location.is_empty() || rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(err(format!("location '{location}' must be a plain relative path inside the model's folder")));
        }
        let full = base.join(rel);
        let canon_base = base.canonicalize().map_err(|e| err(format!("model folder: {e}")))?;
        let canon = full.canonicalize().map_err(|e| err(format!("file '{location}' cannot be opened: {e}")))?;
        if !canon.starts_with(&canon_base) {
            return Err(err(format!("location '{location}' resolves outside the model's folder (symlink?)")));
        }
        if !self.files.contains_key(&canon) {
            let bytes = map_file(&canon).map_err(|e| err(format!("file '{location}': {e}")))?;
            self.files.insert(canon.clone(), bytes);
        }
        let data = &self.files[&canon];
        let size = data.len() as u64;
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(size),
        };
        match end {
            Some(end) if offset <= size && end <= size => Ok(data.slice(offset as usize..end as usize)),
            _ => Err(err(format!(
                "offset {offset} + length {} runs past the end of '{location}' ({size} bytes)",
                length.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn mapped_bytes_are_copied_in_the_kernel_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let mapped = map_file(&src).unwrap();
        let out =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("out")).unwrap();
        // Appended at the file position, then at an explicit offset.
        assert!(copy_mapped(&mapped[1000..5000], &out, None).unwrap());
        assert!(copy_mapped(&mapped[100_000..150_000], &out, Some(10_000)).unwrap());
        let mut back = vec![0u8; 60_000];
        out.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[..4000], &data[1000..5000]);
        assert_eq!(&back[10_000..], &data[100_000..150_000]);
        // Bytes that are not a mapped file's are left to the caller.
        let heap = data[..100].to_vec();
        assert!(!copy_mapped(&heap, &out, None).unwrap());
        drop(mapped);
        let again = data[..100].to_vec();
        assert!(!copy_mapped(&again, &out, None).unwrap(), "dropped maps are forgotten");
    }
}
