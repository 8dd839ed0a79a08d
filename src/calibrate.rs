//! Calibration through tract: the current model is encoded in memory, the tensors the passes ask about
//! are exposed as extra outputs, and statistics are accumulated batch by batch (activations of one batch
//! at a time are held, never the whole set).
//!
//! [`TractCalibrator::plan`] splits calibration samples along each input's own batch axis, found from the
//! declared shapes (recurrent states passed whole, batch on axis 1, a last short batch, a folder of
//! samples for fixed-batch models; see `sparsify_validate::calib_batches`) and keeps the decisions as
//! [`TractCalibrator::notes`] for the run report.
//!
//! Padding: an attention-mask input is detected in the calibration data (or named, or turned off, with
//! [`TractCalibrator::with_token_mask`]; rules in [`crate::token_mask`]); while one is in force, the
//! per-position statistics of features on the last axis (Wanda norms, Gram matrices, feature means) count
//! only the real-token positions.

use crate::staged::Event;
use crate::token_mask::{self, TokenMask};
use crate::variants::VariantPaths;
use sparsify_ir::{Model, Tensor};
use sparsify_passes::calib_stats::{channel_pair_sums, conv_patch_sums, feature_sums};
use sparsify_passes::sgpt_gram::{add_conv_patches, ConvGeometry, GramAcc};
use sparsify_pm::{CalibError, CalibRequest, CalibStat, Calibrator, FeatureAxis, PairRequest, PairStat};
use sparsify_validate::{Array, Feed, InputDecl, ModelSource, Runner};

/// Runs the model over calibration batches in tract.
pub struct TractCalibrator {
    batches: Vec<Feed>,
    notes: Vec<String>,
    progress: Option<Progress>,
    fingerprint: u64,
    /// The calibration input marking real tokens, when statistics skip padding.
    mask: Option<String>,
    /// Activations of a reference model kept by [`Calibrator::keep_reference`].
    kept: std::sync::Mutex<Option<KeptReference>>,
    /// How [`Calibrator::variant_errors`] ran its groups, added up.
    variant_paths: std::sync::Mutex<VariantPaths>,
    /// Run the model stage by stage when its weights exceed this many bytes ([`crate::staged`]).
    stage_bytes: Option<usize>,
}

/// The default stage budget: models with more weight bytes are calibrated stage by stage.
pub const DEFAULT_STAGE_BYTES: usize = 64 << 20;

/// A reference model's activations over every calibration batch, and the hash of its encoded bytes.
struct KeptReference {
    key: u64,
    batches: Vec<Vec<(String, Array)>>,
}

/// The most activation bytes [`Calibrator::keep_reference`] keeps (beyond it the reference is rerun).
const KEEP_BUDGET: usize = 1 << 30;

/// Called after each calibration batch with (batches done, batches in this sweep).
pub type Progress = Box<dyn Fn(usize, usize) + Send + Sync>;

impl TractCalibrator {
    /// Split `feed` into batches of at most `batch` rows along axis 0 (every input must share it).
    pub fn new(feed: &Feed, batch: usize) -> Result<TractCalibrator, crate::Error> {
        let batches = sparsify_validate::split_batches(feed, batch.max(1))?;
        let cal = TractCalibrator {
            fingerprint: 0,
            batches,
            notes: Vec::new(),
            progress: None,
            mask: None,
            kept: Default::default(),
            variant_paths: Default::default(),
            stage_bytes: Some(DEFAULT_STAGE_BYTES),
        };
        cal.with_token_mask(&TokenMask::Auto)
    }

    /// Split `samples` into batches of at most `batch` rows along each input's batch axis, found from
    /// the model's declared inputs (`decls`, e.g. [`crate::input_decls`]); a sample that cannot be split
    /// runs as given. The decisions are in [`TractCalibrator::notes`].
    pub fn plan(samples: &[Feed], decls: &[InputDecl], batch: usize) -> Result<TractCalibrator, crate::Error> {
        let plan = sparsify_validate::plan_batches(samples, decls, batch.max(1))?;
        let cal = TractCalibrator {
            fingerprint: 0,
            batches: plan.batches,
            notes: plan.notes,
            progress: None,
            mask: None,
            kept: Default::default(),
            variant_paths: Default::default(),
            stage_bytes: Some(DEFAULT_STAGE_BYTES),
        };
        cal.with_token_mask(&TokenMask::Auto)
    }

