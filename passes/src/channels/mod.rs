//! Channel-dependency analysis: which output channels of which producers are coupled with which input
//! channels of which consumers, and what must be rewritten to remove a channel (design notes §7,
//! prior-art §5/§11).
//!
//! Every producer (Conv, Gemm, MatMul with a constant weight, and the quantized operators QLinearConv,
//! QLinearMatMul, com.microsoft QGemm, MatMulInteger, ConvInteger: `qops.rs`) creates one *atom* per
//! output channel.
//! Tensors downstream carry a layout: for each position along their channel axis, the atom it holds.
//! Element-wise activations, BatchNormalization, pooling and depthwise Conv pass a layout through;
//! `Add`/`Sum`/`Mul`/`Where`/... unify the atoms of their operands position by position (union-find);
//! `Concat`/`Split`/`Slice` remap offsets; `Flatten`/`Reshape` into Gemm/MatMul repeat each atom over
//! the H·W features of its channel. Consumers (Conv input, Gemm/MatMul reduction axis) end a layout.
//! Coupled atoms form one *class*: a channel that can only be removed everywhere at once.
//!
//! Anything the analysis does not understand blocks the atoms that reach it, with a reason; so do graph
//! outputs, shared weights, normalizations across the channel axis and `Shape` reads it cannot follow.
//! Alongside, it propagates per-channel constants (a zero producer row outputs its bias; BatchNorm and
//! activations map that constant), which [`crate::dead_channel_elim`] uses to decide what is dead.
//! Constants on quantized tensors are their integer values; a consumer's `Sink::zero` is the value that
//! contributes nothing (its input zero point).
//!
//! [`channel_groups`] exposes the result for group-aware channel scoring.

pub mod calibrated;
pub(crate) mod consts;
mod coupled;
pub(crate) mod fold;
mod graph;
pub(crate) use graph::zero_slices_of;
mod groups;
mod ops;
pub(crate) mod plan;
mod producers;
pub(crate) mod qops;
mod remap;
pub(crate) mod shapes;
pub(crate) mod slice;

pub use coupled::mask_coupled;
pub use groups::{channel_groups, group_scores, zero_channels, ChannelGroup, GroupSlice, SliceEntry, SliceRole};

use sparsify_ir::{NodeId, WeightId};
use std::collections::{BTreeMap, BTreeSet};

/// The atoms at each position of a tensor's channel axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    pub atoms: Vec<usize>,
    /// Position of the channel axis counted from the last axis (0 = last).
    pub back: usize,
    /// The tensor's rank when known.
    pub rank: Option<usize>,
}

impl Layout {
    /// Channel axis counted from the front, when the rank is known.
    pub fn front(&self) -> Option<usize> {
        self.rank.and_then(|r| r.checked_sub(self.back + 1))
    }
}

/// Where an integer that counts channels lives (a shape constant or a node attribute).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IntTarget {
    Const(WeightId),
    Attr(NodeId, &'static str),
}

/// Something the rewrite must slice or update when atoms are removed. `atoms[i]` is the atom at index
/// `i` along `axis`.
#[derive(Debug, Clone)]
pub(crate) enum Site {
    /// Output rows of a producer weight (also a depthwise Conv's rows). `groups` > 1: grouped Conv,
    /// rows may only go in equal counts per group.
    Rows { node: NodeId, weight: WeightId, axis: usize, atoms: Vec<usize>, groups: usize },
    /// A per-channel constant: bias, BatchNorm parameter, broadcast operand.
    Param { node: NodeId, weight: WeightId, axis: usize, atoms: Vec<usize>, role: SliceRole },
    /// Input columns of a consumer weight; Conv with `groups` > 1 maps position p to column p mod C/g
    /// of the rows of group p / (C/g).
    Cols { node: NodeId, weight: WeightId, axis: usize, atoms: Vec<usize>, groups: usize },
    /// A depthwise Conv's `group` attribute: the number of kept atoms.
    GroupAttr { node: NodeId, atoms: Vec<usize> },
    /// An integer (shape element, Split size, Slice bound) that becomes the number of kept atoms.
    Int { target: IntTarget, index: usize, atoms: Vec<usize> },
}

/// A consumer reading a layout through a weight: where a constant channel's value must be folded.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    pub node: NodeId,
    /// The layout tensor it reads.
    pub input: String,
    pub weight: WeightId,
    pub red_axis: usize,
    pub out_axis: usize,
    pub groups: usize,
    pub kind: SinkKind,
    /// The dtype the op reads the weight in, when a Cast on its route changes it
    /// ([`sparsify_ir::WeightUse::cast_to`]): a bias created for the op takes it.
    pub cast_to: Option<sparsify_ir::DType>,
    /// The value of `input` that contributes nothing: 0, or a quantized operator's input zero point
    /// (constants on quantized tensors are their integer values).
    pub zero: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkKind {
    /// `exact`: unpadded (a constant input gives a constant output everywhere).
    Conv {
        exact: bool,
    },
    Gemm,
    MatMul,
}

/// The analysis result.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    pub atoms: usize,
    parent: Vec<usize>,
    pub layouts: BTreeMap<String, Layout>,
    /// Per tensor and position: the value when input-independent.
    pub consts: BTreeMap<String, Vec<Option<f64>>>,
    pub sites: Vec<Site>,
    pub sinks: Vec<Sink>,
    /// Structural reasons an atom cannot be removed.
    pub blocks: Vec<(usize, String)>,
    /// Atoms with an all-zero producer row somewhere (dead-channel candidates).
    pub zero: BTreeSet<usize>,
    /// Producer output layouts (node, output tensor) in graph order, for per-layer reports.
    pub producers: Vec<(NodeId, String)>,
    /// Value names between a sliced constant and its op (Transpose/Cast outputs, reshaped operands).
    pub intermediates: BTreeSet<String>,
}

impl Analysis {
    pub fn fresh(&mut self, n: usize) -> Vec<usize> {
        let start = self.atoms;
        self.atoms += n;
        self.parent.extend(start..start + n);
        (start..start + n).collect()
    }

    pub fn find(&self, mut a: usize) -> usize {
        while self.parent[a] != a {
            a = self.parent[a];
        }
        a
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // keep the smaller id as root: classes are named by their first atom
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo;
        }
    }

    pub fn block(&mut self, atoms: &[usize], reason: impl Into<String>) {
        let r = reason.into();
        for &a in atoms {
            self.blocks.push((a, r.clone()));
        }
    }

    /// First structural block reason per class root.
    pub fn class_blocks(&self) -> BTreeMap<usize, String> {
        let mut m = BTreeMap::new();
        for (a, r) in &self.blocks {
            m.entry(self.find(*a)).or_insert_with(|| r.clone());
        }
        m
    }
}

/// Build the analysis for a graph.
pub(crate) fn analyze(g: &sparsify_ir::Graph) -> Analysis {
    graph::Builder::new(g).run()
}
