//! `bias-correct`: after pruning, restore each pruned op's expected output with its bias:
//! b ← b + E[x]·(W_dense − W_pruned) per output channel, E[x] the calibration mean of the op's input.
//!
//! - **Dense reference.** The pass declares [`Pass::needs_dense_snapshot`], so the pass manager records
//!   the model as it entered the pipeline ([`DenseSnapshot`]: tensors share bytes, nothing is copied until
//!   a pass writes). W_dense is the snapshot's weight, W_pruned the current one, so it works after any
//!   pruning pass — `mask` (every scorer and granularity), `nm-legalize`, `block-sparsify`, `sparsegpt`
//!   (where kept weights moved too) — and after several of them. E[x] is measured on the dense snapshot
//!   (one calibration sweep for every corrected op). A channel permutation or a pass that changes shapes
//!   or topology between the snapshot and this pass drops the snapshot, and the pass then fails with a
//!   clear message (put `permute-channels` in an earlier pipeline).
//! - **Means** (`calib_stats`): MatMul / Gemm inputs per feature over every other axis (3-D activations:
//!   batch × sequence); Gemm `transA=1` reads features on axis 0. Conv: the mean im2col patch per group
//!   (strides, dilations, groups honoured), so Δb_o = Σ_{c,k} E[patch]_{c,k}·ΔW[o,c,k]. For an unpadded
//!   Conv this restores the mean output over positions exactly; with padding the zero-padded border
//!   patches are part of the mean, so the bias restores the output mean over all positions (the border
//!   positions individually see a slightly different shift: a documented approximation).
//! - **Modes.** `mode=dense`: Δb = E_dense[x]·(W_dense − W_pruned), one sweep on the dense model (each
//!   op corrected for its own pruning only). `mode=sequential` (default; measured on digits_cnn after Wanda
//!   50%: rel L2 0.308 -> 0.204 sequential vs 0.226 dense, see `docs/results.md`): ops are corrected in stages (an op's input depends only on ops of earlier
//!   stages, `calib_stats::stages`); for each stage the input means E_now[x] are measured on the model
//!   with the earlier stages already pruned *and corrected*, and Δb = E_dense[x]·W_dense − E_now[x]·W_pruned
//!   restores the op's expected output to the dense one (also undoing the mean shift that reaches it from
//!   upstream). One sweep for the dense means plus one per stage.
//! - **Where the bias goes.** Conv: its bias input (added, or created as `<weight>.bias_correction`).
//!   Gemm: C, scaled by alpha/beta (created when absent; `beta=0` is skipped). MatMul: the constant of a
//!   following `Add` when the MatMul output feeds only that Add and the constant broadcasts along the
//!   last axis (torch exports MatMul+Add), else a new `Add` node after the MatMul (its output keeps the
//!   old name). A bias shared with another op, computed at run time, or not shaped per channel is left
//!   alone with a note. QDQ graphs (issue 14): a bias `DequantizeLinear(int32 q, scale)` read only by the op
//!   gets `q += round(shift / scale)` per channel (exact up to half a step of the bias grid, scale = input
//!   scale × weight scale); pruned quantized weights are compared on their dequantized values. Dynamic
//!   quantization (`MatMulInteger`): the mean is the float activation's (the `DynamicQuantizeLinear`
//!   input) and the shift goes after the `Cast → Mul` that rescales the integer result, as after a MatMul.
//! - **Skipped with a note:** ConvTranspose (the bias matching the mean over output positions depends
//!   on output cropping by pads / output_padding; not implemented), weights read as the activation-side
//!   input, non-2-D MatMul weights, weights reached through `Cast` (the activation dtype is not the
//!   weight's), new biases for non-f32 models, embedding tables.
//! - Effects: weight values and topology (new bias inputs / initializers / Add nodes). Preconditions:
//!   calibration data. Not idempotent within one pipeline (a second `bias-correct` adds the same shift
//!   again); on its own output in a new pipeline it changes nothing (dense = current, shift 0).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights' ops are corrected |

use crate::calib_stats::{mean_request, output_shift, output_shift_between, stages, InputMean};
use crate::scope::{Scope, SCOPE_OPTIONS};
use sparsify_ir::{DType, Graph, Model, Node, Tensor, WeightUse};
use sparsify_pm::{
    CalibRequest, Changed, DenseSnapshot, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo,
    PipelineError,
};