    /// Choose which calibration input marks real tokens (`new` and `plan` detect one: [`TokenMask::Auto`]);
    /// the decision is added to the notes. Errors when a named input is missing or not 0/1.
    pub fn with_token_mask(mut self, choice: &TokenMask) -> Result<TractCalibrator, crate::Error> {
        let (mask, note) = token_mask::resolve(choice, &self.batches).map_err(crate::Error::Calibration)?;
        self.notes.retain(|n| !n.starts_with(token_mask::NOTE_PREFIX));
        self.notes.extend(note);
        self.mask = mask;
        self.fingerprint = fingerprint(&self.batches, self.mask.as_deref());
        Ok(self)
    }

    /// The calibration input whose zeros mark padding, when statistics count only real tokens.
    pub fn token_mask(&self) -> Option<&str> {
        self.mask.as_deref()
    }

    /// What [`TractCalibrator::plan`] decided (batch axes, inputs passed whole, samples run as given).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Report progress after every batch (the command line draws a bar with it on a terminal).
    pub fn with_progress(mut self, progress: Progress) -> TractCalibrator {
        self.progress = Some(progress);
        self
    }

    /// Run the model in tract stage by stage, each stage holding at most `bytes` of weights (`None`: always
    /// the whole model). Statistics are the same either way; staging bounds tract's memory to about one
    /// stage's weights. Default [`DEFAULT_STAGE_BYTES`].
    pub fn with_stage_bytes(mut self, bytes: Option<usize>) -> TractCalibrator {
        self.stage_bytes = bytes.map(|b| b.max(1));
        self
    }

    /// How the variants measured so far ran ([`Calibrator::variant_errors`]: suffix, whole model, copies).
    pub fn variant_paths(&self) -> VariantPaths {
        *self.variant_paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn batches(&self) -> &[Feed] {
        &self.batches
    }

    /// Run the model over every batch, reporting each requested tensor's value for each batch
    /// ([`Event::Value`]) and, once a tensor has been seen for every batch, [`Event::Done`] (with
    /// staging, after the stage producing it; otherwise all at the end).
    pub fn for_each_activation(
        &self,
        model: &Model,
        tensors: &[String],
        mut visit: impl FnMut(Event<'_>) -> Result<(), CalibError>,
    ) -> Result<(), CalibError> {
        if let Some(budget) = self.stage_bytes {
            if crate::staged::run(model, tensors, &self.batches, budget, self.progress.as_ref(), &mut visit)? {
                return Ok(());
            }
        }
        let bytes = sparsify_onnx_io::model_to_bytes(model).map_err(|e| CalibError(e.to_string()))?;
        let hint = self.batches.first();
        // Only the requested tensors are computed (the graph outputs are not selected).
        let runner = Runner::for_tensors(ModelSource::Bytes(&bytes), hint, tensors)
            .map_err(|e| CalibError(format!("tract cannot run the model for calibration: {e}")))?;
        for (done, batch) in self.batches.iter().enumerate() {
            let outs = runner.run(batch).map_err(|e| CalibError(e.to_string()))?;
            for (i, (_, a)) in outs.iter().enumerate() {
                visit(Event::Value { tensor: i, value: a, batch })?;
            }
            if let Some(p) = &self.progress {
                p(done + 1, self.batches.len());
            }
        }
        visit(Event::Done(&(0..tensors.len()).collect::<Vec<_>>()))
    }
}

/// A hash of the batches (names, shapes, value bits) and of the mask in force, never 0.
fn fingerprint(batches: &[Feed], mask: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(m) = mask {
        m.hash(&mut h);
    }
    for b in batches {
        for (name, a) in &b.arrays {
            name.hash(&mut h);
            a.shape().hash(&mut h);
            a.dtype_name().hash(&mut h);
            for v in a.to_f64_vec() {
                v.to_bits().hash(&mut h);
            }
        }
    }
    h.finish().max(1)
}

impl Calibrator for TractCalibrator {
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn collect_paired(
        &self,
        reference: &Model,
        current: &Model,
        requests: &[PairRequest],
    ) -> Result<Vec<PairStat>, CalibError> {
        collect_paired(self, reference, current, requests)
    }

    fn keep_reference(&self, reference: Option<(&Model, &[String])>) -> Result<bool, CalibError> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        *kept = None;
        let Some((model, tensors)) = reference else { return Ok(false) };
        let bytes = sparsify_onnx_io::model_to_bytes(model).map_err(|e| CalibError(format!("reference model: {e}")))?;
        let runner = Runner::for_tensors(ModelSource::Bytes(&bytes), self.batches.first(), tensors)
            .map_err(|e| CalibError(format!("tract cannot run the reference model for calibration: {e}")))?;
        let (mut batches, mut size) = (Vec::with_capacity(self.batches.len()), 0usize);
        for (done, batch) in self.batches.iter().enumerate() {
            let outs = runner.run(batch).map_err(|e| CalibError(e.to_string()))?;
            size += outs.iter().map(|(_, a)| a.len() * 4).sum::<usize>();
            // Batches are alike: after the first, the whole set's size is known closely enough.
            if size > KEEP_BUDGET || (done == 0 && size.saturating_mul(self.batches.len()) > KEEP_BUDGET) {
                return Ok(false);
            }
            batches.push(outs);
            if let Some(p) = &self.progress {
                p(done + 1, self.batches.len());
            }
        }
        *kept = Some(KeptReference { key: bytes_key(&bytes), batches });
        Ok(true)
    }

    fn variant_errors(&self, model: &Model, output: &str, variants: &[Vec<Tensor>]) -> Result<Vec<f64>, CalibError> {
        crate::variants::variant_errors(model, output, variants, &self.batches, &self.variant_paths)
    }

    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        let mut out: Vec<Option<CalibStat>> = vec![None; requests.len()];
        self.collect_each(model, requests, &mut |i, s| {
            out[i] = Some(s);
            Ok(())
        })?;
        out.into_iter().map(|s| s.ok_or_else(|| CalibError("a request was not answered".into()))).collect()
    }

