//! The mechanics of the `mask` pass: which tensors it targets (and why some are skipped), and one masking
//! step over them — keep flags per comparison group, zeroing, bias entries for channels, and updating the
//! cached scores so pruned elements score 0.

use crate::scope::Scope;
use crate::scores::WeightScores;
use crate::util::score_math::channel_of_each;
use crate::util::select::{prune_count, prune_flags, prune_flags_grouped};
use sparsify_ir::{Graph, NodeId, WeightId};
use sparsify_pm::PassError;

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
            for b in info.uses.iter().filter_map(|u| u.bias.clone()) {
                match bias_problem(g, &b, channels, &nodes) {
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
fn bias_problem(g: &Graph, b: &WeightId, channels: i64, uses: &[NodeId]) -> Option<String> {
    let t = g.weight(b)?;
    if !t.dtype.is_prunable_float() {
        return Some(format!("dtype {}", t.dtype.name()));
    }
    if t.dims != [channels] {
        return Some(format!("shape {:?} is not [{channels}]", t.dims));
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

/// One masking step at sparsity `s` over `targets`; updates `scores` (pruned entries become 0).
/// Per-tensor groups are processed one tensor at a time (only `global` holds every tensor's scores).
pub fn apply_mask(
    g: &mut Graph,
    targets: &[Target],
    mut scores: Option<&mut WeightScores>,
    s: f64,
    cfg: &MaskConfig,
) -> Result<StepOut, PassError> {
    let mut out = StepOut::default();
    if cfg.granularity == Granularity::Element && cfg.group == Group::Global {
        let mut all_s = Vec::new();
        let mut all_z = Vec::new();
        for t in targets {
            let (sc, z, _, fallback) = gather(g, t, scores.as_deref())?;
            out.per_target.push(TargetOut { elements: sc.len(), score_fallback: fallback, ..Default::default() });
            all_s.extend(sc);
            all_z.extend(z);
        }
        let mut keep = prune_flags(&all_s, &all_z, prune_count(s, all_s.len())).into_iter();
        drop((all_s, all_z));
        for (i, t) in targets.iter().enumerate() {
            let k: Vec<bool> = keep.by_ref().take(out.per_target[i].elements).collect();
            apply_one(g, t, &k, None, scores.as_deref_mut(), &mut out, i)?;
        }
        return Ok(out);
    }
    for (i, t) in targets.iter().enumerate() {
        let (sc, z, shape, fallback) = gather(g, t, scores.as_deref())?;
        out.per_target.push(TargetOut { elements: sc.len(), score_fallback: fallback, ..Default::default() });
        let (keep, channel_keep) = match (cfg.granularity, cfg.group, t.axis) {
            (Granularity::Element, Group::Row, Some(ax)) => {
                let ch = channel_of_each(&shape, ax);
                (prune_flags_grouped(&sc, &z, &ch, shape[ax], s), None)
            }
            (Granularity::Element, ..) => (prune_flags(&sc, &z, prune_count(s, sc.len())), None),
            (Granularity::Channel, ..) => {
                let ax = t.axis.unwrap_or(0);
                let ch = channel_of_each(&shape, ax);
                let c = shape[ax];
                let mut norm = vec![0f64; c];
                let mut zero = vec![true; c];
                for ((&v, &isz), &k) in sc.iter().zip(&z).zip(&ch) {
                    norm[k] += if cfg.l2_scores { v as f64 } else { (v as f64) * (v as f64) };
                    zero[k] &= isz;
                }
                let norm: Vec<f64> = norm.into_iter().map(f64::sqrt).collect();
                let ck = prune_flags(&norm, &zero, prune_count(s, c));
                out.per_target[i].channels = Some((0..c).filter(|&k| !ck[k] || zero[k]).collect());
                out.per_target[i].channel_count = c;
                (ch.iter().map(|&k| ck[k]).collect(), Some(ck))
            }
        };
        drop((sc, z));
        apply_one(g, t, &keep, channel_keep.as_deref(), scores.as_deref_mut(), &mut out, i)?;
    }
    Ok(out)
}

/// A target's scores, zero flags, shape, and whether the analysis exists but lacks this tensor.
type Gathered = (Vec<f32>, Vec<bool>, Vec<usize>, bool);

/// A target's scores (cached, else |w|) and zero flags.
fn gather(g: &Graph, t: &Target, scores: Option<&WeightScores>) -> Result<Gathered, PassError> {
    let w = g
        .weight(&t.id)
        .ok_or_else(|| PassError::Invalid { subject: t.id.name().to_string(), message: "weight not found".into() })?;
    let shape = w.shape();
    let cached = scores.and_then(|s| s.scores.get(&t.id)).filter(|a| a.shape() == shape.as_slice());
    let (sc, fallback) = match cached {
        Some(a) => (a.iter().copied().collect(), false),
        None => {
            let mut v = g.weight_values(&t.id)?.into_raw_vec_and_offset().0;
            v.iter_mut().for_each(|x| *x = x.abs());
            (v, scores.is_some())
        }
    };
    Ok((sc, g.weight_zero_flags(&t.id)?, shape, fallback))
}

/// Zero one target (and its biases for channel masks); zero the pruned entries of its cached scores.
fn apply_one(
    g: &mut Graph,
    t: &Target,
    keep: &[bool],
    channel_keep: Option<&[bool]>,
    scores: Option<&mut WeightScores>,
    out: &mut StepOut,
    i: usize,
) -> Result<(), PassError> {
    let added = g.zero_weight_where(&t.id, keep)?;
    out.per_target[i].zeros_added = added;
    out.any_changed |= added > 0;
    if let Some(sc) = scores.and_then(|s| s.scores.get_mut(&t.id)) {
        if sc.len() == keep.len() {
            sc.iter_mut().zip(keep).filter(|(_, k)| !**k).for_each(|(v, _)| *v = 0.0);
        }
    }
    if let Some(ck) = channel_keep {
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
