//! Weight-route analysis: which tensors are prunable weights, who consumes them, and along which axes.
//!
//! For every input of Conv, ConvTranspose, Gemm and MatMul that is not produced at run time (and the
//! weight inputs of the quantized ops MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv and
//! com.microsoft QGemm / MatMulIntegerToFloat / DynamicQuantizeMatMul), the analysis follows the tensor back through `Identity`, `Cast`, `DequantizeLinear` (axes unchanged) and `Transpose`
//! (op-input axis `a` is axis `perm[a]` of the transpose's input) to an initializer or a `Constant` node.
//! It records the output-channel and reduction axes in the weight's own layout (design notes §4). A weight
//! read by several consumers whose axes disagree gets a `conflict` reason instead of a silent choice.
//! For an integer weight, each use records where its scale and zero point come from ([`QuantSlots`]:
//! the `DequantizeLinear` that reads it, or the quantized op's own inputs); `crate::quant` resolves them.

use crate::quant::{quant_slots, QuantSlots};
use crate::{DType, Graph, NodeId, Tensor};
use std::collections::BTreeMap;

/// Where a weight's values live.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WeightId {
    /// A graph initializer, by name.
    Init(String),
    /// The `value` attribute of the `Constant` node producing this tensor name.
    Const(String),
}

impl WeightId {
    pub fn name(&self) -> &str {
        match self {
            WeightId::Init(n) | WeightId::Const(n) => n,
        }
    }
}

/// One consumer of a weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightUse {
    pub node: NodeId,
    pub node_name: String,
    pub op: String,
    /// Input slot of the consuming op.
    pub slot: usize,
    /// Ops passed on the way back from the consumer to the tensor (nearest first).
    pub route: Vec<String>,
    /// Output-channel axis, in the weight tensor's own layout.
    pub out_axis: usize,
    /// Reduction (input-channel) axis, in the weight tensor's own layout.
    pub red_axis: usize,
    /// Conv / ConvTranspose `group` attribute (1 otherwise).
    pub groups: usize,
    /// The bias tensor feeding the same op (Conv input 2, Gemm C), if constant. For a Gemm that reads
    /// its weight as A, C's rows are the channels (only a `[M, 1]` C has one entry per channel).
    pub bias: Option<WeightId>,
    /// For a quantized weight: the scale / zero-point inputs of the node that dequantizes it.
    pub quant: Option<QuantSlots>,
    /// The dtype the op reads the weight in when a `Cast` on the route changes it (the `to` of the
    /// Cast nearest the op, e.g. f32 for an f16 weight cast to f32); `None` without a Cast.
    pub cast_to: Option<DType>,
}

/// A prunable-weight candidate and everything known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightInfo {
    pub id: WeightId,
    pub uses: Vec<WeightUse>,
    /// Set when the consumers disagree on the axes (or groups); axis-dependent patterns skip the weight.
    pub conflict: Option<String>,
}

impl WeightInfo {
    /// The op of the first consumer ("Conv", "Gemm", "MatMul", "ConvTranspose").
    pub fn op(&self) -> &str {
        &self.uses[0].op
    }
    pub fn out_axis(&self) -> usize {
        self.uses[0].out_axis
    }
    pub fn red_axis(&self) -> usize {
        self.uses[0].red_axis
    }
    pub fn groups(&self) -> usize {
        self.uses[0].groups
    }
    pub fn shared(&self) -> bool {
        self.uses.len() > 1
    }
}

impl Graph {
    /// The tensor behind a weight id.
    pub fn weight(&self, id: &WeightId) -> Option<&Tensor> {
        match id {
            WeightId::Init(n) => self.initializer(n),
            WeightId::Const(n) => self.producer_of(n).and_then(|p| self.node(p).constant_tensor()),
        }
    }

    pub fn weight_mut(&mut self, id: &WeightId) -> Option<&mut Tensor> {
        match id {
            WeightId::Init(n) => self.initializer_mut(n),
            WeightId::Const(n) => {
                let p = self.producer_of(n)?;
                self.node_mut(p).constant_tensor_mut()
            }
        }
    }

