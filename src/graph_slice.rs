//! Slices of a graph run on their own in tract: a set of nodes, the float tensors they read from the
//! rest of the graph (fed as inputs), and the integer / boolean producers (shapes, masks, indices) and
//! `Constant` nodes they need pulled in, so tract still sees constant shapes. Used by the variant runs
//! of the sensitivity curves ([`crate::variants`]) and by staged calibration ([`crate::staged`]).

use sparsify_ir::{DType, Graph, Model, NodeId, ValueInfo};
use std::collections::{BTreeSet, HashMap};

/// Whether each tensor holds floats, from the graph alone (inputs, initializers, and the op rules below;
/// unknown counts as not float, which only makes the cut pull more).
pub(crate) fn float_tensors(g: &Graph, order: &[NodeId]) -> HashMap<String, bool> {
    let is_float = |code: i32| matches!(code, 1 | 10 | 11 | 16);
    let mut f: HashMap<String, bool> = HashMap::new();
    for i in &g.inputs {
        f.insert(i.name.clone(), i.elem_type.is_some_and(is_float));
    }
    for t in &g.initializers {
        f.insert(t.name.clone(), matches!(t.dtype, DType::F32 | DType::F16 | DType::F64 | DType::BF16));
    }
    for &id in order {
        let n = g.node(id);
        let input = |k: usize| n.inputs.get(k).and_then(|t| f.get(t.as_str()).copied()).unwrap_or(false);
        let value = match n.op_type.as_str() {
            "Shape"
            | "Size"
            | "NonZero"
            | "ArgMax"
            | "ArgMin"
            | "Equal"
            | "Less"
            | "LessOrEqual"
            | "Greater"
            | "GreaterOrEqual"
            | "Not"
            | "And"
            | "Or"
            | "Xor"
            | "IsNaN"
            | "IsInf"
            | "QuantizeLinear"
            | "DynamicQuantizeLinear"
            | "MatMulInteger"
            | "ConvInteger"
            | "QLinearConv"
            | "QLinearMatMul" => false,
            "Cast" => n.attr_int("to").is_some_and(|c| is_float(c as i32)),
            "CastLike" => input(1),
            "Constant" => n.constant_tensor().is_some_and(|t| t.dtype.is_prunable_float()),
            "ConstantOfShape" => n.constant_tensor().is_none_or(|t| t.dtype.is_prunable_float()),
            "Where" => input(1),
            "DequantizeLinear" => true,
            _ => n.inputs.iter().find(|t| !t.is_empty()).is_some_and(|t| f.get(t.as_str()).copied().unwrap_or(false)),
        };
        for (k, o) in n.outputs.iter().enumerate() {
            // Second outputs of TopK / MaxPool-with-indices / Unique are indices.
            let v = value && !(k > 0 && matches!(n.op_type.as_str(), "TopK" | "MaxPool" | "Unique"));
            f.insert(o.clone(), v);
        }
    }
    f
}

/// `inside` with the producers of the non-float tensors it reads, and of `Constant` outputs, pulled in
/// (transitively). Returns the nodes in topological order and the float tensors read from outside (the
/// frontier, sorted); graph inputs and initializers are not part of the frontier.
pub(crate) fn close_over(
    g: &Graph,
    order: &[NodeId],
    floats: &HashMap<String, bool>,
    mut inside: BTreeSet<NodeId>,
) -> (Vec<NodeId>, Vec<String>) {
    let graph_inputs: BTreeSet<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
    let mut work: Vec<NodeId> = inside.iter().copied().collect();
    let mut frontier: BTreeSet<String> = BTreeSet::new();
    while let Some(id) = work.pop() {
        for t in &g.node(id).inputs {
            if t.is_empty() || graph_inputs.contains(t.as_str()) || g.initializer(t).is_some() {
                continue;
            }
            let Some(p) = g.producer_of(t) else { continue };
            if inside.contains(&p) {
                continue;
            }
            let pull = g.node(p).op_type == "Constant" || !floats.get(t.as_str()).copied().unwrap_or(false);
            if pull {
                inside.insert(p);
                work.push(p);
            } else {
                frontier.insert(t.clone());
            }
        }
    }
    // A pulled node's float output may also be read by the slice: it is computed inside, not fed.
    let produced: BTreeSet<&str> =
        inside.iter().flat_map(|&id| g.node(id).outputs.iter().map(|o| o.as_str())).collect();
    frontier.retain(|t| !produced.contains(t.as_str()));
    let nodes = order.iter().copied().filter(|id| inside.contains(id)).collect();
    (nodes, frontier.into_iter().collect())
}

/// The model of `nodes` (topological order): inputs = the frontier `(name, ONNX elem type)`, the graph
/// inputs the nodes read, and the initializers named in `as_inputs`; outputs = `outputs`.
pub(crate) fn slice_model(
    m: &Model,
    nodes: &[NodeId],
    frontier: &[(String, i32)],
    as_inputs: &[&str],
    outputs: &[String],
) -> Model {
    let g = &m.graph;
    let nodes: Vec<_> = nodes.iter().map(|&id| g.node(id).clone()).collect();
    let read: BTreeSet<&str> = nodes.iter().flat_map(|n| n.inputs.iter().map(|i| i.as_str())).collect();
    let mut sub = Graph::new().with_nodes(nodes.clone());
    sub.name = g.name.clone();
    sub.initializers = g
        .initializers
        .iter()
        .filter(|t| read.contains(t.name.as_str()) && !as_inputs.contains(&t.name.as_str()))
        .cloned()
        .collect();
    for (t, elem) in frontier {
        sub.inputs.push(ValueInfo { name: t.clone(), elem_type: Some(*elem), shape: None, opaque: Vec::new() });
    }
    sub.inputs.extend(g.inputs.iter().filter(|i| read.contains(i.name.as_str())).cloned());
    for name in as_inputs {
        if let Some(t) = g.initializer(name) {
            sub.inputs.push(ValueInfo::tensor(name, t.dtype.code(), &t.dims));
        }
    }
    sub.outputs = outputs
        .iter()
        .map(|o| {
            g.outputs.iter().find(|x| &x.name == o).cloned().unwrap_or(ValueInfo {
                name: o.clone(),
                elem_type: None,
                shape: None,
                opaque: Vec::new(),
            })
        })
        .collect();
    Model { ir_version: m.ir_version, opset_import: m.opset_import.clone(), graph: sub, opaque: m.opaque.clone() }
}
