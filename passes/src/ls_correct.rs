//! `ls-correct`: after pruning, make each pruned op's output channels match the dense model's by a
//! per-channel least-squares affine map, folded into the op's kept weights and its bias (issue 15).
//!
//! For each pruned op (MatMul, Gemm, Conv) and output channel c, with ỹ the op's output in the current
//! (pruned) model and y the same output in the dense model on the same calibration positions:
//! y′ = a·(ỹ − E ỹ) + E y, a = Cov(ỹ, y) / Var(ỹ) — the least-squares fit of y by an affine function
//! of ỹ. `a` multiplies the channel's weights (zeros stay zero: masks and N:M patterns are unchanged)
//! and the op's own bias term; the shift E y − a·E ỹ is added to the bias. No Gram matrix: the
//! statistics are per channel (Σỹ, Σy, Σỹ², Σỹy, [`sparsify_pm::PairStat`]).
//!
//! - **Dense reference.** As `bias-correct`: the pass declares [`Pass::needs_dense_snapshot`] and
//!   compares each weight with the snapshot, so it works after any pruning pass (`mask`,
//!   `nm-legalize`, `block-sparsify`, `sparsegpt`). Ops whose weight did not change are left alone.
//! - **Stage by stage** (`calib_stats::stages`): an op's statistics are measured on the model with the
//!   ops of earlier stages already corrected, so each correction also absorbs the error that reaches
//!   the op from upstream. Each stage runs the dense and the current model over the calibration set in
//!   lockstep ([`sparsify_pm::Calibrator::collect_paired`]), exposing only the stage's op outputs: two
//!   model runs per stage.
//! - **Which tensor.** The op's output: a MatMul's output before any following `Add` (the shift goes into
//!   that Add's constant or a new Add, [`crate::bias_shift`]); a Conv / Gemm output includes its bias, so
//!   the bias is scaled by `a` with the weights and the shift added (Gemm: C ← a·C + shift/β). Channels
//!   along axis 1 for Conv outputs, the last axis for MatMul / Gemm.
//! - **Guards.** Var(ỹ) ≈ 0 (a fully pruned channel, a constant channel): a = 1, mean shift only
//!   (`channels_constant`). a ≤ 0 or not finite: a = 1 (`channels_rejected`, noted per op). An op whose
//!   output has fewer than `min_positions` calibration positions per channel is left alone (noted; off
//!   by default: on ppocr_cls_mobile_v2, whose squeeze-excite convs and classifier see only its 16
//!   calibration images, `min_positions=64` lowered the held-out error after Wanda 50% but raised it
//!   after SparseGPT 50% and Wanda 2:4, see `docs/results.md`). The slope is limited to
//!   [1/`max_scale`, `max_scale`] (default 2, `channels_clamped`): on ppocr the unlimited fit reached a ≈ 5
//!   on channels seen at 16 positions and raised the held-out error after Wanda 50% (0.739 → 0.826);
//!   limited to 2 it lowers it (0.699) and SparseGPT 50% still gains (0.676 → 0.535); no slope on the
//!   transformers or the digits models reaches the limit (their numbers are unchanged).
//! - **Cost.** The dense model's op outputs are computed once and kept by the calibrator
//!   ([`sparsify_pm::Calibrator::keep_reference`], up to its memory budget, else the dense model runs
//!   beside the current one at every stage); then one run of the current model per stage, computing only
//!   the stage's outputs (a chain of n ops: n stages).
//! - **Skipped with a note:** weights shared by several ops (scaling one op's channels would change the
//!   others), ConvTranspose, MatMulInteger, a weight read as the activation-side input or through
//!   `Cast`, non-2-D MatMul weights, biases shared or computed at run time (as `bias-correct`).
//!   Quantized (QDQ) weights get the shift only (a = 1, noted): scaling int8 values would requantize them.
//! - Effects: weight values and topology (new bias inputs / Add nodes). Preconditions: calibration data.
//!   A second `ls-correct` or `bias-correct` later in the same pipeline is refused (this pass may add
//!   biases and Add nodes, which drops the dense snapshot); on its own output in a new pipeline it
//!   changes nothing (dense = current), so it is idempotent across pipelines.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `scale` | `true` | fit the slope `a`; `false`: a = 1 (only the shift: a sequential mean correction of the outputs) |
//! | `max_scale` | `2` | the fitted slope is limited to [1/max_scale, max_scale] (`channels_clamped`) |
//! | `min_positions` | `1` | ops whose output has fewer calibration positions per channel are left alone |
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights' ops are corrected |