    fn collect_each(
        &self,
        model: &Model,
        requests: &[CalibRequest],
        ready: &mut dyn FnMut(usize, CalibStat) -> Result<(), CalibError>,
    ) -> Result<(), CalibError> {
        let mut names: Vec<String> = Vec::new();
        for r in requests {
            let tensor = r.tensor();
            if !names.iter().any(|n| n == tensor) {
                names.push(tensor.to_string());
            }
        }
        let mut out: Vec<Acc> = requests.iter().map(|_| Acc::Empty).collect();
        let mut answered = vec![false; requests.len()];
        self.for_each_activation(model, &names, |event| {
            let (i, all, batch) = match event {
                Event::Value { tensor, value, batch } => (tensor, value, batch),
                Event::Done(done) => {
                    for (ri, r) in requests.iter().enumerate() {
                        if !answered[ri] && done.iter().any(|&t| names[t] == r.tensor()) {
                            answered[ri] = true;
                            ready(ri, std::mem::replace(&mut out[ri], Acc::Empty).finish(r))?;
                        }
                    }
                    return Ok(());
                }
            };
            // Real-token positions of this activation (features on the last axis), when a mask applies.
            let keep =
                self.mask.as_ref().and_then(|m| batch.get(m)).and_then(|m| token_mask::real_rows(m, all.shape()));
            let real = keep.as_ref().and_then(|k| token_mask::positions(all, k, true));
            // The padding rows (values, shape), once, when a Gram or mean of this tensor needs them.
            let needs_padding = requests.iter().any(|r| {
                r.tensor() == names[i]
                    && matches!(
                        r,
                        CalibRequest::Gram { axis: FeatureAxis::Last, .. }
                            | CalibRequest::FeatureSum { axis: FeatureAxis::Last, .. }
                    )
            });
            let padded: Option<(Vec<f64>, Vec<usize>)> = keep
                .as_ref()
                .filter(|_| needs_padding)
                .and_then(|k| token_mask::positions(all, k, false))
                .map(|p| (p.to_f64_vec(), p.shape().to_vec()));
            let (mut vals_all, mut vals_real): (Option<Vec<f64>>, Option<Vec<f64>>) = (None, None);
            for (ri, r) in requests.iter().enumerate() {
                let tensor = r.tensor();
                if tensor != names[i] {
                    continue;
                }
                let last_axis = matches!(
                    r,
                    CalibRequest::FeatureSqNorm { axis: FeatureAxis::Last, .. }
                        | CalibRequest::Gram { axis: FeatureAxis::Last, .. }
                        | CalibRequest::FeatureSum { axis: FeatureAxis::Last, .. }
                );
                let (a, vals) = match &real {
                    Some(r) if last_axis => (r, &mut vals_real),
                    _ => (all, &mut vals_all),
                };
                let err = |m: String| CalibError(format!("'{tensor}': {m}"));
                match r {
                    CalibRequest::FeatureSqNorm { axis, .. } => {
                        let (sums, rows) = feature_sq_norms(a, *axis).map_err(err)?;
                        match &mut out[ri] {
                            Acc::SqNorm(acc, n) => {
                                if acc.len() != sums.len() {
                                    return Err(err("feature count changed between batches".into()));
                                }
                                acc.iter_mut().zip(&sums).for_each(|(a, b)| *a += b);
                                *n += rows;
                            }
                            slot => *slot = Acc::SqNorm(sums, rows),
                        }
                    }
                    CalibRequest::Gram { axis, .. } => {
                        let shape = a.shape();
                        if shape.is_empty() {
                            return Err(err("activation is a scalar".into()));
                        }
                        let ax = match axis {
                            FeatureAxis::Last => shape.len() - 1,
                            FeatureAxis::Index(i) => *i,
                        };
                        let k = *shape
                            .get(ax)
                            .ok_or_else(|| err(format!("feature axis {ax} out of range for shape {shape:?}")))?;
                        if matches!(out[ri], Acc::Empty) {
                            out[ri] = Acc::Gram(GramAcc::new(k), None);
                        }
                        let Acc::Gram(acc, pad_acc) = &mut out[ri] else { unreachable!("set above") };
                        let v = vals.get_or_insert_with(|| a.to_f64_vec());
                        acc.add_features(v, shape, ax).map_err(err)?;
                        // The padded rows go to their own Gram: used only when the real rows are too
                        // few for the feature count (see `Acc::finish`).
                        if let Some((pv, ps)) = padded.as_ref().filter(|_| last_axis) {
                            let pacc = pad_acc.get_or_insert_with(|| GramAcc::new(k));
                            pacc.add_features(pv, ps, 1).map_err(err)?;
                        }
                    }
                    CalibRequest::ConvGram { .. } => {
                        let geo = ConvGeometry::of_request(r).expect("a ConvGram request");
                        let shape = a.shape();
                        let channels = *shape.get(1).ok_or_else(|| err(format!("Conv input has shape {shape:?}")))?;
                        if matches!(out[ri], Acc::Empty) {
                            out[ri] = Acc::Groups(vec![GramAcc::new(geo.patch_len(channels)); geo.groups.max(1)]);
                        }
                        let Acc::Groups(accs) = &mut out[ri] else { unreachable!("set above") };
                        let v = vals.get_or_insert_with(|| a.to_f64_vec());
                        add_conv_patches(accs, v, shape, &geo).map_err(err)?;
                    }
                    CalibRequest::FeatureSum { axis, .. } => {
                        let ax = feature_axis(a.shape(), *axis).map_err(err)?;
                        let v = vals.get_or_insert_with(|| a.to_f64_vec());
                        let (sums, rows) = feature_sums(v, a.shape(), ax).map_err(err)?;
                        // Padded rows apart, as for Gram matrices (the two must agree: solves combine them).
                        let pad = match padded.as_ref().filter(|_| last_axis) {
                            Some((pv, ps)) => Some(feature_sums(pv, ps, 1).map_err(err)?),
                            None => None,
                        };
                        if matches!(out[ri], Acc::Empty) {
                            out[ri] = Acc::Sum((vec![0.0; sums.len()], 0), None);
                        }
                        let Acc::Sum(acc, pad_acc) = &mut out[ri] else {
                            return Err(err("a request answered twice".into()));
                        };
                        add_sums(acc, (&sums, rows)).map_err(err)?;
                        if let Some((p, n)) = pad {
                            add_sums(pad_acc.get_or_insert_with(|| (vec![0.0; p.len()], 0)), (&p, n)).map_err(err)?;
                        }
                    }
                    CalibRequest::ConvPatchSum { kernel, strides, pads, dilations, groups, .. } => {
                        let geo = ConvGeometry {
                            kernel: kernel.clone(),
                            strides: strides.clone(),
                            pads: pads.clone(),
                            dilations: dilations.clone(),
                            groups: *groups,
                        };
                        let v = vals.get_or_insert_with(|| a.to_f64_vec());
                        let (sums, rows) = conv_patch_sums(v, a.shape(), &geo).map_err(err)?;
                        match &mut out[ri] {
                            Acc::GroupSum(acc, n) => {
                                if acc.len() != sums.len() || acc.iter().zip(&sums).any(|(a, b)| a.len() != b.len()) {
                                    return Err(err("Conv input channels changed between batches".into()));
                                }
                                for (a, b) in acc.iter_mut().zip(&sums) {
                                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                                }
                                *n += rows;
                            }
                            slot => *slot = Acc::GroupSum(sums, rows),
                        }
                    }
                    CalibRequest::Values { .. } => {
                        let shape = a.shape().to_vec();
                        let v: Vec<f32> = match a {
                            Array::F32(x) => x.iter().copied().collect(),
                            other => other.to_f64_vec().into_iter().map(|x| x as f32).collect(),
                        };
                        match &mut out[ri] {
                            Acc::Values(acc, s) => {
                                if s.len() != shape.len() || s.is_empty() || s[1..] != shape[1..] {
                                    return Err(err(format!("shape changed between batches: {s:?} vs {shape:?}")));
                                }
                                s[0] += shape[0];
                                acc.extend(v);
                            }
                            slot => {
                                if shape.is_empty() {
                                    return Err(err("a scalar cannot be concatenated over batches".into()));
                                }
                                *slot = Acc::Values(v, shape)
                            }
                        }
                    }
                }
            }
            Ok(())
        })?;
        for (ri, r) in requests.iter().enumerate() {
            if !answered[ri] {
                ready(ri, std::mem::replace(&mut out[ri], Acc::Empty).finish(r))?;
            }
        }
        Ok(())
    }
}

