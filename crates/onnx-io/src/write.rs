//! Atomic, streaming writes: the protobuf is encoded straight into a temporary file in the target folder
//! (large byte fields go from the source map to the file without an intermediate copy), external data is
//! written beside it, and both are renamed into place only when everything succeeded.

use crate::export::{build, has_external, weight_bytes, ExportOptions, ExternalMode, ExternalPlan, PROTO_LIMIT};
use crate::IoError;
use bytes::buf::UninitSlice;
use bytes::BufMut;
use prost::Message;
use sparsify_ir::Model;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const CHUNK: usize = 1 << 20;

/// A `BufMut` that writes to a file through a 1 MiB buffer.
struct Sink {
    file: File,
    buf: Vec<u8>,
    err: Option<std::io::Error>,
}

impl Sink {
    fn new(file: File) -> Sink {
        Sink { file, buf: Vec::with_capacity(CHUNK), err: None }
    }
    fn flush_buf(&mut self) {
        if self.err.is_none() && !self.buf.is_empty() {
            if let Err(e) = self.file.write_all(&self.buf) {
                self.err = Some(e);
            }
        }
        self.buf.clear();
    }
    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buf();
        if let Some(e) = self.err.take() {
            return Err(e);
        }
        self.file.sync_all()
    }
}

// SAFETY: `chunk_mut` hands out the vector's spare capacity and `advance_mut` only extends the length over
// bytes the caller has just initialised, as the trait requires.
unsafe impl BufMut for Sink {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize - self.buf.len()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        self.buf.set_len(len);
        if self.buf.len() >= CHUNK {
            self.flush_buf();
        }
    }
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }
    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= CHUNK {
            self.flush_buf();
            if self.err.is_none() {
                if let Err(e) = self.file.write_all(src) {
                    self.err = Some(e);
                }
            }
        } else {
            if self.buf.len() + src.len() > CHUNK {
                self.flush_buf();
            }
            self.buf.extend_from_slice(src);
        }
    }
}

/// Removes the temporary files unless disarmed.
struct Temps(Vec<PathBuf>);
impl Drop for Temps {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub(crate) fn save(model: &Model, path: &Path, opts: &ExportOptions) -> Result<(), IoError> {
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| IoError::Write { path: p, source }
    };
    if path.is_dir() {
        return Err(IoError::Refused { path: path.into(), why: "it is a directory".into() });
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| IoError::Refused { path: path.into(), why: "no file name".into() })?
        .to_string_lossy()
        .into_owned();
    let data_name = format!("{file_name}.data");
    let big = weight_bytes(model) > PROTO_LIMIT - (64 << 20);
    let (location, all) = match opts.external {
        ExternalMode::Never => (None, false),
        ExternalMode::Always => (Some(data_name.clone()), true),
        ExternalMode::Auto if big => (Some(data_name.clone()), true),
        ExternalMode::Auto if has_external(model) => (Some(data_name.clone()), false),
        ExternalMode::Auto => (None, false),
    };
    let mut plan = ExternalPlan { location, all, threshold: opts.threshold, offset: 0, chunks: Vec::new() };
    let proto = build(model, &mut plan)?;
    let len = proto.encoded_len() as u64;
    if len > PROTO_LIMIT {
        return Err(IoError::TooLarge { bytes: len });
    }
    let mut temps = Temps(Vec::new());
    let data_path = path.with_file_name(&data_name);
    let data_tmp = temp_beside(&data_path);
    if !plan.chunks.is_empty() {
        temps.0.push(data_tmp.clone());
        let mut f = File::create(&data_tmp).map_err(werr(&data_path))?;
        let mut pos = 0u64;
        for (offset, bytes) in &plan.chunks {
            let pad = (offset - pos) as usize;
            f.write_all(&vec![0u8; pad]).map_err(werr(&data_path))?;
            f.write_all(bytes).map_err(werr(&data_path))?;
            pos = offset + bytes.len() as u64;
        }
        f.sync_all().map_err(werr(&data_path))?;
    }
    let tmp = temp_beside(path);
    temps.0.push(tmp.clone());
    let mut sink = Sink::new(File::create(&tmp).map_err(werr(path))?);
    proto.encode(&mut sink).map_err(|e| IoError::Write { path: path.into(), source: std::io::Error::other(e) })?;
    sink.finish().map_err(werr(path))?;
    if !plan.chunks.is_empty() {
        std::fs::rename(&data_tmp, &data_path).map_err(werr(&data_path))?;
    }
    std::fs::rename(&tmp, path).map_err(werr(path))?;
    temps.0.clear();
    Ok(())
}
