//! The seed library API for code that embeds the library (e.g. a training loop): importance scores,
//! unstructured and N:M masks over plain `ndarray` weights, and [`PruningSchedule`]. A thin layer over
//! the same math the `score` / `mask` passes use (`score_math`, `select`), so both make the
//! same decisions: exactly floor(s·n) pruned, lowest scores first, ties keep the lower index.
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use sparsify_passes::seed::{generate_nm_mask, generate_unstructured_mask, Importance, Layer, MagnitudeImportance};
//!
//! // A [out=2, in=4] weight.
//! let w = ArrayD::from_shape_vec(IxDyn(&[2, 4]), vec![0.1f32, -2.0, 0.3, 4.0, -5.0, 0.6, 0.7, -0.8]).unwrap();
//! let layer = Layer::new("fc", w.clone());
//! let scores = MagnitudeImportance::l1().compute(&layer, None)?;
//! let mask = generate_unstructured_mask(&scores, 0.5)?;
//! assert_eq!(mask.sparsity(), 0.5);
//! let mut weights = w.clone();
//! mask.apply(&mut weights)?;
//! assert_eq!(weights.iter().filter(|v| **v == 0.0).count(), 4);
//!
//! // 2:4 — N = 2 KEPT out of every 4 consecutive elements along the last axis.
//! let nm = generate_nm_mask(&scores, 2, 4)?;
//! let mut weights = w;
//! nm.apply(&mut weights)?;
//! assert_eq!(weights.as_slice().unwrap(), &[0.0, -2.0, 0.0, 4.0, -5.0, 0.0, 0.0, -0.8]);
//! # Ok::<(), sparsify_passes::seed::PruningError>(())
//! ```
//!
//! Wanda takes the calibration as the L2 norms ‖X_j‖₂ of the layer's input features:
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use sparsify_passes::seed::{Importance, Layer, WandaImportance};
//! let w = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1.0f32, -1.0]).unwrap();
//! let scores = WandaImportance::new().compute(&Layer::new("fc", w), Some(&[3.0, 0.5]))?;
//! assert_eq!(scores.as_slice().unwrap(), &[3.0, 0.5]);
//! # Ok::<(), sparsify_passes::seed::PruningError>(())
//! ```

pub use crate::schedule::{PruningSchedule, ScheduleError};
use crate::score_math::{magnitude, wanda, FeatureMap};
use crate::select::{highest_k, lowest_k, prune_count};
use ndarray::{ArrayD, Zip};
use sparsify_ir::{Tensor, WeightInfo};
use std::ops::Deref;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PruningError {
    #[error("invalid sparsity {value}: {constraint}")]
    InvalidSparsity { value: f64, constraint: String },
    #[error("invalid pattern: {0}")]
    InvalidPattern(String),
    #[error("shape mismatch: expected {expected:?}, got {got:?}")]
    ShapeMismatch { expected: Vec<usize>, got: Vec<usize> },
    #[error("{method}: numerical instability in '{tensor}': {details}")]
    NumericalInstability { method: String, tensor: String, details: String },
    #[error("{method} needs calibration data (the L2 norm of every input feature)")]
    CalibrationRequired { method: String },
    #[error("layer '{layer}': {details}")]
    InvalidLayer { layer: String, details: String },
}

/// A weight with the axes that matter for pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub weights: ArrayD<f32>,
    /// Output-channel axis (rows).
    pub out_axis: usize,
    /// Reduction (input-feature) axis.
    pub red_axis: usize,
    /// Conv `group` count (the reduction index is then the channel within the output channel's group).
    pub groups: usize,
}

impl Layer {
    /// A `[out, in, ...]` weight (PyTorch Linear / Conv layout): output axis 0, reduction axis 1.
    pub fn new(name: impl Into<String>, weights: ArrayD<f32>) -> Layer {
        let red_axis = usize::from(weights.ndim() > 1);
        Layer { name: name.into(), weights, out_axis: 0, red_axis, groups: 1 }
    }

    /// Set the axes (e.g. `with_axes(1, 0)` for an ONNX MatMul weight `[K, N]`).
    pub fn with_axes(mut self, out_axis: usize, red_axis: usize) -> Layer {
        self.out_axis = out_axis;
        self.red_axis = red_axis;
        self
    }

    pub fn with_groups(mut self, groups: usize) -> Layer {
        self.groups = groups.max(1);
        self
    }

