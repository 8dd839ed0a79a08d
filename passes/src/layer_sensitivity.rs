//! Layer sensitivity: for each prunable weight, the model's output error on the calibration data when
//! only that weight is pruned, at several sparsity levels. Shared by the `sensitivity` analysis pass
//! (and the `sensitivity` subcommand) and by `mask{allocate=sensitivity}` / `mask{max_error=E}`.
//!
//! How a curve is measured: for each level s the caller provides the whole model pruned at s (a
//! template pipeline, or the cached scores masked per layer); the candidate for (weight, s) is the dense
//! model with that one weight — and the constants its pruning changed in place next to it (the op's
//! bias input, the constant of a following Add) — taken from the pruned model. Nodes a template adds
//! (a new bias input or Add from `bias-correct`) are not transferred. Every candidate is measured over
//! the calibration set by [`Calibrator::variant_errors`] (all levels in one call): relative L2 =
//! ‖y − y_dense‖ / ‖y_dense‖ of the measured output over every calibration row. The tract calibrator
//! runs each weight's candidates through one plan of the graph's suffix that the weight reaches, fed
//! from one dense run (`sparsify_onnx::variants`): same numbers as running each candidate whole, about
//! half the work on a chain of layers, and the weights run in parallel. A candidate that changes a
//! `Constant` node runs on its own copy of the model.
//!
//! Curves are cached in process, keyed by a hash of the model, the measurement recipe, the levels and
//! the calibrator's fingerprint, so repeated budgets (and the bisection of `max_error`) are free.

use crate::scope::Scope;
use serde::{Deserialize, Serialize};
use sparsify_ir::{Graph, Model, Tensor, WeightId};
use sparsify_pm::{Analysis, CalibRequest, CalibStat, Calibrator, Effects, PassError};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// Output error of pruning one weight alone, per level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCurve {
    pub weight: String,
    pub op: String,
    pub elements: usize,
    /// Relative L2 of the output at each level of [`Curves::levels`].
    pub errors: Vec<f64>,
}

/// Every layer's curve, and how they were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    /// Identifies model + recipe + levels + calibration data.
    pub key: String,
    pub output: String,
    pub recipe: String,
    pub levels: Vec<f64>,
    pub layers: Vec<LayerCurve>,
    /// Candidate models run in tract to measure these curves (0 when they came from the cache).
    pub runs: usize,
}

impl Analysis for Curves {
    const INVALIDATED_BY: Effects = Effects(Effects::WEIGHT_VALUES.0 | Effects::WEIGHT_SHAPES.0 | Effects::TOPOLOGY.0);
}

static CACHE: Mutex<BTreeMap<String, Curves>> = Mutex::new(BTreeMap::new());

/// A hash of everything that decides a model's outputs: nodes, attributes (through their debug text)
/// and every weight byte.
pub fn model_hash(m: &Model) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let g = &m.graph;
    for (_, n) in g.nodes() {
        n.op_type.hash(&mut h);
        n.inputs.hash(&mut h);
        n.outputs.hash(&mut h);
        for a in &n.attrs {
            a.name.hash(&mut h);
            format!("{:?}", a.value).hash(&mut h);
        }
    }
    for t in &g.initializers {
        t.name.hash(&mut h);
        t.dims.hash(&mut h);
        t.bytes().hash(&mut h);
    }
    h.finish()
}

/// The output measured by default: the first float graph output.
pub fn default_output(g: &Graph) -> Result<String, PassError> {
    float_outputs(g).into_iter().next().ok_or_else(|| PassError::Invalid {
        subject: "sensitivity".into(),
        message: "the model has no float output".into(),
    })
}

