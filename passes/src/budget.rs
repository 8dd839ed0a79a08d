//! Sparsity budgets for `mask` (element granularity, per-layer comparison):
//!
//! - `allocate=sensitivity`: the global target S (exactly floor(S·N) zeros over the N elements of the
//!   selected weights) is distributed across layers to minimise the predicted output error
//!   Σ_l e_l(s_l)², e_l being layer l's measured sensitivity curve ([`crate::layer_sensitivity`], the
//!   cached scores masked per layer at each `levels` entry, linear between levels, 0 at 0). The curves'
//!   lower convex hulls are merged greedily by marginal error per pruned element (optimal for convex
//!   curves), within per-layer bounds [`min_sparsity`, `max_sparsity`] (and never beyond the largest
//!   measured level); the last segment is cut to hit the count exactly.
//! - `max_error=E`: the largest global S whose *validated* output error (the masked candidate run in
//!   tract over the calibration set, relative L2 of the measured output vs dense) is at most E, found by
//!   bisection over S (13 steps, resolution 1/8192 of `max_sparsity`) with the chosen allocation; every
//!   candidate's (S, error) is reported in the notes, then the chosen one is applied. Later passes
//!   (e.g. `bias-correct`) are not part of the check.
//! - `allocate=uniform` with `max_error`: the same bisection with every layer at S.
//! - `output=NAME`: the tensor both measure: a graph output or any tensor the graph computes. Default:
//!   `max_error` bounds every float graph output (a candidate passes when each is within E), the
//!   sensitivity curves measure the first one. Weights the curves' tensor does not depend on are not
//!   allocated (their curves would be flat): they keep the global sparsity, with a note.
//! - `logits=auto` (default): when the measured tensor is a Softmax's output (through Identity /
//!   Reshape / Flatten / Squeeze / Unsqueeze), `max_error` bounds the Softmax's input (the logits) as
//!   well: a candidate passes when both errors are at most E. On confidently classified calibration
//!   inputs the probabilities are saturated and hide what pruning does to the logits, which inputs
//!   nearer the decision boundary then show (ppocr_cls_mobile_v2: held-out error up to 7× E with the
//!   probabilities alone, see docs/results.md). `logits=off` bounds the measured tensor alone.
//!
//! Skipped weights and notes follow `mask`. Scores come from the `score` analysis (any method) or |w|.

use crate::layer_sensitivity::{
    float_outputs, measure, measured_tensor, parse_levels, reaching, rel_l2, softmax_input, tensor_values, Curves,
};
use crate::mask_groups::{apply_mask, plan_targets, Granularity, Group, MaskConfig, Target};
use crate::scope::Scope;
use crate::scores::WeightScores;
use crate::select::prune_count;
use sparsify_ir::Model;
use sparsify_pm::{Calibrator, Changed, OptionSpec, Options, PassCx, PassError, PipelineError};

