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

/// A paired statistic: the same activation in a reference model (the dense one) and in the current
/// model, read at the same calibration positions (both models run on the same batches in lockstep).
#[derive(Debug, Clone, PartialEq)]
pub struct PairRequest {
    /// The activation's name in the reference model.
    pub reference: String,
    /// The activation's name in the current model (usually the same name).
    pub current: String,
    /// The channel axis (1 for a Conv output [N, C, ...], last for a MatMul / Gemm output); every other
    /// axis is a position.
    pub axis: FeatureAxis,
}

/// Answer to a [`PairRequest`]: per channel, with ỹ the current and y the reference activation, Σỹ, Σy,
/// Σỹ², Σỹy over every position, and the positions counted (`rows`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PairStat {
    pub sum_cur: Vec<f64>,
    pub sum_ref: Vec<f64>,
    pub sq_cur: Vec<f64>,
    pub cross: Vec<f64>,
    pub rows: u64,
}

impl PairStat {
    /// Zero sums for `channels` channels.
    pub fn zeros(channels: usize) -> PairStat {
        let z = vec![0f64; channels];
        PairStat { sum_cur: z.clone(), sum_ref: z.clone(), sq_cur: z.clone(), cross: z, rows: 0 }
    }

    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.sum_cur.len()
    }

    /// Add the sums of another batch (same channel count).
    pub fn merge(&mut self, other: &PairStat) -> Result<(), CalibError> {
        if other.channels() != self.channels() {
            return Err(CalibError(format!(
                "channel count changed between batches ({} vs {})",
                self.channels(),
                other.channels()
            )));
        }
        let add = |a: &mut Vec<f64>, b: &Vec<f64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.sum_cur, &other.sum_cur);
        add(&mut self.sum_ref, &other.sum_ref);
        add(&mut self.sq_cur, &other.sq_cur);
        add(&mut self.cross, &other.cross);
        self.rows += other.rows;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CalibError(pub String);

pub trait Calibrator: Sync {
    /// Collect the requested statistics by running `model` over the calibration data.
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError>;
    /// Run `reference` and `current` over the same calibration batches in lockstep and answer paired
    /// per-channel statistics ([`PairRequest`], one [`PairStat`] per request, in order).
    fn collect_paired(
        &self,
        reference: &Model,
        current: &Model,
        requests: &[PairRequest],
    ) -> Result<Vec<PairStat>, CalibError> {
        let _ = (reference, current, requests);
        Err(CalibError("paired statistics not supported by this calibrator".into()))
    }
    /// Run `reference` once now and keep its `tensors` (every calibration batch) for later
    /// [`Calibrator::collect_paired`] calls with the same reference model, which then run only the
    /// current model. `None` releases what is kept. Returns whether the activations are kept (a
    /// calibrator may refuse, e.g. over its memory budget); the default keeps nothing.
    fn keep_reference(&self, reference: Option<(&Model, &[String])>) -> Result<bool, CalibError> {
        let _ = reference;
        Ok(false)
    }
    /// A hash of the calibration data, for caches of measured results (0 = unknown: do not cache).
    fn fingerprint(&self) -> u64 {
        0
    }
}
