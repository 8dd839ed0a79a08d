//! Synthetic large models for benches, generated on the fly (never committed): an MLP of MatMul layers
//! with deterministic pseudo-random f32 weights.

use sparsify_onnx::ir::{Graph, Model, Node, OpsetId, Tensor, ValueInfo};

/// An MLP with `layers` square MatMul weights of side `width` (4·width² bytes each).
pub fn synthetic_mlp(width: usize, layers: usize) -> Model {
    let mut g = Graph::new();
    g.name = Some("synthetic_mlp".into());
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, width as i64]));
    let mut nodes = Vec::new();
    let mut prev = "x".to_string();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for l in 0..layers {
        let mut vals = Vec::with_capacity(width * width);
        for _ in 0..width * width {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            vals.push(((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) / (width as f32).sqrt());
        }
        let w = format!("w{l}");
        g.initializers.push(Tensor::from_f32(&w, vec![width as i64, width as i64], &vals).unwrap());
        let out = format!("h{l}");
        nodes.push(Node::new("MatMul", &format!("mm{l}"), &[&prev, &w], &[&out]));
        prev = out;
    }
    g.outputs.push(ValueInfo::tensor(&prev, 1, &[1, width as i64]));
    let graph = g.with_nodes(nodes);
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 17 }],
        graph,
        opaque: vec![],
    }
}
