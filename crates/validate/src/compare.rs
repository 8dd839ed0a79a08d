//! Output comparison metrics and whole-model validation.
//!
//! All metrics are computed in `f64` (integer and bool outputs are compared as `f64` too):
//! max |a-b|, relative L2 error ‖a-b‖₂ / ‖a‖₂, cosine similarity, top-1 agreement over the
//! last axis for float outputs that look like class scores, and exact bit identity.

use serde::Serialize;

use crate::tract_adapter::{run_model, ModelSource};
use crate::{Array, Feed};

/// Acceptance thresholds for one output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Largest accepted ‖a-b‖₂ / ‖a‖₂ (default 1e-4).
    pub max_rel_l2: f64,
    /// Smallest accepted cosine similarity (default 0.9999).
    pub min_cosine: f64,
    /// Largest accepted max |a-b|, when set.
    pub max_abs: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { max_rel_l2: 1e-4, min_cosine: 0.9999, max_abs: None }
    }
}

/// Metrics of one output (non-finite values serialise as JSON `null`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub max_abs_err: f64,
    pub rel_l2_err: f64,
    pub cosine: f64,
    pub top1_agreement: Option<f64>,
    pub bit_identical: bool,
    pub within_threshold: bool,
}

/// Overall verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Status {
    /// Every output is within the thresholds.
    Passed,
    /// At least one output is over a threshold (or missing, or of another shape).
    OverThreshold,
    /// The comparison could not be made (a model failed to load or run, nothing to compare).
    NotValidated { reason: String },
}

/// The result of a validation: a status and per-output metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub status: Status,
    pub outputs: Vec<OutputReport>,
}

impl ValidationReport {
    fn not_validated(reason: String) -> Self {
        ValidationReport { status: Status::NotValidated { reason }, outputs: Vec::new() }
    }
}

/// Compares outputs pairwise by position (`a` is the reference, names are taken from `a`).
/// Outputs present in only one list count as over threshold.
pub fn compare_outputs(a: &[(String, Array)], b: &[(String, Array)], th: &Thresholds) -> ValidationReport {
    if a.is_empty() && b.is_empty() {
        return ValidationReport::not_validated("no outputs to compare".into());
    }
    let mut outputs: Vec<OutputReport> =
        a.iter().zip(b).map(|((name, x), (_, y))| compare_one(name, x, y, th)).collect();
    let extra = if a.len() > b.len() { &a[b.len()..] } else { &b[a.len()..] };
    outputs.extend(extra.iter().map(|(name, arr)| missing(name, arr)));
    let status = if outputs.iter().all(|o| o.within_threshold) { Status::Passed } else { Status::OverThreshold };
    ValidationReport { status, outputs }
}

/// Runs both models on `feed` and compares their graph outputs. If either model fails to load
/// or run, the status is `NotValidated` with tract's reason (never `Passed`).
pub fn validate(original: ModelSource, transformed: ModelSource, feed: &Feed, th: &Thresholds) -> ValidationReport {
    let a = match run_model(original, feed, &[]) {
        Ok(a) => a,
        Err(e) => return ValidationReport::not_validated(format!("original model: {e}")),
    };
    let b = match run_model(transformed, feed, &[]) {
        Ok(b) => b,
        Err(e) => return ValidationReport::not_validated(format!("transformed model: {e}")),
    };
    compare_outputs(&a, &b, th)
}

/// An output only one side produced.
fn missing(name: &str, arr: &Array) -> OutputReport {
    OutputReport {
        name: name.to_string(),
        dtype: arr.dtype_name().to_string(),
        shape: arr.shape().to_vec(),
        max_abs_err: f64::INFINITY,
        rel_l2_err: f64::INFINITY,
        cosine: 0.0,
        top1_agreement: None,
        bit_identical: false,
        within_threshold: false,
    }
}

fn compare_one(name: &str, a: &Array, b: &Array, th: &Thresholds) -> OutputReport {
    let mut report = OutputReport {
        name: name.to_string(),
        dtype: a.dtype_name().to_string(),
        shape: a.shape().to_vec(),
        max_abs_err: f64::INFINITY,
        rel_l2_err: f64::INFINITY,
        cosine: 0.0,
        top1_agreement: None,
        bit_identical: false,
        within_threshold: false,
    };
    if a.shape() != b.shape() {
        return report;
    }
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    let m = metrics(&x, &y);
    report.max_abs_err = m.max_abs;
    report.rel_l2_err = m.rel_l2;
    report.cosine = m.cosine;
    report.bit_identical = a.bit_identical(b);
    if a.is_float() && b.is_float() {
        report.top1_agreement = top1_agreement(a.shape(), &x, &y);
    }
    let any_nan = x.iter().chain(&y).any(|v| v.is_nan());
    report.within_threshold =
        !any_nan && m.rel_l2 <= th.max_rel_l2 && m.cosine >= th.min_cosine && th.max_abs.is_none_or(|t| m.max_abs <= t);
    report
}

/// Element-wise metrics of two equally long vectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Metrics {
    pub max_abs: f64,
    pub rel_l2: f64,
    pub cosine: f64,
}

pub(crate) fn metrics(a: &[f64], b: &[f64]) -> Metrics {
    let (mut max_abs, mut diff2, mut aa, mut bb, mut ab) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let d = x - y;
        // NaN-propagating max: once a difference is NaN, max_abs stays NaN.
        if d.is_nan() {
            max_abs = f64::NAN;
        } else if d.abs() > max_abs {
            max_abs = d.abs();
        }
        diff2 += d * d;
        aa += x * x;
        bb += y * y;
        ab += x * y;
    }
    let (na, nb, nd) = (aa.sqrt(), bb.sqrt(), diff2.sqrt());
    let rel_l2 = if nd == 0.0 { 0.0 } else { nd / na.max(f64::MIN_POSITIVE) };
    let cosine = match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        // Clamp rounding excursions slightly above 1 (NaN stays NaN).
        _ => {
            let c = ab / (na * nb);
            if c > 1.0 {
                1.0
            } else {
                c
            }
        }
    };
    Metrics { max_abs, rel_l2, cosine }
}

/// Fraction of rows whose argmax over the last axis agrees; `None` unless rank ≥ 2 and the last
/// dim is in `2..=100_000`.
pub(crate) fn top1_agreement(shape: &[usize], a: &[f64], b: &[f64]) -> Option<f64> {
    let last = *shape.last()?;
    if shape.len() < 2 || !(2..=100_000).contains(&last) || a.is_empty() {
        return None;
    }
    let rows = a.len() / last;
    let agree = a.chunks_exact(last).zip(b.chunks_exact(last)).filter(|(x, y)| argmax(x) == argmax(y)).count();
    Some(agree as f64 / rows as f64)
}

/// Index of the first maximum (NaNs never win).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}