/// A hash of a model's encoded bytes (which reference model activations were kept for).
fn bytes_key(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Add per-feature sums and their row count to an accumulator.
fn add_sums(acc: &mut (Vec<f64>, u64), (sums, rows): (&[f64], u64)) -> Result<(), String> {
    if acc.0.len() != sums.len() {
        return Err("feature count changed between batches".into());
    }
    acc.0.iter_mut().zip(sums).for_each(|(a, b)| *a += b);
    acc.1 += rows;
    Ok(())
}

/// Paired statistics: both models run batch by batch in lockstep, each exposing its requested tensors;
/// every request's two activations of a batch must have the same shape.
fn collect_paired(
    cal: &TractCalibrator,
    reference: &Model,
    current: &Model,
    requests: &[PairRequest],
) -> Result<Vec<PairStat>, CalibError> {
    let unique = |pick: fn(&PairRequest) -> &String| {
        let mut names: Vec<String> = Vec::new();
        for r in requests {
            if !names.contains(pick(r)) {
                names.push(pick(r).clone());
            }
        }
        names
    };
    let (ref_names, cur_names) = (unique(|r| &r.reference), unique(|r| &r.current));
    let encode = |m: &Model, which: &str| -> Result<Vec<u8>, CalibError> {
        sparsify_onnx_io::model_to_bytes(m).map_err(|e| CalibError(format!("{which} model: {e}")))
    };
    let (ref_bytes, cur_bytes) = (encode(reference, "reference")?, encode(current, "current")?);
    let hint = cal.batches.first();
    let open = |bytes: &[u8], names: &[String], which: &str| {
        Runner::for_tensors(ModelSource::Bytes(bytes), hint, names)
            .map_err(|e| CalibError(format!("tract cannot run the {which} model for calibration: {e}")))
    };
    // The reference's activations come from what `keep_reference` kept when it is this model and holds
    // every requested tensor; otherwise the reference runs beside the current model.
    let kept = cal.kept.lock().unwrap_or_else(|p| p.into_inner());
    let kept = kept.as_ref().filter(|k| {
        k.key == bytes_key(&ref_bytes)
            && k.batches.first().is_some_and(|b| ref_names.iter().all(|n| b.iter().any(|(m, _)| m == n)))
    });
    let ref_run = match kept {
        Some(_) => None,
        None => Some(open(&ref_bytes, &ref_names, "reference")?),
    };
    let cur_run = open(&cur_bytes, &cur_names, "current")?;
    let mut out: Vec<Option<PairStat>> = requests.iter().map(|_| None).collect();
    for (done, batch) in cal.batches.iter().enumerate() {
        // The runners select only the named tensors, in name order; kept activations are looked up.
        let ran;
        let ref_outs: Vec<&Array> = match (&ref_run, kept) {
            (Some(run), _) => {
                ran = run.run(batch).map_err(|e| CalibError(e.to_string()))?;
                ran.iter().map(|(_, a)| a).collect()
            }
            (None, Some(k)) => ref_names
                .iter()
                .map(|n| &k.batches[done].iter().find(|(m, _)| m == n).expect("checked above").1)
                .collect(),
            (None, None) => unreachable!("a reference runner or kept activations"),
        };
        let cur_outs = cur_run.run(batch).map_err(|e| CalibError(e.to_string()))?;
        for (ri, r) in requests.iter().enumerate() {
            let err = |m: String| CalibError(format!("'{}': {m}", r.current));
            let y = ref_names.iter().position(|n| *n == r.reference).map(|i| ref_outs[i]);
            let yt = cur_names.iter().position(|n| *n == r.current).map(|i| &cur_outs[i].1);
            let (Some(y), Some(yt)) = (y, yt) else {
                return Err(err("activation missing from the outputs".into()));
            };
            if y.shape() != yt.shape() {
                return Err(err(format!(
                    "shape {:?} in the current model but {:?} in the reference '{}'",
                    yt.shape(),
                    y.shape(),
                    r.reference
                )));
            }
            // Real tokens only when a token mask applies (channels on the last axis, positions = the
            // mask's [batch, seq]); both activations share their positions.
            let mask = cal.mask.as_ref().and_then(|m| batch.get(m)).filter(|_| matches!(r.axis, FeatureAxis::Last));
            let keep = mask.and_then(|m| token_mask::real_rows(m, y.shape()));
            let (y, yt) = match keep
                .and_then(|k| Some((token_mask::positions(y, &k, true)?, token_mask::positions(yt, &k, true)?)))
            {
                Some((y, yt)) => (std::borrow::Cow::Owned(y), std::borrow::Cow::Owned(yt)),
                None => (std::borrow::Cow::Borrowed(y), std::borrow::Cow::Borrowed(yt)),
            };
            let ax = feature_axis(yt.shape(), r.axis).map_err(err)?;
            let st = channel_pair_sums(&yt.to_f64_vec(), &y.to_f64_vec(), yt.shape(), ax).map_err(err)?;
            match &mut out[ri] {
                Some(acc) => acc.merge(&st).map_err(|e| err(e.0))?,
                slot => *slot = Some(st),
            }
        }
        if let Some(p) = &cal.progress {
            p(done + 1, cal.batches.len());
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// The index of a feature axis in `shape`.
fn feature_axis(shape: &[usize], axis: FeatureAxis) -> Result<usize, String> {
    match axis {
        _ if shape.is_empty() => Err("activation is a scalar".into()),
        FeatureAxis::Last => Ok(shape.len() - 1),
        FeatureAxis::Index(i) if i < shape.len() => Ok(i),
        FeatureAxis::Index(i) => Err(format!("feature axis {i} out of range for shape {shape:?}")),
    }
}

/// A statistic being accumulated over batches.
enum Acc {
    Empty,
    SqNorm(Vec<f64>, u64),
    /// The Gram of the counted rows and, when a token mask applies, the Gram of the padded rows.
    Gram(GramAcc, Option<GramAcc>),
    Groups(Vec<GramAcc>),
    /// Σ x and rows of the counted rows and, when a token mask applies, of the padded rows.
    Sum((Vec<f64>, u64), Option<(Vec<f64>, u64)>),
    GroupSum(Vec<Vec<f64>>, u64),
    Values(Vec<f32>, Vec<usize>),
}

impl Acc {
    fn finish(self, r: &CalibRequest) -> CalibStat {
        match (self, r) {
            (Acc::SqNorm(sums, rows), _) => CalibStat::FeatureSqNorm { sums, rows },
            (Acc::Gram(mut acc, padding), _) => {
                let k = acc.k();
                // Real tokens only, unless they are fewer than twice the features: a Gram from so few
                // rows is (nearly) singular and the solves that use it overfit (measured on MiniLM's
                // 1536-wide FFN input with 1106 real positions); then every position counts. Feature
                // sums follow the same rule, so a solve that combines a Gram with means sees one set of rows.
                if let Some(pad) = padding.filter(|_| acc.rows() < 2 * k as u64) {
                    acc.absorb(pad);
                }
                let (h, rows) = acc.finish();
                CalibStat::Gram { h, k, rows }
            }
            (Acc::Groups(accs), _) => {
                let k = accs.first().map_or(0, |a| a.k());
                let rows = accs.first().map_or(0, |a| a.rows());
                CalibStat::GroupGrams { h: accs.into_iter().map(|a| a.finish().0).collect(), k, rows }
            }
            (Acc::Sum((mut sums, mut rows), padding), _) => {
                if let Some((p, n)) = padding.filter(|_| rows < 2 * sums.len() as u64) {
                    sums.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                    rows += n;
                }
                CalibStat::FeatureSum { sums, rows }
            }
            (Acc::GroupSum(sums, rows), _) => CalibStat::GroupSums { sums, rows },
            (Acc::Values(values, shape), _) => CalibStat::Values { values, shape },
            (Acc::Empty, CalibRequest::FeatureSum { .. }) => CalibStat::FeatureSum { sums: Vec::new(), rows: 0 },
            (Acc::Empty, CalibRequest::ConvPatchSum { .. }) => CalibStat::GroupSums { sums: Vec::new(), rows: 0 },
            (Acc::Empty, CalibRequest::Values { .. }) => CalibStat::Values { values: Vec::new(), shape: Vec::new() },
            (Acc::Empty, CalibRequest::FeatureSqNorm { .. }) => CalibStat::FeatureSqNorm { sums: Vec::new(), rows: 0 },
            (Acc::Empty, CalibRequest::Gram { .. }) => CalibStat::Gram { h: Vec::new(), k: 0, rows: 0 },
            (Acc::Empty, CalibRequest::ConvGram { .. }) => CalibStat::GroupGrams { h: Vec::new(), k: 0, rows: 0 },
        }
    }
}

/// Σ x² per feature along `axis`, summed over every other axis; also the number of rows summed.
pub fn feature_sq_norms(a: &Array, axis: FeatureAxis) -> Result<(Vec<f64>, u64), String> {
    let shape = a.shape().to_vec();
    if shape.is_empty() {
        return Err("activation is a scalar".into());
    }
    let ax = match axis {
        FeatureAxis::Last => shape.len() - 1,
        FeatureAxis::Index(i) if i < shape.len() => i,
        FeatureAxis::Index(i) => return Err(format!("feature axis {i} out of range for shape {shape:?}")),
    };
    let f = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    let vals: Vec<f64> = match a {
        Array::F32(x) => x.iter().map(|&v| v as f64).collect(),
        other => other.to_f64_vec(),
    };
    let mut sums = vec![0f64; f];
    for (idx, v) in vals.iter().enumerate() {
        sums[(idx / inner) % f] += v * v;
    }
    let rows = vals.len().checked_div(f).unwrap_or(0) as u64;
    Ok((sums, rows))
}
