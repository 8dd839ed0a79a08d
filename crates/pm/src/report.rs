//! Run reports: per-pass statistics and per-weight sparsity before and after, serialisable for `--json`.

use serde::Serialize;
use sparsify_ir::{Model, WeightId};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Note {
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PassStats {
    pub pass: String,
    /// The element as canonical pipeline text.
    pub element: String,
    pub millis: f64,
    pub changed: bool,
    pub counters: BTreeMap<String, f64>,
    pub notes: Vec<Note>,
    /// Per-weight measurements a pass made (metric → weight → value), see `PassCx::weight_metric`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weight_metrics: BTreeMap<String, BTreeMap<String, f64>>,
}

/// One weight (or embedding table) and its sparsity.
#[derive(Debug, Clone, Serialize)]
pub struct WeightRow {
    pub name: String,
    /// "Conv", "Gemm", "MatMul", "ConvTranspose", or "Gather" for embedding tables.
    pub op: String,
    pub node: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub elements: usize,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    pub out_axis: Option<usize>,
    pub red_axis: Option<usize>,
    pub embedding: bool,
    pub shared: bool,
    /// Where the values live: "initializer" or "constant-node".
    pub storage: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub elements: usize,
    pub zeros_before: usize,
    pub zeros_after: usize,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub passes: Vec<PassStats>,
    pub weights: Vec<WeightRow>,
    /// Over Conv/Gemm/MatMul weights only.
    pub totals_weights: Totals,
    /// Including embedding tables.
    pub totals_with_embeddings: Totals,
}

/// Every prunable weight plus every embedding table (float initializer read by Gather as its data), in
/// graph order, with its current sparsity (reported as `sparsity_before` and `sparsity_after`).
pub fn weight_table(model: &Model) -> Vec<WeightRow> {
    let g = &model.graph;
    let mut rows = Vec::new();
    for w in g.find_weights() {
        let Some(t) = g.weight(&w.id) else { continue };
        if g.weight_prunable(&w.id).is_err() || t.dims.len() < 2 {
            continue;
        }
        let s = g.weight_sparsity(&w.id).unwrap_or(0.0);
        rows.push(WeightRow {
            name: w.id.name().to_string(),
            op: w.op().to_string(),
            node: w.uses[0].node_name.clone(),
            shape: t.dims.clone(),
            dtype: t.dtype.name(),
            elements: t.numel().unwrap_or(0),
            sparsity_before: s,
            sparsity_after: s,
            out_axis: w.conflict.is_none().then(|| w.out_axis()),
            red_axis: w.conflict.is_none().then(|| w.red_axis()),
            embedding: false,
            shared: w.shared(),
            storage: match w.id {
                WeightId::Init(_) => "initializer".into(),
                WeightId::Const(_) => "constant-node".into(),
            },
        });
    }
    for (_, n) in g.nodes() {
        if n.op_type != "Gather" || !n.is_onnx() {
            continue;
        }
        let Some(id) = n.inputs.first().and_then(|i| g.constant_source(i)) else { continue };
        let Some(t) = g.weight(&id) else { continue };
        if !t.dtype.is_prunable_float() || t.dims.len() != 2 || rows.iter().any(|r| r.name == id.name()) {
            continue;
        }
        let s = t.sparsity();
        rows.push(WeightRow {
            name: id.name().to_string(),
            op: "Gather".into(),
            node: n.display_name(),
            shape: t.dims.clone(),
            dtype: t.dtype.name(),
            elements: t.numel().unwrap_or(0),
            sparsity_before: s,
            sparsity_after: s,
            out_axis: None,
            red_axis: None,
            embedding: true,
            shared: false,
            storage: "initializer".into(),
        });
    }
    rows
}

pub(crate) fn totals<'a>(rows: impl Iterator<Item = &'a WeightRow>) -> Totals {
    let (mut n, mut zb, mut za) = (0usize, 0usize, 0usize);
    for r in rows {
        n += r.elements;
        zb += (r.sparsity_before * r.elements as f64).round() as usize;
        za += (r.sparsity_after * r.elements as f64).round() as usize;
    }
    let frac = |z: usize| if n == 0 { 0.0 } else { z as f64 / n as f64 };
    Totals { elements: n, zeros_before: zb, zeros_after: za, sparsity_before: frac(zb), sparsity_after: frac(za) }
}
