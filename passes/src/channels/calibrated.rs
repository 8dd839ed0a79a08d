//! Calibrated channel selection and consumer reconstruction for `mask{granularity=coupled}` (issue 12).
//!
//! For every coupled group ([`super::channel_groups`]) the *consumers* (the Conv / Gemm / MatMul weights
//! whose input rows carry the group's channels) are the layers that lose inputs. One calibration sweep
//! on the current model gives, per consumer, its input Gram H = (2/n)·Σ x xᵀ (im2col patches for a Conv,
//! as SparseGPT's) and its input mean. A channel is, in each consumer, a block B of input rows (one row
//! for MatMul / Gemm, the Πkernel im2col columns of the channel for a Conv, the H·W features of a
//! flattened channel for a Gemm after Flatten).
//!
//! Selection (`criterion`):
//! - `obs`: greedy, each step the channel with the least ΔE = Σ_consumers tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B), the
//!   consumers refit ([`crate::obs_removal::RowRemoval`]) and H⁻¹ downdated after each removal, so later
//!   choices see the repaired layers (ZipLM-style structured OBS).
//! - `wanda`: Σ_consumers sqrt(Σ_{r∈B} H_rr ‖W_r‖²), i.e. ‖X_j‖·‖W\[j,:\]‖ for a MatMul row.
//! - `flap`: FLAP's fluctuation Σ_consumers Σ_{r∈B} Var(x_r)·‖W_r‖² (what bias compensation cannot
//!   restore; pairs with `reconstruct=bias`).
//! - `norm`: today's weight-norm group score.
//!
//! Budgets: per group, floor(S·n) of its n removable channels; or `scope=global`: floor(S·N) of all
//! N removable channels of the eligible groups, chosen across layers by the score normalised by each
//! consumer's output energy tr(Wᵀ H W) (ΔE / energy for `obs`, Σ H_rr‖W_r‖² / energy for `wanda`), and
//! never the last channel of a group.
//!
//! Repair (`reconstruct`):
//! - `obs`: the structured OBS refit of the kept rows *and* of the consumer's bias, treated as the row of
//!   a constant-1 input (H augmented with the input means), so the mean the removed channels carried is
//!   restored as well (this subsumes FLAP's bias compensation). With `criterion=obs` the updates are the
//!   greedy's own; otherwise the chosen channels are removed in their selection order (for a fixed set
//!   the result is the least-squares refit, whatever the order).
//! - `lsq`: the same refit of the kept rows without the bias row (the plain least-squares refit).
//! - `bias`: FLAP bias compensation only: the consumer's bias gains Σ_removed E\[x_B\]·W_B.
//! - `none`: only the producer rows are zeroed (today's behaviour).
//!
//! Except with `none`, the removed rows of every consumer are set to zero, so a removed channel
//! contributes nothing even when its dead output is a non-zero constant (dead-channel-elim then folds
//! 0); the masked-and-repaired model equals the eliminated one.

use super::groups::{group_scores, ChannelGroup, SliceRole};
use crate::calib_stats::mean_request;
use crate::obs_removal::{augment, output_energy, RowRemoval};
use crate::scores::WeightScores;
use crate::sgpt_plan::{self, Plan, Target};
use ndarray::{ArrayD, IxDyn};
use sparsify_ir::{Graph, Model, WeightId, WeightInfo, WeightUse};
use sparsify_pm::{CalibRequest, CalibStat, PassCx, PassError};
use std::collections::BTreeMap;

/// How channels are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    Norm,
    Wanda,
    /// FLAP's fluctuation: Σ_{r∈B} Var(x_r)·‖W_r‖² (pairs with `reconstruct=bias`).
    Flap,
    Obs,
}

/// How the consumers are repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconstruct {
    Obs,
    Lsq,
    Bias,
    None,
}

impl Criterion {
    pub fn name(self) -> &'static str {
        match self {
            Criterion::Norm => "norm",
            Criterion::Wanda => "wanda",
            Criterion::Flap => "flap",
            Criterion::Obs => "obs",
        }
    }
}

impl Reconstruct {
    pub fn name(self) -> &'static str {
        match self {
            Reconstruct::Obs => "obs",
            Reconstruct::Lsq => "lsq",
            Reconstruct::Bias => "bias",
            Reconstruct::None => "none",
        }
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub sparsity: f64,
    pub criterion: Criterion,
    pub reconstruct: Reconstruct,
    pub global: bool,
    pub damp: f64,
}

