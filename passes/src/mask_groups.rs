//! The mechanics of the `mask` pass: which tensors it targets (and why some are skipped), and one masking
//! step over them — keep flags per comparison group, zeroing, bias entries for channels, and updating the
//! cached scores so pruned elements score 0.

use crate::scope::Scope;
use crate::score_math::{channel_of_each, stride};
use crate::scores::{selection_keys, weight_view, MagKeys, ScoreSrc, WeightScores};
use crate::select::{f32_key, prune_count, prune_flags, select_cut, Candidates, Cut, KeySlice};
use sparsify_ir::{Graph, NodeId, Tensor, WeightId};
use sparsify_pm::{with_store_behind, PassError, Spill, StoreBehind};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Element,
    Channel,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Element => "element",
            Granularity::Channel => "channel",
        }
    }
}

/// Comparison group of an element mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `row` for Wanda scores, `layer` otherwise (resolved when the pass runs).
    Auto,
    Layer,
    Row,
    Global,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Auto => "auto",
            Group::Layer => "layer",
            Group::Row => "row",
            Group::Global => "global",
        }
    }
}

/// A resolved mask configuration (`group` is never `Auto` here).
#[derive(Debug, Clone, Copy)]
pub struct MaskConfig {
    pub granularity: Granularity,
    pub group: Group,
    /// The scores are w² (channel norm = sqrt(Σ s) instead of sqrt(Σ s²)).
    pub l2_scores: bool,
}

/// One tensor to mask.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: WeightId,
    /// Output-channel axis (rows and channels); axis 0 for embedding tables.
    pub axis: Option<usize>,
    /// Bias tensors whose entries follow the output channels (channel granularity only).
    pub biases: Vec<WeightId>,
}

/// Targets plus (subject, message) notes: skipped weights and biases left alone.
pub struct Plan {
    pub targets: Vec<Target>,
    pub skipped: Vec<(String, String)>,
    pub notes: Vec<(String, String)>,
}

/// The weights `scope` selects that this configuration can mask.
pub fn plan_targets(g: &Graph, scope: &Scope, cfg: &MaskConfig) -> Plan {
    let needs_axis = cfg.granularity == Granularity::Channel || cfg.group == Group::Row;
    let mut plan = Plan { targets: Vec::new(), skipped: Vec::new(), notes: Vec::new() };
    for sel in scope.select(g) {
        let name = sel.id.name().to_string();
        if let (Granularity::Channel, Some(info)) = (cfg.granularity, &sel.info) {
            if info.conflict.is_none() && info.op() == "ConvTranspose" && info.groups() > 1 {
                let why = format!(
                    "grouped ConvTranspose ({} groups): weight axis 1 holds C_out/g channels, each feeding one output \
                     channel per group; channel masks need groups=1",
                    info.groups()
                );
                plan.skipped.push((name, why));
                continue;
            }
        }
        let axis = match &sel.info {
            Some(info) => match &info.conflict {
                Some(c) if needs_axis => {
                    plan.skipped.push((name, format!("output axis is ambiguous ({c})")));
                    continue;
                }
                Some(_) => None,
                None => Some(info.out_axis()),
            },
            None if cfg.granularity == Granularity::Channel => {
                plan.skipped.push((name, "embedding tables have no output channels".into()));
                continue;
            }
            None => Some(0),
        };
        let mut biases = Vec::new();
        if let (Granularity::Channel, Some(info), Some(ax)) = (cfg.granularity, &sel.info, axis) {
            let channels = g.weight(&sel.id).map(|t| t.dims[ax]).unwrap_or(0);
            let nodes: Vec<NodeId> = info.uses.iter().map(|u| u.node).collect();
            for (b, rows) in info.uses.iter().filter_map(|u| u.bias.clone().map(|b| (b, u.op == "Gemm" && u.slot == 0)))
            {
                match bias_problem(g, &b, channels, rows, &nodes) {
                    None if !biases.contains(&b) => biases.push(b),
                    None => {}
                    Some(why) => plan.notes.push((name.clone(), format!("bias '{}' left unchanged: {why}", b.name()))),
                }
            }
        }
        plan.targets.push(Target { id: sel.id, axis, biases });
    }
    plan
}

