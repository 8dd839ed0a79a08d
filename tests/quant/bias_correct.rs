//! bias-correct on quantized models: int32 biases behind DequantizeLinear, QOperator biases, following Adds.

use crate::calib_feed;
use crate::common;
use crate::common::quant::{fixture, notes, quantized_weights, run};
use crate::common::rel_l2;
use sparsify_onnx::ir::{DType, Model, Tensor};
use sparsify_onnx::validate;
use sparsify_onnx::{input_decls, load, Pipeline, TractCalibrator};

/// The held-out error of `prune` and of `prune` + `bias-correct{verify=false}` (every shift applied, so
/// every placement can be checked) on a fixture made from `model`, and the corrected run's report. The
/// verified default is run too: its held-out error must be below the pruned model's as well.
fn with_and_without_bias_correct(file: &str, model: &str, prune: &str) -> (f64, f64, Model, sparsify_onnx::RunReport) {
    let m0 = load(&fixture(file)).unwrap();
    let cal = TractCalibrator::new(&calib_feed(model, &m0), 16).unwrap();
    let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(&m0)).unwrap();
    let mut plain = m0.clone();
    run(prune, &mut plain, Some(&cal));
    let mut corrected = m0.clone();
    let r = run(&format!("{prune},bias-correct{{verify=false}}"), &mut corrected, Some(&cal));
    let e0 = rel_l2(&m0, &plain, &sample);
    let mut verified = m0.clone();
    run(&format!("{prune},bias-correct"), &mut verified, Some(&cal));
    let e2 = rel_l2(&m0, &verified, &sample);
    println!("{file}: {prune} rel L2 {e0:.4}, + bias-correct (verified) {e2:.4}");
    assert!(e2 < e0, "{file}: the verified bias correction did not help ({e0} -> {e2})");
    (e0, rel_l2(&m0, &corrected, &sample), corrected, r)
}

/// bias-correct on QDQ models writes the int32 biases behind DequantizeLinear (rounded to their scale)
/// and lowers the held-out output error of Wanda 50%, as it does on the float digits_cnn.
#[test]
fn bias_correct_writes_quantized_biases_and_helps() {
    for (file, model) in [("digits_mlp_qdq_s8.onnx", "digits_mlp"), ("digits_cnn_qdq_u8pc.onnx", "digits_cnn")] {
        let (e0, e1, corrected, r) =
            with_and_without_bias_correct(file, model, "score{method=wanda},mask{sparsity=0.5}");
        let written = notes(&r).iter().filter(|(_, n)| n.contains("added to quantized bias")).count();
        assert_eq!(written, 3, "{file}: {:?}", notes(&r));
        let biases: Vec<&Tensor> = corrected.graph.initializers.iter().filter(|t| t.dtype == DType::I32).collect();
        assert!(biases.iter().any(|t| t.modified), "{file}: no int32 bias changed");
        println!("{file}: wanda 50% rel L2 {e0:.4}, + bias-correct {e1:.4}");
        assert!(e1 < e0, "{file}: bias correction did not help ({e0} -> {e1})");
    }
}

/// Dynamic quantization (MatMulInteger): the shift is computed from the float activation's mean and goes
/// after the `Cast → Mul` rescale (here into the following Add's bias); every MatMul is corrected and the
/// output error on held-out samples goes down.
#[test]
fn bias_correct_on_dynamic_quantized_matmuls() {
    let file = "char_lm_dyn_s8.onnx";
    let (e0, e1, _, r) = with_and_without_bias_correct(file, "char_lm", "score{method=l1},mask{sparsity=0.5}");
    let ints = quantized_weights(&load(&fixture(file)).unwrap()).len();
    let placed = notes(&r).iter().filter(|(_, n)| n.contains("bias shift")).count();
    assert_eq!(placed, ints, "{:?}", notes(&r));
    println!("char_lm dynamic: magnitude 50% rel L2 {e0:.4}, + bias-correct {e1:.4}");
    assert!(e1 < e0, "bias correction did not help ({e0} -> {e1})");
}

/// bias-correct on the QOperator char_lm (QLinearMatMul, no bias input): the shift goes after the
/// DequantizeLinear that reads each op's output, into the following Add's float constant; every weight is
/// corrected and the error against the quantized dense model goes down.
#[test]
fn bias_correct_on_qlinear_matmuls() {
    let file = "char_lm_qop.onnx";
    let (e0, e1, _, r) = with_and_without_bias_correct(file, "char_lm", "score{method=l1},mask{sparsity=0.5}");
    let ns = notes(&r);
    let placed = ns.iter().filter(|(_, n)| n.contains("bias shift") && n.contains("following Add")).count();
    assert_eq!(placed, quantized_weights(&load(&fixture(file)).unwrap()).len(), "{ns:?}");
    println!("char_lm_qop: magnitude 50% rel L2 {e0:.4}, + bias-correct {e1:.4}");
    assert!(e1 < e0, "bias correction did not help ({e0} -> {e1})");
}

/// bias-correct on QLinearConv / QGemm (digits_cnn_qop): the int32 biases change by round(shift / (x_scale ·
/// w_scale[c])), nothing else changes shape. tract cannot run QGemm, so the statistics come from a
/// calibrator that can: here the check is structural (the numbers are in scripts/quant_ort_check.py).
#[test]
fn bias_correct_writes_qoperator_int32_biases() {
    let m0 = load(&fixture("digits_cnn_qop.onnx")).unwrap();
    let cal = TractCalibrator::new(&calib_feed("digits_cnn", &m0), 16).unwrap();
    let mut m1 = m0.clone();
    let res = Pipeline::parse("score{method=l1},mask{sparsity=0.5},bias-correct{verify=false}")
        .unwrap()
        .run(&mut m1, Some(&cal as &dyn sparsify_onnx::Calibrator));
    match res {
        Ok(r) => {
            let ns = notes(&r);
            println!("digits_cnn_qop bias-correct: {ns:?}");
            let written = ns.iter().filter(|(_, n)| n.contains("added to quantized bias")).count();
            assert_eq!(written, 3, "{ns:?}");
            for name in ["onnx::Conv_22_quantized", "conv2.bias_quantized", "fc.bias_quantized"] {
                let (a, b) = (m0.graph.initializer(name).unwrap(), m1.graph.initializer(name).unwrap());
                assert_eq!((a.dtype, &a.dims), (b.dtype, &b.dims), "{name}");
                assert!(a.bytes() != b.bytes(), "{name} unchanged");
            }
        }
        Err(e) => panic!("digits_cnn_qop: bias-correct failed: {e}"),
    }
}
