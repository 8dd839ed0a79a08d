//! Model, graph and node: the ONNX structure the passes work on.
//!
//! Nodes live in a petgraph `StableDiGraph` (indices survive removals) with an edge for every tensor
//! passed from a producer node to a consumer node. `order` keeps the file's node order, which export
//! preserves. Each struct keeps an `opaque` blob: the encoded protobuf of the fields the IR does not model,
//! written back unchanged by the exporter.

use crate::Tensor;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use std::collections::BTreeMap;

pub type NodeId = NodeIndex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsetId {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub ir_version: Option<i64>,
    pub opset_import: Vec<OpsetId>,
    pub graph: Graph,
    /// producer, doc string, metadata, functions, training info... (exporter-owned).
    pub opaque: Vec<u8>,
}

impl Model {
    /// The opset version imported for a domain ("" and "ai.onnx" are the same domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| if d == "ai.onnx" { String::new() } else { d.to_string() };
        self.opset_import.iter().find(|o| norm(&o.domain) == norm(domain)).map(|o| o.version)
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Value(i64),
    Param(String),
    Unknown,
}

/// A graph input, output or `value_info` entry. `elem_type`/`shape` are what passes read and may update;
/// the full `TypeProto` (denotations, non-tensor types) stays in `opaque`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: Option<i32>,
    pub shape: Option<Vec<Dim>>,
    pub opaque: Vec<u8>,
}

