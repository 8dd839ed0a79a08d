//! The public view of the analysis for group-aware channel scoring: [`channel_groups`] lists every
//! group of coupled channels with the weight slices that share its channel index space.

use super::{analyze, Analysis, Site};
use crate::scores::{scores_or_magnitude, WeightScores};
use sparsify_ir::{Graph, TensorError, WeightId};
use std::collections::BTreeMap;

/// What a weight slice is to its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SliceRole {
    /// Output rows of a producer weight (Conv/Gemm/MatMul, and a depthwise Conv's rows): zeroing them,
    /// with the [`SliceRole::Bias`] entries, makes the channel dead.
    Producer,
    /// Input columns of a consumer weight (Conv axis 1, Gemm/MatMul reduction axis).
    Consumer,
    /// A per-channel additive constant: Conv bias, Gemm C, the Add after a MatMul, broadcast Add/Sub.
    Bias,
    /// BatchNormalization parameter: 0 scale, 1 offset, 2 mean, 3 variance.
    Norm(u8),
    /// Any other per-channel constant operand (Mul, Div, PRelu slope, ...).
    Operand,
    /// The per-channel scale or zero point of a quantized weight or bias (`DequantizeLinear` per axis
    /// along the channel axis).
    Quant,
}

/// One channel's part of a weight slice: index `index` along the slice's axis, restricted to
/// `rows` (a half-open range on the other Conv axis) for grouped-Conv consumer columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEntry {
    pub channel: usize,
    pub index: usize,
    pub rows: Option<(usize, usize)>,
}

/// A weight tensor coupled to a group, along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSlice {
    pub weight: WeightId,
    /// The node that reads it.
    pub node: String,
    pub role: SliceRole,
    pub axis: usize,
    /// Entries for the channels of this group (a channel may have several: Flatten repeats it over
    /// H·W features, a Concat of the same tensor twice over two offsets).
    pub entries: Vec<SliceEntry>,
}

/// A set of coupled channels sharing one index space: removing channel `i` means removing every
/// entry with `channel == i` from every slice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelGroup {
    pub id: usize,
    pub channels: usize,
    pub slices: Vec<GroupSlice>,
    /// Per channel: why it can never be removed (graph output, unknown op, shared weight, ...).
    pub blocked: Vec<Option<String>>,
}

impl ChannelGroup {
    /// Channels that dead-channel elimination may remove once they are dead.
    pub fn removable(&self) -> usize {
        self.blocked.iter().filter(|b| b.is_none()).count()
    }
}

/// A weight-carrying site as the group view sees it.
struct View<'a> {
    role: SliceRole,
    weight: &'a WeightId,
    axis: usize,
    atoms: &'a [usize],
    groups: usize,
    node: sparsify_ir::NodeId,
}

fn view(site: &Site) -> Option<View<'_>> {
    let (role, weight, axis, atoms, groups, node) = match site {
        Site::Rows { node, weight, axis, atoms, .. } => (SliceRole::Producer, weight, axis, atoms, 1, node),
        Site::Param { node, weight, axis, atoms, role } => (*role, weight, axis, atoms, 1, node),
        Site::Cols { node, weight, axis, atoms, groups } => (SliceRole::Consumer, weight, axis, atoms, *groups, node),
        _ => return None,
    };
    Some(View { role, weight, axis: *axis, atoms, groups, node: *node })
}

