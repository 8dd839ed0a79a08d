//! The region a channel permutation must cover, and the proof that rewriting it is exact.
//!
//! Start: a consumer (Conv / Gemm / MatMul with a constant weight) whose input channels we want to
//! permute. Its input tensor carries the permutation along its feature axis. A worklist walks every
//! tensor carrying it, both ways: up to producers and down to consumers. Each node met must be one of
//! - a *consumer* boundary: Conv (group 1), Gemm (input A, constant B), MatMul (input A, constant B) —
//!   its weight's reduction axis is permuted;
//! - a *producer* boundary: the same ops, reached through their output — weight output axis and bias;
//! - a pass-through that commutes with the permutation: elementwise unary ops, pooling (channel axis 1),
//!   BatchNormalization (its four parameters permuted), depthwise Conv (weight axis 0 and bias), binary
//!   elementwise ops whose other operands are either carried tensors too or constants that broadcast
//!   along the feature axis (size 1: unchanged; size C: permuted), `Shape`/`Size` (value-independent).
//!
//! Anything else — graph inputs and outputs, Reshape/Flatten/Concat/Split/Transpose, normalisations over
//! the feature axis, shared or non-constant weights — refuses the region, with the reason.
//!
//! The feature axis is tracked counted from the last axis (`from_right`), which is what broadcasting
//! aligns; BatchNorm and pooling additionally need the rank (known from Conv or Gemm boundaries).

use super::permute_consts::{exclusive_chain, exclusive_route, resolve_const};
use sparsify_ir::{AttrValue, Graph, NodeId, WeightId, WeightInfo};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One constant tensor to permute along one of its axes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub id: WeightId,
    pub axis: usize,
}

/// A permutation region that can be rewritten exactly.
#[derive(Debug, Clone, Default)]
pub struct Region {
    /// C: the number of channels permuted.
    pub width: usize,
    /// Runtime tensors whose feature axis is permuted.
    pub tensors: BTreeSet<String>,
    /// Consumer nodes and their weights, permuted along the reduction axis.
    pub consumers: Vec<(NodeId, Target)>,
    /// Producer nodes (weights along the output axis, biases) — for the report.
    pub producers: Vec<NodeId>,
    /// Every constant to permute other than the consumer weights.
    pub edits: Vec<Target>,
}

use crate::channels::consts::UNARY;
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"];
const POOL: &[&str] = &["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"];

/// Weight-analysis results indexed by (node, input slot).
pub struct WeightIndex {
    pub infos: Vec<WeightInfo>,
    by_slot: BTreeMap<(NodeId, usize), usize>,
}

impl WeightIndex {
    pub fn new(g: &Graph) -> WeightIndex {
        let infos = g.find_weights();
        let mut by_slot = BTreeMap::new();
        for (i, w) in infos.iter().enumerate() {
            for u in &w.uses {
                by_slot.insert((u.node, u.slot), i);
            }
        }
        WeightIndex { infos, by_slot }
    }
    pub fn at(&self, node: NodeId, slot: usize) -> Option<&WeightInfo> {
        self.by_slot.get(&(node, slot)).map(|&i| &self.infos[i])
    }
}

/// True when the graph holds subgraphs (control flow), whose implicit reads no region can see.
pub fn has_subgraphs(g: &Graph) -> bool {
    g.nodes().any(|(_, n)| n.attrs.iter().any(|a| matches!(a.value, AttrValue::Opaque)))
}

struct Walk<'a> {
    g: &'a Graph,
    w: &'a WeightIndex,
    region: Region,
    from_right: Option<usize>,
    rank: Option<usize>,
    queue: VecDeque<String>,
    done_nodes: BTreeSet<(NodeId, bool)>,
}

/// Find the region of the consumer `seed` (reading its permuted input at slot 0).
pub fn find_region(g: &Graph, w: &WeightIndex, seed: NodeId) -> Result<Region, String> {
    let mut walk = Walk {
        g,
        w,
        region: Region::default(),
        from_right: None,
        rank: None,
        queue: VecDeque::new(),
        done_nodes: BTreeSet::new(),
    };
    walk.visit(seed, false, 0)?;
    while let Some(t) = walk.queue.pop_front() {
        walk.tensor(&t)?;
    }
    let mut all: Vec<&Target> = walk.region.edits.iter().chain(walk.region.consumers.iter().map(|(_, t)| t)).collect();
    all.sort();
    if let Some(d) = all.windows(2).find(|p| p[0] == p[1]) {
        return Err(format!("constant '{}' would be permuted twice", d[0].id.name()));
    }
    Ok(walk.region)
}

