//! Atomic, streaming writes: the protobuf is encoded straight into a temporary file in the target folder
//! (large byte fields go from the source map to the file without an intermediate copy), external data is
//! written beside it, and both are renamed into place only when everything succeeded.
//!
//! [`AtomicFile`] / [`write_file_atomic`] are the reusable pieces (the CLI writes its JSON and HTML
//! reports with them): a temporary file created exclusively beside the destination, removed on any
//! failure (full disk, file-size limit, a panic unwinding), synced and renamed over the destination only
//! on success — so the destination is either the old file, untouched, or the complete new one.

use crate::export::{build, has_external, weight_bytes, ExportOptions, ExternalMode, ExternalPlan, PROTO_LIMIT};
use crate::scratch::Loc;
use crate::{IoError, Scratch};
use bytes::buf::UninitSlice;
use bytes::BufMut;
use prost::Message;
use sparsify_ir::Model;
use sparsify_onnx_proto as pb;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

const CHUNK: usize = 1 << 20;

/// A `BufMut` that writes to a file through a buffer of `chunk` bytes (1 MiB). Write errors are kept and
/// reported by [`Sink::finish`] (prost's encoder cannot fail midway).
struct Sink<'s, W: Write> {
    file: W,
    chunk: usize,
    buf: Vec<u8>,
    err: Option<std::io::Error>,
    /// A second handle to the same open file (same position) and the scratch: large slices that are a
    /// mapped input file's or the scratch's bytes are copied file to file instead of through memory.
    direct: Option<(File, Option<&'s Scratch>)>,
    /// Bytes emitted before `buf`.
    pos: u64,
    /// Positioned mode ([`Sink::positioned`]): every write goes to `direct`'s handle at its position
    /// (`file` is unused) and slices the scratch already holds at that position are skipped.
    positioned: bool,
    /// (address, length, position) of every slice handed to `put_slice`, when recording a layout.
    record: Option<Vec<Placed>>,
}

impl<'s, W: Write> Sink<'s, W> {
    fn new(file: W, chunk: usize) -> Sink<'s, W> {
        let chunk = chunk.max(1);
        Sink {
            file,
            chunk,
            buf: Vec::with_capacity(chunk),
            err: None,
            direct: None,
            pos: 0,
            positioned: false,
            record: None,
        }
    }

    /// Copy large slices file to file through `handle` (a clone of the file `W` writes to).
    fn with_direct(mut self, handle: File, scratch: Option<&'s Scratch>) -> Sink<'s, W> {
        self.direct = Some((handle, scratch));
        self
    }

    /// Write everything at its offset through `handle` (from offset 0), leaving in place the slices
    /// `scratch` stored at exactly their offset in `handle`'s file ([`Loc::InPlace`]).
    fn positioned(mut self, handle: File, scratch: &'s Scratch) -> Sink<'s, W> {
        self.direct = Some((handle, Some(scratch)));
        self.positioned = true;
        self
    }

    /// Record where every slice lands instead of (or as well as) writing it.
    fn recording(mut self) -> Sink<'s, W> {
        self.record = Some(Vec::new());
        self
    }

    /// Write `src` with a kernel copy when it is stored bytes; `Ok(false)` when it is not.
    fn copy_direct(&mut self, src: &[u8]) -> std::io::Result<bool> {
        let at = self.positioned.then_some(self.pos);
        match &self.direct {
            Some((_, Some(s))) if self.positioned && s.write_unchanged(self.pos, src)? => Ok(true),
            Some((handle, scratch)) => copy_stored(handle, src, *scratch, at),
            None => Ok(false),
        }
    }

    /// Write `bytes` at the current position (positioned mode) or at the file's position.
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &self.direct {
            Some((handle, _)) if self.positioned => handle.write_all_at(bytes, self.pos),
            _ => self.file.write_all(bytes),
        }
    }

    /// In positioned mode: whether `src` is already where it would be written next in the output file.
    fn already_there(&self, src: &[u8]) -> bool {
        match &self.direct {
            Some((_, Some(s))) if self.positioned => {
                s.locate(src) == Some(Loc::InPlace(self.pos + self.buf.len() as u64))
            }
            _ => false,
        }
    }

    fn flush_buf(&mut self) {
        if self.err.is_none() && !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            if let Err(e) = self.emit(&buf) {
                self.err = Some(e);
            }
            self.buf = buf;
        }
        self.pos += self.buf.len() as u64;
        self.buf.clear();
    }
    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buf();
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