/// Why a bias cannot follow the weight's channels, if it cannot.
/// Why bias `b` cannot follow the channel mask (`None`: it can). `rows`: the bias of a Gemm whose weight
/// is A, where channels are C's rows (`[channels, 1]`; a `[channels]` C would broadcast along columns).
fn bias_problem(g: &Graph, b: &WeightId, channels: i64, rows: bool, uses: &[NodeId]) -> Option<String> {
    let t = g.weight(b)?;
    if !t.dtype.is_prunable_float() {
        return Some(format!("dtype {}", t.dtype.name()));
    }
    match rows {
        true if t.dims != [channels, 1] => {
            return Some(format!(
                "shape {:?} is not [{channels}, 1] (the weight is Gemm's A: channels are rows)",
                t.dims
            ))
        }
        false if t.dims != [channels] => return Some(format!("shape {:?} is not [{channels}]", t.dims)),
        _ => {}
    }
    if g.consumers(b.name()).iter().any(|(n, _)| !uses.contains(n)) {
        return Some("it is also read by other nodes".into());
    }
    None
}

/// What one step did to one target.
#[derive(Debug, Clone, Default)]
pub struct TargetOut {
    pub zeros_added: usize,
    pub elements: usize,
    /// Scores existed but not for this tensor: |w| was used.
    pub score_fallback: bool,
    /// Channel granularity: the output channels that are zero after the step.
    pub channels: Option<Vec<usize>>,
    pub channel_count: usize,
}

#[derive(Debug, Clone, Default)]
pub struct StepOut {
    pub per_target: Vec<TargetOut>,
    pub bias_zeroed: usize,
    pub any_changed: bool,
}

/// One masking step at sparsity `s` over `targets`; updates `scores` (stored arrays: pruned entries become
/// 0; derived scores follow the weight by themselves). Tensors are processed one at a time (keys of one
/// tensor in memory; `global` scans every tensor a few times instead of holding all scores), and each
/// finished tensor is handed to `spill` so modified bytes need not all stay in memory.
pub fn apply_mask(
    g: &mut Graph,
    targets: &[Target],
    scores: Option<&mut WeightScores>,
    s: f64,
    cfg: &MaskConfig,
    spill: Option<&dyn Spill>,
) -> Result<StepOut, PassError> {
    if cfg.granularity == Granularity::Element && cfg.group == Group::Global {
        return apply_global(g, targets, scores, s, spill);
    }
    // Each finished tensor is stored on a helper thread while the next one is computed.
    with_store_behind(g, spill, |g, behind| mask_each(g, targets, scores, s, cfg, behind))
}

/// The per-tensor loop of [`apply_mask`] (every scope but `global`).
fn mask_each(
    g: &mut Graph,
    targets: &[Target],
    mut scores: Option<&mut WeightScores>,
    s: f64,
    cfg: &MaskConfig,
    behind: &mut StoreBehind<'_, '_>,
) -> Result<StepOut, PassError> {
    let mut out = StepOut::default();
    for (i, t) in targets.iter().enumerate() {
        let w = weight(g, t)?;
        let shape = w.shape();
        let (src, fallback) = source(scores.as_deref(), &w, &t.id)?;
        let n = w.numel()?;
        out.per_target.push(TargetOut { elements: n, score_fallback: fallback, ..Default::default() });
        let pruned: Pruned = match (cfg.granularity, cfg.group, t.axis) {
            (Granularity::Element, Group::Row, Some(ax)) => {
                let (keys, bits, _) = selection_keys(src, &w)?;
                Pruned::Flags(row_flags(&keys, bits, &shape, ax, s))
            }
            (Granularity::Element, ..) => match MagKeys::of(&src, &w) {
                // f32 magnitude: keys read from the weight's bytes, no key vector.
                Some(mk) => {
                    let cut = select_cut(&mk, prune_count(s, n), 32);
                    Pruned::Mag(mk, cut)
                }
                None => {
                    let (keys, bits, _) = selection_keys(src, &w)?;
                    let cut = select_cut(&KeySlice(&keys), prune_count(s, n), bits);
                    Pruned::Cut(keys, cut)
                }
            },
            (Granularity::Channel, ..) => {
                let ax = t.axis.unwrap_or(0);
                let ch = channel_of_each(&shape, ax);
                let c = shape[ax];
                let mut norm = vec![0f64; c];
                let mut zero = vec![true; c];
                src.for_each(&w, |f, v, isz| {
                    let k = ch[f];
                    norm[k] += if cfg.l2_scores { v as f64 } else { (v as f64) * (v as f64) };
                    zero[k] &= isz;
                })?;
                let norm: Vec<f64> = norm.into_iter().map(f64::sqrt).collect();
                let ck = prune_flags(&norm, &zero, prune_count(s, c));
                out.per_target[i].channels = Some((0..c).filter(|&k| !ck[k] || zero[k]).collect());
                out.per_target[i].channel_count = c;
                let flags = ch.iter().map(|&k| !ck[k]).collect();
                Pruned::Channels(flags, ck)
            }
        };
        apply_one(g, t, &pruned, scores.as_deref_mut(), &mut out, i, behind)?;
    }
    Ok(out)
}

