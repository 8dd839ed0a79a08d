//! ONNX protobuf ⇄ IR: import, export, external data and atomic, deterministic writes.
//!
//! - [`load`] maps the file read-only and decodes it without copying weight bytes (`raw_data` slices the
//!   map); external data is mapped lazily, with `location` confined to the model's folder.
//! - [`save`] writes the model to a temporary file in the target folder and renames it into place, so a
//!   failure never leaves a partial output; the protobuf is streamed to disk, not built in memory.
//! - Every field the IR does not model is kept in opaque blobs and written back unchanged.

mod export;
mod external;
mod import;
mod scratch;
mod write;

pub use export::{model_to_bytes, ExportOptions, ExternalMode};
pub use import::{model_from_bytes, LoadOptions};
pub use scratch::Scratch;
pub use write::{write_file_atomic, AtomicFile};

use sparsify_ir::Model;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot read '{path}': {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write '{path}': {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("'{path}' is not a valid ONNX model (protobuf decode failed: {msg})")]
    Decode { path: PathBuf, msg: String },
    #[error("the model has no graph")]
    NoGraph,
    #[error("{0}")]
    Tensor(#[from] sparsify_ir::TensorError),
    #[error("tensor '{tensor}': external data {what}")]
    External { tensor: String, what: String },
    #[error("node '{node}': {what}")]
    Node { node: String, what: String },
    #[error("refusing to write '{path}': {why}")]
    Refused { path: PathBuf, why: String },
    #[error("the model needs {bytes} bytes inline, over protobuf's 2 GiB limit: save it with external data")]
    TooLarge { bytes: u64 },
}

/// Load an ONNX model from a file. External data is resolved relative to the file's folder.
pub fn load(path: &Path) -> Result<Model, IoError> {
    import::load_file(path, &LoadOptions::default())
}

/// The files [`load`] read for `model` loaded from `path`: `path` and every external-data file its
/// tensors name (resolved in its folder), each once.
pub fn input_files(model: &Model, path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    for t in &model.graph.initializers {
        if let sparsify_ir::Storage::External { location } = &t.storage {
            let f = dir.join(location);
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    files
}

/// The files [`save`] writes for `model` at `path` with `opts`: `path`, and its external-data file when
/// the output has one.
pub fn output_files(model: &Model, path: &Path, opts: &ExportOptions) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Some((data, plan)) = write::data_plan(model, path, opts) {
        if plan.location.is_some() {
            files.push(data);
        }
    }
    files
}

/// Whether `a` and `b` are the same file (same device and inode: symlinks, `..` spellings and hard links
/// included); `false` when either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => same_inode(&x, &y),
        _ => false,
    }
}

/// Same device and inode.
pub(crate) fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Save a model atomically. Inline model data goes into `path`; external data (when the options or the
/// model ask for it) into `<file name>.data` beside it.
pub fn save(model: &Model, path: &Path, opts: &ExportOptions) -> Result<(), IoError> {
    write::save(model, path, opts, None)
}

/// [`save`] for a model whose rewritten tensors live in `scratch`: their bytes are copied from the
/// scratch file to the output by the kernel instead of through memory. Same output bytes.
pub fn save_with_scratch(model: &Model, path: &Path, opts: &ExportOptions, scratch: &Scratch) -> Result<(), IoError> {
    write::save(model, path, opts, Some(scratch))
}