/// Options `mask` appends to its own.
pub const BUDGET_OPTIONS: [OptionSpec; 9] = [
    OptionSpec {
        name: "allocate",
        default: "uniform",
        help: "uniform (S in every layer) | sensitivity (by measured layer sensitivity; needs --calib) | owl (outlier-weighted)",
    },
    OptionSpec {
        name: "max_error",
        default: "",
        help: "find the largest sparsity whose validated output rel. L2 on the calibration set is <= this",
    },
    OptionSpec {
        name: "output",
        default: "",
        help: "allocate=sensitivity / max_error: the tensor whose error is measured: a graph output or any computed tensor (default: max_error every float output, curves the first)",
    },
    OptionSpec {
        name: "logits",
        default: "auto",
        help: "max_error: auto (a Softmax output's input is bounded too) | off (the measured tensor alone)",
    },
    OptionSpec { name: "min_sparsity", default: "0", help: "allocate: lower bound per layer" },
    OptionSpec { name: "max_sparsity", default: "0.95", help: "allocate / max_error: upper bound per layer" },
    OptionSpec { name: "levels", default: "0.25|0.5|0.75|0.9|0.95", help: "allocate: sparsity levels measured" },
    OptionSpec { name: "owl_m", default: "5", help: "owl: a score above m × the layer mean is an outlier" },
    OptionSpec { name: "owl_lambda", default: "0.08", help: "owl: layer sparsities span S ± lambda" },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocate {
    Uniform,
    Sensitivity,
    /// Outlier-weighted layer sparsity (Yin et al., 2024).
    Owl,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub allocate: Allocate,
    pub max_error: Option<f64>,
    /// The tensor measured: a graph output or any computed tensor (None: every float output for
    /// `max_error`, the first for the curves).
    pub output: Option<String>,
    /// `max_error` also bounds the input of a Softmax whose output is measured (`logits=auto`).
    pub logits: bool,
    pub min: f64,
    pub max: f64,
    pub levels: Vec<f64>,
    pub owl_m: f64,
    pub owl_lambda: f64,
}

impl Budget {
    /// The budget options, or None when they ask for nothing beyond a plain mask.
    pub fn from_options(opts: &mut Options<'_>) -> Result<Option<Budget>, PipelineError> {
        let allocate = match opts.take_choice("allocate", &["uniform", "sensitivity", "owl"], "uniform")?.as_str() {
            "sensitivity" => Allocate::Sensitivity,
            "owl" => Allocate::Owl,
            _ => Allocate::Uniform,
        };
        let max_error = match opts.take_str("max_error").filter(|s| !s.is_empty()) {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(e) if e > 0.0 && e.is_finite() => Some(e),
                _ => {
                    return Err(opts.error((0, 0), format!("mask: option 'max_error' must be a number > 0, got '{v}'")))
                }
            },
        };
        let output = opts.take_str("output").filter(|s| !s.is_empty());
        let logits = opts.take_choice("logits", &["auto", "off"], "auto")? == "auto";
        let min = opts.take_range("min_sparsity", 0.0, 0.0, 1.0)?;
        let max = opts.take_range("max_sparsity", 0.95, 0.0, 1.0)?;
        let levels = match opts.take_str("levels") {
            None => vec![0.25, 0.5, 0.75, 0.9, 0.95],
            Some(t) => parse_levels(&t).map_err(|e| opts.error((0, 0), format!("mask: {e}")))?,
        };
        let owl_m = opts.take_range("owl_m", 5.0, 0.0, 1e6)?;
        let owl_lambda = opts.take_range("owl_lambda", 0.08, 0.0, 1.0)?;
        if min > max {
            return Err(opts.error((0, 0), "mask: min_sparsity is above max_sparsity"));
        }
        if allocate == Allocate::Uniform && max_error.is_none() {
            return Ok(None);
        }
        Ok(Some(Budget { allocate, max_error, output, logits, min, max, levels, owl_m, owl_lambda }))
    }

    pub fn options(&self) -> Vec<(&'static str, String)> {
        let levels: Vec<String> = self.levels.iter().map(|l| l.to_string()).collect();
        let allocate = match self.allocate {
            Allocate::Uniform => "uniform",
            Allocate::Sensitivity => "sensitivity",
            Allocate::Owl => "owl",
        };
        vec![
            ("allocate", allocate.to_string()),
            ("max_error", self.max_error.map(|e| e.to_string()).unwrap_or_default()),
            ("output", self.output.clone().unwrap_or_default()),
            ("logits", if self.logits { "auto" } else { "off" }.to_string()),
            ("min_sparsity", self.min.to_string()),
            ("max_sparsity", self.max.to_string()),
            ("levels", levels.join("|")),
            ("owl_m", self.owl_m.to_string()),
            ("owl_lambda", self.owl_lambda.to_string()),
        ]
    }
}