const OPTIONS: [OptionSpec; 5] = [
    OptionSpec {
        name: "mode",
        default: "sequential",
        help: "sequential: match each op's expected output to the dense one, stage by stage on the corrected model; \
               dense: add E_dense[x]·(W_dense − W_pruned) using dense means only (one sweep)",
    },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "bias-correct",
    description: "after pruning, add E[x]·(W_dense − W_pruned) to each pruned op's bias (needs --calib)",
    effects: Effects(Effects::WEIGHT_VALUES.0 | Effects::TOPOLOGY.0),
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let sequential = opts.take_choice("mode", &["sequential", "dense"], "sequential")? == "sequential";
    Ok(Box::new(BiasCorrect { sequential, scope: Scope::from_options(opts)? }))
}

pub struct BiasCorrect {
    /// `mode=sequential` (else `dense`).
    pub sequential: bool,
    pub scope: Scope,
}

/// One op to correct.
struct Job {
    weight: String,
    use_: WeightUse,
    shape: Vec<usize>,
    before: Vec<f64>,
    after: Vec<f64>,
    request: usize,
}

impl Pass for BiasCorrect {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("mode", if self.sequential { "sequential" } else { "dense" }.to_string())];
        v.extend(self.scope.options());
        v
    }
    fn needs_dense_snapshot(&self) -> bool {
        true
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let Some(snap) = cx.analyses.get::<DenseSnapshot>() else {
            return Err(PassError::Invalid {
                subject: "bias-correct".into(),
                message: "no dense reference: a channel permutation or a pass that changed shapes or topology ran \
                          earlier in this pipeline (run such passes in a separate pipeline first)"
                    .into(),
            });
        };
        let dense = snap.model.clone();
        let mut requests: Vec<CalibRequest> = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        let mut notes: Vec<(String, String)> = Vec::new();
        for sel in self.scope.select(&model.graph) {
            let name = sel.id.name().to_string();
            let Some(info) = sel.info else { continue };
            let (Some(now), Some(was)) = (model.graph.weight(&sel.id), dense.graph.weight(&sel.id)) else { continue };
            if now.dims != was.dims {
                notes.push((name, "skipped: shape changed since the pipeline started".into()));
                continue;
            }
            // Dequantized values for quantized weights (`sparsify_ir::quant`).
            let (after, before) = (model.graph.weight_values_f64(&sel.id)?, dense.graph.weight_values_f64(&sel.id)?);
            let after: Vec<f64> = after.iter().copied().collect();
            let before: Vec<f64> = before.iter().copied().collect();
            if after == before {
                continue;
            }
            let shape = now.shape();
            for u in &info.uses {
                if u.op == "ConvTranspose" {
                    notes.push((
                        name.clone(),
                        format!("'{}': ConvTranspose bias correction is not implemented", u.node_name),
                    ));
                    continue;
                }
                if u.route.iter().any(|r| r == "Cast") {
                    notes.push((name.clone(), format!("'{}': weight reached through Cast: skipped", u.node_name)));
                    continue;
                }
                match mean_request(&dense.graph, u, &shape) {
                    Ok(req) => {
                        let request = match requests.iter().position(|r| *r == req) {
                            Some(i) => i,
                            None => {
                                requests.push(req);
                                requests.len() - 1
                            }
                        };
                        jobs.push(Job {
                            weight: name.clone(),
                            use_: u.clone(),
                            shape: shape.clone(),
                            before: before.clone(),
                            after: after.clone(),
                            request,
                        });
                    }
                    Err(why) => notes.push((name.clone(), format!("'{}': skipped: {why}", u.node_name))),
                }
            }
        }
        for (s, m) in notes {
            cx.note(s, m);
            cx.stat("ops_skipped", 1.0);
        }
        if jobs.is_empty() {
            cx.note("bias-correct", "no pruned weight to correct");
            return Ok(Changed::No);
        }
        let stats = cx.calibrator()?.collect(&dense, &requests)?;
        cx.stat("calibration_runs", 1.0);
        if stats.len() != requests.len() {
            return Err(PassError::Invalid {
                subject: "calibration".into(),
                message: "the calibrator answered a different number of requests".into(),
            });
        }
        let dense_means: Vec<Result<InputMean, String>> = stats.iter().map(InputMean::from_stat).collect();
        let order: Vec<Vec<usize>> = if self.sequential {
            let ops: Vec<_> = jobs.iter().map(|j| (j.use_.node, requests[j.request].tensor().to_string())).collect();
            stages(&model.graph, &ops)
        } else {
            vec![(0..jobs.len()).collect()]
        };
        cx.stat("stages", order.len() as f64);
        let mut results: Vec<Option<Result<(String, f64), String>>> = jobs.iter().map(|_| None).collect();
        for stage in &order {
            // Sequential: the means of this stage's inputs on the model corrected so far.
            let now_means: Option<Vec<Result<InputMean, String>>> = if self.sequential {
                let mut reqs: Vec<CalibRequest> = Vec::new();
                for &j in stage {
                    let r = &requests[jobs[j].request];
                    if !reqs.contains(r) {
                        reqs.push(r.clone());
                    }
                }
                let st = cx.calibrator()?.collect(model, &reqs)?;
                cx.stat("calibration_runs", 1.0);
                let by_req: Vec<Result<InputMean, String>> = requests
                    .iter()
                    .map(|r| match reqs.iter().position(|q| q == r) {
                        Some(i) => st.get(i).ok_or_else(|| "missing answer".to_string()).and_then(InputMean::from_stat),
                        None => Err("not collected".into()),
                    })
                    .collect();
                Some(by_req)
            } else {
                None
            };
            for &j in stage {
                let job = &jobs[j];
                let u = &job.use_;
                let res = dense_means[job.request]
                    .clone()
                    .and_then(|md| match &now_means {
                        None => output_shift(&job.shape, u.out_axis, u.red_axis, &job.before, &job.after, &md),
                        Some(now) => now[job.request].clone().and_then(|mp| {
                            output_shift_between(
                                &job.shape,
                                (u.out_axis, u.red_axis),
                                (&job.before, &md),
                                (&job.after, &mp),
                            )
                        }),
                    })
                    .and_then(|shift| apply_shift(&mut model.graph, u, &job.weight, &shift));
                results[j] = Some(res);
            }
        }
        let mut changed = Changed::No;
        for (job, res) in jobs.into_iter().zip(results) {
            let u = &job.use_;
            let res = res.unwrap_or_else(|| Err("not scheduled".into()));
            match res {
                Ok((place, size)) => {
                    changed = Changed::Yes;
                    cx.stat("ops_corrected", 1.0);
                    cx.note(job.weight.clone(), format!("'{}': bias shift (max |Δ| {size:.3e}) {place}", u.node_name));
                }
                Err(why) => {
                    cx.stat("ops_skipped", 1.0);
                    cx.note(job.weight, format!("'{}': skipped: {why}", u.node_name));
                }
            }
        }
        Ok(changed)
    }
}

