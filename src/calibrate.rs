//! Calibration through tract: the current model is encoded in memory, the tensors the passes ask about
//! are exposed as extra outputs, and statistics are accumulated batch by batch (activations of one batch
//! at a time are held, never the whole set).

use sparsify_ir::Model;
use sparsify_pm::{CalibError, CalibRequest, CalibStat, Calibrator, FeatureAxis};
use sparsify_validate::{Array, Feed, ModelSource, Runner};

/// Runs the model over calibration batches in tract.
pub struct TractCalibrator {
    batches: Vec<Feed>,
}

impl TractCalibrator {
    /// Split `feed` into batches of at most `batch` rows.
    pub fn new(feed: &Feed, batch: usize) -> Result<TractCalibrator, crate::Error> {
        Ok(TractCalibrator { batches: sparsify_validate::split_batches(feed, batch.max(1))? })
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
        for batch in &self.batches {
            let outs = runner.run(batch).map_err(|e| CalibError(e.to_string()))?;
            let extras = &outs[outs.len() - tensors.len()..];
            for (i, (_, a)) in extras.iter().enumerate() {
                visit(i, a)?;
            }
        }
        Ok(())
    }
}

impl Calibrator for TractCalibrator {
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        let mut names: Vec<String> = Vec::new();
        for r in requests {
            let CalibRequest::FeatureSqNorm { tensor, .. } = r;
            if !names.contains(tensor) {
                names.push(tensor.clone());
            }
        }
        let mut out: Vec<Option<(Vec<f64>, u64)>> = vec![None; requests.len()];
        self.for_each_activation(model, &names, |i, a| {
            for (ri, r) in requests.iter().enumerate() {
                let CalibRequest::FeatureSqNorm { tensor, axis } = r;
                if *tensor != names[i] {
                    continue;
                }
                let (sums, rows) = feature_sq_norms(a, *axis).map_err(|m| CalibError(format!("'{tensor}': {m}")))?;
                match &mut out[ri] {
                    None => out[ri] = Some((sums, rows)),
                    Some((acc, n)) => {
                        if acc.len() != sums.len() {
                            return Err(CalibError(format!("'{tensor}': feature count changed between batches")));
                        }
                        acc.iter_mut().zip(&sums).for_each(|(a, b)| *a += b);
                        *n += rows;
                    }
                }
            }
            Ok(())
        })?;
        Ok(out
            .into_iter()
            .map(|o| {
                let (sums, rows) = o.unwrap_or_default();
                CalibStat::FeatureSqNorm { sums, rows }
            })
            .collect())
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
    let rows = if f == 0 { 0 } else { (vals.len() / f) as u64 };
    Ok((sums, rows))
}
