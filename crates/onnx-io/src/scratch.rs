//! A file-backed scratch area for tensor bytes: a pass that finished rewriting a tensor stores the new
//! bytes here and keeps only a read-only mapped view of them, so a large model's modified weights live
//! in the page cache (which the kernel can write back and drop) rather than in anonymous memory.
//!
//! Two places hold stored bytes:
//! - **in place** ([`Scratch::for_output`]): the output file that will hold the tensor bytes (the
//!   external-data file, or for an inline output the model file itself) is created up front (as the
//!   atomic writer's temporary file beside the destination) with the layout the exporter will give it,
//!   and a tensor stored for the first time is written straight to its final offset. Saving then skips
//!   every tensor already in place and renames the file into position, so a weight pass writes each
//!   modified byte once, as `cp` does. Nothing is renamed unless the save
//!   succeeds; dropped unsaved, the temporary file is removed. The whole pages of large tensors are
//!   written around the page cache (`O_DIRECT`) where the file system allows it (see `InPlace::write`).
//! - **spill**: everything else (typed fields, a tensor stored a second time, layouts that changed) is
//!   appended to an unlinked temporary file, each region on a page boundary so it can be mapped alone;
//!   the exporter copies those bytes file to file in the kernel.

use crate::export::{build, ExternalPlan, PROTO_LIMIT};
use crate::write::{data_plan, layout_of, AtomicFile, Placed};
use crate::{ExportOptions, IoError};
use bytes::Bytes;
use memmap2::MmapOptions;
use sparsify_ir::Model;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PAGE: u64 = 1 << 16;

/// Where stored bytes live (see [`Scratch::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loc {
    /// At this offset of the in-place output data file.
    InPlace(u64),
    /// At this offset of the spill file.
    Spill(u64),
}

/// The output file holding the tensor bytes (external-data file or inline model), written in place.
pub(crate) struct InPlace {
    /// The destination path of that file.
    pub(crate) dest: PathBuf,
    /// The temporary file (renamed over `dest` by a successful save).
    pub(crate) file: Mutex<Option<AtomicFile>>,
    /// A second handle to the same file, for writes and maps.
    handle: File,
    /// A third, `O_DIRECT` handle (when the file system allows it), see [`InPlace::write`].
    direct: Mutex<Option<File>>,
    /// Bytes written through `direct` so far.
    direct_len: std::sync::atomic::AtomicU64,
    /// Page-aligned staging for `direct` writes of bytes placed unlike their file offset.
    bounce: Mutex<Vec<u8>>,
    /// Tensor name → (offset, length) in the planned layout; a slot is used once.
    slots: Mutex<BTreeMap<String, (u64, usize)>>,
    /// End of the planned layout (the file's length).
    pub(crate) end: u64,
}

/// Stored bytes, written once: a spill file and optionally the output's data file in place.
pub struct Scratch {
    file: File,
    path: PathBuf,
    end: Mutex<u64>,
    in_place: Option<InPlace>,
    /// Every live mapped view this scratch returned, for [`Scratch::locate`].
    regions: Regions,
    /// Bytes written in place so far.
    in_place_written: std::sync::atomic::AtomicU64,
}

/// Address of a mapped view → (length, location). A view leaves when its last `Bytes` is dropped, so
/// a later map placed at a freed address is never mistaken for the bytes that were there.
type Regions = std::sync::Arc<Mutex<BTreeMap<usize, (usize, Loc)>>>;

struct MapOwner {
    map: memmap2::Mmap,
    regions: Regions,
}
impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}
impl Drop for MapOwner {
    fn drop(&mut self) {
        let addr = self.map.as_ptr() as usize;
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        if regions.get(&addr).is_some_and(|r| r.0 == self.map.len()) {
            regions.remove(&addr);
        }
    }
}