/// A group with its removable channels, as the coupled mask hands it over.
pub struct Eligible {
    pub group: ChannelGroup,
    pub free: Vec<usize>,
    /// Per channel: producer rows and biases already zero.
    pub zero: Vec<bool>,
    /// Subject for notes (first producer weight).
    pub subject: String,
}

/// One consumer weight.
struct Consumer {
    id: WeightId,
    plan: Plan,
    first_use: WeightUse,
    /// Input rows (cols of the 2-D view) and outputs.
    k: usize,
    outs: usize,
    /// W [k, outs] row-major.
    w: Vec<f64>,
    /// Scaled Gram (2/n) [k, k] and mean [k].
    h: Vec<f64>,
    mean: Vec<f64>,
    energy: f64,
    solver: Option<RowRemoval>,
    intercept: bool,
    removed: usize,
}

/// A channel's rows in one consumer: (consumer index, input rows).
type Part = (usize, Vec<usize>);

/// A group and the channels chosen in it.
pub type Picked = (ChannelGroup, Vec<usize>);

struct Cand {
    group: usize,
    channel: usize,
    parts: Vec<Part>,
    zero: bool,
    /// Static score (norm / wanda) when not dynamic.
    score: f64,
}

/// Blocks of input rows of `grp`'s channels in a consumer, or why the consumer is not supported.
fn consumer_blocks(
    grp: &ChannelGroup,
    weight: &WeightId,
    plan: &Plan,
    red_axis: usize,
) -> Result<BTreeMap<usize, Vec<usize>>, String> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for s in grp.slices.iter().filter(|s| s.role == SliceRole::Consumer && &s.weight == weight) {
        if s.axis != red_axis {
            return Err(format!("'{}' is sliced along axis {}, not its reduction axis", weight.name(), s.axis));
        }
        for e in &s.entries {
            if e.rows.is_some() || plan.groups != 1 {
                return Err(format!("'{}' is a grouped Conv consumer (no reconstruction)", weight.name()));
            }
            if (e.index + 1) * plan.kpos > plan.cols {
                return Err(format!(
                    "'{}': channel entry {} is outside its {} input rows",
                    weight.name(),
                    e.index,
                    plan.cols
                ));
            }
            out.entry(e.channel).or_default().extend(e.index * plan.kpos..(e.index + 1) * plan.kpos);
        }
    }
    Ok(out)
}