/// The tensor a sensitivity measurement or budget reads: `named` when the graph computes it (a graph
/// output or any node output), else an error naming the graph outputs; `None`: the first float output.
pub fn measured_tensor(g: &Graph, named: Option<&str>, subject: &str) -> Result<String, PassError> {
    match named {
        Some(o)
            if g.outputs.iter().any(|v| v.name == o) || g.nodes().any(|(_, n)| n.outputs.iter().any(|x| x == o)) =>
        {
            Ok(o.to_string())
        }
        Some(o) => {
            let names: Vec<&str> = g.outputs.iter().map(|v| v.name.as_str()).collect();
            Err(PassError::Invalid {
                subject: subject.into(),
                message: format!(
                    "option output='{o}' is no tensor the graph computes (graph outputs: {})",
                    names.join(", ")
                ),
            })
        }
        None => default_output(g),
    }
}

/// Every float graph output (the tensors `max_error` bounds when none is named).
pub fn float_outputs(g: &Graph) -> Vec<String> {
    g.outputs
        .iter()
        .filter(|o| matches!(o.elem_type, Some(1) | Some(10) | Some(11) | Some(16)) || o.elem_type.is_none())
        .map(|o| o.name.clone())
        .collect()
}

/// Whether a weight (by name) can affect any of `tensors`: a predicate true for every tensor they are
/// computed from, and for every name when a control-flow node (If, Loop, Scan) is among their producers
/// (its body may read any outer tensor).
pub fn reaching(g: &Graph, tensors: &[&str]) -> impl Fn(&str) -> bool {
    let set = ancestors(g, tensors);
    move |name| set.as_ref().is_none_or(|s| s.contains(name))
}

