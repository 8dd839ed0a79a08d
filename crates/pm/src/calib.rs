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
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibStat {
    /// Σ x_j² per feature, and the number of rows (positions) summed.
    FeatureSqNorm { sums: Vec<f64>, rows: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CalibError(pub String);

pub trait Calibrator: Sync {
    /// Collect the requested statistics by running `model` over the calibration data.
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError>;
}
