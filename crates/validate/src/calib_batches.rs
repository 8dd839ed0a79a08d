//! Calibration data as runs: loading a set of samples and splitting each into batches along every
//! input's own batch axis, as real exporters lay inputs out.
//!
//! - **Samples**: `--calib` is one feed (a `.npz`, a `.npy`, a folder of `<input>.npy` /
//!   `input_<k>.npy`), or a folder of sample folders (`calib/<k>/input_<i>.npy`, sorted by name, numbers
//!   in numeric order), each sample a feed of its own — what a model with a fixed batch of 1 needs.
//! - **Batch axis** of each input, from the declared shapes: the symbolic dim (`batch`, `N`, ...) shared
//!   by the most inputs, wherever it sits (`[seq, batch, feat]` and a state `[layers, batch, hidden]` both
//!   split along axis 1); when no symbol is shared, an input's first non-fixed dim (`[sequence_length,
//!   576]` splits along axis 0). An input whose declared shape is fully fixed (a recurrent state
//!   `[1, 1, 128]`, a scalar) has no batch axis and is passed whole to every batch. An input declared
//!   without a shape splits along axis 0.
//! - **Batches** of at most `batch` rows along those axes; the last batch is smaller when `batch` does
//!   not divide the row count.
//! - Where it cannot split (the batched inputs disagree on the row count, or nothing has a batch
//!   axis), a sample runs as given, in one run, and a note says so. Nothing here fails for a layout.

use std::path::{Path, PathBuf};

use ndarray::{Axis, Slice};

use crate::array::{rewrap_array, Array};
use crate::feed::load_feed;
use crate::{Dim, Feed, InputDecl, ValidateError};

/// Calibration runs and what was decided on the way (for the run report).
#[derive(Debug, Clone, Default)]
pub struct BatchPlan {
    /// One feed per run of the model.
    pub batches: Vec<Feed>,
    /// Human-readable decisions: axes used, inputs passed whole, samples run as given.
    pub notes: Vec<String>,
}

/// Load calibration samples from `path`: one feed ([`load_feed`]), or one per sample folder when
/// `path` is a folder whose inputs sit in sub-folders (`<path>/<k>/...`).
pub fn load_samples(path: &Path, decls: &[InputDecl]) -> Result<Vec<Feed>, ValidateError> {
    let subdirs = sample_dirs(path)?;
    if subdirs.is_empty() {
        return Ok(vec![load_feed(path, decls)?]);
    }
    match load_feed(path, decls) {
        // Files for every input directly in the folder win over sub-folders.
        Ok(feed) => Ok(vec![feed]),
        Err(_) => subdirs.iter().map(|d| load_feed(d, decls)).collect(),
    }
}

/// Sub-folders of `path` (none when it is a file), numbers in numeric order, then by name.
fn sample_dirs(path: &Path) -> Result<Vec<PathBuf>, ValidateError> {
    if !path.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ValidateError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    let key = |p: &PathBuf| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (name.parse::<u64>().map_or(1, |_| 0), name.parse::<u64>().unwrap_or(0), name)
    };
    dirs.sort_by_key(key);
    Ok(dirs)
}

/// The batch axis of every declared input (`None`: no batch axis, passed whole), decided from the
/// declared shapes alone (see the module docs). `ranks` are the fed arrays' ranks.
pub fn batch_axes(decls: &[InputDecl], ranks: &[usize]) -> Vec<Option<usize>> {
    // The named symbol shared by the most inputs; ties: the one sitting at the lowest axis, then the
    // first seen.
    let mut symbols: Vec<(String, usize, usize)> = Vec::new(); // (name, inputs, axis sum)
    for d in decls {
        let mut seen: Vec<&str> = Vec::new();
        for (axis, dim) in d.dims.iter().enumerate() {
            if let (Dim::Named(s), None) = (dim, dim.fixed()) {
                if seen.contains(&s.as_str()) {
                    continue;
                }
                seen.push(s);
                match symbols.iter_mut().find(|(n, ..)| n == s) {
                    Some(e) => {
                        e.1 += 1;
                        e.2 += axis;
                    }
                    None => symbols.push((s.clone(), 1, axis)),
                }
            }
        }
    }
    let shared = symbols
        .iter()
        .filter(|s| s.1 >= 2)
        .enumerate()
        .min_by_key(|(i, s)| (std::cmp::Reverse(s.1), s.2, *i))
        .map(|(_, s)| s.0.clone());
    decls
        .iter()
        .zip(ranks)
        .map(|(d, &rank)| {
            if d.dims.is_empty() {
                return (rank > 0).then_some(0);
            }
            if let Some(sym) = &shared {
                if let Some(a) = d.dims.iter().position(|x| matches!(x, Dim::Named(s) if s == sym)) {
                    return Some(a);
                }
                // Inputs without the shared symbol are not batched along it.
                if d.dims.iter().any(|x| matches!(x, Dim::Named(_))) {
                    return None;
                }
            }
            d.dims.iter().position(|x| x.fixed().is_none())
        })
        .collect()
}

