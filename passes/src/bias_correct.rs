//! `bias-correct`: after pruning, restore each pruned op's expected output with its bias:
//! b ← b + E\[x\]·(W_dense − W_pruned) per output channel, E\[x\] the calibration mean of the op's input.
//!
//! - **Dense reference.** The pass declares [`Pass::needs_dense_snapshot`], so the pass manager records
//!   the model as it entered the pipeline ([`DenseSnapshot`]: tensors share bytes, nothing is copied until
//!   a pass writes). W_dense is the snapshot's weight, W_pruned the current one, so it works after any
//!   pruning pass — `mask` (every scorer and granularity), `nm-legalize`, `block-sparsify`, `sparsegpt`
//!   (where kept weights moved too) — and after several of them. E\[x\] is measured on the dense snapshot
//!   (one calibration sweep for every corrected op). A channel permutation or a pass that changes shapes
//!   or topology between the snapshot and this pass drops the snapshot, and the pass then fails with a
//!   clear message (put `permute-channels` in an earlier pipeline).
//! - **Means** (`calib_stats`): MatMul / Gemm inputs per feature over every other axis (3-D activations:
//!   batch × sequence); Gemm `transA=1` reads features on axis 0. Conv: the mean im2col patch per group
//!   (strides, dilations, groups honoured), so Δb_o = Σ_{c,k} E\[patch\]_{c,k}·ΔW\[o,c,k\]. For an unpadded
//!   Conv this restores the mean output over positions exactly; with padding the zero-padded border
//!   patches are part of the mean, so the bias restores the output mean over all positions (the border
//!   positions individually see a slightly different shift: a documented approximation).
//! - **Modes.** `mode=dense`: Δb = E_dense\[x\]·(W_dense − W_pruned), one sweep on the dense model (each
//!   op corrected for its own pruning only). `mode=sequential` (default; measured on digits_cnn after Wanda
//!   50%: rel L2 0.308 -> 0.204 sequential vs 0.226 dense, see `docs/results.md`): ops are corrected in stages (an op's input depends only on ops of earlier
//!   stages, `calib_stats::stages`); for each stage the input means E_now\[x\] are measured on the model
//!   with the earlier stages already pruned *and corrected*, and Δb = E_dense\[x\]·W_dense − E_now\[x\]·W_pruned
//!   restores the op's expected output to the dense one (also undoing the mean shift that reaches it from
//!   upstream). One sweep for the dense means plus one per stage.
//! - **Verification** (`verify=true`, the default). Restoring a mean is not always what lowers the error
//!   of the model's output: on a model pruned past its accuracy (ppocr_cls_mobile_v2 after Wanda 50%)
//!   restoring the mean logit before a softmax *raised* the output error (0.739 -> 0.841). So each op's
//!   shift is applied to a copy of the model and kept only if the relative L2 of the main output (the
//!   first float graph output) against the dense model on the calibration set does not rise; in
//!   sequential mode the op's own-pruning shift (the `mode=dense` formula, with the same dense means) is
//!   tried as well and the lower error wins. Ops are visited in stage order, so later ops see the shifts
//!   kept before them. Cost: one calibration run per candidate (two per op in sequential mode when the
//!   shifts differ). Rejected ops are noted with both errors and counted as `ops_rejected`; the stats
//!   `output_rel_l2_before` / `_after` give the calibration error before and after the pass.
//! - **Where the bias goes** ([`crate::bias_shift`]). Conv: its bias input (added, or created as `<weight>.bias_correction`).
//!   Gemm: C, scaled by alpha/beta (created when absent; `beta=0` is skipped). MatMul: the constant of a
//!   following `Add` when the MatMul output feeds only that Add and the constant broadcasts along the
//!   last axis (torch exports MatMul+Add), else a new `Add` node after the MatMul (its output keeps the
//!   old name). A bias shared with another op, computed at run time, or not shaped per channel is left
//!   alone with a note. QDQ graphs (issue 14): a bias `DequantizeLinear(int32 q, scale)` read only by the op
//!   gets `q += round(shift / scale)` per channel (exact up to half a step of the bias grid, scale = input
//!   scale × weight scale); pruned quantized weights are compared on their dequantized values. Dynamic
//!   quantization (`MatMulInteger`): the mean is the float activation's (the `DynamicQuantizeLinear`
//!   input) and the shift goes after the `Cast → Mul` that rescales the integer result, as after a MatMul.
//!   QOperator ops (`QLinearConv`, `QLinearMatMul`, `com.microsoft.QGemm`): the mean is that of the op's
//!   own integer input, dequantized `(mean(q) − zp)·scale` (exact, affine; a padded QLinearConv with a
//!   non-zero input zero point is skipped: its patch sums would count the padding as 0); the shift goes
//!   into the int32 bias (QLinearConv input 8, QGemm C; scale = input scale × weight scale per channel,
//!   rounded, created when absent), and for QLinearMatMul (no bias input) after the per-tensor
//!   `DequantizeLinear` that alone reads its output, in float (the following Add's constant or a new Add);
//!   otherwise skipped with a note naming the node.
//! - **ConvTranspose** (`mode=sequential`): the output-side mean depends on how pads and output padding
//!   crop the output, so the shift is measured on the outputs themselves, Δb = E_dense\[y\] − E_now\[y\] per
//!   output channel (exact in the mean over output positions; `tests/bias_correct.rs`). `mode=dense`
//!   skips it with a note.
//! - **Skipped with a note:** weights read as the activation-side input, non-2-D MatMul weights, weights reached through `Cast` (the activation dtype is not the
//!   weight's), new biases for non-f32 models, embedding tables.
//! - Effects: weight values and topology (new bias inputs / initializers / Add nodes). Preconditions:
//!   calibration data. Not idempotent within one pipeline (a second `bias-correct` adds the same shift
//!   again); on its own output in a new pipeline it changes nothing (dense = current, shift 0).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights' ops are corrected |