    /// A constant tensor source for a value name: an initializer or a `Constant` node's output.
    pub fn constant_source(&self, name: &str) -> Option<WeightId> {
        if self.initializer(name).is_some() && !self.inputs.iter().any(|i| i.name == name) {
            return Some(WeightId::Init(name.to_string()));
        }
        if self.initializer(name).is_some() {
            // An initializer that is also a graph input can be overridden at run time; still a weight by
            // default, as every exporter that does this means it as one.
            return Some(WeightId::Init(name.to_string()));
        }
        let p = self.producer_of(name)?;
        self.node(p).constant_tensor().map(|_| WeightId::Const(name.to_string()))
    }

    /// Follow `name` back through axis-preserving / permuting ops to a constant. Maps `axes` (op-input
    /// axes) into the constant's layout. Returns the source, the route, the mapped axes, and the `to`
    /// of the Cast nearest the op, if any.
    #[allow(clippy::type_complexity)]
    fn trace(&self, name: &str, mut axes: Vec<usize>) -> Option<(WeightId, Vec<String>, Vec<usize>, Option<DType>)> {
        let mut route = Vec::new();
        let mut cast_to = None;
        let mut cur = name.to_string();
        for _ in 0..64 {
            if let Some(src) = self.constant_source(&cur) {
                return Some((src, route, axes, cast_to));
            }
            let p = self.producer_of(&cur)?;
            let n = self.node(p);
            if !n.is_onnx() {
                return None;
            }
            match n.op_type.as_str() {
                "Cast" => {
                    cast_to = cast_to.or_else(|| n.attr_int("to").map(|c| DType::from_code(c as i32)));
                }
                "Identity" | "DequantizeLinear" => {}
                "Transpose" => {
                    let perm: Vec<usize> = match n.attr_ints("perm") {
                        Some(p) => p.iter().map(|&x| x as usize).collect(),
                        None => {
                            // default perm reverses the axes; needs the rank, known from the source
                            let rank = self.rank_of(&n.inputs[0])?;
                            (0..rank).rev().collect()
                        }
                    };
                    for a in axes.iter_mut() {
                        *a = *perm.get(*a)?;
                    }
                }
                _ => return None,
            }
            route.push(n.op_type.clone());
            cur = n.inputs.first()?.clone();
        }
        None
    }

    /// Rank of a tensor when it is (or traces back through rank-preserving ops to) a constant.
    fn rank_of(&self, name: &str) -> Option<usize> {
        let mut cur = name.to_string();
        for _ in 0..64 {
            if let Some(src) = self.constant_source(&cur) {
                return self.weight(&src).map(|t| t.dims.len());
            }
            let n = self.node(self.producer_of(&cur)?);
            if !matches!(n.op_type.as_str(), "Identity" | "Cast" | "DequantizeLinear" | "Transpose") {
                return None;
            }
            cur = n.inputs.first()?.clone();
        }
        None
    }

