//! `permute-channels`: permute reduction channels so that N:M keeps more score (Pool & Yu, 2021),
//! without pruning anything. `nm-legalize{permute=true}` runs the same step before legalizing.
//!
//! For each eligible weight (see `nm-legalize`) the pass finds the *region* of its input tensor
//! ([`crate::permute_region`]): every producer of that tensor (weight output axis, bias,
//! BatchNorm parameters on the way), every other consumer (sibling), through elementwise ops, pooling,
//! BatchNorm and depthwise convs. Where it cannot prove the rewrite exact (graph inputs/outputs,
//! Reshape/Flatten/Concat/Transpose/LayerNorm/Softmax..., shared or non-constant weights, grouped convs)
//! the weight stays unpermuted and a note says why. Otherwise a bounded deterministic search
//! ([`crate::permute_search`]) looks for a permutation of the C channels that keeps more score
//! under N:M over all eligible consumers of the region; it is applied only if it gains. The model's
//! outputs are unchanged (up to float summation order). Cached [`WeightScores`] are permuted along.
//!
//! Preconditions: none (scores from a preceding `score` pass, else |w|). Effects: weight values.
//! Idempotent: when every search converged (a second search starts from the found order and swaps
//! only on a strict gain); a search cut by its budget says so in its note and may improve on a rerun.
//! `nm-legalize{permute=true}` is idempotent regardless: once legal, no permutation keeps more. Counters: `regions_permuted`, `regions_refused`,
//! `retained_score_plain`, `retained_score_permuted` (Σ over eligible weights of the score N:M keeps).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `n`, `m` | `2`, `4` | the N:M pattern the permutation is optimised for (N kept of every M) |
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights seed a search |

use crate::nm::{nm_retained_vals, AxisView};
use crate::nm_legalize::{check_nm_args, nm_candidates, parse_nm};
use crate::permute_region::{find_region, has_subgraphs, Region, WeightIndex};
use crate::permute_search::search;
use crate::scope::{Scope, SCOPE_OPTIONS};
use crate::score::ScoreRecipe;
use crate::scores::{scores_or_magnitude, ScoreSrc, WeightScores};
use ndarray::Axis;
use sparsify_ir::{Graph, Model, NodeId, Tensor, WeightId, WeightInfo};
use sparsify_pm::{Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PipelineError};
use std::collections::BTreeSet;

/// Row evaluations the search may spend per region (deterministic bound on its time).
pub const SEARCH_BUDGET: u64 = 400_000_000;

const OPTIONS: [OptionSpec; 6] = [
    OptionSpec { name: "n", default: "2", help: "elements kept in every group of m (NVIDIA's N:M meaning)" },
    OptionSpec { name: "m", default: "4", help: "group size along the reduction axis" },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "permute-channels",
    description: "permute reduction channels (and their producers) so N:M keeps more score; prunes nothing",
    effects: Effects::WEIGHT_VALUES,
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let (n, m) = parse_nm(opts, "permute-channels")?;
    Ok(Box::new(PermuteChannels { n, m, scope: Scope::from_options(opts)? }))
}

pub struct PermuteChannels {
    pub n: usize,
    pub m: usize,
    pub scope: Scope,
}

impl Pass for PermuteChannels {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("n", self.n.to_string()), ("m", self.m.to_string())];
        v.extend(self.scope.options());
        v
    }
    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        check_nm_args(self.n, self.m)?;
        let eligible = nm_candidates(&model.graph, &self.scope, self.m, false).eligible;
        let plain = retained_total(&model.graph, cx, &eligible, self.n, self.m)?;
        let changed = permute_for_nm(model, cx, &eligible, self.n, self.m)?;
        let permuted = retained_total(&model.graph, cx, &eligible, self.n, self.m)?;
        cx.stat("retained_score_plain", plain);
        cx.stat("retained_score_permuted", permuted);
        if changed {
            cx.preserve::<WeightScores>();
            cx.preserve::<ScoreRecipe>();
        }
        Ok(if changed { Changed::Yes } else { Changed::No })
    }
}

/// Σ over `eligible` (weight, N:M axis) of the score N:M keeps (zero weights score 0).
pub fn retained_total(
    g: &Graph,
    cx: &PassCx<'_>,
    eligible: &[(WeightInfo, usize)],
    n: usize,
    m: usize,
) -> Result<f64, PassError> {
    let cache = cx.analyses.get::<WeightScores>();
    let mut total = 0.0;
    for (info, axis) in eligible {
        let t = crate::scores::weight_view(g, &info.id)?;
        let src = nm_source(cache, &t, &info.id)?;
        total += retained_of(&src, &t, AxisView::new(&t.shape(), *axis), n, m)?;
    }
    Ok(total)
}