impl ValueInfo {
    /// A tensor value with a fixed shape (for building graphs in code).
    pub fn tensor(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfo {
        ValueInfo {
            name: name.to_string(),
            elem_type: Some(elem_type),
            shape: Some(dims.iter().map(|&d| Dim::Value(d)).collect()),
            opaque: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Box<Tensor>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    /// Subgraphs, sparse tensors, type protos, lists of those: carried in `Attr::opaque` untouched.
    Opaque,
}

#[derive(Debug, Clone)]
pub struct Attr {
    pub name: String,
    pub value: AttrValue,
    pub opaque: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: Option<String>,
    pub op_type: String,
    pub domain: Option<String>,
    /// Input tensor names; "" marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<Attr>,
    pub opaque: Vec<u8>,
}

impl Node {
    pub fn new(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            name: Some(name.to_string()),
            op_type: op_type.to_string(),
            domain: None,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs: Vec::new(),
            opaque: Vec::new(),
        }
    }

    /// True for ops of the default ONNX domain.
    pub fn is_onnx(&self) -> bool {
        matches!(self.domain.as_deref(), None | Some("") | Some("ai.onnx"))
    }

    /// `op_type` when in the default domain, else `domain::op_type`.
    pub fn kind(&self) -> String {
        if self.is_onnx() {
            self.op_type.clone()
        } else {
            format!("{}::{}", self.domain.as_deref().unwrap_or(""), self.op_type)
        }
    }

    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("<{} -> {}>", self.op_type, self.outputs.first().map(String::as_str).unwrap_or("?")),
        }
    }

    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name) {
            Some(AttrValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name) {
            Some(AttrValue::Ints(v)) => Some(v),
            _ => None,
        }
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name) {
            Some(AttrValue::Float(v)) => Some(*v),
            _ => None,
        }
    }

    /// Set (or add) an attribute value, keeping the attribute's opaque fields when it exists.
    pub fn set_attr(&mut self, name: &str, value: AttrValue) {
        if let Some(a) = self.attrs.iter_mut().find(|a| a.name == name) {
            a.value = value;
        } else {
            self.attrs.push(Attr { name: name.to_string(), value, opaque: Vec::new() });
        }
    }

    /// The tensor of a `Constant` node's `value` attribute.
    pub fn constant_tensor(&self) -> Option<&Tensor> {
        if self.op_type != "Constant" || !self.is_onnx() {
            return None;
        }
        match self.attr("value") {
            Some(AttrValue::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    pub fn constant_tensor_mut(&mut self) -> Option<&mut Tensor> {
        if self.op_type != "Constant" || !self.is_onnx() {
            return None;
        }
        self.attrs.iter_mut().find(|a| a.name == "value").and_then(|a| match &mut a.value {
            AttrValue::Tensor(t) => Some(&mut **t),
            _ => None,
        })
    }
}

/// A graph: nodes in a petgraph DAG plus initializers, inputs, outputs and `value_info`.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: Option<String>,
    dag: StableDiGraph<Node, String>,
    order: Vec<NodeId>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub value_info: Vec<ValueInfo>,
    /// doc string, sparse initializers, quantization annotations, metadata (exporter-owned).
    pub opaque: Vec<u8>,
    /// Names read by nodes inside subgraph attributes (If/Loop/Scan bodies), which the IR carries
    /// opaquely. A tensor named here has consumers the passes cannot see: they must not prune or reshape it.
    pub subgraph_refs: std::collections::BTreeSet<String>,
}

impl Graph {
    /// True if a node inside some subgraph may read this tensor.
    pub fn used_in_subgraphs(&self, tensor: &str) -> bool {
        self.subgraph_refs.contains(tensor)
    }

    pub fn new() -> Graph {
        Graph::default()
    }

    /// Append a node at the end of the node order and link it.
    pub fn push_node(&mut self, node: Node) -> NodeId {
        let id = self.dag.add_node(node);
        self.order.push(id);
        self.relink();
        id
    }

    /// Build a graph from nodes in file order (one relink at the end).
    pub fn with_nodes(mut self, nodes: Vec<Node>) -> Graph {
        for n in nodes {
            let id = self.dag.add_node(n);
            self.order.push(id);
        }
        self.relink();
        self
    }

    /// Remove a node; returns it.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let n = self.dag.remove_node(id)?;
        self.order.retain(|&x| x != id);
        self.relink();
        Some(n)
    }

    /// Insert a node right after `after` in the node order.
    pub fn insert_after(&mut self, after: NodeId, node: Node) -> NodeId {
        let id = self.dag.add_node(node);
        let pos = self.order.iter().position(|&x| x == after).map(|p| p + 1).unwrap_or(self.order.len());
        self.order.insert(pos, id);
        self.relink();
        id
    }

    /// Node ids in the file's order.
    pub fn node_ids(&self) -> &[NodeId] {
        &self.order
    }

    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.order.iter().map(move |&id| (id, &self.dag[id]))
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    /// Mutable access to a node. If you change its inputs or outputs, call [`Graph::relink`].
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.dag[id]
    }

    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    /// The petgraph view (edges: producer → consumer, weighted by the tensor name).
    pub fn dag(&self) -> &StableDiGraph<Node, String> {
        &self.dag
    }

    /// Recompute the edges from tensor names. Cheap; call after changing node inputs or outputs.
    pub fn relink(&mut self) {
        self.dag.clear_edges();
        let producers = self.producers();
        let mut edges = Vec::new();
        for &id in &self.order {
            for input in &self.dag[id].inputs {
                if let Some(&p) = producers.get(input.as_str()) {
                    edges.push((p, id, input.clone()));
                }
            }
        }
        for (a, b, name) in edges {
            self.dag.add_edge(a, b, name);
        }
    }

    /// Map from tensor name to the node producing it.
    pub fn producers(&self) -> BTreeMap<&str, NodeId> {
        let mut m = BTreeMap::new();
        for &id in &self.order {
            for o in &self.dag[id].outputs {
                if !o.is_empty() {
                    m.insert(o.as_str(), id);
                }
            }
        }
        m
    }

    /// Nodes that read a tensor, with the input slot, in node order.
    pub fn consumers(&self, tensor: &str) -> Vec<(NodeId, usize)> {
        let mut v = Vec::new();
        for &id in &self.order {
            for (slot, i) in self.dag[id].inputs.iter().enumerate() {
                if i == tensor {
                    v.push((id, slot));
                }
            }
        }
        v
    }

    pub fn producer_of(&self, tensor: &str) -> Option<NodeId> {
        self.order.iter().copied().find(|&id| self.dag[id].outputs.iter().any(|o| o == tensor))
    }

    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    pub fn initializer_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.initializers.iter_mut().find(|t| t.name == name)
    }

    /// True if the tensor is one of the graph outputs.
    pub fn is_output(&self, tensor: &str) -> bool {
        self.outputs.iter().any(|o| o.name == tensor)
    }

    /// Node ids in a topological order (ties broken by file order). `None` if there is a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let pos: BTreeMap<NodeId, usize> = self.order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut indeg: BTreeMap<NodeId, usize> = self.order.iter().map(|&id| (id, 0)).collect();
        for e in self.dag.edge_indices() {
            let (_, b) = self.dag.edge_endpoints(e)?;
            *indeg.get_mut(&b)? += 1;
        }
        let mut ready: std::collections::BTreeSet<(usize, NodeId)> =
            indeg.iter().filter(|(_, &d)| d == 0).map(|(&id, _)| (pos[&id], id)).collect();
        let mut out = Vec::with_capacity(self.order.len());
        while let Some(first) = ready.iter().next().copied() {
            ready.remove(&first);
            out.push(first.1);
            for nb in self.dag.neighbors_directed(first.1, petgraph::Direction::Outgoing) {
                let d = indeg.get_mut(&nb)?;
                // one decrement per edge: neighbors_directed yields a node once per edge
                *d -= 1;
                if *d == 0 {
                    ready.insert((pos[&nb], nb));
                }
            }
        }
        (out.len() == self.order.len()).then_some(out)
    }
}