use crate::bias_shift::{product_to_output, shift_output};
use crate::calib_stats::{
    mean_request, output_shift, output_shift_between, quantized_mean_request, stages, InputDequant, InputMean,
};
use crate::layer_sensitivity::{default_output, output_values, rel_l2};
use crate::scope::{Scope, SCOPE_OPTIONS};
use sparsify_ir::{Model, WeightUse};
use sparsify_pm::{
    CalibRequest, Changed, DenseSnapshot, Effects, FeatureAxis, OptionSpec, Options, Pass, PassCx, PassError, PassInfo,
    PipelineError,
};

const OPTIONS: [OptionSpec; 6] = [
    OptionSpec {
        name: "verify",
        default: "true",
        help: "keep an op's shift only if the model output's rel. L2 to the dense model on the calibration set \
               does not rise (one calibration run per op); false: apply every shift",
    },
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
    let verify = opts.take_bool("verify", true)?;
    Ok(Box::new(BiasCorrect { sequential, verify, scope: Scope::from_options(opts)? }))
}

pub struct BiasCorrect {
    /// `mode=sequential` (else `dense`).
    pub sequential: bool,
    /// `verify=true`: keep a shift only when the calibration output error does not rise.
    pub verify: bool,
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
    /// The request is the op's output mean (ConvTranspose): shift = E_dense[y] − E_now[y].
    from_output: bool,
    /// QOperator ops: how their integer input's mean is dequantized.
    dequant: Option<InputDequant>,
}

/// Ops whose data input is an integer tensor they dequantize themselves.
const QOPERATOR: [&str; 3] = ["QLinearConv", "QLinearMatMul", "QGemm"];

impl Pass for BiasCorrect {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("verify", self.verify.to_string()),
            ("mode", if self.sequential { "sequential" } else { "dense" }.to_string()),
        ];
        v.extend(self.scope.options());
        v
    }
    fn needs_dense_snapshot(&self) -> bool {
        true
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let dense = DenseSnapshot::model_for(cx.analyses, "bias-correct")?;
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
                if u.route.iter().any(|r| r == "Cast") {
                    notes.push((name.clone(), format!("'{}': weight reached through Cast: skipped", u.node_name)));
                    continue;
                }
                let from_output = u.op == "ConvTranspose";
                let planned = if from_output {
                    output_mean_request(&dense.graph, u, self.sequential).map(|r| (r, None))
                } else if QOPERATOR.contains(&u.op.as_str()) {
                    quantized_mean_request(&dense.graph, u, &shape).map(|(r, d)| (r, Some(d)))
                } else {
                    mean_request(&dense.graph, u, &shape).map(|r| (r, None))
                };
                match planned {
                    Ok((req, dequant)) => {
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
                            from_output,
                            dequant,
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
            let input = |j: &Job| match j.from_output {
                true => model.graph.node(j.use_.node).inputs.first().cloned().unwrap_or_default(),
                false => requests[j.request].tensor().to_string(),
            };
            let ops: Vec<_> = jobs.iter().map(|j| (j.use_.node, input(j))).collect();
            stages(&model.graph, &ops)
        } else {
            vec![(0..jobs.len()).collect()]
        };
        cx.stat("stages", order.len() as f64);
        let mut check = match self.verify {
            true => match OutputCheck::new(&dense, model, cx) {
                Ok(c) => Some(c),
                // A calibrator that computes the op statistics but cannot run the whole model (tract and
                // com.microsoft.QGemm): the shifts are applied unverified, and the report says so.
                Err(PassError::Calibration(e)) => {
                    cx.note("bias-correct", format!("verify: not done, the model output cannot be computed: {e}"));
                    None
                }
                Err(e) => return Err(e),
            },
            false => None,
        };
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
                let deq = |m: InputMean| job.dequant.map_or(m.clone(), |d| d.apply(m));
                let res = dense_means[job.request]
                    .clone()
                    .map(deq)
                    .and_then(|md| match &now_means {
                        Some(now) if job.from_output => {
                            now[job.request].clone().and_then(|mp| mean_difference(&md, &mp))
                        }
                        None => output_shift(&job.shape, u.out_axis, u.red_axis, &job.before, &job.after, &md),
                        Some(now) => now[job.request].clone().map(deq).and_then(|mp| {
                            output_shift_between(
                                &job.shape,
                                (u.out_axis, u.red_axis),
                                (&job.before, &md),
                                (&job.after, &mp),
                            )
                        }),
                    })
                    .map(|shift| product_to_output(&model.graph, u, &shift));
                results[j] = Some(match (res, check.as_mut()) {
                    (Err(why), _) => Err(why),
                    (Ok(shift), None) => shift_output(&mut model.graph, u, &job.weight, &shift, None),
                    (Ok(shift), Some(chk)) => {
                        // Sequential: the op's own-pruning shift (mode=dense's) is the second candidate.
                        let mut cands = vec![shift];
                        if now_means.is_some() && !job.from_output {
                            if let Ok(own) = dense_means[job.request].clone().map(deq).and_then(|md| {
                                output_shift(&job.shape, u.out_axis, u.red_axis, &job.before, &job.after, &md)
                            }) {
                                let own = product_to_output(&model.graph, u, &own);
                                if own != cands[0] {
                                    cands.push(own);
                                }
                            }
                        }
                        chk.try_shift(model, cx, u, &job.weight, &cands)?
                    }
                });
            }
        }
        if let Some(c) = &check {
            cx.stat("output_rel_l2_after", c.error);
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
                    cx.stat(if why.starts_with(NOT_KEPT) { "ops_rejected" } else { "ops_skipped" }, 1.0);
                    cx.note(job.weight, format!("'{}': skipped: {why}", u.node_name));
                }
            }
        }
        Ok(changed)
    }
}

