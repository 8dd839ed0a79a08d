//! Small hand-built models for the correction passes' tests (`bias-correct`, `ls-correct`).

use sparsify_onnx::ir::{AttrValue, Graph, Model, Node, OpsetId, Tensor, ValueInfo};

pub fn weights(name: &str, dims: &[i64], seed: f32) -> Tensor {
    let n: i64 = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect();
    Tensor::from_f32(name, dims.to_vec(), &v).unwrap()
}

pub fn model(g: Graph, nodes: Vec<Node>) -> Model {
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
        graph: g.with_nodes(nodes),
        opaque: vec![],
    }
}

pub fn out(name: &str) -> ValueInfo {
    ValueInfo { name: name.into(), elem_type: Some(1), shape: None, opaque: vec![] }
}

/// x [2, 3, 8] → MatMul W1 → Add c1 → Relu → MatMul W2 (no bias) → y.
pub fn mlp() -> Model {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[2, 3, 8]));
    g.outputs.push(out("y"));
    g.initializers.push(weights("w1", &[8, 6], 0.7));
    g.initializers.push(weights("c1", &[6], 1.3));
    g.initializers.push(weights("w2", &[6, 5], 0.45));
    model(
        g,
        vec![
            Node::new("MatMul", "mm1", &["x", "w1"], &["h"]),
            Node::new("Add", "add1", &["h", "c1"], &["h1"]),
            Node::new("Relu", "relu", &["h1"], &["r"]),
            Node::new("MatMul", "mm2", &["r", "w2"], &["y"]),
        ],
    )
}

/// x [2, 2, 6, 6] → Conv W1 (3×3, dilation 2, bias) → Relu → Conv W2 (1×1, group 2, stride 2, no
/// bias) → Flatten → Gemm W3 (transB=1, alpha 2, beta 0.5, C) → y.
pub fn cnn() -> Model {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[2, 2, 6, 6]));
    g.outputs.push(out("y"));
    g.initializers.push(weights("w1", &[4, 2, 3, 3], 0.31));
    g.initializers.push(weights("b1", &[4], 0.9));
    g.initializers.push(weights("w2", &[4, 2, 1, 1], 1.7));
    g.initializers.push(weights("w3", &[3, 4], 0.53));
    g.initializers.push(weights("c3", &[3], 2.1));
    let mut c1 = Node::new("Conv", "conv1", &["x", "w1", "b1"], &["a"]);
    c1.set_attr("dilations", AttrValue::Ints(vec![2, 2]));
    let mut c2 = Node::new("Conv", "conv2", &["r", "w2"], &["b"]);
    c2.set_attr("group", AttrValue::Int(2));
    c2.set_attr("strides", AttrValue::Ints(vec![2, 2]));
    let mut gemm = Node::new("Gemm", "gemm", &["f", "w3", "c3"], &["y"]);
    gemm.set_attr("transB", AttrValue::Int(1));
    gemm.set_attr("alpha", AttrValue::Float(2.0));
    gemm.set_attr("beta", AttrValue::Float(0.5));
    model(
        g,
        vec![c1, Node::new("Relu", "relu", &["a"], &["r"]), c2, Node::new("Flatten", "flat", &["b"], &["f"]), gemm],
    )
}