/// Add `shift` (the pre-bias output change to undo, per output channel) to the op's bias. Returns where
/// it went and the largest |shift|.
pub(crate) fn apply_shift(g: &mut Graph, u: &WeightUse, weight: &str, shift: &[f64]) -> Result<(String, f64), String> {
    let size = shift.iter().fold(0f64, |a, b| a.max(b.abs()));
    let node_id = u.node;
    let node = g.node(node_id).clone();
    let place = match u.op.as_str() {
        "Conv" => add_to_bias_input(g, node_id, &node, 2, shift, weight)?,
        "Gemm" => {
            let alpha = node.attr_float("alpha").unwrap_or(1.0) as f64;
            let beta = node.attr_float("beta").unwrap_or(1.0) as f64;
            if beta == 0.0 {
                return Err("Gemm with beta=0 ignores its bias input".into());
            }
            let scaled: Vec<f64> = shift.iter().map(|s| s * alpha / beta).collect();
            add_to_bias_input(g, node_id, &node, 2, &scaled, weight)?
        }
        "MatMul" => add_after_matmul(g, node_id, &node, shift, weight)?,
        "MatMulInteger" => {
            // Dynamic quantization: the float result is `Mul(Cast(MatMulInteger), scale)`; the shift
            // goes after that Mul, as after a float MatMul.
            let mul = rescale_of_integer_op(g, &node)?;
            let mul_node = g.node(mul).clone();
            add_after_matmul(g, mul, &mul_node, shift, weight)?
        }
        op => return Err(format!("{op} has no bias to correct")),
    };
    Ok((place, size))
}

