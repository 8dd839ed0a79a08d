//! dead-channel-elim on quantized models: weights sliced with their scales, zero points and int32 biases.

use crate::common;
use crate::common::quant::{fixture, ints, notes, quantized_weights, run};
use crate::runs::output_error;
use sparsify_onnx::ir::{DType, Model, Tensor, WeightId};
use sparsify_onnx::validate;
use sparsify_onnx::{input_decls, load, to_bytes};

/// dead-channel-elim on QDQ fixtures: quantized weights lose their dead rows and the matching consumer
/// columns, per-axis scales / zero points along the sliced axis shrink with them, and the result computes
/// exactly what the masked model computes (tract, sample inputs).
#[test]
fn dead_channel_elim_slices_qdq_weights_with_their_scales_and_zero_points() {
    for (file, model) in [("digits_mlp_qdq_s8.onnx", "digits_mlp"), ("digits_cnn_qdq_u8pc.onnx", "digits_cnn")] {
        let (m0, masked, m1, r) = mask_then_eliminate(file);
        let removed = r.passes[0].counters["channels_removed"];
        assert!(removed > 0.0, "{file}: nothing removed: {:?}", notes(&r));
        let mut shrunk = 0;
        for w in quantized_weights(&masked) {
            let (d0, d1) = (masked.graph.weight(&w.id).unwrap().shape(), m1.graph.weight(&w.id).unwrap().shape());
            let node = m1.graph.node(m1.graph.consumers(w.id.name())[0].0);
            assert_eq!(node.op_type, "DequantizeLinear");
            for slot in [1, 2] {
                let p = m1.graph.weight(&m1.graph.constant_source(&node.inputs[slot]).unwrap()).unwrap();
                let n = p.numel().unwrap();
                if n > 1 {
                    // per axis along axis 0 in the fixtures: one entry per remaining output channel
                    assert_eq!(n, d1[0], "{file}: '{}' has {} channels, its '{}' {n}", w.id.name(), d1[0], p.name);
                }
            }
            if d0 != d1 {
                shrunk += 1;
                println!("{file}: '{}' {d0:?} -> {d1:?}", w.id.name());
            }
        }
        assert!(shrunk >= 2, "{file}: only {shrunk} weights shrank");
        let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(&m0)).unwrap();
        let (err, scale) = output_error(&masked, &m1, &sample);
        assert!(err <= 1e-5 * scale.max(1.0), "{file}: output moved by {err} (max |output| {scale})");
        println!("{file}: removed {removed} channels, max |Δ output| vs the masked model {err:e}");
    }
}

/// The shapes a QOperator / integer-op weight's parameters must have after slicing: per-axis scale and
/// zero point one entry per output channel (or one per tensor), int32 bias one per output channel.
/// Returns (weight, dims) of every such weight, panicking with the inconsistency.
fn qop_weights_consistent(file: &str, m: &Model) -> Vec<(String, Vec<usize>)> {
    let g = &m.graph;
    let mut out = Vec::new();
    for w in quantized_weights(m) {
        let (nid, _) = g.consumers(w.id.name())[0];
        let node = g.node(nid);
        let (params, bias): (&[usize], Option<usize>) = match node.op_type.as_str() {
            "QLinearConv" => (&[4, 5], Some(8)),
            "QGemm" => (&[4, 5], Some(6)),
            "QLinearMatMul" => (&[4, 5], None),
            "MatMulInteger" => (&[3], None),
            _ => continue,
        };
        let dims = g.weight(&w.id).unwrap().shape();
        let m_out = dims[w.out_axis()];
        let numel = |slot: usize| {
            node.inputs.get(slot).filter(|s| !s.is_empty()).map(|s| g.initializer(s).unwrap().numel().unwrap())
        };
        for &slot in params {
            if let Some(n) = numel(slot) {
                assert!(n == 1 || n == m_out, "{file}: '{}' has {m_out} outputs, input {slot} {n}", w.id.name());
            }
        }
        if let Some(n) = bias.and_then(numel) {
            assert_eq!(n, m_out, "{file}: '{}' int32 bias entries", w.id.name());
            assert_eq!(g.initializer(&node.inputs[bias.unwrap()]).unwrap().dtype, DType::I32);
        }
        out.push((w.id.name().to_string(), dims));
    }
    out
}