/// Which elements of one tensor a step prunes.
enum Pruned {
    /// Keys and the selection over them.
    Cut(Vec<u64>, Option<Cut>),
    /// Keys computed from the weight's bytes, and the selection over them.
    Mag(MagKeys, Option<Cut>),
    /// Per-element flags (true = pruned).
    Flags(Vec<bool>),
    /// Per-element flags and the channel keep flags (biases follow them).
    Channels(Vec<bool>, Vec<bool>),
}

impl Pruned {
    #[inline]
    fn at(&self, i: usize) -> bool {
        match self {
            Pruned::Cut(keys, cut) => cut.is_some_and(|c| c.takes(i, keys[i])),
            Pruned::Mag(mk, cut) => cut.is_some_and(|c| c.takes(i, mk.key(i))),
            Pruned::Flags(f) | Pruned::Channels(f, _) => f[i],
        }
    }
}

/// `row`: exactly `prune_count(s, row length)` per output channel along `ax`; positions within a row in
/// flat order (the tie-breaking index).
fn row_flags(keys: &[u64], bits: u32, shape: &[usize], ax: usize, s: f64) -> Vec<bool> {
    let stride = stride(shape, ax);
    let d = shape[ax];
    let outer: usize = shape[..ax].iter().product();
    let len = outer * stride;
    let k = prune_count(s, len);
    let mut pruned = vec![false; keys.len()];
    let mut row = vec![0u64; len];
    let flat = |r: usize, p: usize| (p / stride * d + r) * stride + p % stride;
    for r in 0..d {
        for (p, slot) in row.iter_mut().enumerate() {
            *slot = keys[flat(r, p)];
        }
        if let Some(c) = select_cut(&KeySlice(&row), k, bits) {
            for (p, &x) in row.iter().enumerate() {
                if c.takes(p, x) {
                    pruned[flat(r, p)] = true;
                }
            }
        }
    }
    pruned
}

/// `global`: one selection over every target, in target order then flat order. The keys are computed
/// on the fly from each tensor on every scan (33-bit total-order keys, zeros first), so no tensor's
/// scores are held beyond the one being scanned.
fn apply_global(
    g: &mut Graph,
    targets: &[Target],
    scores: Option<&mut WeightScores>,
    s: f64,
    spill: Option<&dyn Spill>,
) -> Result<StepOut, PassError> {
    let mut out = StepOut::default();
    let mut offsets = Vec::new();
    let cut = {
        let sc = scores.as_deref();
        let mut srcs = Vec::new();
        let mut views = Vec::new();
        let mut total = 0usize;
        for t in targets {
            let w = weight(g, t)?;
            let (src, fallback) = source(sc, &w, &t.id)?;
            let n = w.numel()?;
            out.per_target.push(TargetOut { elements: n, score_fallback: fallback, ..Default::default() });
            srcs.push(src);
            views.push(w);
            offsets.push(total);
            total += n;
        }
        let all = GlobalKeys { views: &views, srcs: &srcs, offsets: &offsets, total };
        select_cut(&all, prune_count(s, total), 33)
    };
    with_store_behind(g, spill, |g, behind| global_each(g, targets, scores, cut, &offsets, &mut out, behind))?;
    Ok(out)
}

/// The per-tensor loop of [`apply_global`]: zero each target by the global cut.
fn global_each(
    g: &mut Graph,
    targets: &[Target],
    mut scores: Option<&mut WeightScores>,
    cut: Option<Cut>,
    offsets: &[usize],
    out: &mut StepOut,
    behind: &mut StoreBehind<'_, '_>,
) -> Result<(), PassError> {
    for (i, t) in targets.iter().enumerate() {
        let (base, w) = (offsets[i], weight(g, t)?);
        let flags = match cut {
            None => vec![false; out.per_target[i].elements],
            Some(c) => {
                let (src, _) = source(scores.as_deref(), &w, &t.id)?;
                let mut f = vec![false; out.per_target[i].elements];
                src.for_each(&w, |j, v, z| f[j] = c.takes(base + j, full_key(v, z)))?;
                f
            }
        };
        apply_one(g, t, &Pruned::Flags(flags), scores.as_deref_mut(), out, i, behind)?;
    }
    Ok(())
}