/// Every tensor `tensors` are computed from (themselves included), or `None` past a control-flow node.
fn ancestors(g: &Graph, tensors: &[&str]) -> Option<std::collections::BTreeSet<String>> {
    let producers = g.producers();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = tensors.iter().map(|t| t.to_string()).collect();
    while let Some(t) = todo.pop() {
        if !seen.insert(t.clone()) {
            continue;
        }
        if let Some(&id) = producers.get(t.as_str()) {
            let n = g.node(id);
            if matches!(n.op_type.as_str(), "If" | "Loop" | "Scan") {
                return None;
            }
            todo.extend(n.inputs.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    Some(seen)
}

/// The calibration-set values of `output` in `model`.
pub fn output_values(model: &Model, cal: &dyn Calibrator, output: &str) -> Result<Vec<f32>, PassError> {
    Ok(tensor_values(model, cal, &[output.to_string()])?.remove(0))
}

/// The calibration-set values of each of `tensors` in `model`, from one calibration sweep.
pub fn tensor_values(model: &Model, cal: &dyn Calibrator, tensors: &[String]) -> Result<Vec<Vec<f32>>, PassError> {
    let requests: Vec<CalibRequest> = tensors.iter().map(|t| CalibRequest::Values { tensor: t.clone() }).collect();
    let mut stats = cal.collect(model, &requests)?.into_iter();
    tensors
        .iter()
        .map(|t| match stats.next() {
            Some(CalibStat::Values { values, .. }) => Ok(values),
            _ => Err(PassError::Invalid { subject: t.clone(), message: "the calibrator returned no values".into() }),
        })
        .collect()
}

/// The input of the Softmax that computes `tensor`, looking back through ops that only move or reshape
/// values (Identity, Reshape, Flatten, Squeeze, Unsqueeze); `None` when no Softmax computes it.
pub fn softmax_input(g: &Graph, tensor: &str) -> Option<String> {
    let mut t = tensor.to_string();
    for _ in 0..16 {
        let (_, n) = g.nodes().find(|(_, n)| n.outputs.contains(&t))?;
        if !n.is_onnx() {
            return None;
        }
        match n.op_type.as_str() {
            "Softmax" => return n.inputs.first().filter(|i| !i.is_empty()).cloned(),
            "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => t = n.inputs.first()?.clone(),
            _ => return None,
        }
    }
    None
}

pub use sparsify_pm::rel_l2;

/// The weights a sensitivity run measures: the scope's weights that have consumers (no embeddings).
pub fn layers(g: &Graph, scope: &Scope) -> Vec<(WeightId, String, usize)> {
    scope
        .select(g)
        .into_iter()
        .filter_map(|s| {
            let info = s.info?;
            let n = g.weight(&s.id)?.numel().ok()?;
            Some((s.id, info.op().to_string(), n))
        })
        .collect()
}

/// `dense` with weight `id` (and the constants beside it that changed in place) taken from `pruned`.
pub fn transfer_layer(dense: &Model, pruned: &Model, id: &WeightId) -> Result<Model, PassError> {
    let mut m = dense.clone();
    for (cid, t) in layer_changes(dense, pruned, id)? {
        *m.graph.weight_mut(&cid).ok_or_else(|| invalid(cid.name(), "weight missing"))? = t;
    }
    Ok(m)
}

/// The constants that pruning weight `id` changed, taken from `pruned`: the weight itself, and the
/// constants beside it that changed in place (the consumer's other constant inputs — a bias — and a
/// following Add's constant).
pub fn layer_changes(dense: &Model, pruned: &Model, id: &WeightId) -> Result<Vec<(WeightId, Tensor)>, PassError> {
    let t = pruned.graph.weight(id).ok_or_else(|| invalid(id.name(), "weight missing in the pruned model"))?.clone();
    dense.graph.weight(id).ok_or_else(|| invalid(id.name(), "weight missing"))?;
    let mut changes = vec![(id.clone(), t)];
    let info = dense.graph.find_weights().into_iter().find(|w| &w.id == id);
    let mut names: Vec<String> = Vec::new();
    for u in info.iter().flat_map(|i| &i.uses) {
        let node = dense.graph.node(u.node);
        names.extend(node.inputs.iter().skip(2).cloned());
        if let Some(y) = node.outputs.first() {
            for (c, _) in dense.graph.consumers(y) {
                let n = dense.graph.node(c);
                if n.op_type == "Add" {
                    names.extend(n.inputs.iter().filter(|i| *i != y).cloned());
                }
            }
        }
    }
    for name in names {
        let Some(cid) = dense.graph.constant_source(&name) else { continue };
        let (Some(a), Some(b)) = (dense.graph.weight(&cid), pruned.graph.weight(&cid)) else { continue };
        if a.dims == b.dims && a.bytes() != b.bytes() && !changes.iter().any(|(c, _)| c == &cid) {
            changes.push((cid, b.clone()));
        }
    }
    Ok(changes)
}

fn invalid(subject: &str, message: &str) -> PassError {
    PassError::Invalid { subject: subject.to_string(), message: message.to_string() }
}

/// Measure (or fetch from the cache) the curves of `layers` at `levels`. `pruned_at(s)` returns the
/// whole model pruned at level s. `recipe` names how (it is part of the cache key).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    dense: &Model,
    cal: &dyn Calibrator,
    output: &str,
    recipe: &str,
    layers: &[(WeightId, String, usize)],
    levels: &[f64],
    mut pruned_at: impl FnMut(f64) -> Result<Model, PassError>,
) -> Result<Curves, PassError> {
    let fp = cal.fingerprint();
    let names: Vec<&str> = layers.iter().map(|l| l.0.name()).collect();
    let key = format!("{:016x}|{recipe}|{levels:?}|{output}|{names:?}|{fp:016x}", model_hash(dense));
    measure_keyed(dense, cal, output, recipe, layers, levels, key, &mut pruned_at)
}

/// Put curves measured earlier (e.g. read from a cache file) into the in-process cache.
pub fn remember(curves: Curves) {
    if let Ok(mut c) = CACHE.lock() {
        c.insert(curves.key.clone(), curves);
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_keyed(
    dense: &Model,
    cal: &dyn Calibrator,
    output: &str,
    recipe: &str,
    layers: &[(WeightId, String, usize)],
    levels: &[f64],
    key: String,
    pruned_at: &mut dyn FnMut(f64) -> Result<Model, PassError>,
) -> Result<Curves, PassError> {
    let fp = cal.fingerprint();
    if fp != 0 {
        if let Some(c) = CACHE.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(Curves { runs: 0, ..c });
        }
    }
    // Every candidate, as a variant of the dense model: those that change only initializers are
    // measured together (the calibrator prepares the model once and reruns only what each changes);
    // a candidate that changes a Constant node runs on its own copy.
    let mut variants: Vec<Vec<Tensor>> = Vec::new();
    let mut slot: Vec<Vec<Option<usize>>> = vec![vec![None; levels.len()]; layers.len()];
    let mut own: Vec<(usize, usize, Model)> = Vec::new();
    let mut runs = 0;
    for (li, &s) in levels.iter().enumerate() {
        let pruned = pruned_at(s)?;
        for (i, (id, _, _)) in layers.iter().enumerate() {
            let same = match (dense.graph.weight(id), pruned.graph.weight(id)) {
                (Some(a), Some(b)) => a.bytes() == b.bytes(),
                _ => true,
            };
            if same {
                continue;
            }
            runs += 1;
            let changes = layer_changes(dense, &pruned, id)?;
            if changes.iter().all(|(c, _)| matches!(c, WeightId::Init(_))) {
                slot[i][li] = Some(variants.len());
                variants.push(changes.into_iter().map(|(_, t)| t).collect());
            } else {
                own.push((i, li, transfer_layer(dense, &pruned, id)?));
            }
        }
    }
    let by_variant = cal.variant_errors(dense, output, &variants)?;
    let mut errors: Vec<Vec<f64>> =
        slot.iter().map(|l| l.iter().map(|v| v.map_or(0.0, |v| by_variant[v])).collect()).collect();
    if !own.is_empty() {
        let reference = output_values(dense, cal, output)?;
        for (i, li, cand) in own {
            errors[i][li] = rel_l2(&reference, &output_values(&cand, cal, output)?);
        }
    }
    let curves = Curves {
        key: key.clone(),
        output: output.to_string(),
        recipe: recipe.to_string(),
        levels: levels.to_vec(),
        layers: layers
            .iter()
            .zip(errors)
            .map(|((id, op, n), errors)| LayerCurve {
                weight: id.name().to_string(),
                op: op.clone(),
                elements: *n,
                errors,
            })
            .collect(),
        runs,
    };
    if fp != 0 {
        if let Ok(mut c) = CACHE.lock() {
            c.insert(key, curves.clone());
        }
    }
    Ok(curves)
}

/// Parse a comma- or `|`-separated list of levels in (0, 1], sorted and deduplicated.
pub fn parse_levels(text: &str) -> Result<Vec<f64>, String> {
    let mut v = Vec::new();
    for part in text.split([',', '|', ' ']).filter(|p| !p.is_empty()) {
        let x: f64 = part.parse().map_err(|_| format!("level '{part}' is not a number"))?;
        if !(x > 0.0 && x <= 1.0) {
            return Err(format!("level {x} is not in (0, 1]"));
        }
        v.push(x);
    }
    if v.is_empty() {
        return Err("no levels given".into());
    }
    v.sort_by(f64::total_cmp);
    v.dedup();
    Ok(v)
}

/// A Markdown table: one row per layer, one column per level.
pub fn table(c: &Curves) -> String {
    let mut s = format!(
        "| weight | op | elements | {} |\n",
        c.levels.iter().map(|l| format!("{l}")).collect::<Vec<_>>().join(" | ")
    );
    s.push_str(&format!("|---|---|---|{}\n", "---|".repeat(c.levels.len())));
    for l in &c.layers {
        let e: Vec<String> = l.errors.iter().map(|e| format!("{e:.4}")).collect();
        s.push_str(&format!("| {} | {} | {} | {} |\n", l.weight, l.op, l.elements, e.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_errors() {
        assert_eq!(parse_levels("0.9,0.25|0.5,0.5").unwrap(), vec![0.25, 0.5, 0.9]);
        assert!(parse_levels("0").is_err() && parse_levels("x").is_err() && parse_levels("").is_err());
        assert_eq!(rel_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 4.0]) - 0.6).abs() < 1e-12);
    }
}