use crate::bias_shift::shift_output;
use crate::calib_stats::stages;
use crate::scope::{Scope, SCOPE_OPTIONS};
use sparsify_ir::{Model, WeightId, WeightUse};
use sparsify_pm::{
    Changed, DenseSnapshot, Effects, FeatureAxis, OptionSpec, Options, PairRequest, PairStat, Pass, PassCx, PassError,
    PassInfo, PipelineError,
};

const OPTIONS: [OptionSpec; 7] = [
    OptionSpec {
        name: "scale",
        default: "true",
        help: "fit the per-channel slope a = Cov(ỹ, y)/Var(ỹ) (false: a = 1, only the mean shift)",
    },
    OptionSpec {
        name: "max_scale",
        default: "2",
        help: "limit the fitted slope a to [1/max_scale, max_scale] (a slope far from 1 is extrapolated from few positions)",
    },
    OptionSpec {
        name: "min_positions",
        default: "1",
        help: "leave an op alone when its output has fewer calibration positions per channel (1: never)",
    },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "ls-correct",
    description: "after pruning, fit each pruned op's output channels to the dense ones (a·(ỹ − Eỹ) + Ey), \
                  folded into kept weights and bias (needs --calib)",
    effects: Effects(Effects::WEIGHT_VALUES.0 | Effects::TOPOLOGY.0),
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let scale = opts.take_bool("scale", true)?;
    let max_scale = opts.take_range("max_scale", 2.0, 1.0, f64::MAX)?;
    let min_positions = opts.take_usize("min_positions", 1)?;
    Ok(Box::new(LsCorrect { scale, max_scale, min_positions, scope: Scope::from_options(opts)? }))
}

pub struct LsCorrect {
    /// Fit the slope (`scale=true`); else a = 1.
    pub scale: bool,
    /// Ops whose output has fewer calibration positions per channel are left alone.
    pub min_positions: usize,
    /// The fitted slope is limited to [1/max_scale, max_scale].
    pub max_scale: f64,
    pub scope: Scope,
}

/// One op to correct.
struct Job {
    weight: WeightId,
    use_: WeightUse,
    /// The op's data input (for the stages) and output (the fitted activation).
    input: String,
    output: String,
    axis: FeatureAxis,
    /// False for quantized weights: shift only.
    scalable: bool,
}

/// The affine fit of one op: per channel slope and shift (new output = a·ỹ + shift).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelFit {
    pub a: Vec<f64>,
    pub shift: Vec<f64>,
    /// Channels with Var(ỹ) ≈ 0 (a = 1).
    pub constant: usize,
    /// Channels whose fitted a was ≤ 0 or not finite (a = 1).
    pub rejected: usize,
    /// Channels whose fitted a was outside [1/max_scale, max_scale] (limited to it).
    pub clamped: usize,
}