#[inline(always)]
fn full_key(score: f32, zero: bool) -> u64 {
    (u64::from(!zero) << 32) | u64::from(f32_key(score))
}

/// Every target's elements as one candidate sequence.
struct GlobalKeys<'a> {
    views: &'a [Cow<'a, Tensor>],
    srcs: &'a [ScoreSrc<'a>],
    offsets: &'a [usize],
    total: usize,
}

impl Candidates for GlobalKeys<'_> {
    fn len(&self) -> usize {
        self.total
    }
    fn scan(&self, mut f: impl FnMut(usize, u64)) {
        for (i, w) in self.views.iter().enumerate() {
            let base = self.offsets[i];
            // Sources were validated when collected (float dtypes): for_each cannot fail here.
            let _ = self.srcs[i].for_each(w, |j, v, z| f(base + j, full_key(v, z)));
        }
    }
}

/// The target's values as a float tensor (quantized weights dequantized, see [`weight_view`]).
fn weight<'g>(g: &'g Graph, t: &Target) -> Result<Cow<'g, Tensor>, PassError> {
    Ok(weight_view(g, &t.id)?)
}

/// A target's score source (the analysis, else |w| after a finiteness check) and whether the analysis
/// exists but lacks this tensor.
fn source<'a>(scores: Option<&'a WeightScores>, w: &Tensor, id: &WeightId) -> Result<(ScoreSrc<'a>, bool), PassError> {
    match ScoreSrc::of(scores, w, id) {
        Some(src) => Ok((src, false)),
        None => {
            w.check_finite()?;
            Ok((ScoreSrc::Magnitude { squared: false }, scores.is_some()))
        }
    }
}

/// Zero one target (and its biases for channel masks); zero the pruned entries of its stored scores;
/// hand the modified tensor to the spill.
fn apply_one(
    g: &mut Graph,
    t: &Target,
    pruned: &Pruned,
    scores: Option<&mut WeightScores>,
    out: &mut StepOut,
    i: usize,
    behind: &mut StoreBehind<'_, '_>,
) -> Result<(), PassError> {
    let quantized = g
        .weight_quant(&t.id)
        .map_err(|e| PassError::Invalid { subject: t.id.name().into(), message: e.to_string() })?;
    let added = if quantized.is_some() {
        let keep: Vec<bool> = (0..out.per_target[i].elements).map(|j| !pruned.at(j)).collect();
        g.zero_weight_where(&t.id, &keep)?
    } else {
        let w = g.weight_mut(&t.id).expect("gathered above");
        match pruned {
            // f32 magnitude: the key comes from the bits the zeroing loop already holds.
            Pruned::Mag(mk, cut) => match cut {
                // Keys fit in 32 bits; a cut above them (`Cut::ALL`) takes every element.
                Some(c) => {
                    let (below, from) = u32::try_from(c.key).map_or((u32::MAX, 0), |k| (k, c.from));
                    match mk.squared() {
                        true => w.zero_f32_by_key(|b| MagKeys::key32(b, true), below, from)?,
                        false => w.zero_f32_by_key(|b| MagKeys::key32(b, false), below, from)?,
                    }
                }
                None => 0,
            },
            _ => w.zero_by(|j| pruned.at(j))?,
        }
    };
    out.per_target[i].zeros_added = added;
    out.any_changed |= added > 0;
    if added > 0 {
        behind.hand(g, &t.id)?;
    }
    if let Some(sc) = scores.and_then(|s| s.scores.get_mut(&t.id)) {
        if sc.len() == out.per_target[i].elements {
            sc.iter_mut().enumerate().filter(|(j, _)| pruned.at(*j)).for_each(|(_, v)| *v = 0.0);
        }
    }
    if let Pruned::Channels(_, ck) = pruned {
        for b in &t.biases {
            if let Some(bt) = g.weight_mut(b) {
                let n = bt.zero_where(ck)?;
                out.bias_zeroed += n;
                out.any_changed |= n > 0;
            }
        }
    }
    Ok(())
}
