//! Many variants of one model measured against it in tract: the candidates of the sensitivity curves
//! ([`sparsify_pm::Calibrator::variant_errors`]), each the model with a few initializers replaced.
//!
//! Running every candidate as a whole model costs one full forward pass over the calibration set per
//! candidate. Two things make it cheaper, with the same numbers:
//! - **One plan per replaced set.** Variants that replace the same initializers are grouped; the group's
//!   model takes those initializers as inputs, so tract optimises it once for all of them.
//! - **Only what a variant changes is rerun.** The group's model is the *suffix* of the graph that the
//!   replaced initializers reach (their consumers and everything downstream). The float tensors it reads
//!   from the rest of the graph (the frontier) are computed once by one run of the model over the
//!   calibration set and fed as inputs; integer and boolean tensors (shapes, masks, indices) are instead
//!   recomputed inside the suffix (their producers are pulled in) so that tract still sees constant
//!   shapes, and so are `Constant` nodes.
//!
//! Fallbacks, each giving the same values: when the kept frontier would exceed `KEEP_BUDGET` bytes, or
//! the graph has subgraphs, or tract cannot plan a suffix, the group runs the whole model with the
//! replaced initializers as inputs; when that fails too (or a replaced tensor is not f32), each variant
//! runs on its own copy of the model. Groups run on the machine's cores (tract runs one thread each).

use crate::graph_slice::{close_over, float_tensors, slice_model};
use sparsify_ir::{DType, Graph, Model, NodeId, Tensor};
use sparsify_pm::{apply_variant, check_variant, CalibError, RelL2};
use sparsify_validate::{Array, Feed, ModelSource, Runner};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The most bytes of frontier activations kept for the suffix runs.
const KEEP_BUDGET: usize = 1 << 30;

/// How the groups of variants ran (see the module header), added up over calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VariantPaths {
    /// Groups run as a suffix of the graph fed from the kept frontier (for a first layer, the suffix
    /// can be the whole graph).
    pub suffix: usize,
    /// Groups run as the whole model with the replaced initializers as inputs because no suffix could.
    pub whole: usize,
    /// Groups whose variants ran each on its own copy of the model.
    pub copies: usize,
}

/// (variant index, error) for the variants of one group.
type GroupErrors = Result<Vec<(usize, f64)>, CalibError>;

/// Relative L2 of `output` between `model` and each variant, over `batches`.
pub(crate) fn variant_errors(
    model: &Model,
    output: &str,
    variants: &[Vec<Tensor>],
    batches: &[Feed],
    paths: &Mutex<VariantPaths>,
) -> Result<Vec<f64>, CalibError> {
    for v in variants {
        // Checks names, dtypes and shapes with the same messages as the default implementation.
        check_variant(model, v)?;
    }
    let mut groups: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
    for (i, v) in variants.iter().enumerate() {
        let mut names: Vec<&str> = v.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if !names.is_empty() {
            groups.entry(names).or_default().push(i);
        }
    }
    let mut errors = vec![0.0; variants.len()];
    if groups.is_empty() {
        return Ok(errors);
    }
    let g = &model.graph;
    let order = g.topo_order().ok_or_else(|| CalibError("the graph has a cycle".into()))?;
    let floats = float_tensors(g, &order);
    let cuts: Vec<Option<Cut>> = groups.keys().map(|names| Cut::suffix(g, &order, &floats, names, output)).collect();

    // One run of the model: the reference output and every suffix's frontier, per batch.
    let mut wanted: Vec<String> = vec![output.to_string()];
    for c in cuts.iter().flatten() {
        for t in &c.frontier {
            if !wanted.contains(t) {
                wanted.push(t.clone());
            }
        }
    }
    let mut kept = run_keeping(model, &wanted, batches)?;
    let suffixes = kept.is_some();
    if kept.is_none() {
        wanted.truncate(1);
        kept = run_keeping(model, &wanted, batches)?;
    }
    let kept = kept.ok_or_else(|| CalibError("the reference output alone exceeds the memory budget".into()))?;
    let reference: Vec<Vec<f32>> = kept.iter().map(|b| f32_values(&b[0])).collect();
    let index: HashMap<&str, usize> = wanted.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();

    let jobs: Vec<(Vec<&str>, Vec<usize>, Option<Cut>)> =
        groups.into_iter().zip(cuts).map(|((names, idx), cut)| (names, idx, cut)).collect();
    let ctx = Ctx { model, output, variants, batches, kept: &kept, index: &index, reference: &reference, paths };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, GroupErrors)>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some((names, idx, cut)) = jobs.get(j) else { break };
                let cut = if suffixes { cut.clone() } else { None };
                let r = ctx.group(names, idx, cut);
                results.lock().unwrap_or_else(|p| p.into_inner()).push((j, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(j, _)| *j);
    for (_, r) in results {
        for (i, e) in r? {
            errors[i] = e;
        }
    }
    Ok(errors)
}