// SAFETY: the trait's contract is that `chunk_mut` returns writable memory the caller may initialise and
// `advance_mut(cnt)` is called only after the first `cnt` bytes of that chunk were initialised.
// - `chunk_mut` returns exactly `buf`'s spare capacity (`spare_capacity_mut`), never initialised memory
//   we still read, and it is never empty: when `len == capacity` the buffer is flushed (cleared) first,
//   and the capacity is at least `chunk >= 1` (`clear` keeps it; nothing else reallocates the buffer
//   except `extend_from_slice` in `put_slice`, which only grows it).
// - `advance_mut(cnt)` extends the length over those `cnt` just-initialised bytes; `set_len` is sound
//   because `len + cnt <= capacity` (the caller wrote at most `chunk_mut().len()` bytes) and they are
//   initialised. The assert turns a caller breaking the contract into a panic instead of UB.
// Miri runs these paths: `write::tests::sink_*` (`cargo +nightly miri test -p sparsify-onnx-io --lib sink`).
unsafe impl<W: Write> BufMut for Sink<'_, W> {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize - self.buf.len()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advance_mut past the chunk");
        // SAFETY: see the impl comment: `len <= capacity` and the bytes up to `len` are initialised.
        unsafe { self.buf.set_len(len) };
        if self.buf.len() >= self.chunk {
            self.flush_buf();
        }
    }
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }
    // prost writes `bytes::Bytes` fields through `put`; hand each contiguous chunk to `put_slice` so that
    // large tensors skip the buffer (the default `put` copies through `chunk_mut`).
    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let n = src.chunk().len();
            self.put_slice(src.chunk());
            src.advance(n);
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        if let Some(r) = &mut self.record {
            r.push((src.as_ptr() as usize, src.len(), self.pos + self.buf.len() as u64));
        }
        if !src.is_empty() && self.already_there(src) {
            self.flush_buf();
            self.pos += src.len() as u64;
            return;
        }
        if src.len() >= self.chunk {
            self.flush_buf();
            if self.err.is_none() {
                let done = match self.copy_direct(src) {
                    Ok(true) => Ok(()),
                    Ok(false) => self.emit(src),
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    self.err = Some(e);
                }
            }
            self.pos += src.len() as u64;
        } else {
            if self.buf.len() + src.len() > self.chunk {
                self.flush_buf();
            }
            self.buf.extend_from_slice(src);
        }
    }
}

/// A file written atomically: content goes to a temporary file created exclusively beside `dest`;
/// [`AtomicFile::commit`] syncs it and renames it over `dest`. Dropped without a commit (an error, a
/// panic), the temporary file is removed and `dest` is untouched.
pub struct AtomicFile {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl AtomicFile {
    /// Create the temporary file `.<name>.tmp-<pid>-<n>` in `dest`'s folder (`n` unique in the process,
    /// so threads and processes never share one).
    pub fn create(dest: &Path) -> Result<AtomicFile, IoError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let werr = |source| IoError::Write { path: dest.to_path_buf(), source };
        if dest.is_dir() {
            return Err(IoError::Refused { path: dest.into(), why: "it is a directory".into() });
        }
        if let Some(input) = crate::external::mapped_file_at(dest) {
            return Err(IoError::Refused {
                path: dest.into(),
                why: format!("it is '{}', which a loaded model still reads its weights from", input.display()),
            });
        }
        let name = dest
            .file_name()
            .ok_or_else(|| IoError::Refused { path: dest.into(), why: "no file name".into() })?
            .to_string_lossy()
            .into_owned();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let tmp = dest.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
            match File::options().read(true).write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    // A file replaced keeps its permissions (a private 0600 report stays private).
                    if let Ok(m) = std::fs::metadata(dest) {
                        file.set_permissions(m.permissions()).map_err(werr)?;
                    }
                    return Ok(AtomicFile { file, tmp, dest: dest.to_path_buf(), done: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(werr(e)),
            }
        }
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// A second handle to the temporary file that writes around the page cache (`O_DIRECT`), or
    /// `None` where the file system refuses that.
    pub(crate) fn open_direct(&self) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        File::options().write(true).custom_flags(libc::O_DIRECT).open(&self.tmp).ok()
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flush the content to disk (done by [`AtomicFile::commit`] too).
    pub fn sync(&mut self) -> Result<(), IoError> {
        self.file.sync_all().map_err(|source| IoError::Write { path: self.dest.clone(), source })
    }

