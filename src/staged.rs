//! Staged calibration: the model runs in tract one stage at a time, so tract never holds more than one
//! stage's weights (the way the reference Wanda / SparseGPT code walks an LLM layer by layer).
//!
//! A stage is a run of consecutive nodes (topological order, only the ancestors of the requested
//! tensors) whose weights add up to at most the stage budget (a node with a larger weight is a stage of
//! its own). Each stage is a slice of the graph (`crate::graph_slice`): it reads the float tensors the
//! earlier stages produced (kept per calibration batch until their last reader has run) and recomputes
//! the integer / boolean producers it needs. The requested tensors are visited as the stage producing
//! them runs, batch by batch, and reported done when that stage has run every batch (so a caller can
//! finish and release their statistics early), so statistics are accumulated exactly as in the whole-model run (tract
//! computes every node from the same inputs; `tests/staged_calib.rs` compares the statistics).
//!
//! A model within one stage, or with subgraphs, runs whole (the caller's path).

use crate::calibrate::Progress;
use crate::graph_slice::{close_over, float_tensors, slice_model};
use sparsify_ir::{Model, NodeId};
use sparsify_pm::CalibError;
use sparsify_validate::{Array, Feed, ModelSource, Runner};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a calibration walk reports: a requested tensor's value for one batch, or that some requested
/// tensors (indices) have been visited for every batch.
pub enum Event<'a> {
    Value { tensor: usize, value: &'a Array, batch: &'a Feed },
    Done(&'a [usize]),
}

/// The visitor of a calibration walk.
pub(crate) type Visit<'a> = dyn FnMut(Event<'_>) -> Result<(), CalibError> + 'a;

