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
    /// Like [`Calibrator::collect`], but each answer is handed to `ready(request index, stat)` as soon as
    /// it is final, so a caller can use and drop it before the others are done (a staged calibrator
    /// finishes the statistics of each stage's tensors while later stages still run). Every request is
    /// answered exactly once. The default collects everything, then hands the answers over in order.
    fn collect_each(
        &self,
        model: &Model,
        requests: &[CalibRequest],
        ready: &mut dyn FnMut(usize, CalibStat) -> Result<(), CalibError>,
    ) -> Result<(), CalibError> {
        for (i, s) in self.collect(model, requests)?.into_iter().enumerate() {
            ready(i, s)?;
        }
        Ok(())
    }
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
    /// For each variant of `model`, the relative L2 distance ‖y_v − y‖ / ‖y‖ of tensor `output` over the
    /// whole calibration set, y being `model`'s own values ([`CalibRequest::Values`]). A variant replaces
    /// some of the model's initializers with tensors of the same name, dtype and shape (an empty variant
    /// is the model itself: 0). Measuring many variants of one model this way lets a calibrator prepare
    /// the model once and rerun only what a variant changes; the default runs one
    /// [`Calibrator::collect`] per variant on a copy of the model.
    fn variant_errors(
        &self,
        model: &Model,
        output: &str,
        variants: &[Vec<sparsify_ir::Tensor>],
    ) -> Result<Vec<f64>, CalibError> {
        let reference = values_of(self, model, output)?;
        variants
            .iter()
            .map(|v| {
                if v.is_empty() {
                    return Ok(0.0);
                }
                Ok(rel_l2(&reference, &values_of(self, &apply_variant(model, v)?, output)?))
            })
            .collect()
    }
    /// A hash of the calibration data, for caches of measured results (0 = unknown: do not cache).
    fn fingerprint(&self) -> u64 {
        0
    }
}

/// `model` with the variant's tensors in place of the initializers of the same names.
pub fn apply_variant(model: &Model, variant: &[sparsify_ir::Tensor]) -> Result<Model, CalibError> {
    check_variant(model, variant)?;
    let mut m = model.clone();
    for t in variant {
        if let Some(slot) = m.graph.initializer_mut(&t.name) {
            *slot = t.clone();
        }
    }
    Ok(m)
}

/// A variant may only replace initializers (not graph inputs) by tensors of the same dtype and shape.
pub fn check_variant(model: &Model, variant: &[sparsify_ir::Tensor]) -> Result<(), CalibError> {
    for t in variant {
        if model.graph.inputs.iter().any(|i| i.name == t.name) {
            return Err(CalibError(format!("variant tensor '{}' is a graph input", t.name)));
        }
        let Some(slot) = model.graph.initializer(&t.name) else {
            return Err(CalibError(format!("variant tensor '{}' is not an initializer of the model", t.name)));
        };
        if slot.dtype != t.dtype || slot.dims != t.dims {
            return Err(CalibError(format!(
                "variant tensor '{}' is {} {:?}, the initializer is {} {:?}",
                t.name,
                t.dtype.name(),
                t.dims,
                slot.dtype.name(),
                slot.dims
            )));
        }
    }
    Ok(())
}

/// The [`CalibStat::Values`] of `output` in `model`.
fn values_of<C: Calibrator + ?Sized>(cal: &C, model: &Model, output: &str) -> Result<Vec<f32>, CalibError> {
    match cal.collect(model, &[CalibRequest::Values { tensor: output.to_string() }])?.into_iter().next() {
        Some(CalibStat::Values { values, .. }) => Ok(values),
        _ => Err(CalibError(format!("the calibrator returned no values for '{output}'"))),
    }
}

/// ‖y − y_ref‖ / ‖y_ref‖, accumulated over chunks of the same tensor (calibration batches).
#[derive(Debug, Default, Clone, Copy)]
pub struct RelL2 {
    num: f64,
    den: f64,
    mismatch: bool,
}

impl RelL2 {
    /// Add one chunk; chunks of different lengths make the distance infinite.
    pub fn add(&mut self, reference: &[f32], y: &[f32]) {
        if reference.len() != y.len() {
            self.mismatch = true;
            return;
        }
        for (a, b) in reference.iter().zip(y) {
            self.num += (*a as f64 - *b as f64).powi(2);
            self.den += (*a as f64).powi(2);
        }
    }

    pub fn value(&self) -> f64 {
        if self.mismatch {
            f64::INFINITY
        } else if self.den == 0.0 {
            if self.num == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (self.num / self.den).sqrt()
        }
    }
}

/// ‖y − y_ref‖ / ‖y_ref‖ (infinite when the lengths differ or the reference is 0 and y is not).
pub fn rel_l2(reference: &[f32], y: &[f32]) -> f64 {
    let mut r = RelL2::default();
    r.add(reference, y);
    r.value()
}