    /// Flush to disk and rename over the destination.
    pub fn commit(mut self) -> Result<(), IoError> {
        self.sync()?;
        self.rename()
    }

    fn rename(mut self) -> Result<(), IoError> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|source| IoError::Write { path: self.dest.clone(), source })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `f` (at `at`, or at its position): file to file in the kernel when they are stored
/// in `scratch` or still a mapped input file's bytes, else from memory.
fn write_bytes(f: &File, bytes: &[u8], scratch: Option<&Scratch>, at: Option<u64>) -> std::io::Result<()> {
    if copy_stored(f, bytes, scratch, at)? {
        return Ok(());
    }
    match at {
        Some(o) => f.write_all_at(bytes, o),
        None => (&mut &*f).write_all(bytes),
    }
}

/// The kernel-copy half of [`write_bytes`]: `Ok(false)` when `bytes` are neither stored nor mapped.
fn copy_stored(f: &File, bytes: &[u8], scratch: Option<&Scratch>, at: Option<u64>) -> std::io::Result<bool> {
    match scratch.and_then(|s| s.locate(bytes).map(|loc| (s, loc))) {
        Some((s, loc)) => s.copy_to(loc, bytes.len(), f, at).map(|_| true),
        None => crate::external::copy_mapped(bytes, f, at),
    }
}

/// Write `bytes` to `path` atomically (see [`AtomicFile`]).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let mut f = AtomicFile::create(path)?;
    f.file().write_all(bytes).map_err(|source| IoError::Write { path: path.into(), source })?;
    f.commit()
}

/// An exclusive lock on renaming a model and its external data file into place, so two processes
/// saving to the same path at once never leave one's model beside the other's data. A lock file left by
/// a killed process is taken over after `STALE`.
struct RenameLock(PathBuf);

const STALE: Duration = Duration::from_secs(10);

impl RenameLock {
    fn acquire(dest: &Path) -> Result<RenameLock, IoError> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = dest.with_file_name(format!(".{name}.lock"));
        let start = Instant::now();
        loop {
            match File::options().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(RenameLock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|a| a > STALE) || start.elapsed() > STALE {
                        let _ = std::fs::remove_file(&path);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => return Err(IoError::Write { path: dest.into(), source }),
            }
        }
    }
}

impl Drop for RenameLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where `save` puts external data for `model` saved to `path` with `opts`: the data file's path and an
/// empty plan, or `None` when everything stays inline.
pub(crate) fn data_plan(model: &Model, path: &Path, opts: &ExportOptions) -> Option<(PathBuf, ExternalPlan)> {
    let file_name = path.file_name()?.to_string_lossy().into_owned();
    let data_name = format!("{file_name}.data");
    let big = weight_bytes(model) > PROTO_LIMIT - (64 << 20);
    let (location, all) = match opts.external {
        ExternalMode::Never => (None, false),
        ExternalMode::Always => (Some(data_name.clone()), true),
        ExternalMode::Auto if big => (Some(data_name.clone()), true),
        ExternalMode::Auto if has_external(model) => (Some(data_name.clone()), false),
        ExternalMode::Auto => (None, false),
    };
    let plan =
        ExternalPlan { location, all, threshold: opts.threshold, offset: 0, chunks: Vec::new(), names: Vec::new() };
    Some((path.with_file_name(&data_name), plan))
}

