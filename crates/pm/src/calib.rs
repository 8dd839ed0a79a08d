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
    /// Σ x_j per feature j of `tensor` along `axis`, summed over every other axis (the calibration mean
    /// is sums / rows): the input means of bias correction.
    FeatureSum { tensor: String, axis: FeatureAxis },
    /// Per group, Σ p over the im2col patches p of a Conv input (same geometry and column order as
    /// [`CalibRequest::ConvGram`]): the mean patch of a Conv, zero padding included.
    ConvPatchSum {
        tensor: String,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        groups: usize,
    },
    /// Every value of `tensor` over the whole calibration set, batches concatenated along axis 0 (for
    /// output-error measurements such as the sensitivity analysis; small tensors only).
    Values { tensor: String },
}

impl CalibRequest {
    /// The activation the request reads.
    pub fn tensor(&self) -> &str {
        match self {
            CalibRequest::FeatureSqNorm { tensor, .. }
            | CalibRequest::Gram { tensor, .. }
            | CalibRequest::ConvGram { tensor, .. }
            | CalibRequest::FeatureSum { tensor, .. }
            | CalibRequest::ConvPatchSum { tensor, .. }
            | CalibRequest::Values { tensor } => tensor,
        }
    }
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
    /// Answer to [`CalibRequest::FeatureSum`]: Σ x_j per feature, and the rows summed.
    FeatureSum { sums: Vec<f64>, rows: u64 },
    /// Answer to [`CalibRequest::ConvPatchSum`]: one Σ p per group (length C/groups · Πkernel), and the
    /// patches summed (batch × output positions).
    GroupSums { sums: Vec<Vec<f64>>, rows: u64 },
    /// Answer to [`CalibRequest::Values`]: the values (f32, C order) and the shape, axis 0 = every
    /// calibration row.
    Values { values: Vec<f32>, shape: Vec<usize> },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CalibError(pub String);

pub trait Calibrator: Sync {
    /// Collect the requested statistics by running `model` over the calibration data.
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError>;
    /// A hash of the calibration data, for caches of measured results (0 = unknown: do not cache).
    fn fingerprint(&self) -> u64 {
        0
    }
}