/// The tensors `max_error` bounds: every float graph output (or the one named) and, with `logits=auto`,
/// the input of a Softmax computing one of them; notes for the Softmax inputs added and for targets none
/// of them depends on.
fn bounded_tensors(g: &sparsify_ir::Graph, b: &Budget, targets: &[Target], cx: &mut PassCx<'_>) -> Vec<String> {
    let mut bounded = match &b.output {
        Some(o) => vec![o.clone()],
        None => float_outputs(g),
    };
    for o in bounded.clone() {
        if let Some(z) = softmax_input(g, &o).filter(|z| b.logits && !bounded.contains(z)) {
            cx.note(
                "max_error",
                format!(
                    "'{o}' is a Softmax output: its input '{z}' is bounded too (saturated probabilities hide what \
                     pruning does to the logits; logits=off bounds '{o}' alone)"
                ),
            );
            bounded.push(z);
        }
    }
    let names: Vec<&str> = bounded.iter().map(String::as_str).collect();
    let reaches = reaching(g, &names);
    for t in targets.iter().filter(|t| !reaches(t.id.name())) {
        cx.note(t.id.name(), "reaches no bounded tensor: max_error does not measure its pruning");
    }
    bounded
}

/// Per-layer zero counts for a global count `total` from the curves (errors per level; elements n_l;
/// zeros already present z_l), within [min, max] per layer. Errors if the bounds make it impossible.
pub fn allocate_counts(
    levels: &[f64],
    curves: &[(usize, usize, Vec<f64>)],
    total: usize,
    min: f64,
    max: f64,
) -> Result<Vec<usize>, String> {
    let top = levels.iter().copied().fold(0.0, f64::max).min(max);
    // Lower convex hull of (count, error²) per layer, cut to [start, end].
    let mut start = Vec::with_capacity(curves.len());
    let mut segs: Vec<(f64, usize, usize, usize)> = Vec::new(); // (slope, layer, order, length)
    for (l, (n, zeros, errs)) in curves.iter().enumerate() {
        let n = *n;
        let lo = ((min * n as f64).ceil() as usize).max(*zeros).min(n);
        let hi = prune_count(top, n).max(lo);
        let mut pts: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        pts.extend(levels.iter().zip(errs).map(|(s, e)| (s * n as f64, e * e)));
        let at = |x: f64| -> f64 {
            for w in pts.windows(2) {
                if x <= w[1].0 {
                    let t = if w[1].0 > w[0].0 { (x - w[0].0) / (w[1].0 - w[0].0) } else { 1.0 };
                    return w[0].1 + t * (w[1].1 - w[0].1);
                }
            }
            pts.last().map_or(0.0, |p| p.1)
        };
        let mut xs: Vec<f64> = vec![lo as f64];
        xs.extend(pts.iter().map(|p| p.0).filter(|&x| x > lo as f64 && x < hi as f64));
        xs.push(hi as f64);
        let mut hull: Vec<(f64, f64)> = Vec::new();
        for x in xs {
            let p = (x, at(x));
            while hull.len() >= 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                // b is above the chord a → p: drop it.
                if (b.1 - a.1) * (p.0 - a.0) >= (p.1 - a.1) * (b.0 - a.0) {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(p);
        }
        let mut prev = lo;
        for (order, w) in hull.windows(2).enumerate() {
            let end = (w[1].0.round() as usize).clamp(prev, hi);
            if end > prev {
                let slope = (w[1].1 - w[0].1) / (w[1].0 - w[0].0).max(1e-12);
                segs.push((slope, l, order, end - prev));
                prev = end;
            }
        }
        start.push(lo);
    }
    let base: usize = start.iter().sum();
    let room: usize = segs.iter().map(|s| s.3).sum();
    if total < base || total > base + room {
        return Err(format!(
            "a global count of {total} zeros is outside what the per-layer bounds allow ({base}..={})",
            base + room
        ));
    }
    segs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut counts = start;
    let mut left = total - base;
    for (_, l, _, len) in segs {
        if left == 0 {
            break;
        }
        let take = len.min(left);
        counts[l] += take;
        left -= take;
    }
    Ok(counts)
}

/// OWL: per-layer zero counts for a global count `total`. Layer l's outlier ratio D_l (fraction of its
/// scores above `m` × the layer's mean score) maps linearly to a sparsity in [S − λ, S + λ] (most
/// outliers → lowest sparsity); a common shift then makes the element-weighted mean exactly S, clamped to
/// [min, max], and the counts are rounded by largest remainder to hit `total` exactly.
pub fn owl_counts(
    ratios: &[f64],
    sizes: &[usize],
    total: usize,
    lambda: f64,
    min: f64,
    max: f64,
) -> Result<Vec<usize>, String> {
    let n: usize = sizes.iter().sum();
    let s = total as f64 / n.max(1) as f64;
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| (a.min(r), b.max(r)));
    let rel: Vec<f64> = ratios.iter().map(|&r| if hi > lo { (r - lo) / (hi - lo) } else { 0.5 }).collect();
    let raw: Vec<f64> = rel.iter().map(|r| s + lambda - 2.0 * lambda * r).collect();
    // Shift c so that Σ n_l clamp(raw_l + c) = total (bisection; the sum is monotone in c).
    let count = |c: f64| -> f64 { raw.iter().zip(sizes).map(|(x, &k)| (x + c).clamp(min, max) * k as f64).sum() };
    let (mut a, mut b) = (-2.0, 2.0);
    if count(a) > total as f64 || count(b) < total as f64 {
        return Err(format!("a global count of {total} zeros is outside what the per-layer bounds allow"));
    }
    for _ in 0..100 {
        let mid = 0.5 * (a + b);
        if count(mid) < total as f64 {
            a = mid;
        } else {
            b = mid;
        }
    }
    let exact: Vec<f64> = raw.iter().zip(sizes).map(|(x, &k)| (x + b).clamp(min, max) * k as f64).collect();
    let mut counts: Vec<usize> = exact.iter().zip(sizes).map(|(e, &k)| (e.floor() as usize).min(k)).collect();
    let mut left = total.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&i, &j| (exact[j] - exact[j].floor()).total_cmp(&(exact[i] - exact[i].floor())).then(i.cmp(&j)));
    for &i in order.iter().cycle().take(order.len() * 2) {
        if left == 0 {
            break;
        }
        if counts[i] < sizes[i] && (counts[i] as f64) < max * sizes[i] as f64 {
            counts[i] += 1;
            left -= 1;
        }
    }
    Ok(counts)
}