pub(crate) fn save(model: &Model, path: &Path, opts: &ExportOptions, scratch: Option<&Scratch>) -> Result<(), IoError> {
    if path.is_dir() {
        return Err(IoError::Refused { path: path.into(), why: "it is a directory".into() });
    }
    let (data_path, mut plan) = data_plan(model, path, opts)
        .ok_or_else(|| IoError::Refused { path: path.into(), why: "no file name".into() })?;
    let proto = build(model, &mut plan)?;
    let len = proto.encoded_len() as u64;
    if len > PROTO_LIMIT {
        return Err(IoError::TooLarge { bytes: len });
    }
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| IoError::Write { path: p, source }
    };
    let mut data = None;
    if !plan.chunks.is_empty() {
        if let Some(f) = scratch.and_then(|s| finish_in_place(s, &data_path, &plan)) {
            data = Some(f?);
        } else {
            let mut f = AtomicFile::create(&data_path)?;
            let mut pos = 0u64;
            for (offset, bytes) in &plan.chunks {
                let pad = (offset - pos) as usize;
                f.file().write_all(&vec![0u8; pad]).map_err(werr(&data_path))?;
                write_bytes(f.file(), bytes, scratch, None).map_err(werr(&data_path))?;
                pos = offset + bytes.len() as u64;
            }
            data = Some(f);
        }
    }
    let inline_in_place = match scratch {
        Some(s) if plan.chunks.is_empty() => finish_inline_in_place(s, path, &proto).transpose()?,
        _ => None,
    };
    let out = match inline_in_place {
        Some(out) => out,
        None => {
            let mut out = AtomicFile::create(path)?;
            let handle = out.file().try_clone().map_err(werr(path))?;
            let mut sink = Sink::new(out.file(), CHUNK).with_direct(handle, scratch);
            proto
                .encode(&mut sink)
                .map_err(|e| IoError::Write { path: path.into(), source: std::io::Error::other(e) })?;
            sink.finish().map_err(werr(path))?;
            out
        }
    };
    match data {
        Some(mut data) => {
            let mut out = out;
            data.sync()?;
            out.sync()?;
            let _lock = RenameLock::acquire(path)?;
            data.rename()?;
            out.rename()
        }
        None => out.commit(),
    }
}

/// A byte slice in an encoding: (address in memory, length, offset in the encoded file).
pub(crate) type Placed = (usize, usize, u64);

/// Where the encoding of `proto` puts its byte and string fields: (address, length, offset) of each,
/// and the encoded length. Nothing is written and no field is read.
pub(crate) fn layout_of(proto: &pb::ModelProto) -> Option<(u64, Vec<Placed>)> {
    let mut sink = Sink::new(std::io::sink(), CHUNK).recording();
    proto.encode(&mut sink).ok()?;
    sink.flush_buf();
    Some((sink.pos, sink.record.take().unwrap_or_default()))
}

/// Write an inline model into the scratch's in-place model file (planned by `Scratch::for_output`),
/// leaving the stored tensors where they already are. `None` (use a fresh file) when the scratch has
/// no in-place file for `path`, it was taken by an earlier save, or a stored tensor is no longer at
/// its offset in the new encoding (moving it inside the file could overwrite bytes not yet read).
fn finish_inline_in_place(s: &Scratch, path: &Path, proto: &pb::ModelProto) -> Option<Result<AtomicFile, IoError>> {
    let ip = s.in_place_for(path)?;
    let (end, slices) = layout_of(proto)?;
    let moved = |&(addr, len, at): &Placed| matches!(s.locate_range(addr, len), Some(Loc::InPlace(o)) if o != at);
    if slices.iter().any(moved) {
        return None;
    }
    let mut f = ip.file.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let werr = |source| IoError::Write { path: path.to_path_buf(), source };
    let handle = match f.file().set_len(end).and_then(|()| f.file().try_clone()) {
        Ok(h) => h,
        Err(e) => return Some(Err(werr(e))),
    };
    let mut sink = Sink::new(std::io::sink(), CHUNK).positioned(handle, s);
    if let Err(e) = proto.encode(&mut sink) {
        return Some(Err(werr(std::io::Error::other(e))));
    }
    Some(sink.finish().map(|()| f).map_err(werr))
}