/// char_lm_dyn_s8 with the fc1 bias of every masked fc1 channel set to 0 (a test-side edit): those channels
/// are exactly 0 after GELU, stay at DynamicQuantizeLinear's zero point, and go — MatMulInteger columns of
/// fc1 and rows of fc2 — with the eliminated model computing in tract what the edited masked model does.
fn dynamic_with_zero_biases(masked: &Model, model: &str) {
    let mut edited = masked.clone();
    let mut zeroed = 0;
    for (w, b) in
        [("onnx::MatMul_258_quantized", "blocks.0.fc1.bias"), ("onnx::MatMul_275_quantized", "blocks.1.fc1.bias")]
    {
        let t = edited.graph.initializer(w).unwrap();
        let zp = edited.graph.weight_quant(&WeightId::Init(w.into())).unwrap().unwrap().zero_point[0];
        let (q, cols) = (ints(t), t.dims[1] as usize);
        let dead: Vec<usize> = (0..cols).filter(|c| q.iter().skip(*c).step_by(cols).all(|v| *v == zp)).collect();
        let bt = edited.graph.initializer(b).unwrap();
        let mut bv: Vec<f32> = bt.to_f32().unwrap().iter().copied().collect();
        for &c in &dead {
            bv[c] = 0.0;
        }
        zeroed += dead.len();
        let nb = Tensor::from_f32(b, bt.dims.clone(), &bv).unwrap();
        *edited.graph.initializer_mut(b).unwrap() = nb;
    }
    let mut m1 = edited.clone();
    let r = run("dead-channel-elim", &mut m1, None);
    let removed = r.passes[0].counters["channels_removed"];
    println!("char_lm_dyn_s8 with zero biases on its {zeroed} dead fc1 channels: removed {removed}");
    assert_eq!(removed as usize, zeroed, "{:?}", notes(&r));
    let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(masked)).unwrap();
    let (err, scale) = output_error(&edited, &m1, &sample);
    println!("char_lm_dyn_s8 (zero biases): max |Δ output| vs the masked model {err:e} (max |output| {scale})");
    assert!(err <= 1e-6 * scale.max(1.0), "output moved by {err} (max |output| {scale})");
    let mut again = m1.clone();
    run("dead-channel-elim", &mut again, None);
    assert!(to_bytes(&again).unwrap() == to_bytes(&m1).unwrap(), "second run changed it");
}

/// dead-channel-elim on QOperator (QLinearConv / QGemm, QLinearMatMul) and dynamic (MatMulInteger) models,
/// after a 25% channel mask: the quantized weights lose their dead output channels with their per-channel
/// scales / zero points and int32 biases, the consumers the matching input rows / columns; where tract runs
/// the model it computes what the masked model computes; a second run changes nothing.
#[test]
fn dead_channel_elim_slices_qoperator_and_integer_op_weights() {
    for (file, model, tract) in [
        ("char_lm_qop.onnx", "char_lm", true),
        ("char_lm_dyn_s8.onnx", "char_lm", true),
        ("digits_cnn_qop.onnx", "digits_cnn", false),
    ] {
        let (m0, masked, m1, r) = mask_then_eliminate(file);
        let removed = r.passes[0].counters["channels_removed"];
        let kept = r.passes[0].counters["channels_kept_dead"];
        let ns: Vec<String> = notes(&r).iter().map(|(s, n)| format!("{s}: {n}")).collect();
        println!("{file}: removed {removed}, kept {kept} dead channels");
        for n in &ns {
            println!("  {n}");
        }
        let before = qop_weights_consistent(file, &masked);
        let after = qop_weights_consistent(file, &m1);
        let shrunk: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| format!("{} {:?} -> {:?}", a.0, a.1, b.1))
            .collect();
        println!("{file}: {shrunk:?}");
        let mut again = m1.clone();
        let r2 = run("dead-channel-elim", &mut again, None);
        assert!(to_bytes(&again).unwrap() == to_bytes(&m1).unwrap(), "{file}: second run changed it: {:?}", notes(&r2));
        if file == "char_lm_dyn_s8.onnx" {
            // GELU(bias) of a dead fc1 channel is a non-zero constant, which DynamicQuantizeLinear maps to a
            // batch-dependent integer: nothing is exactly removable.
            assert_eq!(removed, 0.0, "{file}: {ns:?}");
            assert!(ns.iter().any(|n| n.contains("kept") && n.contains("depends on the input")), "{file}: {ns:?}");
            dynamic_with_zero_biases(&masked, model);
            continue;
        }
        assert!(removed > 0.0, "{file}: nothing removed: {ns:?}");
        assert!(shrunk.len() >= 2, "{file}: only {shrunk:?} shrank");
        if tract {
            let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(&m0)).unwrap();
            let (err, scale) = output_error(&masked, &m1, &sample);
            println!("{file}: max |Δ output| vs the masked model {err:e} (max |output| {scale})");
            assert!(err <= 1e-6 * scale.max(1.0), "{file}: output moved by {err} (max |output| {scale})");
        } else {
            // digits_cnn_qop: conv1 → conv2 (input channels) → MaxPool → Flatten → QGemm (B [10, 16·C2]).
            let d: std::collections::BTreeMap<String, Vec<usize>> = after.into_iter().collect();
            let (c1, c2, fc) = (&d["onnx::Conv_21_quantized"], &d["conv2.weight_quantized"], &d["fc.weight_quantized"]);
            assert_eq!(c2[1], c1[0], "{file}: conv2 reads {} channels, conv1 makes {}", c2[1], c1[0]);
            assert_eq!(fc[1], c2[0] * 16, "{file}: QGemm reads {} features, conv2 makes {}×16", fc[1], c2[0]);
            println!("{file}: not validated in tract (com.microsoft.QGemm); scripts/quant_ort_check.py checks it");
        }
    }
}

/// Fixture `file` loaded (m0), with a quarter of its channels masked (masked), then eliminated (m1, with
/// the report of the elimination).
fn mask_then_eliminate(file: &str) -> (Model, Model, Model, sparsify_onnx::RunReport) {
    let m0 = load(&fixture(file)).unwrap();
    let mut masked = m0.clone();
    run("mask{granularity=channel,sparsity=0.25}", &mut masked, None);
    let mut m1 = masked.clone();
    let r = run("dead-channel-elim", &mut m1, None);
    (m0, masked, m1, r)
}