    /// Every weight read by Conv, ConvTranspose, Gemm or MatMul, in order of first use.
    pub fn find_weights(&self) -> Vec<WeightInfo> {
        let mut found: BTreeMap<WeightId, usize> = BTreeMap::new();
        let mut list: Vec<WeightInfo> = Vec::new();
        for (id, node) in self.nodes() {
            if !node.is_onnx() && node.domain.as_deref() != Some("com.microsoft") {
                continue;
            }
            for (slot, axes, groups) in weight_slots(self, node) {
                let Some(input) = node.inputs.get(slot).filter(|s| !s.is_empty()) else { continue };
                let Some((src, route, mapped, cast_to)) = self.trace(input, axes) else { continue };
                let bias = match node.op_type.as_str() {
                    "Conv" | "ConvTranspose" | "Gemm" | "QLinearConv" | "QGemm" => node
                        .inputs
                        .get(match node.op_type.as_str() {
                            "QLinearConv" => 8,
                            "QGemm" => 6,
                            // Gemm's C whether the weight is B (slot 1) or A (slot 0, rows = channels).
                            _ if slot == 1 || node.op_type == "Gemm" => 2,
                            _ => usize::MAX,
                        })
                        .filter(|s| !s.is_empty())
                        .and_then(|b| self.trace(b, vec![]))
                        .map(|(b, ..)| b),
                    _ => None,
                };
                let quant = self.weight(&src).filter(|t| !t.dtype.is_prunable_float()).and_then(|t| {
                    let rank = t.dims.len();
                    match route.is_empty() {
                        true => quant_slots(node, slot, rank),
                        false => {
                            self.consumers(src.name()).iter().find_map(|&(c, s)| quant_slots(self.node(c), s, rank))
                        }
                    }
                });
                let u = WeightUse {
                    node: id,
                    node_name: node.display_name(),
                    op: node.op_type.clone(),
                    slot,
                    route,
                    out_axis: mapped[0],
                    red_axis: mapped[1],
                    groups,
                    bias,
                    quant,
                    cast_to,
                };
                match found.get(&src) {
                    Some(&i) => list[i].uses.push(u),
                    None => {
                        found.insert(src.clone(), list.len());
                        list.push(WeightInfo { id: src, uses: vec![u], conflict: None });
                    }
                }
            }
        }
        for w in &mut list {
            if self.used_in_subgraphs(w.id.name()) {
                w.conflict = Some("also read inside a subgraph (If/Loop/Scan body), where passes cannot follow".into());
                continue;
            }
            let first = &w.uses[0];
            if let Some(other) = w.uses[1..]
                .iter()
                .find(|u| (u.out_axis, u.red_axis, u.groups) != (first.out_axis, first.red_axis, first.groups))
            {
                let groups =
                    |u: &WeightUse| if u.groups > 1 { format!(", {} groups", u.groups) } else { String::new() };
                w.conflict = Some(format!(
                    "shared by '{}' (out axis {}, reduction axis {}{}) and '{}' (out axis {}, reduction axis {}{})",
                    first.node_name,
                    first.out_axis,
                    first.red_axis,
                    groups(first),
                    other.node_name,
                    other.out_axis,
                    other.red_axis,
                    groups(other)
                ));
            }
        }
        list
    }
}

/// For an op, the input slots that may carry a weight, with (out axis, reduction axis) in op-input
/// coordinates and the group count.
/// The op types [`weight_slots`] reads weights from (keep the two together).
pub const WEIGHT_OPS: [&str; 11] = [
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
];

fn weight_slots(g: &Graph, node: &crate::Node) -> Vec<(usize, Vec<usize>, usize)> {
    let groups = node.attr_int("group").unwrap_or(1).max(1) as usize;
    match node.op_type.as_str() {
        "ConvInteger" if node.is_onnx() => vec![(1, vec![0, 1], groups)],
        "QLinearConv" if node.is_onnx() => vec![(3, vec![0, 1], groups)],
        "QGemm" if !node.is_onnx() => {
            let tb = node.attr_int("transB").unwrap_or(0) != 0;
            vec![(3, if tb { vec![0, 1] } else { vec![1, 0] }, 1)]
        }
        "MatMulInteger" | "QLinearMatMul" | "MatMulIntegerToFloat" | "DynamicQuantizeMatMul" => {
            let slot = if node.op_type == "QLinearMatMul" { 3 } else { 1 };
            let onnx = matches!(node.op_type.as_str(), "MatMulInteger" | "QLinearMatMul");
            match node.inputs.get(slot).and_then(|n| g.rank_of(n)).filter(|&r| r >= 2 && onnx == node.is_onnx()) {
                Some(r) => vec![(slot, vec![r - 1, r - 2], 1)],
                None => Vec::new(),
            }
        }
        _ if !node.is_onnx() => Vec::new(),
        "Conv" => vec![(1, vec![0, 1], groups)],
        "ConvTranspose" => vec![(1, vec![1, 0], groups)],
        "Gemm" => {
            let ta = node.attr_int("transA").unwrap_or(0) != 0;
            let tb = node.attr_int("transB").unwrap_or(0) != 0;
            let b = if tb { vec![0, 1] } else { vec![1, 0] };
            let a = if ta { vec![1, 0] } else { vec![0, 1] };
            vec![(1, b, 1), (0, a, 1)]
        }
        "MatMul" => {
            let mut v = Vec::new();
            if let Some(r) = node.inputs.get(1).and_then(|n| g.rank_of(n)).filter(|&r| r >= 2) {
                v.push((1, vec![r - 1, r - 2], 1));
            }
            if let Some(r) = node.inputs.first().and_then(|n| g.rank_of(n)).filter(|&r| r >= 2) {
                v.push((0, vec![r - 2, r - 1], 1));
            }
            v
        }
        _ => Vec::new(),
    }
}