/// Split every sample into batches of at most `batch` rows along each input's batch axis.
pub fn plan_batches(samples: &[Feed], decls: &[InputDecl], batch: usize) -> Result<BatchPlan, ValidateError> {
    if batch == 0 {
        return Err(ValidateError::feed("batch size must be at least 1"));
    }
    let mut plan = BatchPlan::default();
    fn note(plan: &mut BatchPlan, s: String) {
        if !plan.notes.contains(&s) {
            plan.notes.push(s);
        }
    }
    if samples.len() > 1 {
        note(&mut plan, format!("{} calibration samples (one folder each)", samples.len()));
    }
    for (k, feed) in samples.iter().enumerate() {
        let sample = if samples.len() > 1 { format!("sample {k}: ") } else { String::new() };
        // Match declarations to the feed by name; inputs the model does not declare split along axis 0.
        let decl_of: Vec<InputDecl> = feed
            .arrays
            .iter()
            .map(|(n, _)| {
                decls.iter().find(|d| &d.name == n).cloned().unwrap_or(InputDecl {
                    name: n.clone(),
                    elem_type: 0,
                    dims: Vec::new(),
                })
            })
            .collect();
        let ranks: Vec<usize> = feed.arrays.iter().map(|(_, a)| a.shape().len()).collect();
        let axes = batch_axes(&decl_of, &ranks);
        let batched: Vec<(usize, usize, usize)> = axes
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.and_then(|a| feed.arrays[i].1.shape().get(a).map(|&len| (i, a, len))))
            .collect();
        for ((name, arr), axis) in feed.arrays.iter().zip(&axes) {
            if axis.is_none() {
                note(
                    &mut plan,
                    format!("input `{name}` {:?} has no batch axis: passed whole to every batch", arr.shape()),
                );
            } else if let Some(a) = axis.filter(|&a| a > 0) {
                note(&mut plan, format!("input `{name}`: batch axis {a} (from its declared shape)"));
            }
        }
        let rows = batched.first().map(|b| b.2);
        let agree = rows.is_some() && batched.iter().all(|b| Some(b.2) == rows);
        if !agree {
            let why = if batched.is_empty() {
                "no input has a batch axis in its declared shape".to_string()
            } else {
                let parts: Vec<String> = batched
                    .iter()
                    .map(|&(i, a, len)| format!("`{}` has {len} along axis {a}", feed.arrays[i].0))
                    .collect();
                format!("the batched inputs disagree on the row count ({})", parts.join(", "))
            };
            let msg = if batched.is_empty() && samples.len() > 1 {
                format!("{why}: each sample runs as given, in one run")
            } else if batched.is_empty() {
                format!("{why}: running the calibration files as given, in one run")
            } else {
                format!("{sample}{why}: running the calibration files as given, in one run")
            };
            note(&mut plan, msg);
            plan.batches.push(feed.clone());
            continue;
        }
        let rows = rows.unwrap_or(0);
        if rows == 0 {
            note(&mut plan, format!("{sample}no rows along the batch axis: skipped"));
            continue;
        }
        for start in (0..rows).step_by(batch) {
            let end = (start + batch).min(rows);
            let arrays = feed
                .arrays
                .iter()
                .zip(&axes)
                .map(|((name, arr), axis)| {
                    let a = match axis {
                        Some(ax) => {
                            rewrap_array!(arr, x => x.slice_axis(Axis(*ax), Slice::from(start..end)).to_owned())
                        }
                        None => arr.clone(),
                    };
                    (name.clone(), a)
                })
                .collect();
            plan.batches.push(Feed { arrays });
        }
        if !rows.is_multiple_of(batch) && rows > batch {
            note(&mut plan, format!("{rows} rows in batches of {batch}: the last batch has {}", rows % batch));
        }
    }
    Ok(plan)
}