/// The least-squares fit y ≈ a·ỹ + shift per channel from paired sums. `max_scale`: `None` keeps a = 1
/// (only the shift); `Some(m)` limits the slope to [1/m, m] (the shift is fitted for the limited a).
pub fn fit_channels(st: &PairStat, max_scale: Option<f64>) -> Result<ChannelFit, String> {
    if st.rows == 0 {
        return Err("no calibration positions reached the output".into());
    }
    let n = st.rows as f64;
    let mut fit = ChannelFit { a: Vec::new(), shift: Vec::new(), constant: 0, rejected: 0, clamped: 0 };
    for c in 0..st.channels() {
        let (mc, mr) = (st.sum_cur[c] / n, st.sum_ref[c] / n);
        let sq = st.sq_cur[c] / n;
        let var = sq - mc * mc;
        let cov = st.cross[c] / n - mc * mr;
        if !mc.is_finite() || !mr.is_finite() {
            return Err(format!("channel {c}: the output mean is not finite"));
        }
        let a = if max_scale.is_none() {
            1.0
        } else if var.is_nan() || var <= 1e-9 * sq.max(f64::MIN_POSITIVE) {
            fit.constant += 1;
            1.0
        } else {
            let a = cov / var;
            if a.is_finite() && a > 0.0 {
                let m = max_scale.unwrap_or(1.0);
                if a > m || a < 1.0 / m {
                    fit.clamped += 1;
                }
                a.clamp(1.0 / m, m)
            } else {
                fit.rejected += 1;
                1.0
            }
        };
        fit.a.push(a);
        fit.shift.push(mr - a * mc);
    }
    Ok(fit)
}

impl Pass for LsCorrect {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("scale", self.scale.to_string()),
            ("max_scale", self.max_scale.to_string()),
            ("min_positions", self.min_positions.to_string()),
        ];
        v.extend(self.scope.options());
        v
    }
    fn needs_dense_snapshot(&self) -> bool {
        true
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let dense = DenseSnapshot::model_for(cx.analyses, "ls-correct")?;
        let (jobs, notes) = self.plan(model, &dense)?;
        for (s, m) in notes {
            cx.note(s, m);
            cx.stat("ops_skipped", 1.0);
        }
        if jobs.is_empty() {
            cx.note("ls-correct", "no pruned weight to correct");
            return Ok(Changed::No);
        }
        let ops: Vec<_> = jobs.iter().map(|j| (j.use_.node, j.input.clone())).collect();
        let order = stages(&model.graph, &ops);
        cx.stat("stages", order.len() as f64);
        let mut changed = Changed::No;
        // The dense model's op outputs are run once and kept (within the calibrator's memory budget);
        // each stage then runs only the current model.
        let outputs: Vec<String> =
            jobs.iter().map(|j| j.output.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let kept = cx.calibrator()?.keep_reference(Some((&dense, &outputs)))?;
        if kept {
            cx.stat("calibration_runs", 1.0);
        }
        let progress = cx.stage("ls-correct: stages (dense and current model runs)", order.len());
        for stage in &order {
            let reqs: Vec<PairRequest> = stage
                .iter()
                .map(|&j| PairRequest {
                    reference: jobs[j].output.clone(),
                    current: jobs[j].output.clone(),
                    axis: jobs[j].axis,
                })
                .collect();
            let stats = cx.calibrator()?.collect_paired(&dense, model, &reqs)?;
            cx.stat("calibration_runs", if kept { 1.0 } else { 2.0 });
            if stats.len() != reqs.len() {
                return Err(PassError::Invalid {
                    subject: "calibration".into(),
                    message: "the calibrator answered a different number of requests".into(),
                });
            }
            for (&j, st) in stage.iter().zip(&stats) {
                let job = &jobs[j];
                let name = job.weight.name().to_string();
                let node = job.use_.node_name.clone();
                match self.correct(model, job, st) {
                    Ok((fit, place, size)) => {
                        changed = Changed::Yes;
                        cx.stat("ops_corrected", 1.0);
                        cx.stat("channels_constant", fit.constant as f64);
                        cx.stat("channels_rejected", fit.rejected as f64);
                        cx.stat("channels_clamped", fit.clamped as f64);
                        let scaled = fit.a.iter().filter(|&&a| a != 1.0).count();
                        cx.stat("channels_scaled", scaled as f64);
                        let (lo, hi) =
                            fit.a.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &a| (l.min(a), h.max(a)));
                        let mut msg = format!("'{node}': a in [{lo:.4}, {hi:.4}], max |shift| {size:.3e}, {place}");
                        if fit.rejected > 0 {
                            msg.push_str(&format!("; {} channel(s) with a ≤ 0 or not finite kept a = 1", fit.rejected));
                        }
                        if fit.clamped > 0 {
                            msg.push_str(&format!(
                                "; {} channel(s) had a slope beyond [1/{m}, {m}] and were limited to it",
                                fit.clamped,
                                m = self.max_scale
                            ));
                        }
                        if !job.scalable && self.scale {
                            msg.push_str("; quantized weight: shift only (a = 1)");
                        }
                        cx.note(name, msg);
                    }
                    Err(why) => {
                        cx.stat("ops_skipped", 1.0);
                        cx.note(name, format!("'{node}': skipped: {why}"));
                    }
                }
            }
            progress.inc(1);
        }
        if kept {
            cx.calibrator()?.keep_reference(None)?;
        }
        Ok(changed)
    }
}