/// The `Mul` that turns an integer op's result into floats: `op → Cast → Mul`, each read only by the next.
fn rescale_of_integer_op(g: &Graph, node: &Node) -> Result<sparsify_ir::NodeId, String> {
    let only_reader = |t: &str, op: &str| -> Option<sparsify_ir::NodeId> {
        match g.consumers(t).as_slice() {
            [(n, _)] if g.node(*n).op_type == op && !g.is_output(t) && !g.used_in_subgraphs(t) => Some(*n),
            _ => None,
        }
    };
    let y = node.outputs.first().ok_or("integer op without output")?;
    let cast =
        only_reader(y, "Cast").ok_or_else(|| format!("'{}' is not followed by Cast → Mul", node.display_name()))?;
    let c = g.node(cast).outputs.first().cloned().unwrap_or_default();
    only_reader(&c, "Mul").ok_or_else(|| format!("'{}' is not followed by Cast → Mul", node.display_name()))
}

/// A constant that only `reader` reads, directly, and that is not a graph output.
fn private_constant(g: &Graph, name: &str) -> Option<sparsify_ir::WeightId> {
    let id = g.constant_source(name)?;
    let alone = g.consumers(name).len() == 1 && !g.is_output(name) && !g.used_in_subgraphs(name);
    alone.then_some(id)
}

/// Add `shift` to a per-channel constant (shape [n] or [1, ..., n], or [..., n] with every row shifted).
fn add_to_constant(g: &mut Graph, id: &sparsify_ir::WeightId, shift: &[f64]) -> Result<(), String> {
    let t = g.weight_mut(id).ok_or("bias vanished")?;
    let dims = t.shape();
    if dims.last().copied() != Some(shift.len()) && !(dims.len() == 1 && dims[0] == shift.len()) {
        return Err(format!("bias '{}' has shape {dims:?}, not per output channel ({})", id.name(), shift.len()));
    }
    if !t.dtype.is_prunable_float() {
        return Err(format!("bias '{}' is not a float tensor", id.name()));
    }
    let mut v = t.to_f64().map_err(|e| e.to_string())?;
    let n = shift.len();
    for (i, x) in v.iter_mut().enumerate() {
        *x += shift[i % n];
    }
    t.write_f64(&v).map_err(|e| e.to_string())
}

fn fresh_name(g: &Graph, base: &str) -> String {
    let taken = |n: &str| {
        g.initializer(n).is_some()
            || g.inputs.iter().any(|i| i.name == n)
            || g.nodes().any(|(_, x)| x.outputs.iter().any(|o| o == n))
    };
    let mut name = base.to_string();
    let mut k = 1;
    while taken(&name) {
        name = format!("{base}.{k}");
        k += 1;
    }
    name
}

fn new_bias(g: &mut Graph, weight: &str, shift: &[f64]) -> Result<String, String> {
    let wdt = g
        .weight(&sparsify_ir::WeightId::Init(weight.to_string()))
        .or_else(|| g.weight(&sparsify_ir::WeightId::Const(weight.to_string())))
        .map(|t| t.dtype);
    if wdt.is_some_and(|d| d != DType::F32) {
        return Err("creating a bias for a non-f32 weight is not supported".into());
    }
    let name = fresh_name(g, &format!("{weight}.bias_correction"));
    let vals: Vec<f32> = shift.iter().map(|&v| v as f32).collect();
    let t = Tensor::from_f32(name.clone(), vec![shift.len() as i64], &vals).map_err(|e| e.to_string())?;
    g.initializers.push(t);
    Ok(name)
}

