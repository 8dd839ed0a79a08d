//! External data: resolve `location` safely inside the model's folder and map the file lazily.

use crate::IoError;
use bytes::Bytes;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A mapped file, owned so `Bytes` can slice it without copying.
struct MapOwner(Arc<Mmap>);
impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Map a whole file read-only into `Bytes` (empty files become empty `Bytes`).
pub fn map_file(path: &Path) -> Result<Bytes, std::io::Error> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; the tool never writes to its inputs. Another process truncating the
    // file while it is mapped is outside what any reader can defend against.
    let map = unsafe { Mmap::map(&file)? };
    Ok(Bytes::from_owner(MapOwner(Arc::new(map))))
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