pub(crate) fn groups_of(g: &Graph, a: &Analysis) -> Vec<ChannelGroup> {
    // classes (roots) in atom order; components: classes made by one producer share an index space
    let mut roots: Vec<usize> = (0..a.atoms).map(|x| a.find(x)).collect();
    roots.sort();
    roots.dedup();
    let pos: BTreeMap<usize, usize> = roots.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let mut comp: Vec<usize> = (0..roots.len()).collect();
    let find = |comp: &Vec<usize>, mut x: usize| {
        while comp[x] != x {
            x = comp[x];
        }
        x
    };
    for s in &a.sites {
        if let Site::Rows { atoms, .. } = s {
            let first = find(&comp, pos[&a.find(atoms[0])]);
            for &x in atoms {
                let r = find(&comp, pos[&a.find(x)]);
                let (lo, hi) = (first.min(r), first.max(r));
                comp[hi] = lo;
            }
        }
    }
    let blocks = a.class_blocks();
    let mut groups: Vec<ChannelGroup> = Vec::new();
    let mut where_: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut gid: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, &r) in roots.iter().enumerate() {
        let c = find(&comp, i);
        let k = *gid.entry(c).or_insert_with(|| {
            groups.push(ChannelGroup { id: groups.len(), channels: 0, slices: vec![], blocked: vec![] });
            groups.len() - 1
        });
        where_.insert(r, (k, groups[k].channels));
        groups[k].channels += 1;
        groups[k].blocked.push(blocks.get(&r).cloned());
    }
    for s in &a.sites {
        let Some(View { role, weight: w, axis, atoms, groups: ngroups, node }) = view(s) else { continue };
        let per = atoms.len() / ngroups.max(1);
        let rows = g.weight(w).map(|t| t.shape().first().copied().unwrap_or(0) / ngroups.max(1)).unwrap_or(0);
        let mut by_group: BTreeMap<usize, Vec<SliceEntry>> = BTreeMap::new();
        for (i, &x) in atoms.iter().enumerate() {
            let (k, ch) = where_[&a.find(x)];
            let e = if ngroups > 1 {
                SliceEntry { channel: ch, index: i % per, rows: Some((i / per * rows, (i / per + 1) * rows)) }
            } else {
                SliceEntry { channel: ch, index: i, rows: None }
            };
            by_group.entry(k).or_default().push(e);
        }
        for (k, entries) in by_group {
            let node = g.node(node).display_name();
            groups[k].slices.push(GroupSlice { weight: w.clone(), node, role, axis, entries });
        }
    }
    groups
}

/// Every group of coupled channels in the graph, in producer order.
pub fn channel_groups(g: &Graph) -> Vec<ChannelGroup> {
    groups_of(g, &analyze(g))
}

/// Per channel of `group`: the sum over its producer rows and consumer columns of the L2 norm of the
/// scores, sqrt(Σ s²) (|w| when `scores` has none for a weight, so the default is Σ‖w_slice‖₂; for
/// `l2` scores, which are w², sqrt(Σ s) = ‖w_slice‖₂ as well).
pub fn group_scores(g: &Graph, group: &ChannelGroup, scores: Option<&WeightScores>) -> Result<Vec<f64>, TensorError> {
    let mut out = vec![0.0; group.channels];
    for s in group.slices.iter().filter(|s| matches!(s.role, SliceRole::Producer | SliceRole::Consumer)) {
        let l2 = scores.is_some_and(|sc| sc.method == "l2" && sc.scores.contains_key(&s.weight));
        let v = scores_or_magnitude(g, scores, &s.weight)?;
        let v = if l2 { v.mapv(|x| x.max(0.0).sqrt()) } else { v };
        let mut sq = vec![0.0f64; group.channels];
        for e in &s.entries {
            let lane = v.index_axis(ndarray::Axis(s.axis), e.index);
            let total: f64 = match e.rows {
                Some((lo, hi)) => (lo..hi)
                    .map(|r| lane.index_axis(ndarray::Axis(0), r).iter().map(|&x| (x as f64).powi(2)).sum::<f64>())
                    .sum(),
                None => lane.iter().map(|&x| (x as f64).powi(2)).sum(),
            };
            sq[e.channel] += total;
        }
        for (o, q) in out.iter_mut().zip(sq) {
            *o += q.sqrt();
        }
    }
    Ok(out)
}

/// Zero the producer rows and bias entries of `channels` of `group` (what a channel mask does), so
/// that dead-channel elimination can remove them. Returns the number of elements that changed.
pub fn zero_channels(g: &mut Graph, group: &ChannelGroup, channels: &[usize]) -> Result<usize, TensorError> {
    let mut changed = 0;
    for s in group.slices.iter().filter(|s| matches!(s.role, SliceRole::Producer | SliceRole::Bias)) {
        let chosen: std::collections::BTreeSet<usize> = channels.iter().copied().collect();
        let idx: Vec<usize> = s.entries.iter().filter(|e| chosen.contains(&e.channel)).map(|e| e.index).collect();
        if idx.is_empty() {
            continue;
        }
        let t = g
            .weight_mut(&s.weight)
            .ok_or_else(|| TensorError::Invalid { name: s.weight.name().into(), what: "not found".into() })?;
        let dims = t.shape();
        let inner: usize = dims[s.axis + 1..].iter().product();
        let d = dims[s.axis];
        let mut gone = vec![false; d];
        for &i in &idx {
            gone[i] = true;
        }
        let keep: Vec<bool> = (0..t.numel()?).map(|i| !gone[(i / inner) % d]).collect();
        changed += t.zero_where(&keep)?;
    }
    Ok(changed)
}