    /// From an IR tensor and its weight-route analysis (`Graph::find_weights`).
    pub fn from_tensor(t: &Tensor, info: &WeightInfo) -> Result<Layer, PruningError> {
        let weights =
            t.to_f32().map_err(|e| PruningError::InvalidLayer { layer: t.name.clone(), details: e.to_string() })?;
        let groups = if info.op() == "Conv" { info.groups() } else { 1 };
        Ok(Layer { name: t.name.clone(), weights, out_axis: info.out_axis(), red_axis: info.red_axis(), groups })
    }

    fn check_finite(&self, method: &str) -> Result<(), PruningError> {
        match self.weights.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(PruningError::NumericalInstability {
                method: method.to_string(),
                tensor: self.name.clone(),
                details: format!("non-finite weight {} at flat index {i}", self.weights.iter().nth(i).unwrap()),
            }),
        }
    }
}

/// Importance scores (≥ 0, same shape as the weight); dereferences to the array.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportanceScores {
    pub values: ArrayD<f32>,
    pub method: String,
}

impl Deref for ImportanceScores {
    type Target = ArrayD<f32>;
    fn deref(&self) -> &ArrayD<f32> {
        &self.values
    }
}

/// An importance criterion.
pub trait Importance {
    /// Scores for `layer`; `calibration` is the L2 norm ‖X_j‖₂ of each input feature, for methods that
    /// need activations.
    fn compute(&self, layer: &Layer, calibration: Option<&[f64]>) -> Result<ImportanceScores, PruningError>;
    fn name(&self) -> &str;
    fn requires_calibration(&self) -> bool {
        false
    }
}

/// |w| (`l1`) or w² (`l2`, squared, not a norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MagnitudeImportance {
    squared: bool,
}

impl MagnitudeImportance {
    pub fn l1() -> Self {
        MagnitudeImportance { squared: false }
    }
    pub fn l2() -> Self {
        MagnitudeImportance { squared: true }
    }
}

impl Importance for MagnitudeImportance {
    fn compute(&self, layer: &Layer, _calibration: Option<&[f64]>) -> Result<ImportanceScores, PruningError> {
        layer.check_finite(self.name())?;
        Ok(ImportanceScores { values: magnitude(&layer.weights, self.squared), method: self.name().to_string() })
    }
    fn name(&self) -> &str {
        if self.squared {
            "magnitude_l2"
        } else {
            "magnitude_l1"
        }
    }
}

/// Wanda: |w_ij| · ‖X_j‖₂ (Sun et al., 2023), j along the layer's reduction axis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WandaImportance;

impl WandaImportance {
    pub fn new() -> Self {
        WandaImportance
    }
}

impl Importance for WandaImportance {
    fn compute(&self, layer: &Layer, calibration: Option<&[f64]>) -> Result<ImportanceScores, PruningError> {
        let norms = calibration.ok_or_else(|| PruningError::CalibrationRequired { method: "wanda".into() })?;
        layer.check_finite("wanda")?;
        let map = FeatureMap { out_axis: layer.out_axis, red_axis: layer.red_axis, conv_groups: layer.groups };
        let values = wanda(&layer.weights, &map, norms)
            .map_err(|details| PruningError::InvalidLayer { layer: layer.name.clone(), details })?;
        Ok(ImportanceScores { values, method: "wanda".into() })
    }
    fn name(&self) -> &str {
        "wanda"
    }
    fn requires_calibration(&self) -> bool {
        true
    }
}

/// The structure a mask was generated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparsityPattern {
    Unstructured,
    /// `n` kept out of every `m` consecutive elements along the last axis.
    NM {
        n: usize,
        m: usize,
    },
}

/// Keep flags, same shape as the weight.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsityMask {
    keep: ArrayD<bool>,
    pattern: SparsityPattern,
}

impl SparsityMask {
    pub fn keep(&self) -> &ArrayD<bool> {
        &self.keep
    }
    pub fn pattern(&self) -> SparsityPattern {
        self.pattern
    }
    pub fn shape(&self) -> &[usize] {
        self.keep.shape()
    }
    /// Kept elements.
    pub fn nnz(&self) -> usize {
        self.keep.iter().filter(|k| **k).count()
    }
    /// Pruned elements.
    pub fn num_zeros(&self) -> usize {
        self.keep.len() - self.nnz()
    }
    /// Pruned / elements (0 for an empty mask).
    pub fn sparsity(&self) -> f64 {
        if self.keep.is_empty() {
            0.0
        } else {
            self.num_zeros() as f64 / self.keep.len() as f64
        }
    }