/// Complete the scratch's in-place data file for `plan`: write every chunk not already at its offset.
/// `None` (use a fresh file) when the scratch has no in-place file for `data_path`, it was taken by an
/// earlier save, or the layout changed since it was planned (a chunk's stored bytes sit elsewhere in
/// the file, or the data grew).
fn finish_in_place(s: &Scratch, data_path: &Path, plan: &ExternalPlan) -> Option<Result<AtomicFile, IoError>> {
    let ip = s.in_place_for(data_path)?;
    if plan.offset != ip.end {
        return None;
    }
    let placed = |bytes: &[u8]| match s.locate(bytes) {
        Some(Loc::InPlace(o)) => Some(o),
        _ => None,
    };
    if plan.chunks.iter().any(|(offset, bytes)| placed(bytes).is_some_and(|o| o != *offset)) {
        return None;
    }
    let mut f = ip.file.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let werr = |source| IoError::Write { path: data_path.to_path_buf(), source };
    for (offset, bytes) in &plan.chunks {
        if placed(bytes) != Some(*offset) {
            let written = match s.write_unchanged(*offset, bytes) {
                Ok(true) => Ok(()),
                Ok(false) => write_bytes(f.file(), bytes, Some(s), Some(*offset)),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                return Some(Err(werr(e)));
            }
        }
    }
    Some(Ok(f))
}

#[cfg(test)]
mod tests {
    //! The `Sink` tests are the ones Miri runs: `cargo +nightly miri test -p sparsify-onnx-io --lib sink`.
    use super::*;

    /// A replaced file keeps its permission bits; a new file gets the process default.
    #[test]
    fn replacing_a_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        std::fs::write(&p, "{}").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_file_atomic(&p, b"[1]").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"[1]");
    }

    /// Bytes written through `chunk_mut`/`advance_mut` (the unsafe paths) and `put_slice`, across many
    /// flushes of a small buffer, arrive in order and complete.
    #[test]
    fn sink_chunk_writes_arrive_in_order() {
        let mut out = Vec::new();
        let mut expect = Vec::new();
        {
            let mut sink = Sink::new(&mut out, 16);
            for i in 0..100u8 {
                let chunk = sink.chunk_mut();
                assert_ne!(chunk.len(), 0);
                let n = chunk.len().min(usize::from(i % 7) + 1);
                let bytes: Vec<u8> = (0..n as u8).map(|k| i.wrapping_mul(31).wrapping_add(k)).collect();
                chunk[..n].copy_from_slice(&bytes);
                // SAFETY: the first `n` bytes of the chunk were just initialised.
                unsafe { sink.advance_mut(n) };
                expect.extend_from_slice(&bytes);
                let long: Vec<u8> = vec![i; usize::from(i % 40)];
                sink.put_slice(&long);
                expect.extend_from_slice(&long);
            }
            sink.finish().unwrap();
        }
        assert_eq!(out, expect);
    }

    /// A prost message encoded through the sink equals `encode_to_vec`.
    #[test]
    fn sink_prost_encoding_matches_encode_to_vec() {
        let t = sparsify_onnx_proto::TensorProto {
            name: Some("w".into()),
            dims: vec![3, 5],
            float_data: (0..15).map(|i| i as f32 * 0.5).collect(),
            raw_data: Some(bytes::Bytes::from((0..40u8).collect::<Vec<u8>>())),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut sink = Sink::new(&mut out, 8);
        t.encode(&mut sink).unwrap();
        sink.finish().unwrap();
        assert_eq!(out, t.encode_to_vec());
    }

    /// A write error is kept and reported by `finish`, not lost.
    #[test]
    fn sink_reports_write_errors() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut sink = Sink::new(Full, 4);
        sink.put_slice(b"0123456789");
        assert_eq!(sink.finish().unwrap_err().to_string(), "disk full");
    }
}