impl LsCorrect {
    /// The ops to correct (pruned, in scope, supported) and the skip notes of the others.
    #[allow(clippy::type_complexity)]
    fn plan(&self, model: &Model, dense: &Model) -> Result<(Vec<Job>, Vec<(String, String)>), PassError> {
        let g = &model.graph;
        let mut jobs = Vec::new();
        let mut notes: Vec<(String, String)> = Vec::new();
        for sel in self.scope.select(g) {
            let name = sel.id.name().to_string();
            let Some(info) = sel.info else { continue };
            let (Some(now), Some(was)) = (g.weight(&sel.id), dense.graph.weight(&sel.id)) else { continue };
            if now.dims != was.dims {
                notes.push((name, "skipped: shape changed since the pipeline started".into()));
                continue;
            }
            let (after, before) = (g.weight_values_f64(&sel.id)?, dense.graph.weight_values_f64(&sel.id)?);
            if after == before {
                continue;
            }
            if info.uses.len() != 1 {
                notes.push((
                    name,
                    format!(
                        "skipped: read by {} ops (scaling one op's channels would change the others)",
                        info.uses.len()
                    ),
                ));
                continue;
            }
            let u = &info.uses[0];
            let node = g.node(u.node);
            let axis = match (u.op.as_str(), u.slot) {
                ("Conv", 1) => FeatureAxis::Index(1),
                ("Gemm", 1) | ("MatMul", 1) => FeatureAxis::Last,
                (op, slot) => {
                    notes.push((name, format!("'{}': skipped: {op} reading the weight as input {slot}", u.node_name)));
                    continue;
                }
            };
            if u.route.iter().any(|r| r == "Cast") {
                notes.push((name, format!("'{}': skipped: weight reached through Cast", u.node_name)));
                continue;
            }
            if u.op == "MatMul" && now.dims.len() != 2 {
                notes.push((name, format!("'{}': skipped: {}-D MatMul weight", u.node_name, now.dims.len())));
                continue;
            }
            let (Some(input), Some(output)) =
                (node.inputs.first().filter(|s| !s.is_empty()), node.outputs.first().filter(|s| !s.is_empty()))
            else {
                notes.push((name, format!("'{}': skipped: no data input or output", u.node_name)));
                continue;
            };
            let scalable = g
                .weight_quant(&sel.id)
                .map_err(|e| PassError::Invalid { subject: name.clone(), message: e.to_string() })?;
            jobs.push(Job {
                weight: sel.id.clone(),
                use_: u.clone(),
                input: input.clone(),
                output: output.clone(),
                axis,
                scalable: scalable.is_none() && now.dtype.is_prunable_float(),
            });
        }
        Ok((jobs, notes))
    }

