//! Calibration through tract: the current model is encoded in memory, the tensors the passes ask about
//! are exposed as extra outputs, and statistics are accumulated batch by batch (activations of one batch
//! at a time are held, never the whole set).
//!
//! [`TractCalibrator::plan`] splits calibration samples along each input's own batch axis, found from the
//! declared shapes (recurrent states passed whole, batch on axis 1, a last short batch, a folder of
//! samples for fixed-batch models; see `sparsify_validate::calib_batches`) and keeps the decisions as
//! [`TractCalibrator::notes`] for the run report.

use sparsify_ir::Model;
use sparsify_passes::util::sgpt_gram::{add_conv_patches, ConvGeometry, GramAcc};
use sparsify_pm::{CalibError, CalibRequest, CalibStat, Calibrator, FeatureAxis};
use sparsify_validate::{Array, Feed, InputDecl, ModelSource, Runner};

/// Runs the model over calibration batches in tract.
pub struct TractCalibrator {
    batches: Vec<Feed>,
    notes: Vec<String>,
    progress: Option<Progress>,
}

/// Called after each calibration batch with (batches done, batches in this sweep).
pub type Progress = Box<dyn Fn(usize, usize) + Send + Sync>;

impl TractCalibrator {
    /// Split `feed` into batches of at most `batch` rows along axis 0 (every input must share it).
    pub fn new(feed: &Feed, batch: usize) -> Result<TractCalibrator, crate::Error> {
        Ok(TractCalibrator {
            batches: sparsify_validate::split_batches(feed, batch.max(1))?,
            notes: Vec::new(),
            progress: None,
        })
    }

    /// Split `samples` into batches of at most `batch` rows along each input's batch axis, found from
    /// the model's declared inputs (`decls`, e.g. [`crate::input_decls`]); a sample that cannot be split
    /// runs as given. The decisions are in [`TractCalibrator::notes`].
    pub fn plan(samples: &[Feed], decls: &[InputDecl], batch: usize) -> Result<TractCalibrator, crate::Error> {
        let plan = sparsify_validate::plan_batches(samples, decls, batch.max(1))?;
        Ok(TractCalibrator { batches: plan.batches, notes: plan.notes, progress: None })
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

    pub fn batches(&self) -> &[Feed] {
        &self.batches
    }

    /// Run the model over every batch, calling `visit(request index, activation)` for each requested
    /// tensor of each batch.
    pub fn for_each_activation(
        &self,
        model: &Model,
        tensors: &[String],
        mut visit: impl FnMut(usize, &Array) -> Result<(), CalibError>,
    ) -> Result<(), CalibError> {
        let bytes = sparsify_onnx_io::model_to_bytes(model).map_err(|e| CalibError(e.to_string()))?;
        let hint = self.batches.first();
        let runner = Runner::new(ModelSource::Bytes(&bytes), hint, tensors)
            .map_err(|e| CalibError(format!("tract cannot run the model for calibration: {e}")))?;
        for (done, batch) in self.batches.iter().enumerate() {
            let outs = runner.run(batch).map_err(|e| CalibError(e.to_string()))?;
            let extras = &outs[outs.len() - tensors.len()..];
            for (i, (_, a)) in extras.iter().enumerate() {
                visit(i, a)?;
            }
            if let Some(p) = &self.progress {
                p(done + 1, self.batches.len());
            }
        }
        Ok(())
    }
}

impl Calibrator for TractCalibrator {
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        let mut names: Vec<String> = Vec::new();
        for r in requests {
            let tensor = request_tensor(r);
            if !names.iter().any(|n| n == tensor) {
                names.push(tensor.to_string());
            }
        }
        let mut out: Vec<Acc> = requests.iter().map(|_| Acc::Empty).collect();
        self.for_each_activation(model, &names, |i, a| {
            let mut vals: Option<Vec<f64>> = None;
            for (ri, r) in requests.iter().enumerate() {
                let tensor = request_tensor(r);
                if tensor != names[i] {
                    continue;
                }
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
                            out[ri] = Acc::Gram(GramAcc::new(k));
                        }
                        let Acc::Gram(acc) = &mut out[ri] else { unreachable!("set above") };
                        let v = vals.get_or_insert_with(|| a.to_f64_vec());
                        acc.add_features(v, shape, ax).map_err(err)?;
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
                }
            }
            Ok(())
        })?;
        Ok(out.into_iter().zip(requests).map(|(acc, r)| acc.finish(r)).collect())
    }
}

/// The activation a request reads.
fn request_tensor(r: &CalibRequest) -> &str {
    match r {
        CalibRequest::FeatureSqNorm { tensor, .. }
        | CalibRequest::Gram { tensor, .. }
        | CalibRequest::ConvGram { tensor, .. } => tensor,
    }
}

/// A statistic being accumulated over batches.
enum Acc {
    Empty,
    SqNorm(Vec<f64>, u64),
    Gram(GramAcc),
    Groups(Vec<GramAcc>),
}

impl Acc {
    fn finish(self, r: &CalibRequest) -> CalibStat {
        match (self, r) {
            (Acc::SqNorm(sums, rows), _) => CalibStat::FeatureSqNorm { sums, rows },
            (Acc::Gram(acc), _) => {
                let k = acc.k();
                let (h, rows) = acc.finish();
                CalibStat::Gram { h, k, rows }
            }
            (Acc::Groups(accs), _) => {
                let k = accs.first().map_or(0, |a| a.k());
                let rows = accs.first().map_or(0, |a| a.rows());
                CalibStat::GroupGrams { h: accs.into_iter().map(|a| a.finish().0).collect(), k, rows }
            }
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