/// The score N:M keeps in one weight `t` with scores `src` (zero weights score 0).
pub fn retained_of(src: &ScoreSrc<'_>, t: &Tensor, view: AxisView, n: usize, m: usize) -> Result<f64, PassError> {
    let mut vals = vec![0f32; t.numel()?];
    src.for_each(t, |i, s, z| vals[i] = if z { 0.0 } else { s })?;
    Ok(nm_retained_vals(&vals, view, n, m))
}

/// The score source N:M passes read for one weight: the analysis (stored arrays must match the weight's
/// shape), else |w| after a finiteness check.
pub fn nm_source<'a>(cache: Option<&'a WeightScores>, t: &Tensor, id: &WeightId) -> Result<ScoreSrc<'a>, PassError> {
    if let Some(a) = cache.and_then(|c| c.scores.get(id)) {
        if a.shape() != t.shape().as_slice() {
            return Err(invalid(
                id.name(),
                &format!("cached scores have shape {:?}, the weight {:?}", a.shape(), t.dims),
            ));
        }
    }
    match ScoreSrc::of(cache, t, id) {
        Some(s) => Ok(s),
        None => {
            t.check_finite()?;
            Ok(ScoreSrc::Magnitude { squared: false })
        }
    }
}

/// One weight's scores (flat, standard layout), non-zero flags and shape.
pub struct WeightView {
    pub scores: Vec<f32>,
    pub nonzero: Vec<bool>,
    pub shape: Vec<usize>,
}

/// The scores of one weight (the analysis, else |w|) with its non-zero flags.
pub fn weight_scores(g: &Graph, cache: Option<&WeightScores>, id: &WeightId) -> Result<WeightView, PassError> {
    let t = g.weight(id).ok_or_else(|| invalid(id.name(), "weight not found"))?;
    let s = scores_or_magnitude(g, cache, id)?;
    let shape = t.shape();
    if s.shape() != shape.as_slice() {
        return Err(invalid(id.name(), &format!("cached scores have shape {:?}, the weight {:?}", s.shape(), shape)));
    }
    let nonzero: Vec<bool> = g.weight_zero_flags(id)?.iter().map(|z| !z).collect();
    Ok(WeightView { scores: s.iter().copied().collect(), nonzero, shape })
}

fn invalid(subject: &str, message: &str) -> PassError {
    PassError::Invalid { subject: subject.to_string(), message: message.to_string() }
}

/// For every eligible weight not yet covered, find its region, search a permutation and apply it when
/// it keeps more score. Notes every refusal. Returns whether anything changed.
pub fn permute_for_nm(
    model: &mut Model,
    cx: &mut PassCx<'_>,
    eligible: &[(WeightInfo, usize)],
    n: usize,
    m: usize,
) -> Result<bool, PassError> {
    if has_subgraphs(&model.graph) {
        for (info, _) in eligible {
            cx.note(info.id.name(), "not permuted: the graph has subgraphs (control flow) that may read any tensor");
        }
        return Ok(false);
    }
    let eligible_ids: BTreeSet<&WeightId> = eligible.iter().map(|(i, _)| &i.id).collect();
    let mut done: BTreeSet<NodeId> = BTreeSet::new();
    let mut changed = false;
    let index = WeightIndex::new(&model.graph);
    let stage = cx.stage("permutation search: weights", eligible.len());
    for (info, _) in eligible {
        stage.inc(1);
        let name = info.id.name();
        if info.shared() {
            cx.note(name, format!("not permuted: shared by {} consumers", info.uses.len()));
            cx.stat("regions_refused", 1.0);
            continue;
        }
        let u = &info.uses[0];
        if done.contains(&u.node) {
            continue;
        }
        done.insert(u.node);
        if u.slot != 1 {
            cx.note(name, "not permuted: only weights in input 1 (Conv W, Gemm B, MatMul B) are permuted");
            cx.stat("regions_refused", 1.0);
            continue;
        }
        let region = match find_region(&model.graph, &index, u.node) {
            Ok(r) => r,
            Err(why) => {
                cx.note(name, format!("not permuted: {why}"));
                cx.stat("regions_refused", 1.0);
                continue;
            }
        };
        done.extend(region.consumers.iter().map(|(id, _)| *id));
        let cols = columns(&model.graph, cx, &region, &eligible_ids)?;
        let found = search(&cols, n, m, SEARCH_BUDGET);
        let g = &model.graph;
        let list = |ids: &mut dyn Iterator<Item = NodeId>| {
            ids.map(|i| g.node(i).display_name()).collect::<Vec<_>>().join(", ")
        };
        let consumers = list(&mut region.consumers.iter().map(|(i, _)| *i));
        let producers = list(&mut region.producers.iter().copied());
        if found.swaps == 0 || found.permuted <= found.plain {
            let why = if found.converged { "" } else { " within the search budget" };
            cx.note(
                name,
                format!("not permuted: no permutation of the {} channels keeps more score{why}", region.width),
            );
            continue;
        }
        let pct = 100.0 * (found.permuted - found.plain) / found.plain.max(f64::MIN_POSITIVE);
        let budget = if found.converged { "" } else { ", search budget reached" };
        cx.note(
            name,
            format!(
                "permuted {} channels ({} swaps{budget}): retained score {:.6} -> {:.6} (+{pct:.2}%); consumers [{consumers}], producers [{producers}], {} other constants",
                region.width,
                found.swaps,
                found.plain,
                found.permuted,
                region.edits.len().saturating_sub(region.producers.len()),
            ),
        );
        apply(model, cx, &region, &found.perm)?;
        cx.stat("regions_permuted", 1.0);
        changed = true;
    }
    if changed {
        // The dense reference no longer matches the channel order (bias-correct then refuses).
        cx.analyses.remove::<sparsify_pm::DenseSnapshot>();
    }
    Ok(changed)
}