impl Walk<'_> {
    fn name(&self, id: NodeId) -> String {
        let n = self.g.node(id);
        format!("{} '{}'", n.op_type, n.display_name())
    }

    fn add(&mut self, t: &str) {
        if !t.is_empty() && self.region.tensors.insert(t.to_string()) {
            self.queue.push_back(t.to_string());
        }
    }

    fn width(&mut self, c: usize, at: &str) -> Result<(), String> {
        match self.region.width {
            0 => self.region.width = c,
            w if w != c => return Err(format!("{at} has {c} channels where the region has {w}")),
            _ => {}
        }
        Ok(())
    }

    /// Merge the feature-axis position (from the right) and, when known, the rank.
    fn axis(&mut self, from_right: usize, rank: Option<usize>, at: &str) -> Result<(), String> {
        match self.from_right {
            None => self.from_right = Some(from_right),
            Some(f) if f != from_right => {
                return Err(format!(
                    "{at} has its channels at axis -{} where the region has -{}",
                    from_right + 1,
                    f + 1
                ))
            }
            _ => {}
        }
        if let Some(r) = rank {
            match self.rank {
                None => self.rank = Some(r),
                Some(q) if q != r => return Err(format!("{at} works on rank {r} where the region has rank {q}")),
                _ => {}
            }
        }
        Ok(())
    }

    /// Channel axis 1 of a rank-r tensor (BatchNorm, pooling): needs the region's rank.
    fn axis1(&mut self, at: &str) -> Result<(), String> {
        match self.rank {
            Some(r) if r >= 2 => self.axis(r - 2, None, at),
            _ => Err(format!("{at} works on channel axis 1 of a tensor whose rank is unknown")),
        }
    }

    fn tensor(&mut self, t: &str) -> Result<(), String> {
        let g = self.g;
        if g.is_output(t) {
            return Err(format!("tensor '{t}' is a graph output"));
        }
        if g.inputs.iter().any(|i| i.name == t) {
            return Err(format!("tensor '{t}' is a graph input"));
        }
        if g.constant_source(t).is_some() {
            return Err(format!("tensor '{t}' is a constant reached as a runtime value"));
        }
        let p = g.producer_of(t).ok_or_else(|| format!("tensor '{t}' has no producer"))?;
        let out_idx = g.node(p).outputs.iter().position(|o| o == t).unwrap_or(0);
        self.visit(p, true, out_idx)?;
        for (c, slot) in g.consumers(t) {
            self.visit(c, false, slot)?;
        }
        Ok(())
    }

    /// Handle node `id`, reached through its output `idx` (`via_output`) or its input slot `idx`.
    fn visit(&mut self, id: NodeId, via_output: bool, idx: usize) -> Result<(), String> {
        let n = self.g.node(id);
        let op = n.op_type.as_str();
        let linear = matches!(op, "Conv" | "Gemm" | "MatMul");
        // Boundaries have two roles (a node may be both); pass-throughs are handled once.
        let key = (id, linear && via_output);
        if !self.done_nodes.insert(key) {
            return Ok(());
        }
        let at = self.name(id);
        if !n.is_onnx() {
            return Err(format!("{at} is not a standard ONNX op"));
        }
        if linear {
            return self.linear(id, via_output, idx, &at);
        }
        if via_output && idx != 0 {
            return Err(format!("{at}: output {idx} is not a channel-preserving output"));
        }
        self.extra_outputs_unused(id, &at)?;
        if UNARY.contains(&op) || POOL.contains(&op) || op == "BatchNormalization" {
            if !via_output && idx != 0 {
                return Err(format!("{at} reads the permuted tensor as a parameter (input {idx})"));
            }
            if POOL.contains(&op) {
                self.axis1(&at)?;
            }
            if op == "BatchNormalization" {
                self.axis1(&at)?;
                for slot in 1..5 {
                    let name = n.inputs.get(slot).cloned().unwrap_or_default();
                    self.const_operand(&name, true, &at)?;
                }
            }
            self.add(&n.inputs[0].clone());
            self.add(&n.outputs[0].clone());
            return Ok(());
        }
        if BINARY.contains(&op) {
            for name in n.inputs.clone() {
                if name.is_empty() || self.region.tensors.contains(&name) {
                    continue;
                }
                if !self.const_operand(&name, false, &at)? {
                    self.add(&name);
                }
            }
            self.add(&n.outputs[0].clone());
            return Ok(());
        }
        if matches!(op, "Shape" | "Size") && !via_output {
            return Ok(());
        }
        Err(format!("{at} is not known to commute with a channel permutation"))
    }

    fn extra_outputs_unused(&self, id: NodeId, at: &str) -> Result<(), String> {
        for o in self.g.node(id).outputs.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.g.is_output(o) || !self.g.consumers(o).is_empty() {
                return Err(format!("{at}: its extra output '{o}' is used"));
            }
        }
        Ok(())
    }

    /// A Conv / Gemm / MatMul reached through its input (consumer) or output (producer).
    fn linear(&mut self, id: NodeId, via_output: bool, slot: usize, at: &str) -> Result<(), String> {
        let g = self.g;
        let n = g.node(id);
        if !via_output && slot != 0 {
            return Err(format!("{at} reads the permuted tensor as its weight (input {slot})"));
        }
        let info = self.w.at(id, 1).ok_or_else(|| format!("{at} has no constant weight in input 1"))?;
        let t = g.weight(&info.id).ok_or_else(|| format!("{at}: weight '{}' not found", info.id.name()))?;
        let shape = t.shape();
        let u = info.uses.iter().find(|u| u.node == id && u.slot == 1).cloned().unwrap_or_else(|| info.uses[0].clone());
        if u.out_axis >= shape.len() || u.red_axis >= shape.len() || shape.len() < 2 {
            return Err(format!("{at}: weight axes do not fit its shape {shape:?}"));
        }
        if info.uses.len() > 1 {
            return Err(format!("{at}: weight '{}' is shared by {} consumers", info.id.name(), info.uses.len()));
        }
        exclusive_route(g, &n.inputs[1])?;
        let wrank = shape.len();
        let op = n.op_type.as_str();
        let depthwise = op == "Conv" && u.groups > 1 && shape[u.red_axis] == 1 && shape[u.out_axis] == u.groups;
        if op == "Conv" && u.groups > 1 && !depthwise {
            return Err(format!("{at} is a grouped conv ({} groups)", u.groups));
        }
        if depthwise {
            // Channel c in = channel c out: permute weight axis 0 (and bias), carry on through. One
            // pass-through, whichever side it is reached from.
            if !self.done_nodes.insert((id, !via_output)) {
                return Ok(());
            }
            self.axis(wrank - 2, Some(wrank), at)?;
            self.width(shape[u.out_axis], at)?;
            self.region.edits.push(Target { id: info.id.clone(), axis: u.out_axis });
            self.bias(id, at)?;
            self.add(&n.inputs[0].clone());
            self.add(&n.outputs[0].clone());
            return Ok(());
        }
        let (fr, rank) = match op {
            "Conv" => (wrank - 2, Some(wrank)),
            "Gemm" if !via_output && n.attr_int("transA").unwrap_or(0) != 0 => (1, Some(2)),
            "Gemm" => (0, Some(2)),
            _ => (0, None),
        };
        self.axis(fr, rank, at)?;
        if via_output {
            self.width(shape[u.out_axis], at)?;
            self.region.edits.push(Target { id: info.id.clone(), axis: u.out_axis });
            self.region.producers.push(id);
            self.bias(id, at)
        } else {
            self.width(shape[u.red_axis], at)?;
            self.region.consumers.push((id, Target { id: info.id.clone(), axis: u.red_axis }));
            self.add(&n.inputs[0].clone());
            Ok(())
        }
    }

    /// A producer's bias (Conv input 2, Gemm C), permuted along its feature axis.
    fn bias(&mut self, id: NodeId, at: &str) -> Result<(), String> {
        let n = self.g.node(id);
        match n.inputs.get(2).filter(|s| !s.is_empty()).cloned() {
            None => Ok(()),
            Some(b) if n.op_type == "Conv" => self.const_operand(&b, true, at).map(|_| ()),
            Some(b) => self.const_operand(&b, false, at).map(|_| ()),
        }
    }

    /// Classify operand `name`: `Ok(false)` when it is a runtime value, `Ok(true)` when it is a constant
    /// (permuted along the feature axis where it has C entries, untouched where it broadcasts). With
    /// `per_channel`, the constant is a 1-D per-channel parameter (BatchNorm, Conv bias) that must have C
    /// entries.
    fn const_operand(&mut self, name: &str, per_channel: bool, at: &str) -> Result<bool, String> {
        let Some(c) = resolve_const(self.g, name)? else {
            if per_channel {
                return Err(format!("{at}: parameter '{name}' is not a constant"));
            }
            return Ok(false);
        };
        let cw = self.region.width;
        let fr = if per_channel { 0 } else { self.from_right.unwrap_or(0) };
        let rank = c.shape.len();
        if per_channel && (rank != 1 || c.shape[0] != cw) {
            return Err(format!("{at}: parameter '{name}' has shape {:?}, not [{cw}]", c.shape));
        }
        if let Some(r) = self.rank {
            if rank > r {
                return Err(format!("{at}: constant '{name}' of rank {rank} broadcasts the rank-{r} tensor up"));
            }
        }
        if rank <= fr || c.shape[rank - 1 - fr] == 1 {
            return Ok(true);
        }
        if c.shape[rank - 1 - fr] != cw {
            return Err(format!(
                "{at}: constant '{name}' has {} entries on the channel axis, not {cw}",
                c.shape[rank - 1 - fr]
            ));
        }
        let axis = if c.chain {
            // Reshaped/unsqueezed: only a vector of C (other dims 1) keeps its element order meaning.
            let src_non1: Vec<usize> = (0..c.src_shape.len()).filter(|&a| c.src_shape[a] != 1).collect();
            if c.shape.iter().filter(|&&d| d != 1).count() != 1 || src_non1.len() != 1 {
                return Err(format!("{at}: reshaped constant '{name}' is not a per-channel vector"));
            }
            src_non1[0]
        } else {
            rank - 1 - fr
        };
        exclusive_chain(self.g, name).map_err(|e| format!("{at}: {e}"))?;
        self.region.edits.push(Target { id: c.id, axis });
        Ok(true)
    }
}