/// Run selection and repair on `groups` (all eligible): writes the repaired consumers and returns the
/// channels chosen per group (groups without a choice left out) and the consumer elements changed; the
/// caller zeroes the chosen producer channels.
pub fn run(
    model: &mut Model,
    cx: &mut PassCx<'_>,
    groups: Vec<Eligible>,
    set: Settings,
) -> Result<(Vec<Picked>, usize), PassError> {
    let needs_calib = set.criterion != Criterion::Norm || set.reconstruct != Reconstruct::None;
    let g = &model.graph;
    let infos: BTreeMap<WeightId, WeightInfo> = g.find_weights().into_iter().map(|w| (w.id.clone(), w)).collect();
    // Consumers of every group, and which groups they make unsupported.
    let mut consumers: Vec<Consumer> = Vec::new();
    let mut by_id: BTreeMap<WeightId, usize> = BTreeMap::new();
    let mut unsupported: BTreeMap<usize, String> = BTreeMap::new();
    let mut blocks: Vec<BTreeMap<usize, Vec<Part>>> = vec![BTreeMap::new(); groups.len()];
    if needs_calib {
        for (gi, e) in groups.iter().enumerate() {
            let mut ids: Vec<&WeightId> =
                e.group.slices.iter().filter(|s| s.role == SliceRole::Consumer).map(|s| &s.weight).collect();
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                unsupported.insert(gi, "no consumer to reconstruct".into());
                continue;
            }
            for id in ids {
                let ci = match by_id.get(id) {
                    Some(&ci) => ci,
                    None => {
                        let made = consumer(g, &infos, id);
                        match made {
                            Ok(c) => {
                                consumers.push(c);
                                by_id.insert(id.clone(), consumers.len() - 1);
                                consumers.len() - 1
                            }
                            Err(why) => {
                                unsupported.insert(gi, why);
                                break;
                            }
                        }
                    }
                };
                let red = consumers[ci].first_use.red_axis;
                match consumer_blocks(&e.group, id, &consumers[ci].plan, red) {
                    Ok(bl) => {
                        for (ch, rows) in bl {
                            blocks[gi].entry(ch).or_default().push((ci, rows));
                        }
                    }
                    Err(why) => {
                        unsupported.insert(gi, why);
                        break;
                    }
                }
            }
        }
        calibrate(model, cx, &mut consumers)?;
    }
    let mut notes: Vec<(String, String)> = Vec::new();
    if needs_calib
        && (set.criterion == Criterion::Obs || matches!(set.reconstruct, Reconstruct::Obs | Reconstruct::Lsq))
    {
        notes.extend(solvers(&mut consumers, &model.graph, set.reconstruct == Reconstruct::Obs, set.damp));
        for (gi, bl) in blocks.iter().enumerate() {
            if let Some((ci, _)) = bl.values().flatten().find(|(ci, _)| consumers[*ci].solver.is_none()) {
                unsupported.entry(gi).or_insert_with(|| format!("'{}' has no usable Gram", consumers[*ci].id.name()));
            }
        }
    }
    let g = &mut model.graph;
    let scores = cx.analyses.get::<WeightScores>();
    // Candidates.
    let mut cands: Vec<Cand> = Vec::new();
    let mut quota: Vec<usize> = vec![0; groups.len()];
    let mut active: Vec<bool> = vec![true; groups.len()];
    for (gi, e) in groups.iter().enumerate() {
        let crit = if unsupported.contains_key(&gi) { Criterion::Norm } else { set.criterion };
        if let Some(why) = unsupported.get(&gi) {
            if set.global {
                notes.push((e.subject.clone(), format!("coupled channels not pruned under scope=global: {why}")));
                active[gi] = false;
                continue;
            }
            notes.push((e.subject.clone(), format!("criterion norm and no reconstruction: {why}")));
        }
        let norm = if crit == Criterion::Norm { Some(group_scores(g, &e.group, scores)?) } else { None };
        quota[gi] = (set.sparsity * e.free.len() as f64 + 1e-9).floor() as usize;
        for &c in &e.free {
            let parts =
                if unsupported.contains_key(&gi) { vec![] } else { blocks[gi].get(&c).cloned().unwrap_or_default() };
            // Σ over the channel's consumer rows r of weight(r)·‖W_r‖², normalised by the consumer's output
            // energy under scope=global (else square-rooted when `root`).
            let rows = |weight: &dyn Fn(&Consumer, usize) -> f64, root: bool| -> f64 {
                parts
                    .iter()
                    .map(|(ci, b)| {
                        let cs = &consumers[*ci];
                        let s: f64 = b
                            .iter()
                            .map(|&r| {
                                weight(cs, r) * cs.w[r * cs.outs..(r + 1) * cs.outs].iter().map(|v| v * v).sum::<f64>()
                            })
                            .sum();
                        match (set.global, root) {
                            (true, _) => s / cs.energy.max(f64::MIN_POSITIVE),
                            (false, true) => s.sqrt(),
                            (false, false) => s,
                        }
                    })
                    .sum()
            };
            let score = match crit {
                Criterion::Norm => norm.as_ref().map_or(0.0, |n| n[c]),
                Criterion::Wanda => rows(&|cs, r| cs.h[r * cs.k + r], true),
                // h_rr = 2·E[x_r²] (H is scaled 2/n): Var = h_rr/2 − E[x_r]².
                Criterion::Flap => rows(&|cs, r| (cs.h[r * cs.k + r] / 2.0 - cs.mean[r] * cs.mean[r]).max(0.0), false),
                Criterion::Obs => 0.0,
            };
            cands.push(Cand { group: gi, channel: c, parts, zero: e.zero[c], score });
        }
    }
    if set.global && set.criterion == Criterion::Norm {
        return Err(PassError::Invalid {
            subject: "mask".into(),
            message:
                "granularity=coupled with scope=global needs a calibrated criterion (obs, wanda or flap): weight norms \
                      are not comparable across layers"
                    .into(),
        });
    }
    // Selection.
    let dynamic = |gi: usize| set.criterion == Criterion::Obs && !unsupported.contains_key(&gi);
    let mut taken = vec![false; cands.len()];
    let mut order: Vec<usize> = Vec::new();
    let mut cache: Vec<Option<f64>> = vec![None; cands.len()];
    let mut alive_in: Vec<usize> = groups.iter().map(|e| e.free.len()).collect();
    let mut by_consumer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in cands.iter().enumerate() {
        for (ci, _) in &c.parts {
            by_consumer.entry(*ci).or_default().push(i);
        }
    }
    let total_quota: usize = if set.global {
        let n: usize = (0..groups.len()).filter(|&gi| active[gi]).map(|gi| groups[gi].free.len()).sum();
        (set.sparsity * n as f64 + 1e-9).floor() as usize
    } else {
        quota.iter().sum()
    };
    let mut done: Vec<usize> = vec![0; groups.len()];
    let stage = cx.stage("mask (coupled channels): selection", total_quota);
    for step in 0..total_quota {
        let mut best: Option<(f64, usize)> = None;
        for i in 0..cands.len() {
            let c = &cands[i];
            if taken[i] || !active[c.group] {
                continue;
            }
            if set.global && alive_in[c.group] <= 1 {
                continue;
            }
            if !set.global && done[c.group] >= quota[c.group] {
                continue;
            }
            let key = if c.zero {
                f64::NEG_INFINITY
            } else if dynamic(c.group) {
                *cache[i].get_or_insert_with(|| {
                    c.parts
                        .iter()
                        .map(|(ci, b)| {
                            let cs = &consumers[*ci];
                            let d = cs.solver.as_ref().map_or(0.0, |s| s.cost(b));
                            if set.global {
                                d / cs.energy.max(f64::MIN_POSITIVE)
                            } else {
                                d
                            }
                        })
                        .sum()
                })
            } else {
                c.score
            };
            // Ties prune the higher (group, channel) first.
            let better = match best {
                None => true,
                Some((bk, bi)) => {
                    key < bk || (key == bk && (c.group, c.channel) > (cands[bi].group, cands[bi].channel))
                }
            };
            if better {
                best = Some((key, i));
            }
        }
        let Some((_, i)) = best else {
            stage.inc((total_quota - step) as u64);
            break;
        };
        taken[i] = true;
        order.push(i);
        done[cands[i].group] += 1;
        alive_in[cands[i].group] -= 1;
        if dynamic(cands[i].group) {
            remove_rows(&mut consumers, &cands[i].parts, &by_consumer, &mut cache);
        }
        stage.inc(1);
    }
    // Repair.
    let mut changed = 0usize;
    if matches!(set.reconstruct, Reconstruct::Obs | Reconstruct::Lsq) {
        for &i in &order {
            if !dynamic(cands[i].group) {
                remove_rows(&mut consumers, &cands[i].parts, &by_consumer, &mut cache);
            }
        }
    }
    if set.reconstruct != Reconstruct::None {
        let mut bias_shift: Vec<Option<Vec<f64>>> = vec![None; consumers.len()];
        if set.reconstruct == Reconstruct::Bias {
            for &i in &order {
                for (ci, b) in &cands[i].parts {
                    let cs = &mut consumers[*ci];
                    let shift = bias_shift[*ci].get_or_insert_with(|| vec![0.0; cs.outs]);
                    for &r in b {
                        for (o, s) in shift.iter_mut().enumerate() {
                            *s += cs.mean[r] * cs.w[r * cs.outs + o];
                        }
                        cs.w[r * cs.outs..(r + 1) * cs.outs].iter_mut().for_each(|v| *v = 0.0);
                    }
                    if !dynamic(cands[i].group) {
                        cs.removed += 1;
                    }
                }
            }
        }
        for (ci, cs) in consumers.iter().enumerate() {
            if cs.removed == 0 {
                continue;
            }
            let (w, shift) = match (&cs.solver, set.reconstruct) {
                (Some(s), Reconstruct::Obs | Reconstruct::Lsq) => {
                    let all = s.weights();
                    let shift = cs.intercept.then(|| all[cs.k * cs.outs..].to_vec());
                    (all[..cs.k * cs.outs].to_vec(), shift)
                }
                _ => (cs.w.clone(), bias_shift[ci].clone()),
            };
            if w.iter().any(|v| !v.is_finite()) {
                notes.push((cs.id.name().into(), "reconstruction produced non-finite values: left unrepaired".into()));
                continue;
            }
            let vals = if cs.plan.transposed { w } else { transpose(&w, cs.k, cs.outs) };
            let arr = ArrayD::from_shape_vec(IxDyn(&cs.plan.shape), vals)
                .map_err(|e| PassError::Invalid { subject: cs.id.name().into(), message: e.to_string() })?;
            let before = g.weight_values_f64(&cs.id)?;
            changed += before.iter().zip(arr.iter()).filter(|(a, b)| a != b).count();
            g.write_weight_f64(&cs.id, &arr)?;
            let mut msg =
                format!("reconstruct={}: {} channel(s) removed from its inputs", set.reconstruct.name(), cs.removed);
            if let Some(s) = &cs.solver {
                if s.damp > set.damp {
                    msg.push_str(&format!("; Gram damped with {} (asked {})", s.damp, set.damp));
                }
            }
            if let Some(shift) = shift.filter(|s| s.iter().any(|v| *v != 0.0)) {
                let shift = crate::bias_shift::product_to_output(g, &cs.first_use, &shift);
                match crate::bias_shift::shift_output(g, &cs.first_use, cs.id.name(), &shift, None) {
                    Ok((place, size)) => msg.push_str(&format!("; bias shift (max |Δb| {size:.3e}) {place}")),
                    Err(why) => msg.push_str(&format!("; bias shift not applied: {why}")),
                }
            }
            notes.push((cs.id.name().into(), msg));
            cx.stat("consumers_reconstructed", 1.0);
        }
    }
    let mut picks: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    for &i in &order {
        picks[cands[i].group].push(cands[i].channel);
    }
    let mut out = Vec::new();
    for ((e, mut chosen), on) in groups.into_iter().zip(picks).zip(active) {
        if !on {
            continue;
        }
        chosen.sort();
        notes.push((
            e.subject.clone(),
            format!(
                "coupled group of {} producer(s): pruning {} of {} removable channels (criterion={}, reconstruct={}{})",
                e.group.slices.iter().filter(|s| s.role == SliceRole::Producer).count(),
                chosen.len(),
                e.free.len(),
                set.criterion.name(),
                set.reconstruct.name(),
                if set.global { ", scope=global" } else { "" }
            ),
        ));
        out.push((e.group, chosen));
    }
    for (s, m) in notes {
        cx.note(s, m);
    }
    Ok((out, changed))
}