/// One column per channel: the scores of every eligible consumer weight of the region, all rows.
fn columns(
    g: &Graph,
    cx: &PassCx<'_>,
    region: &Region,
    eligible: &BTreeSet<&WeightId>,
) -> Result<Vec<Vec<f32>>, PassError> {
    let cache = cx.analyses.get::<WeightScores>();
    let mut cols: Vec<Vec<f32>> = vec![Vec::new(); region.width];
    for (_, t) in region.consumers.iter().filter(|(_, t)| eligible.contains(&t.id)) {
        let WeightView { scores, nonzero, shape } = weight_scores(g, cache, &t.id)?;
        let v = AxisView::new(&shape, t.axis);
        for l in 0..v.lines() {
            let (base, stride) = v.line(l);
            for (c, col) in cols.iter_mut().enumerate() {
                let i = base + c * stride;
                col.push(if nonzero[i] { scores[i] } else { 0.0 });
            }
        }
    }
    Ok(cols)
}

/// Permute every constant of the region (and cached scores of its weights) by `perm`.
fn apply(model: &mut Model, cx: &mut PassCx<'_>, region: &Region, perm: &[usize]) -> Result<(), PassError> {
    let targets = region.consumers.iter().map(|(_, t)| t).chain(region.edits.iter());
    for t in targets {
        // Wanda scores derived from per-feature norms would no longer line up with permuted features.
        if let Some(s) = cx.analyses.get_mut::<WeightScores>() {
            s.materialize(&model.graph, &t.id);
        }
        let w = model.graph.weight_mut(&t.id).ok_or_else(|| invalid(t.id.name(), "weight not found"))?;
        let size =
            w.dtype.size().filter(|_| w.strings.is_empty()).ok_or_else(|| {
                invalid(t.id.name(), &format!("dtype {} cannot be permuted byte-wise", w.dtype.name()))
            })?;
        let bytes = permute_bytes(w.bytes(), &w.shape(), size, t.axis, perm);
        w.set_bytes(bytes.into())?;
        if let Some(s) = cx.analyses.get_mut::<WeightScores>().and_then(|s| s.scores.get_mut(&t.id)) {
            *s = s.select(Axis(t.axis), perm);
        }
    }
    Ok(())
}

/// Reorder `data` (shape `shape`, `elem` bytes an element) along `axis`: position j takes index perm\[j\].
pub fn permute_bytes(data: &[u8], shape: &[usize], elem: usize, axis: usize, perm: &[usize]) -> Vec<u8> {
    let v = AxisView::new(shape, axis);
    let block = v.inner * elem;
    let mut out = vec![0u8; data.len()];
    for o in 0..v.outer {
        for (j, &src) in perm.iter().enumerate() {
            let from = (o * v.len + src) * block;
            let to = (o * v.len + j) * block;
            out[to..to + block].copy_from_slice(&data[from..from + block]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_bytes_moves_whole_slices() {
        // shape [2, 3, 2] of u8, axis 1, perm [2, 0, 1]
        let data: Vec<u8> = (0..12).collect();
        let out = permute_bytes(&data, &[2, 3, 2], 1, 1, &[2, 0, 1]);
        assert_eq!(out, vec![4, 5, 0, 1, 2, 3, 10, 11, 6, 7, 8, 9]);
    }
}