/// OWL's outlier ratio of one layer's scores: the fraction above `m` × their mean.
pub fn outlier_ratio(scores: &[f32], m: f64) -> f64 {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().map(|&v| v as f64).sum::<f64>() / n;
    scores.iter().filter(|&&v| v as f64 > m * mean).count() as f64 / n
}

/// Predicted error of an allocation: sqrt(Σ e_l(k_l / n_l)²), curves linear between levels.
pub fn predicted_error(levels: &[f64], curves: &[(usize, usize, Vec<f64>)], counts: &[usize]) -> f64 {
    let mut sum = 0.0;
    for ((n, _, errs), &k) in curves.iter().zip(counts) {
        let s = k as f64 / (*n).max(1) as f64;
        let mut prev = (0.0, 0.0);
        let mut e2 = errs.last().map_or(0.0, |e| e * e);
        for (l, e) in levels.iter().zip(errs) {
            if s <= *l {
                let t = if *l > prev.0 { (s - prev.0) / (l - prev.0) } else { 1.0 };
                e2 = prev.1 + t * (e * e - prev.1);
                break;
            }
            prev = (*l, e * e);
        }
        sum += e2;
    }
    sum.sqrt()
}

/// The masking context shared by every candidate.
struct Ctx<'a> {
    targets: Vec<Target>,
    cfg: MaskConfig,
    scores: Option<WeightScores>,
    dense: &'a Model,
}

impl Ctx<'_> {
    /// A copy of the model with target i masked at sparsity `s[i]`.
    fn masked(&self, s: &[f64]) -> Result<Model, PassError> {
        let mut m = self.dense.clone();
        let mut scores = self.scores.clone();
        for (i, t) in self.targets.iter().enumerate() {
            apply_mask(&mut m.graph, std::slice::from_ref(t), scores.as_mut(), s[i], &self.cfg, None)?;
        }
        Ok(m)
    }
}

