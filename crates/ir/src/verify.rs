//! The IR verifier: checks the invariants every pass must keep and reports all violations at once.
//!
//! Checked: every node input is a graph input, an initializer or some node's output (or "" for an omitted
//! optional input); no tensor name is produced twice; graph outputs are produced; the graph is acyclic;
//! every tensor's byte length matches its shape and dtype; `Constant` nodes carry their value.

use crate::Graph;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// Where: a node's display name or a tensor name.
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Check the graph; an empty list means it is well formed.
pub fn verify(g: &Graph) -> Vec<VerifyError> {
    let mut errs = Vec::new();
    let mut err = |location: String, message: String| errs.push(VerifyError { location, message });
    let mut known: BTreeSet<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
    known.extend(g.initializers.iter().map(|t| t.name.as_str()));
    let mut produced: BTreeSet<&str> = BTreeSet::new();
    for (_, n) in g.nodes() {
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            if !produced.insert(o) {
                err(format!("node '{}'", n.display_name()), format!("output '{o}' is produced more than once"));
            }
        }
    }
    for (_, n) in g.nodes() {
        for i in n.inputs.iter().filter(|i| !i.is_empty()) {
            if !known.contains(i.as_str()) && !produced.contains(i.as_str()) {
                err(format!("node '{}'", n.display_name()), format!("input '{i}' is not defined in the graph"));
            }
        }
        if n.op_type == "Constant" && n.is_onnx() && n.attrs.is_empty() {
            err(format!("node '{}'", n.display_name()), "Constant node without a value".into());
        }
        if let Some(t) = n.constant_tensor() {
            if let Err(e) = t.expected_len().and_then(|_| check_len(t)) {
                err(format!("node '{}'", n.display_name()), e.to_string());
            }
        }
    }
    for o in &g.outputs {
        if !known.contains(o.name.as_str()) && !produced.contains(o.name.as_str()) {
            err(format!("output '{}'", o.name), "graph output is never produced".into());
        }
    }
    for t in &g.initializers {
        if let Err(e) = check_len(t) {
            err(format!("tensor '{}'", t.name), e.to_string());
        }
    }
    if g.topo_order().is_none() {
        err("graph".into(), "the node graph has a cycle".into());
    }
    errs
}

fn check_len(t: &crate::Tensor) -> Result<(), crate::TensorError> {
    if let Some(want) = t.expected_len()? {
        if want != t.bytes().len() {
            return Err(crate::TensorError::Invalid {
                name: t.name.clone(),
                what: format!("holds {} bytes, shape needs {want}", t.bytes().len()),
            });
        }
    }
    Ok(())
}