impl Scratch {
    /// A new scratch in `dir` (its spill file is removed from the folder immediately; the open handle
    /// keeps it). No in-place output.
    pub fn new_in(dir: &Path) -> Result<Scratch, IoError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".sparsify-scratch-{}-{n}", std::process::id()));
        let werr = |source| IoError::Write { path: path.clone(), source };
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(werr)?;
        std::fs::remove_file(&path).map_err(werr)?;
        Ok(Scratch {
            file,
            path,
            end: Mutex::new(0),
            in_place: None,
            regions: Default::default(),
            in_place_written: Default::default(),
        })
    }

    /// A scratch for a model that will be saved to `out` with `opts`: the file that save writes tensor
    /// bytes to (the external-data file, or an inline model file) is laid out now (the layout of `model`
    /// as it is) and tensors stored later go straight to their final place in it. Save with `save_with_scratch` and the same options.
    pub fn for_output(model: &Model, out: &Path, opts: &ExportOptions) -> Result<Scratch, IoError> {
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut scratch = Scratch::new_in(dir)?;
        let Some((data_path, mut plan)) = data_plan(model, out, opts) else { return Ok(scratch) };
        let proto = build(model, &mut plan)?;
        // External data: the data file's chunks. Inline: the model file itself, where each tensor's
        // raw bytes land in the protobuf encoding.
        let (dest, end, planned) = if plan.chunks.is_empty() {
            match layout_of(&proto) {
                Some((end, slices)) if end <= PROTO_LIMIT => (out.to_path_buf(), end, inline_slots(model, &slices)),
                _ => return Ok(scratch),
            }
        } else {
            (data_path, plan.offset, plan_slots(&plan))
        };
        if planned.is_empty() {
            return Ok(scratch);
        }
        let mut slots = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (name, offset, len) in planned {
            // A name used twice (an initializer and a Constant output, say) gets no slot: its bytes spill.
            if !seen.insert(name.clone()) {
                slots.remove(&name);
                continue;
            }
            slots.insert(name, (offset, len));
        }
        let mut atomic = AtomicFile::create(&dest)?;
        let werr = |source| IoError::Write { path: dest.clone(), source };
        atomic.file().set_len(end).map_err(werr)?;
        let handle = atomic.file().try_clone().map_err(werr)?;
        let direct = Mutex::new(atomic.open_direct());
        scratch.in_place = Some(InPlace {
            dest,
            file: Mutex::new(Some(atomic)),
            handle,
            direct,
            direct_len: Default::default(),
            bounce: Mutex::new(Vec::new()),
            slots: Mutex::new(slots),
            end,
        });
        Ok(scratch)
    }

    /// Store `bytes` and return a read-only mapped view of the stored copy (empty input: empty bytes).
    pub fn store(&self, bytes: &[u8]) -> Result<Bytes, IoError> {
        self.store_named("", bytes)
    }

    /// [`Scratch::store`] for tensor `name`: written to its slot in the in-place output when it has one
    /// of the same length that was not used yet, else spilled.
    pub fn store_named(&self, name: &str, bytes: &[u8]) -> Result<Bytes, IoError> {
        if bytes.is_empty() {
            return Ok(Bytes::new());
        }
        if let Some(ip) = &self.in_place {
            let slot = {
                let mut slots = ip.slots.lock().unwrap_or_else(|e| e.into_inner());
                match slots.get(name) {
                    Some(&(offset, len)) if len == bytes.len() => slots.remove(name).map(|_| offset),
                    _ => None,
                }
            };
            if let Some(offset) = slot {
                ip.write(offset, bytes).map_err(|source| IoError::Write { path: ip.dest.clone(), source })?;
                self.in_place_written.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                return self.map(&ip.handle, &ip.dest, offset, bytes.len(), Loc::InPlace(offset));
            }
        }
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
            let offset = end.div_ceil(PAGE) * PAGE;
            *end = offset + bytes.len() as u64;
            offset
        };
        let werr = |source| IoError::Write { path: self.path.clone(), source };
        self.file.write_all_at(bytes, offset).map_err(werr)?;
        start_writeback(&self.file, offset, bytes.len());
        self.map(&self.file, &self.path, offset, bytes.len(), Loc::Spill(offset))
    }

    /// Map `len` stored bytes of `file` at `offset` read-only and record where they are.
    fn map(&self, file: &File, path: &Path, offset: u64, len: usize, loc: Loc) -> Result<Bytes, IoError> {
        let werr = |source| IoError::Write { path: path.to_path_buf(), source };
        // SAFETY: the region was just written and is never written again by this process: spill regions
        // are appended past the end, in-place slots are used once, and the exporter writes only regions
        // that hold no stored bytes. The spill file is private (unlinked); the in-place file is a fresh
        // temporary file that only this scratch writes until it is renamed.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file) }.map_err(werr)?;
        self.regions.lock().unwrap_or_else(|e| e.into_inner()).insert(map.as_ptr() as usize, (map.len(), loc));
        Ok(Bytes::from_owner(MapOwner { map, regions: self.regions.clone() }))
    }

    /// Where `bytes` are stored when they are (part of) a view this scratch returned.
    pub(crate) fn locate(&self, bytes: &[u8]) -> Option<Loc> {
        self.locate_range(bytes.as_ptr() as usize, bytes.len())
    }

    /// [`Scratch::locate`] for the `n` bytes at address `p`.
    pub(crate) fn locate_range(&self, p: usize, n: usize) -> Option<Loc> {
        let regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let (&a, &(len, loc)) = regions.range(..=p).next_back()?;
        (p + n <= a + len).then_some(match loc {
            Loc::InPlace(o) => Loc::InPlace(o + (p - a) as u64),
            Loc::Spill(o) => Loc::Spill(o + (p - a) as u64),
        })
    }

    /// The in-place output data file, when this scratch has one for `dest`.
    pub(crate) fn in_place_for(&self, dest: &Path) -> Option<&InPlace> {
        self.in_place.as_ref().filter(|ip| ip.dest == dest)
    }

    /// Copy `len` stored bytes at `loc` to `out` (at `out_offset`, or appended at its position) in the
    /// kernel (`copy_file_range`), without mapping them into this process; through a buffer where the
    /// kernel cannot copy between the two files.
    pub(crate) fn copy_to(&self, loc: Loc, len: usize, out: &File, out_offset: Option<u64>) -> std::io::Result<()> {
        let (src, offset) = match (loc, &self.in_place) {
            (Loc::Spill(o), _) => (&self.file, o),
            (Loc::InPlace(o), Some(ip)) => (&ip.handle, o),
            (Loc::InPlace(_), None) => return Err(std::io::Error::other("no in-place file")),
        };
        if crate::external::copy_range(src, offset, out, out_offset, len)? {
            return Ok(());
        }
        let mut buf = vec![0u8; len.min(1 << 20)];
        let mut done = 0usize;
        while done < len {
            let n = buf.len().min(len - done);
            src.read_exact_at(&mut buf[..n], offset + done as u64)?;
            match out_offset {
                Some(o) => out.write_all_at(&buf[..n], o + done as u64)?,
                None => std::io::Write::write_all(&mut &*out, &buf[..n])?,
            }
            done += n;
        }
        Ok(())
    }

    /// Write unchanged input bytes into the in-place file at `offset` (see `InPlace::write_unchanged`);
    /// `Ok(false)` when that does not apply (the caller copies them).
    pub(crate) fn write_unchanged(&self, offset: u64, bytes: &[u8]) -> std::io::Result<bool> {
        self.in_place.as_ref().map_or(Ok(false), |ip| ip.write_unchanged(offset, bytes))
    }

    /// Bytes spilled so far (including alignment gaps; in-place writes are not counted).
    pub fn len(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes written in place so far.
    pub fn in_place_len(&self) -> u64 {
        self.in_place_written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Of [`Scratch::in_place_len`], the bytes written around the page cache (`O_DIRECT`).
    pub fn direct_len(&self) -> u64 {
        self.in_place.as_ref().map_or(0, |ip| ip.direct_len.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.in_place_len() == 0
    }
}

/// Alignment of `O_DIRECT` writes: file offset, memory address and length (a page: a multiple of every
/// common logical block size).
const DIRECT_ALIGN: usize = 4096;
/// Tensors smaller than this are written through the page cache.
const DIRECT_MIN: usize = 1 << 20;

impl InPlace {
    /// Write `bytes` at `offset`. For tensors of [`DIRECT_MIN`] bytes or more, the whole pages inside
    /// the range go around the page cache (`O_DIRECT`): straight from the caller's buffer when it is
    /// placed like the file offset within a page (rewritten large tensors start on a page boundary,
    /// see `sparsify_ir::Tensor::zero_by`, and so do slots after page-long tensors), else through a reused bounce buffer
    /// placed that way (one memory copy, far cheaper than the page cache's). The disk then reads the
    /// bytes from this process's memory, which saves copying every new byte into fresh page-cache pages
    /// and writing those back at the final `fsync`. The partial pages at both ends, small tensors and
    /// everything on a file system without `O_DIRECT` are written through the page cache, with
    /// write-back started at once. No page is written both ways.
    fn write(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let a = DIRECT_ALIGN as u64;
        let (first, last) = (offset.next_multiple_of(a), (offset + bytes.len() as u64) / a * a);
        let direct = if bytes.len() >= DIRECT_MIN && last > first {
            let (lo, hi) = ((first - offset) as usize, (last - offset) as usize);
            self.write_direct(&bytes[lo..hi], first)?.then_some((lo, hi))
        } else {
            None
        };
        let buffered = |part: &[u8], at: u64| -> std::io::Result<()> {
            if !part.is_empty() {
                self.handle.write_all_at(part, at)?;
                start_writeback(&self.handle, at, part.len());
            }
            Ok(())
        };
        match direct {
            Some((lo, hi)) => {
                buffered(&bytes[..lo], offset)?;
                buffered(&bytes[hi..], offset + hi as u64)
            }
            None => buffered(bytes, offset),
        }
    }

    /// Write `bytes`, a mapped input file's unchanged bytes, at `offset`: shared blocks where the file
    /// system clones ranges, else for [`DIRECT_MIN`] bytes or more like [`InPlace::write`] (whole pages
    /// around the page cache, read straight from the input's map), so the final `fsync` has no page-cache
    /// copy of them to write back. `Ok(false)`: not such bytes, too small, or no `O_DIRECT` handle (the
    /// caller copies them in the kernel).
    fn write_unchanged(&self, offset: u64, bytes: &[u8]) -> std::io::Result<bool> {
        if bytes.len() < DIRECT_MIN {
            return Ok(false);
        }
        let len = bytes.len() as u64;
        let cloned = crate::external::with_mapped_source(bytes, |src, at| {
            crate::external::clone_range(src, at, &self.handle, offset, len)
        });
        match cloned {
            None => return Ok(false),
            Some(true) => return Ok(true),
            Some(false) => {}
        }
        if self.direct.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Ok(false);
        }
        self.write(offset, bytes).map(|()| true)
    }

    /// Write whole pages `part` at the page-aligned `at` with `O_DIRECT`. `Ok(false)`: not written (no
    /// `O_DIRECT` handle, or the file system refused the write; then it is not tried again).
    fn write_direct(&self, part: &[u8], at: u64) -> std::io::Result<bool> {
        let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = direct.as_ref() else { return Ok(false) };
        let written = if (part.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
            f.write_all_at(part, at)
        } else {
            let mut bounce = self.bounce.lock().unwrap_or_else(|e| e.into_inner());
            if bounce.len() < part.len() + DIRECT_ALIGN {
                *bounce = vec![0u8; part.len() + DIRECT_ALIGN];
            }
            let pad = bounce.as_ptr().align_offset(DIRECT_ALIGN);
            let staged = &mut bounce[pad..pad + part.len()];
            staged.copy_from_slice(part);
            f.write_all_at(staged, at)
        };
        match written {
            Ok(()) => {
                self.direct_len.fetch_add(part.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(true)
            }
            // Refused after all (a file system that accepts the flag but not the write): stop trying.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                *direct = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Ask the kernel to start writing `len` bytes at `offset` to disk now (asynchronously), so the save's
/// final `fsync` finds most of the data already written and dirty pages turn clean (reclaimable under a
/// memory limit) while the passes go on. A hint: errors are ignored (the `fsync` reports real ones).
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// (tensor name, offset, length) of every tensor of `model` whose bytes the inline encoding writes
/// whole at one place (raw data), from that encoding's `slices` (address, length, offset).
fn inline_slots(model: &Model, slices: &[Placed]) -> Vec<(String, u64, usize)> {
    let mut at: std::collections::HashMap<(usize, usize), Option<u64>> = Default::default();
    for &(addr, len, offset) in slices.iter().filter(|s| s.1 > 0) {
        // Bytes written twice (one buffer shared by two tensors) have no single place.
        at.entry((addr, len)).and_modify(|o| *o = None).or_insert(Some(offset));
    }
    let g = &model.graph;
    let tensors = g.initializers.iter().chain(g.nodes().filter_map(|(_, n)| n.constant_tensor()));
    tensors
        .filter_map(|t| {
            let b = t.bytes();
            let offset = (*at.get(&(b.as_ptr() as usize, b.len()))?)?;
            Some((t.name.clone(), offset, b.len()))
        })
        .collect()
}

/// (tensor name, offset, length) of every chunk of `plan`.
fn plan_slots(plan: &ExternalPlan) -> Vec<(String, u64, usize)> {
    plan.names.iter().zip(&plan.chunks).map(|(n, (o, b))| (n.clone(), *o, b.len())).collect()
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
        assert_eq!(s.locate(&b[10..20]), Some(Loc::Spill(PAGE + 10)));
        assert_eq!(s.locate(&[1u8, 2, 3]), None, "bytes elsewhere are not in the scratch");
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        s.copy_to(s.locate(&b).unwrap(), b.len(), &out, None).unwrap();
        s.copy_to(s.locate(&a).unwrap(), 3, &out, None).unwrap();
        drop(out);
        let back = std::fs::read(&out_path).unwrap();
        assert_eq!((back.len(), back[99_999], &back[100_000..]), (100_003, 7, &[1u8, 2, 3][..]));
    }
}