/// A bias `b = DequantizeLinear(q, scale[, zp])` (int32 `q`, per tensor or per output channel), read only by
/// the op: `q += round(shift / scale)` per channel, so the correction is exact up to half a step of the
/// bias grid (scale = input scale × weight scale). Errors name the tensor when the pattern differs.
fn add_to_quantized_bias(g: &mut Graph, dq: sparsify_ir::NodeId, b: &str, shift: &[f64]) -> Result<String, String> {
    let node = g.node(dq).clone();
    let q = node.inputs.first().cloned().unwrap_or_default();
    let private = g.consumers(b).len() == 1 && !g.is_output(b) && g.consumers(&q).len() == 1;
    let qid = g
        .constant_source(&q)
        .filter(|_| private)
        .ok_or_else(|| format!("quantized bias '{b}' (DequantizeLinear of '{q}') is shared or computed at run time"))?;
    let scale_name = node.inputs.get(1).cloned().unwrap_or_default();
    let scale: Vec<f64> = g
        .constant_source(&scale_name)
        .and_then(|id| g.weight(&id))
        .and_then(|t| t.to_f64().ok())
        .map(|a| a.iter().copied().collect())
        .ok_or_else(|| format!("scale '{scale_name}' of quantized bias '{b}' is not a float constant"))?;
    let t = g.weight(&qid).ok_or_else(|| format!("'{q}' vanished"))?;
    if t.dtype != DType::I32 || t.dims.len() != 1 || t.shape()[0] != shift.len() {
        return Err(format!("quantized bias '{q}' is {} {:?}, not int32 [{}]", t.dtype.name(), t.dims, shift.len()));
    }
    if scale.len() != 1 && scale.len() != shift.len() {
        return Err(format!("scale '{scale_name}' of quantized bias '{b}' has {} elements", scale.len()));
    }
    let vals = sparsify_ir::quant::read_ints(t).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(vals.len() * 4);
    for (c, &v) in vals.iter().enumerate() {
        let s = if scale.len() == 1 { scale[0] } else { scale[c] };
        let nv = (f64::from(v) + (shift[c] / s).round()).clamp(f64::from(i32::MIN), f64::from(i32::MAX));
        out.extend_from_slice(&(nv as i32).to_le_bytes());
    }
    let t = g.weight_mut(&qid).ok_or_else(|| format!("'{q}' vanished"))?;
    t.set_bytes(out.into()).map_err(|e| e.to_string())?;
    Ok(format!("added to quantized bias '{q}' (rounded to its scale)"))
}

/// Conv input 2 / Gemm C: add to the existing constant, or create it.
fn add_to_bias_input(
    g: &mut Graph,
    id: sparsify_ir::NodeId,
    node: &Node,
    slot: usize,
    shift: &[f64],
    weight: &str,
) -> Result<String, String> {
    match node.inputs.get(slot).filter(|s| !s.is_empty()) {
        Some(b) => {
            // QDQ graphs: the bias is an int32 constant behind DequantizeLinear.
            if let Some(p) = g.producer_of(b).filter(|&p| g.node(p).op_type == "DequantizeLinear") {
                return add_to_quantized_bias(g, p, b, shift);
            }
            let cid = private_constant(g, b).ok_or_else(|| format!("bias '{b}' is shared or computed at run time"))?;
            add_to_constant(g, &cid, shift)?;
            Ok(format!("added to bias '{b}'"))
        }
        None => {
            let name = new_bias(g, weight, shift)?;
            let n = g.node_mut(id);
            while n.inputs.len() < slot {
                n.inputs.push(String::new());
            }
            n.inputs.truncate(slot);
            n.inputs.push(name.clone());
            g.relink();
            Ok(format!("new bias input '{name}'"))
        }
    }
}

/// MatMul: into the constant of the single following Add, or a new Add.
fn add_after_matmul(
    g: &mut Graph,
    id: sparsify_ir::NodeId,
    node: &Node,
    shift: &[f64],
    weight: &str,
) -> Result<String, String> {
    let y = node.outputs.first().ok_or("MatMul without output")?.clone();
    let readers = g.consumers(&y);
    if let [(add, slot)] = readers.as_slice() {
        let a = g.node(*add);
        if a.op_type == "Add" && a.is_onnx() && a.inputs.len() == 2 && !g.is_output(&y) && !g.used_in_subgraphs(&y) {
            let other = a.inputs[1 - slot].clone();
            if let Some(cid) = private_constant(g, &other) {
                let dims = g.weight(&cid).map(|t| t.shape()).unwrap_or_default();
                let per_channel = dims.last() == Some(&shift.len()) && dims[..dims.len() - 1].iter().all(|&d| d == 1);
                if per_channel {
                    add_to_constant(g, &cid, shift)?;
                    return Ok(format!("added to the following Add's constant '{other}'"));
                }
            }
        }
    }
    let bias = new_bias(g, weight, shift)?;
    let pre = fresh_name(g, &format!("{y}.pre_bias_correction"));
    g.node_mut(id).outputs[0] = pre.clone();
    let add_name = fresh_name(g, &format!("{}.bias_correction", node.display_name()));
    g.insert_after(id, Node::new("Add", &add_name, &[&pre, &bias], &[&y]));
    Ok(format!("new Add '{add_name}' with '{bias}'"))
}
