//! Helpers of the quantized-model tests (`tests/quant/`): the fixtures, and quantized bytes, zero
//! points and scales decoded here, independently of `sparsify_ir::quant`.

use sparsify_onnx::ir::{DType, Graph, Model, Tensor, WeightInfo};
use sparsify_onnx::{Pipeline, TractCalibrator};
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant").join(name)
}

/// (fixture, bundled model it was made from, whether tract runs every op in it)
pub const FIXTURES: [(&str, &str, bool); 5] = [
    ("digits_mlp_qdq_s8.onnx", "digits_mlp", true),
    ("digits_cnn_qdq_u8pc.onnx", "digits_cnn", true),
    ("char_lm_dyn_s8.onnx", "char_lm", true),
    ("digits_cnn_qop.onnx", "digits_cnn", false), // com.microsoft.QGemm: onnxruntime only
    ("char_lm_qop.onnx", "char_lm", true),
];

/// Every note of a run as (subject, message).
pub fn notes(r: &sparsify_onnx::RunReport) -> Vec<(String, String)> {
    r.passes.iter().flat_map(|p| p.notes.iter().map(|n| (n.subject.clone(), n.message.clone()))).collect()
}

pub fn run(text: &str, m: &mut Model, cal: Option<&TractCalibrator>) -> sparsify_onnx::RunReport {
    Pipeline::parse(text).unwrap().run(m, cal.map(|c| c as &dyn sparsify_onnx::Calibrator)).unwrap()
}

/// Integer values of an 8-bit tensor, decoded here.
pub fn ints(t: &Tensor) -> Vec<i32> {
    match t.dtype {
        DType::I8 => t.bytes().iter().map(|&b| b as i8 as i32).collect(),
        DType::U8 => t.bytes().iter().map(|&b| b as i32).collect(),
        d => panic!("fixture weight '{}' has dtype {}", t.name, d.name()),
    }
}

/// The zero point of every element of a quantized weight, read from the node that dequantizes it:
/// DequantizeLinear input 2, QLinearConv/QLinearMatMul/QGemm input 5, MatMulInteger input 3. Per-channel
/// zero points in the fixtures are along axis 0 (checked).
pub fn zero_points(g: &Graph, w: &WeightInfo) -> Vec<i32> {
    let t = g.weight(&w.id).unwrap();
    let n = t.numel().unwrap();
    let (node, slot) = g.consumers(w.id.name())[0];
    let node = g.node(node);
    let zp_input = match (node.op_type.as_str(), slot) {
        ("DequantizeLinear", 0) => 2,
        ("QLinearConv" | "QLinearMatMul" | "QGemm", 3) => 5,
        ("MatMulInteger", 1) => 3,
        other => panic!("unexpected reader {other:?}"),
    };
    let zt = g.initializer(&node.inputs[zp_input]).unwrap();
    let zp = ints(zt);
    if zp.len() == 1 {
        return vec![zp[0]; n];
    }
    assert_eq!(zp.len(), t.dims[0] as usize, "'{}': per-channel zero points along axis 0", w.id.name());
    if node.op_type == "DequantizeLinear" {
        assert_eq!(node.attr_int("axis"), Some(0));
    }
    let inner = n / zp.len();
    (0..n).map(|i| zp[i / inner]).collect()
}

/// The scale of every element, read the same way (inputs 1 / 4; integer ops: 1).
pub fn scales(g: &Graph, w: &WeightInfo) -> Vec<f32> {
    let t = g.weight(&w.id).unwrap();
    let n = t.numel().unwrap();
    let (node, _) = g.consumers(w.id.name())[0];
    let node = g.node(node);
    let input = match node.op_type.as_str() {
        "DequantizeLinear" => 1,
        "MatMulInteger" => usize::MAX,
        _ => 4,
    };
    // MatMulInteger has no scale input: onnxruntime's dynamic quantizer names it `<weight>_scale`.
    let name = match node.inputs.get(input) {
        Some(s) => s.clone(),
        None => w.id.name().replace("_quantized", "_scale"),
    };
    let s: Vec<f32> = g.initializer(&name).unwrap().to_f32().unwrap().iter().copied().collect();
    let inner = n / s.len();
    (0..n).map(|i| s[i / inner]).collect()
}

pub fn quantized_weights(m: &Model) -> Vec<WeightInfo> {
    let g = &m.graph;
    g.find_weights()
        .into_iter()
        .filter(|w| g.weight(&w.id).is_some_and(|t| matches!(t.dtype, DType::I8 | DType::U8) && t.dims.len() >= 2))
        .collect()
}