/// Runs `model` over `batches` keeping `tensors` (per batch, in order); `None` past [`KEEP_BUDGET`].
fn run_keeping(model: &Model, tensors: &[String], batches: &[Feed]) -> Result<Option<Vec<Vec<Array>>>, CalibError> {
    let bytes = sparsify_onnx_io::model_to_bytes(model).map_err(|e| CalibError(e.to_string()))?;
    let runner = Runner::for_tensors(ModelSource::Bytes(&bytes), batches.first(), tensors)
        .map_err(|e| CalibError(format!("tract cannot run the model: {e}")))?;
    let mut kept = Vec::with_capacity(batches.len());
    let mut total = 0usize;
    for b in batches {
        let outs = runner.run(b).map_err(|e| CalibError(e.to_string()))?;
        total += outs.iter().map(|(_, a)| a.len() * 4).sum::<usize>();
        if total > KEEP_BUDGET {
            return Ok(None);
        }
        kept.push(outs.into_iter().map(|(_, a)| a).collect());
    }
    Ok(Some(kept))
}

fn f32_values(a: &Array) -> Vec<f32> {
    match a {
        Array::F32(x) => x.iter().copied().collect(),
        other => other.to_f64_vec().into_iter().map(|x| x as f32).collect(),
    }
}

/// The nodes a group reruns and the tensors it reads from the dense run.
#[derive(Clone)]
struct Cut {
    /// In topological order.
    nodes: Vec<NodeId>,
    /// Float tensors computed outside the cut, fed from the dense run.
    frontier: Vec<String>,
}

impl Cut {
    fn whole(order: &[NodeId]) -> Cut {
        Cut { nodes: order.to_vec(), frontier: Vec::new() }
    }

    /// The consumers of `names` and everything downstream, with the integer/boolean producers and
    /// `Constant` nodes they read pulled in. `None` when the graph has subgraphs (whose reads the IR does
    /// not see) or the replaced tensors do not reach `output` (then the whole model runs, which gives 0).
    fn suffix(
        g: &Graph,
        order: &[NodeId],
        floats: &HashMap<String, bool>,
        names: &[&str],
        output: &str,
    ) -> Option<Cut> {
        if !g.subgraph_refs.is_empty() {
            return None;
        }
        let mut inside: BTreeSet<NodeId> = BTreeSet::new();
        let mut dirty: BTreeSet<&str> = names.iter().copied().collect();
        for &id in order {
            let n = g.node(id);
            if n.inputs.iter().any(|i| dirty.contains(i.as_str())) {
                inside.insert(id);
                dirty.extend(n.outputs.iter().map(|o| o.as_str()));
            }
        }
        if !dirty.contains(output) {
            return None;
        }
        let (nodes, frontier) = close_over(g, order, floats, inside);
        Some(Cut { nodes, frontier })
    }

    /// The model computing `output` from the cut's nodes: the frontier, the graph inputs the nodes read
    /// and the replaced initializers `names` are its inputs.
    fn model(&self, m: &Model, names: &[&str], output: &str, kept: &[Array], index: &HashMap<&str, usize>) -> Model {
        let frontier: Vec<(String, i32)> =
            self.frontier.iter().map(|t| (t.clone(), kept[index[t.as_str()]].onnx_elem_type())).collect();
        slice_model(m, &self.nodes, &frontier, names, &[output.to_string()])
    }
}

/// What the worker threads share.
struct Ctx<'a> {
    model: &'a Model,
    output: &'a str,
    variants: &'a [Vec<Tensor>],
    batches: &'a [Feed],
    kept: &'a [Vec<Array>],
    index: &'a HashMap<&'a str, usize>,
    reference: &'a [Vec<f32>],
    paths: &'a Mutex<VariantPaths>,
}