/// Runs `model` stage by stage over `batches`, calling `visit` for each requested tensor of each batch.
/// Returns `Ok(false)` without running anything when the model fits one stage of `budget` bytes.
pub(crate) fn run(
    model: &Model,
    tensors: &[String],
    batches: &[Feed],
    budget: usize,
    progress: Option<&Progress>,
    visit: &mut Visit<'_>,
) -> Result<bool, CalibError> {
    let g = &model.graph;
    if !g.subgraph_refs.is_empty() {
        return Ok(false);
    }
    let order_all = g.topo_order().ok_or_else(|| CalibError("the graph has a cycle".into()))?;
    // Only the ancestors of the requested tensors run.
    let mut needed: BTreeSet<NodeId> = BTreeSet::new();
    let mut work: Vec<&str> = tensors.iter().map(|s| s.as_str()).collect();
    while let Some(t) = work.pop() {
        if let Some(p) = g.producer_of(t) {
            if needed.insert(p) {
                work.extend(g.node(p).inputs.iter().filter(|i| !i.is_empty()).map(|i| i.as_str()));
            }
        }
    }
    let order: Vec<NodeId> = order_all.iter().copied().filter(|n| needed.contains(n)).collect();
    let stages = split(model, &order, budget);
    if stages.len() <= 1 {
        return Ok(false);
    }
    for t in tensors {
        if g.producer_of(t).is_none() && !g.inputs.iter().any(|i| &i.name == t) {
            return Err(CalibError(format!("'{t}' is not a tensor of the model")));
        }
    }
    let floats = float_tensors(g, &order_all);
    let slices: Vec<(Vec<NodeId>, Vec<String>)> =
        stages.iter().map(|s| close_over(g, &order_all, &floats, s.iter().copied().collect())).collect();
    let mut stage_of: HashMap<&str, usize> = HashMap::new();
    for (k, s) in stages.iter().enumerate() {
        for &n in s {
            for o in &g.node(n).outputs {
                stage_of.insert(o.as_str(), k);
            }
        }
    }
    // What each stage outputs (kept for later stages, or requested) and when a kept tensor is last read.
    let mut outputs: Vec<BTreeSet<String>> = vec![BTreeSet::new(); stages.len()];
    let mut last_read: BTreeMap<String, usize> = BTreeMap::new();
    for (k, (_, frontier)) in slices.iter().enumerate() {
        for t in frontier {
            let j = *stage_of.get(t.as_str()).ok_or_else(|| CalibError(format!("no stage produces '{t}'")))?;
            outputs[j].insert(t.clone());
            last_read.insert(t.clone(), k);
        }
    }
    for t in tensors {
        if let Some(&j) = stage_of.get(t.as_str()) {
            outputs[j].insert(t.clone());
        }
    }
    // Requested graph inputs are visited from the batches themselves.
    let inputs: Vec<usize> = (0..tensors.len()).filter(|&i| g.producer_of(&tensors[i]).is_none()).collect();
    for &i in &inputs {
        for b in batches {
            let a = b.get(&tensors[i]).ok_or_else(|| CalibError(format!("no calibration input '{}'", tensors[i])))?;
            visit(Event::Value { tensor: i, value: a, batch: b })?;
        }
    }
    visit(Event::Done(&inputs))?;
    let mut live: Vec<HashMap<String, Array>> = vec![HashMap::new(); batches.len()];
    let total = stages.len() * batches.len();
    for (k, (nodes, frontier)) in slices.iter().enumerate() {
        let outs: Vec<String> = outputs[k].iter().cloned().collect();
        if !outs.is_empty() {
            let first = live.first().ok_or_else(|| CalibError("no calibration batch".into()))?;
            let typed: Vec<(String, i32)> = frontier
                .iter()
                .map(|t| first.get(t).map(|a| (t.clone(), a.onnx_elem_type())))
                .collect::<Option<_>>()
                .ok_or_else(|| CalibError(format!("stage {k}: an input from an earlier stage was not kept")))?;
            let sub = slice_model(model, nodes, &typed, &[], &outs);
            let bytes = sparsify_onnx_io::model_to_bytes(&sub).map_err(|e| CalibError(e.to_string()))?;
            let runner = Runner::for_tensors(ModelSource::Bytes(&bytes), None, &outs)
                .map_err(|e| CalibError(format!("tract cannot run calibration stage {k}: {e}")))?;
            drop(bytes);
            for (b, batch) in batches.iter().enumerate() {
                let inputs: Vec<&Array> = runner
                    .input_names()
                    .iter()
                    .map(|n| live[b].get(n).or_else(|| batch.get(n)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| CalibError(format!("stage {k}: an input is missing")))?;
                let values = runner.run_inputs(&inputs).map_err(|e| CalibError(e.to_string()))?;
                for (name, a) in values {
                    if let Some(i) = tensors.iter().position(|t| *t == name) {
                        visit(Event::Value { tensor: i, value: &a, batch })?;
                    }
                    if last_read.contains_key(&name) {
                        live[b].insert(name, a);
                    }
                }
                if let Some(p) = progress {
                    p(k * batches.len() + b + 1, total);
                }
            }
        }
        // (tract's copy of the stage was released with the runner, before the caller uses the statistics.)
        let finished: Vec<usize> =
            (0..tensors.len()).filter(|&i| stage_of.get(tensors[i].as_str()) == Some(&k)).collect();
        visit(Event::Done(&finished))?;
        for l in &mut live {
            l.retain(|t, _| last_read.get(t).is_some_and(|&r| r > k));
        }
    }
    Ok(true)
}

/// Consecutive nodes whose weights (each initializer counted at its first reader) add up to at most
/// `budget` bytes.
fn split(model: &Model, order: &[NodeId], budget: usize) -> Vec<Vec<NodeId>> {
    let g = &model.graph;
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut stages: Vec<Vec<NodeId>> = vec![Vec::new()];
    let mut size = 0usize;
    for &n in order {
        let mut bytes = 0usize;
        for i in &g.node(n).inputs {
            if let Some(t) = g.initializer(i) {
                if seen.insert(i.as_str()) {
                    bytes += t.numel().unwrap_or(0) * t.dtype.size().unwrap_or(1);
                }
            }
        }
        let current = stages.last_mut().expect("one stage");
        if !current.is_empty() && size + bytes > budget {
            stages.push(Vec::new());
            size = 0;
        }
        size += bytes;
        stages.last_mut().expect("one stage").push(n);
    }
    stages
}