fn transpose(w: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

fn remove_rows(
    consumers: &mut [Consumer],
    parts: &[Part],
    by_consumer: &BTreeMap<usize, Vec<usize>>,
    cache: &mut [Option<f64>],
) {
    for (ci, b) in parts {
        let cs = &mut consumers[*ci];
        if let Some(s) = cs.solver.as_mut() {
            s.remove(b);
        }
        cs.removed += 1;
        for &j in by_consumer.get(ci).into_iter().flatten() {
            cache[j] = None;
        }
    }
}

/// Plan a consumer weight (its 2-D view, requests) without calibration data yet.
fn consumer(g: &Graph, infos: &BTreeMap<WeightId, WeightInfo>, id: &WeightId) -> Result<Consumer, String> {
    let info = infos.get(id).ok_or_else(|| format!("consumer weight '{}' not found", id.name()))?;
    let plan = sgpt_plan::plan(g, info, Target::Sparsity(0.0)).map_err(|e| format!("'{}': {e}", id.name()))?;
    let first_use = info.uses[0].clone();
    let (k, outs) = (plan.cols, plan.rows);
    Ok(Consumer {
        id: id.clone(),
        plan,
        first_use,
        k,
        outs,
        w: Vec::new(),
        h: Vec::new(),
        mean: Vec::new(),
        energy: 0.0,
        solver: None,
        intercept: false,
        removed: 0,
    })
}

/// One calibration sweep: Grams and means of every consumer; then the solvers.
fn calibrate(model: &Model, cx: &mut PassCx<'_>, consumers: &mut [Consumer]) -> Result<(), PassError> {
    if consumers.is_empty() {
        return Ok(());
    }
    let calibrator = cx.calibrator()?;
    let g = &model.graph;
    let mut requests: Vec<CalibRequest> = Vec::new();
    let idx = |r: CalibRequest, requests: &mut Vec<CalibRequest>| match requests.iter().position(|q| *q == r) {
        Some(i) => i,
        None => {
            requests.push(r);
            requests.len() - 1
        }
    };
    let mut which: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    let infos: BTreeMap<WeightId, WeightInfo> = g.find_weights().into_iter().map(|w| (w.id.clone(), w)).collect();
    for cs in consumers.iter() {
        let grams: Vec<usize> = cs.plan.requests.iter().map(|r| idx(r.clone(), &mut requests)).collect();
        let mut means = Vec::new();
        for u in &infos[&cs.id].uses {
            let r = mean_request(g, u, &cs.plan.shape)
                .map_err(|e| PassError::Invalid { subject: cs.id.name().into(), message: e })?;
            means.push(idx(r, &mut requests));
        }
        which.push((grams, means));
    }
    let t0 = std::time::Instant::now();
    let stats = calibrator.collect(model, &requests)?;
    cx.stat("calibration seconds", t0.elapsed().as_secs_f64());
    cx.stat("calibration runs", 1.0);
    for (cs, (grams, means)) in consumers.iter_mut().zip(which) {
        let err = |m: String| PassError::Invalid { subject: cs.id.name().into(), message: m };
        let hs = sgpt_plan::hessians(&cs.plan, &grams.iter().map(|&i| &stats[i]).collect::<Vec<_>>()).map_err(err)?;
        let h = hs.into_iter().next().ok_or_else(|| err("no Gram".into()))?;
        let (mut sums, mut rows) = (vec![0.0; cs.k], 0u64);
        for &i in &means {
            let (s, n) = match &stats[i] {
                CalibStat::FeatureSum { sums, rows } => (sums.clone(), *rows),
                CalibStat::GroupSums { sums, rows } if sums.len() == 1 => (sums[0].clone(), *rows),
                _ => return Err(err("the calibrator answered another statistic".into())),
            };
            if s.len() != cs.k {
                return Err(err(format!("input mean has {} features, the weight reduces over {}", s.len(), cs.k)));
            }
            sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            rows += n;
        }
        if rows == 0 {
            return Err(err("no calibration rows reached the consumer".into()));
        }
        cs.mean = sums.iter().map(|s| s / rows as f64).collect();
        let vals = g.weight_values_f64(&cs.id)?;
        let vals = vals.as_slice().ok_or_else(|| err("non-contiguous weight".into()))?.to_vec();
        cs.w = if cs.plan.transposed { vals } else { transpose(&vals, cs.outs, cs.k) };
        cs.energy = output_energy(&cs.w, cs.k, cs.outs, &h);
        cs.h = h;
    }
    Ok(())
}

/// Build the solvers (with the intercept row when `intercept` and the consumer can take a bias).
fn solvers(consumers: &mut [Consumer], g: &Graph, intercept: bool, damp: f64) -> Vec<(String, String)> {
    let mut notes = Vec::new();
    for cs in consumers.iter_mut() {
        let node = g.node(cs.first_use.node);
        let can_bias = match cs.first_use.op.as_str() {
            "Gemm" => node.attr_float("beta").unwrap_or(1.0) != 0.0,
            "Conv" | "MatMul" => true,
            _ => false,
        };
        cs.intercept = intercept && can_bias;
        let (w, n, h) = if cs.intercept {
            let mut w = cs.w.clone();
            w.extend(std::iter::repeat_n(0.0, cs.outs));
            // H scaled 2/n: the sums row is 2·mean, the corner 2.
            let s: Vec<f64> = cs.mean.iter().map(|m| 2.0 * m).collect();
            (w, cs.k + 1, augment(&cs.h, &s, 2.0))
        } else {
            (cs.w.clone(), cs.k, cs.h.clone())
        };
        match RowRemoval::new(w, n, cs.outs, &h, damp) {
            Ok(s) => cs.solver = Some(s),
            Err(why) => notes.push((cs.id.name().to_string(), format!("no reconstruction: {why}"))),
        }
    }
    notes
}