    /// Fit one op and write the result: the shift (and the bias scaled by a) first, then the weights.
    fn correct(&self, model: &mut Model, job: &Job, st: &PairStat) -> Result<(ChannelFit, String, f64), String> {
        let u = &job.use_;
        if st.rows < self.min_positions as u64 {
            return Err(format!(
                "only {} calibration positions per channel (min_positions={})",
                st.rows, self.min_positions
            ));
        }
        let fit = fit_channels(st, (self.scale && job.scalable).then_some(self.max_scale))?;
        let shape = model.graph.weight(&job.weight).ok_or("weight vanished")?.shape();
        let out_axis = u.out_axis;
        if out_axis >= shape.len() || shape[out_axis] != fit.a.len() {
            return Err(format!(
                "the output '{}' has {} channels, the weight {shape:?} has {} along axis {out_axis}",
                job.output,
                fit.a.len(),
                shape.get(out_axis).copied().unwrap_or(0)
            ));
        }
        let bias_scale = (u.op != "MatMul").then_some(fit.a.as_slice());
        let (place, size) = shift_output(&mut model.graph, u, job.weight.name(), &fit.shift, bias_scale)?;
        if fit.a.iter().any(|&a| a != 1.0) {
            let mut w = model.graph.weight_values_f64(&job.weight).map_err(|e| e.to_string())?;
            for (idx, v) in w.indexed_iter_mut() {
                *v *= fit.a[idx[out_axis]];
            }
            model.graph.write_weight_f64(&job.weight, &w).map_err(|e| e.to_string())?;
        }
        Ok((fit, place, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(cur: &[f64], refv: &[f64]) -> PairStat {
        let mut st = PairStat::zeros(1);
        for (&x, &y) in cur.iter().zip(refv) {
            st.sum_cur[0] += x;
            st.sum_ref[0] += y;
            st.sq_cur[0] += x * x;
            st.cross[0] += x * y;
        }
        st.rows = cur.len() as u64;
        st
    }

    #[test]
    fn exact_affine_relation_is_recovered() {
        let cur = [1.0, 2.0, 4.0, -3.0];
        let refv: Vec<f64> = cur.iter().map(|x| 2.5 * x - 0.75).collect();
        let fit = fit_channels(&stat(&cur, &refv), Some(f64::INFINITY)).unwrap();
        assert!((fit.a[0] - 2.5).abs() < 1e-12 && (fit.shift[0] + 0.75).abs() < 1e-12, "{fit:?}");
        // scale=false: a = 1, shift = E y − E ỹ.
        let fit = fit_channels(&stat(&cur, &refv), None).unwrap();
        let (mc, mr) = (cur.iter().sum::<f64>() / 4.0, refv.iter().sum::<f64>() / 4.0);
        assert_eq!(fit.a, vec![1.0]);
        assert!((fit.shift[0] - (mr - mc)).abs() < 1e-12);
    }

    #[test]
    fn degenerate_channels_keep_a_one() {
        // Constant pruned output: mean shift only.
        let fit = fit_channels(&stat(&[3.0; 5], &[1.0, 2.0, 3.0, 4.0, 5.0]), Some(2.0)).unwrap();
        assert_eq!((fit.a[0], fit.constant, fit.rejected), (1.0, 1, 0));
        assert!((fit.shift[0] - 0.0).abs() < 1e-12);
        // Anti-correlated: a < 0 is refused.
        let fit = fit_channels(&stat(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(2.0)).unwrap();
        assert_eq!((fit.a[0], fit.constant, fit.rejected), (1.0, 0, 1));
        assert!(fit_channels(&PairStat::zeros(2), Some(2.0)).is_err());
        // A slope of 2.5 limited to 2 (max_scale=2), the shift fitted for a = 2.
        let cur = [1.0, 2.0, 4.0, -3.0];
        let refv: Vec<f64> = cur.iter().map(|x| 2.5 * x - 0.75).collect();
        let fit = fit_channels(&stat(&cur, &refv), Some(2.0)).unwrap();
        let (mc, mr) = (cur.iter().sum::<f64>() / 4.0, refv.iter().sum::<f64>() / 4.0);
        assert_eq!((fit.a[0], fit.clamped), (2.0, 1));
        assert!((fit.shift[0] - (mr - 2.0 * mc)).abs() < 1e-12);
    }
}