/// The start of the note of a shift `verify` rejected.
const NOT_KEPT: &str = "shift not kept";

/// `verify=true`: the calibration-set error of the main output, kept as shifts are accepted.
struct OutputCheck {
    output: String,
    reference: Vec<f32>,
    error: f64,
}

impl OutputCheck {
    fn new(dense: &Model, model: &Model, cx: &mut PassCx<'_>) -> Result<OutputCheck, PassError> {
        let output = default_output(&model.graph)?;
        let cal = cx.calibrator()?;
        let reference = output_values(dense, cal, &output)?;
        let error = rel_l2(&reference, &output_values(model, cal, &output)?);
        cx.stat("calibration_runs", 2.0);
        cx.stat("output_rel_l2_before", error);
        Ok(OutputCheck { output, reference, error })
    }

    /// Apply each candidate shift to a copy of the model; keep the one with the lowest output error
    /// when that error does not rise. The outer error is a calibration failure, the inner one the reason
    /// no shift was kept.
    fn try_shift(
        &mut self,
        model: &mut Model,
        cx: &mut PassCx<'_>,
        u: &WeightUse,
        weight: &str,
        candidates: &[Vec<f64>],
    ) -> Result<Result<(String, f64), String>, PassError> {
        let mut best: Option<(f64, Model, (String, f64))> = None;
        let mut last_err = String::new();
        for shift in candidates {
            let mut trial = model.clone();
            let placed = match shift_output(&mut trial.graph, u, weight, shift, None) {
                Ok(p) => p,
                Err(why) => {
                    last_err = why;
                    continue;
                }
            };
            let error = rel_l2(&self.reference, &output_values(&trial, cx.calibrator()?, &self.output)?);
            cx.stat("calibration_runs", 1.0);
            if best.as_ref().is_none_or(|b| error < b.0) {
                best = Some((error, trial, placed));
            }
        }
        let Some((error, trial, placed)) = best else { return Ok(Err(last_err)) };
        if error > self.error {
            return Ok(Err(format!(
                "{NOT_KEPT}: it raises the calibration rel. L2 of '{}' from {:.4} to {error:.4}",
                self.output, self.error
            )));
        }
        *model = trial;
        self.error = error;
        Ok(Ok(placed))
    }
}

/// The output-mean request of a ConvTranspose (per output channel, axis 1). Its bias shift is
/// E_dense[y] − E_now[y] measured on the outputs themselves: exact in the mean over output positions
/// whatever the strides, pads, output padding and groups (an input-side formula would have to follow
/// the output cropping). Needs the current model's outputs, so `mode=sequential` only.
fn output_mean_request(g: &sparsify_ir::Graph, u: &WeightUse, sequential: bool) -> Result<CalibRequest, String> {
    if !sequential {
        return Err("ConvTranspose is corrected from its output means, in mode=sequential only".into());
    }
    if u.slot != 1 {
        return Err(format!("ConvTranspose reads the weight as input {}", u.slot));
    }
    let y = g.node(u.node).outputs.first().filter(|y| !y.is_empty()).ok_or("the op has no output")?;
    Ok(CalibRequest::FeatureSum { tensor: y.clone(), axis: FeatureAxis::Index(1) })
}

/// E_dense[y] − E_now[y] per channel.
fn mean_difference(dense: &InputMean, now: &InputMean) -> Result<Vec<f64>, String> {
    match (dense, now) {
        (InputMean::Features(a), InputMean::Features(b)) if a.len() == b.len() => {
            Ok(a.iter().zip(b).map(|(x, y)| x - y).collect())
        }
        _ => Err("the output means of the dense and current models do not match".into()),
    }
}