impl Ctx<'_> {
    /// The errors of the variants `idx`, which replace `names`.
    fn group(&self, names: &[&str], idx: &[usize], cut: Option<Cut>) -> GroupErrors {
        let g = &self.model.graph;
        let all_f32 = names.iter().all(|n| g.initializer(n).is_some_and(|t| t.dtype == DType::F32));
        let order = g.topo_order().ok_or_else(|| CalibError("the graph has a cycle".into()))?;
        // (cut, is the fallback)
        let mut tries: Vec<(Cut, bool)> = Vec::new();
        if all_f32 {
            let whole = cut.as_ref().is_some_and(|c| c.frontier.is_empty() && c.nodes.len() == order.len());
            tries.extend(cut.map(|c| (c, false)));
            if !whole {
                tries.push((Cut::whole(&order), true));
            }
        }
        for (c, fallback) in tries {
            if let Ok(r) = self.with_inputs(names, idx, &c) {
                let mut p = self.paths.lock().unwrap_or_else(|p| p.into_inner());
                if fallback {
                    p.whole += 1;
                } else {
                    p.suffix += 1;
                }
                return Ok(r);
            }
        }
        self.paths.lock().unwrap_or_else(|p| p.into_inner()).copies += 1;
        // Each variant on its own copy of the model.
        idx.iter()
            .map(|&i| {
                let m = apply_variant(self.model, &self.variants[i])?;
                let bytes = sparsify_onnx_io::model_to_bytes(&m).map_err(|e| CalibError(e.to_string()))?;
                let runner =
                    Runner::for_tensors(ModelSource::Bytes(&bytes), self.batches.first(), &[self.output.to_string()])
                        .map_err(|e| CalibError(format!("tract cannot run a variant: {e}")))?;
                let mut acc = RelL2::default();
                for (b, reference) in self.batches.iter().zip(self.reference) {
                    let outs = runner.run(b).map_err(|e| CalibError(e.to_string()))?;
                    acc.add(reference, &f32_values(&outs[0].1));
                }
                Ok((i, acc.value()))
            })
            .collect()
    }

    /// The group run through the cut's model, the replaced initializers fed as inputs.
    fn with_inputs(&self, names: &[&str], idx: &[usize], cut: &Cut) -> GroupErrors {
        let first = self.kept.first().map(|k| k.as_slice()).unwrap_or(&[]);
        let sub = cut.model(self.model, names, self.output, first, self.index);
        let bytes = sparsify_onnx_io::model_to_bytes(&sub).map_err(|e| CalibError(e.to_string()))?;
        let runner = Runner::for_tensors(ModelSource::Bytes(&bytes), None, &[self.output.to_string()])
            .map_err(|e| CalibError(e.to_string()))?;
        enum Src {
            Kept(usize),
            Input(String),
            Swapped(usize),
        }
        let srcs: Vec<Src> = runner
            .input_names()
            .iter()
            .map(|n| match (self.index.get(n.as_str()), names.iter().position(|s| s == n)) {
                (_, Some(k)) => Src::Swapped(k),
                (Some(&i), None) if cut.frontier.contains(n) => Src::Kept(i),
                _ => Src::Input(n.clone()),
            })
            .collect();
        let mut out = Vec::with_capacity(idx.len());
        for &i in idx {
            let swapped: Vec<Array> = names
                .iter()
                .map(|n| {
                    let t =
                        self.variants[i].iter().find(|t| t.name == *n).ok_or_else(|| CalibError("variant".into()))?;
                    t.to_f32().map(Array::F32).map_err(|e| CalibError(format!("'{n}': {e}")))
                })
                .collect::<Result<_, _>>()?;
            let mut acc = RelL2::default();
            for ((b, kept), reference) in self.batches.iter().zip(self.kept).zip(self.reference) {
                let inputs: Vec<&Array> = srcs
                    .iter()
                    .map(|s| match s {
                        Src::Kept(k) => Ok(&kept[*k]),
                        Src::Swapped(k) => Ok(&swapped[*k]),
                        Src::Input(n) => b.get(n).ok_or_else(|| CalibError(format!("no calibration input '{n}'"))),
                    })
                    .collect::<Result<_, _>>()?;
                let outs = runner.run_inputs(&inputs).map_err(|e| CalibError(e.to_string()))?;
                acc.add(reference, &f32_values(&outs[0].1));
            }
            out.push((i, acc.value()));
        }
        Ok(out)
    }
}
