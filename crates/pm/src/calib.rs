//! Calibration hooks. Passes ask for activation statistics through [`Calibrator`]; the facade implements
//! it by running the current model in tract over the calibration set, batch by batch.

use sparsify_ir::Model;

/// Which axis of an activation holds the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureAxis {
    /// An axis counted from the front (1 for the channels of an NCHW Conv input).
    Index(usize),
    /// The last axis (MatMul / Gemm inputs).
    Last,
}

/// A statistic to collect over all calibration rows.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibRequest {
    /// Σ x_j² per feature j of `tensor`, summed over every other axis (all leading dims for MatMul, batch
    /// and spatial positions for Conv).
    FeatureSqNorm { tensor: String, axis: FeatureAxis },
    /// Σ x xᵀ over every row of `tensor`, x being the vector of its features along `axis` (all other
    /// axes are rows): the input Gram matrix of a MatMul / Gemm (SparseGPT's Hessian up to 2/n).
    Gram { tensor: String, axis: FeatureAxis },
    /// Per group, Σ p pᵀ over the im2col patches p of a Conv input `tensor` laid out [N, C, spatial...]:
    /// for group g, p holds the channels [g·C/groups, (g+1)·C/groups) × kernel positions, flattened
    /// channel-major in the weight's [C/groups, k1, k2, ...] order (index c·Πkernel + kernel position).
    /// `pads` is [begin..., end...] per spatial axis, as the ONNX attribute; zero padding is included in
    /// the patches.
    ConvGram {
        tensor: String,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        groups: usize,
    },
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibStat {
    /// Σ x_j² per feature, and the number of rows (positions) summed.
    FeatureSqNorm { sums: Vec<f64>, rows: u64 },
    /// Answer to [`CalibRequest::Gram`]: the k×k matrix Σ x xᵀ, row-major (symmetric), and the rows summed.
    Gram { h: Vec<f64>, k: usize, rows: u64 },
    /// Answer to [`CalibRequest::ConvGram`]: one k×k row-major Σ p pᵀ per group (k = C/groups · Πkernel),
    /// and the number of patches (batch × output positions) summed.
    GroupGrams { h: Vec<Vec<f64>>, k: usize, rows: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CalibError(pub String);

pub trait Calibrator: Sync {
    /// Collect the requested statistics by running `model` over the calibration data.
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError>;
}