    /// Zero the pruned elements of `weights` (kept ones are untouched). Idempotent.
    pub fn apply(&self, weights: &mut ArrayD<f32>) -> Result<(), PruningError> {
        self.check_shape(weights.shape())?;
        Zip::from(weights).and(&self.keep).for_each(|w, &k| {
            if !k {
                *w = 0.0;
            }
        });
        Ok(())
    }

    /// Zero the pruned elements of an IR tensor in its own dtype; returns how many changed.
    pub fn apply_to_tensor(&self, t: &mut Tensor) -> Result<usize, PruningError> {
        self.check_shape(&t.shape())?;
        let flags: Vec<bool> = self.keep.iter().copied().collect();
        t.zero_where(&flags).map_err(|e| PruningError::InvalidLayer { layer: t.name.clone(), details: e.to_string() })
    }

    fn check_shape(&self, got: &[usize]) -> Result<(), PruningError> {
        if got != self.keep.shape() {
            return Err(PruningError::ShapeMismatch { expected: self.keep.shape().to_vec(), got: got.to_vec() });
        }
        Ok(())
    }
}

fn check_scores(scores: &ArrayD<f32>) -> Result<Vec<f32>, PruningError> {
    let v: Vec<f32> = scores.iter().copied().collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(PruningError::NumericalInstability {
            method: "mask".into(),
            tensor: "scores".into(),
            details: format!("non-finite score {} at flat index {i}", v[i]),
        });
    }
    Ok(v)
}

/// Prune exactly floor(sparsity·n) elements: the lowest scores, ties pruning the higher index first.
pub fn generate_unstructured_mask(scores: &ArrayD<f32>, sparsity: f64) -> Result<SparsityMask, PruningError> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(PruningError::InvalidSparsity { value: sparsity, constraint: "must be in [0, 1]".into() });
    }
    let v = check_scores(scores)?;
    let mut keep = vec![true; v.len()];
    for i in lowest_k(&v, prune_count(sparsity, v.len())) {
        keep[i] = false;
    }
    let keep = ArrayD::from_shape_vec(scores.raw_dim(), keep).expect("same length");
    Ok(SparsityMask { keep, pattern: SparsityPattern::Unstructured })
}

/// N:M: in every group of `m` consecutive elements along the last axis, keep the `n` highest scores
/// (ties keep the lower index). Needs 0 < n < m and the last dimension a multiple of `m`.
pub fn generate_nm_mask(scores: &ArrayD<f32>, n: usize, m: usize) -> Result<SparsityMask, PruningError> {
    if n == 0 || n >= m {
        return Err(PruningError::InvalidPattern(format!("{n}:{m}: need 0 < N < M (N = kept per group of M)")));
    }
    let last = *scores.shape().last().ok_or_else(|| PruningError::InvalidPattern("scores are a scalar".into()))?;
    if !last.is_multiple_of(m) {
        return Err(PruningError::InvalidPattern(format!("last dimension {last} is not a multiple of M = {m}")));
    }
    let v = check_scores(scores)?;
    let mut keep = vec![false; v.len()];
    for (g, chunk) in v.chunks(m).enumerate() {
        for i in highest_k(chunk, n) {
            keep[g * m + i] = true;
        }
    }
    let keep = ArrayD::from_shape_vec(scores.raw_dim(), keep).expect("same length");
    Ok(SparsityMask { keep, pattern: SparsityPattern::NM { n, m } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn errors_name_the_problem() {
        let w = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1.0f32, f32::NAN, 0.0]).unwrap();
        let e = MagnitudeImportance::l2().compute(&Layer::new("fc.w", w), None).unwrap_err();
        assert!(e.to_string().contains("fc.w") && e.to_string().contains("index 1"), "{e}");
        let s = ArrayD::from_shape_vec(IxDyn(&[6]), vec![1.0f32; 6]).unwrap();
        assert!(generate_nm_mask(&s, 2, 4).is_err(), "6 is not a multiple of 4");
        assert!(generate_nm_mask(&s, 3, 3).is_err());
        assert!(generate_unstructured_mask(&s, 1.5).is_err());
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32; 4]).unwrap();
        assert!(matches!(
            WandaImportance::new().compute(&Layer::new("x", w), None),
            Err(PruningError::CalibrationRequired { .. })
        ));
    }

    #[test]
    fn equal_scores_never_over_prune() {
        let s = ArrayD::from_shape_vec(IxDyn(&[5]), vec![2.0f32; 5]).unwrap();
        let m = generate_unstructured_mask(&s, 0.5).unwrap();
        assert_eq!(m.keep().as_slice().unwrap(), &[true, true, true, false, false]);
        assert_eq!(m.sparsity(), 0.4);
    }
}