/// Run `mask` with a budget: choose per-layer sparsities, then apply them to `model`.
pub fn run(
    b: &Budget,
    model: &mut Model,
    cx: &mut PassCx<'_>,
    sparsity: f64,
    scope: &Scope,
) -> Result<Changed, PassError> {
    let cal_opt: Option<&dyn Calibrator> = cx.calibrator;
    let method = cx.analyses.get::<WeightScores>().map(|s| s.method.clone()).unwrap_or_else(|| "l1".into());
    let cfg = MaskConfig { granularity: Granularity::Element, group: Group::Layer, l2_scores: method == "l2" };
    let plan = plan_targets(&model.graph, scope, &cfg);
    for (name, why) in &plan.skipped {
        cx.note(name.clone(), format!("skipped: {why}"));
    }
    let dense = model.clone();
    let ctx = Ctx { targets: plan.targets, cfg, scores: cx.analyses.get::<WeightScores>().cloned(), dense: &dense };
    if ctx.targets.is_empty() {
        cx.note("mask", "no weight selected");
        return Ok(Changed::No);
    }
    let g = &dense.graph;
    let sizes: Vec<(usize, usize)> = ctx
        .targets
        .iter()
        .map(|t| {
            g.weight(&t.id)
                .map(|w| (w.numel().unwrap_or(0), w.numel().unwrap_or(0) - g.weight_nnz(&t.id).unwrap_or(0)))
                .unwrap_or((0, 0))
        })
        .collect();
    let n_total: usize = sizes.iter().map(|s| s.0).sum();
    let output = measured_tensor(g, b.output.as_deref(), "mask")?;
    // Weights the measured tensor does not depend on have flat curves: allocating them would prune them
    // to the cap unseen. They keep the global sparsity instead.
    let reaches = reaching(g, &[&output]);
    let curved: Vec<bool> = ctx.targets.iter().map(|t| reaches(t.id.name())).collect();
    let curves: Option<Curves> = match b.allocate {
        Allocate::Uniform | Allocate::Owl => None,
        Allocate::Sensitivity => {
            for (t, _) in ctx.targets.iter().zip(&curved).filter(|(_, c)| !**c) {
                cx.note(
                    t.id.name(),
                    format!(
                        "does not reach '{output}' (the tensor measured): kept at the global sparsity, not allocated"
                    ),
                );
            }
            let layers: Vec<_> = ctx
                .targets
                .iter()
                .zip(&sizes)
                .zip(&curved)
                .filter(|(_, c)| **c)
                .map(|((t, s), _)| (t.id.clone(), String::new(), s.0))
                .collect();
            let cal = cal_opt.ok_or(PassError::NeedsCalibration)?;
            let recipe = format!("mask/{method}/layer");
            let c = measure(&dense, cal, &output, &recipe, &layers, &b.levels, |s| {
                ctx.masked(&vec![s; ctx.targets.len()])
            })?;
            cx.stat("sensitivity_runs", c.runs as f64);
            Some(c)
        }
    };
    let owl_ratios: Vec<f64> = match b.allocate {
        Allocate::Owl => ctx
            .targets
            .iter()
            .map(|t| {
                let s = crate::scores::scores_or_magnitude(g, ctx.scores.as_ref(), &t.id)?;
                let v: Vec<f32> = s.iter().copied().collect();
                Ok(outlier_ratio(&v, b.owl_m))
            })
            .collect::<Result<_, PassError>>()?,
        _ => Vec::new(),
    };
    let curve_rows: Vec<(usize, usize, Vec<f64>)> = match &curves {
        Some(c) => c
            .layers
            .iter()
            .zip(sizes.iter().zip(&curved).filter(|(_, c)| **c))
            .map(|(l, (s, _))| (s.0, s.1, l.errors.clone()))
            .collect(),
        None => Vec::new(),
    };
    // Per-target sparsities for a global S.
    let alloc = |s: f64| -> Result<Vec<f64>, PassError> {
        match &curves {
            None if b.allocate == Allocate::Owl => {
                let n: Vec<usize> = sizes.iter().map(|s| s.0).collect();
                let counts = owl_counts(&owl_ratios, &n, prune_count(s, n_total), b.owl_lambda, b.min, b.max)
                    .map_err(|m| PassError::Invalid { subject: "mask".into(), message: m })?;
                Ok(counts.iter().zip(&n).map(|(&k, &n)| k as f64 / n.max(1) as f64).collect())
            }
            None => Ok(vec![s; sizes.len()]),
            Some(c) => {
                // Layers outside the curves take `s`; the allocated ones share the rest of the count.
                let fixed: usize =
                    sizes.iter().zip(&curved).filter(|(_, c)| !**c).map(|((n, _), _)| prune_count(s, *n)).sum();
                let mut total = prune_count(s, n_total).saturating_sub(fixed);
                // Under max_error the bisection may reach the top level, where the sum of per-layer floors
                // can be below floor(top·N): aim at the most the per-layer bounds allow. A sparsity the user
                // named keeps its exact count (and its error when out of bounds).
                if b.max_error.is_some() {
                    let top = c.levels.iter().copied().fold(0.0, f64::max).min(b.max);
                    let cap: usize = curve_rows
                        .iter()
                        .map(|(n, z, _)| {
                            let lo = ((b.min * *n as f64).ceil() as usize).max(*z).min(*n);
                            prune_count(top, *n).max(lo)
                        })
                        .sum();
                    total = total.min(cap);
                }
                let counts = allocate_counts(&c.levels, &curve_rows, total, b.min, b.max)
                    .map_err(|m| PassError::Invalid { subject: "mask".into(), message: m })?;
                let mut allocated = counts.iter().zip(sizes.iter().zip(&curved).filter(|(_, c)| **c));
                Ok(curved
                    .iter()
                    .map(|&c| match c {
                        true => allocated.next().map_or(s, |(&k, ((n, _), _))| k as f64 / (*n).max(1) as f64),
                        false => s,
                    })
                    .collect())
            }
        }
    };
    let chosen_s = match b.max_error {
        None => sparsity,
        Some(e) => {
            let cal = cal_opt.ok_or(PassError::NeedsCalibration)?;
            let bounded = bounded_tensors(g, b, &ctx.targets, cx);
            let reference = tensor_values(&dense, cal, &bounded)?;
            let mut err_at = |s: f64| -> Result<f64, PassError> {
                let m = ctx.masked(&alloc(s)?)?;
                let errs: Vec<f64> =
                    reference.iter().zip(tensor_values(&m, cal, &bounded)?).map(|(r, v)| rel_l2(r, &v)).collect();
                let err = errs.iter().copied().fold(0.0, f64::max);
                cx.stat("validated_candidates", 1.0);
                let text = match errs.len() {
                    1 => format!("global sparsity {s:.4}: validated rel L2 {err:.4}"),
                    _ => {
                        let each: Vec<String> = bounded.iter().zip(&errs).map(|(t, e)| format!("{t} {e:.4}")).collect();
                        format!("global sparsity {s:.4}: validated rel L2 {err:.4} (largest of {})", each.join(", "))
                    }
                };
                cx.note("max_error", text);
                Ok(err)
            };
            let hi_cap = match &curves {
                Some(_) => {
                    let top = b.levels.iter().copied().fold(0.0, f64::max).min(b.max);
                    top.max(b.min)
                }
                None => b.max,
            };
            let (mut lo, mut hi) = (0.0, hi_cap);
            if err_at(hi)? <= e {
                lo = hi;
            } else {
                for _ in 0..13 {
                    let mid = 0.5 * (lo + hi);
                    if err_at(mid)? <= e {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
            }
            cx.note("max_error", format!("chosen global sparsity {lo:.4} (error bound {e})"));
            lo
        }
    };
    let per = alloc(chosen_s)?;
    if let Some(c) = &curves {
        let counts: Vec<usize> = per
            .iter()
            .zip(&sizes)
            .zip(&curved)
            .filter(|(_, c)| **c)
            .map(|((s, (n, _)), _)| prune_count(*s, *n))
            .collect();
        cx.stat("predicted_rel_l2", predicted_error(&c.levels, &curve_rows, &counts));
    }
    let before: Vec<usize> = sizes.iter().map(|s| s.1).collect();
    let mut changed = false;
    let mut zeros = 0usize;
    for (i, t) in ctx.targets.iter().enumerate() {
        let out = apply_mask(
            &mut model.graph,
            std::slice::from_ref(t),
            cx.analyses.get_mut::<WeightScores>(),
            per[i],
            &cfg,
            cx.spill,
        )?;
        changed |= out.any_changed;
        let after = model
            .graph
            .weight(&t.id)
            .map(|w| w.numel().unwrap_or(0) - model.graph.weight_nnz(&t.id).unwrap_or(0))
            .unwrap_or(0);
        zeros += after;
        cx.note(
            t.id.name(),
            format!(
                "method={method} budget: sparsity {:.4} -> {:.4} (+{} zeros)",
                before[i] as f64 / sizes[i].0.max(1) as f64,
                after as f64 / sizes[i].0.max(1) as f64,
                after.saturating_sub(before[i])
            ),
        );
    }
    cx.stat("global_sparsity", zeros as f64 / n_total.max(1) as f64);
    cx.stat("tensors_masked", ctx.targets.len() as f64);
    if changed {
        cx.preserve::<WeightScores>();
        cx.preserve::<crate::score::ScoreRecipe>();
        Ok(Changed::Yes)
    } else {
        Ok(Changed::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owl_gives_outlier_heavy_layers_less_sparsity_and_exact_counts() {
        let c = owl_counts(&[0.0, 0.01, 0.02], &[100, 100, 200], 200, 0.1, 0.0, 1.0).unwrap();
        assert_eq!(c.iter().sum::<usize>(), 200);
        assert!(c[0] > c[1] && c[1] as f64 / 100.0 > c[2] as f64 / 200.0, "{c:?}");
        assert_eq!(outlier_ratio(&[1.0, 1.0, 1.0, 10.0], 2.0), 0.25);
    }

    #[test]
    fn greedy_prefers_the_insensitive_layer_and_hits_the_count() {
        let levels = [0.5, 1.0];
        // Layer 0 barely reacts; layer 1 hurts fast. 100 elements each.
        let curves = vec![(100, 0, vec![0.01, 0.02]), (100, 0, vec![0.5, 1.0])];
        let c = allocate_counts(&levels, &curves, 100, 0.0, 1.0).unwrap();
        assert_eq!(c.iter().sum::<usize>(), 100);
        assert_eq!(c, vec![100, 0]);
        let c = allocate_counts(&levels, &curves, 130, 0.0, 0.9).unwrap();
        assert_eq!(c, vec![90, 40]);
        assert!(allocate_counts(&levels, &curves, 190, 0.0, 0.9).is_err());
        // Bounds: min 0.2 in each layer.
        let c = allocate_counts(&levels, &curves, 100, 0.2, 1.0).unwrap();
        assert_eq!(c, vec![80, 20]);
        assert!(predicted_error(&levels, &curves, &c) > predicted_error(&levels, &curves, &[100, 0]));
    }

    #[test]
    fn non_convex_curves_use_their_hull() {
        // A curve with a cheap second half after an expensive first one: the hull averages them.
        let levels = [0.5, 1.0];
        let curves = vec![(10, 0, vec![1.0, 1.0]), (10, 0, vec![0.8, 0.9])];
        let c = allocate_counts(&levels, &curves, 10, 0.0, 1.0).unwrap();
        assert_eq!(c, vec![0, 10]);
    }
}
