//! Calibrated scores and reconstruction on quantized weights: Wanda on QDQ, dynamic and QOperator models
//! (the float activation feeding the op), SparseGPT requantizing QDQ weights.

use crate::calib_feed;
use crate::common;
use crate::common::quant::{fixture, ints, notes, quantized_weights, run, scales, zero_points};
use crate::runs::{accuracy, output_error, test_set};
use sparsify_onnx::ir::{Model, Tensor, WeightId};
use sparsify_onnx::validate::{self, ModelSource};
use sparsify_onnx::{input_decls, load, to_bytes, TractCalibrator};

/// The QDQ model with every quantized weight replaced by its dequantized float values (the
/// DequantizeLinear node removed, its output now a float initializer); activations keep their QDQ.
fn dequantized_copy(m: &Model) -> Model {
    let mut f = m.clone();
    for w in quantized_weights(m) {
        let vals: Vec<f32> = {
            let g = &m.graph;
            let t = g.weight(&w.id).unwrap();
            let (q, zp, s) = (ints(t), zero_points(g, &w), scales(g, &w));
            (0..q.len()).map(|i| (q[i] - zp[i]) as f32 * s[i]).collect()
        };
        let g = &mut f.graph;
        let (dq, _) = g.consumers(w.id.name())[0];
        let out = g.node(dq).outputs[0].clone();
        let dims = g.weight(&w.id).unwrap().dims.clone();
        g.remove_node(dq);
        g.initializers.push(Tensor::from_f32(out, dims, &vals).unwrap());
    }
    f.graph.relink();
    f
}

#[test]
fn wanda_on_qdq_decides_like_wanda_on_the_dequantized_float_model() {
    for (file, model) in [("digits_mlp_qdq_s8.onnx", "digits_mlp"), ("digits_cnn_qdq_u8pc.onnx", "digits_cnn")] {
        let m0 = load(&fixture(file)).unwrap();
        let f0 = dequantized_copy(&m0);
        let calib = calib_feed(model, &m0);
        let cal = TractCalibrator::new(&calib, 16).unwrap();
        // The float copy computes the same function.
        let a = validate::run_model(ModelSource::Bytes(&to_bytes(&m0).unwrap()), &calib, &[]).unwrap();
        let b = validate::run_model(ModelSource::Bytes(&to_bytes(&f0).unwrap()), &calib, &[]).unwrap();
        assert!(a[0].1.bit_identical(&b[0].1), "{file}: the dequantized copy computes something else");
        for text in ["score{method=wanda},mask{sparsity=0.5}", "score{method=wanda},nm-legalize{n=2,m=4}"] {
            let (mut mq, mut mf) = (m0.clone(), f0.clone());
            let rq = run(text, &mut mq, Some(&cal));
            run(text, &mut mf, Some(&cal));
            assert!(
                !notes(&rq).iter().any(|(_, n)| n.contains("using l1")),
                "{file}: wanda fell back: {:?}",
                notes(&rq)
            );
            for w in quantized_weights(&m0) {
                let zp = zero_points(&m0.graph, &w);
                let q = ints(mq.graph.weight(&w.id).unwrap());
                let qz: Vec<bool> = q.iter().zip(&zp).map(|(a, b)| a == b).collect();
                let (dq, _) = m0.graph.consumers(w.id.name())[0];
                let fname = m0.graph.node(dq).outputs[0].clone();
                let fz = mf.graph.weight(&WeightId::Init(fname)).unwrap().zero_flags();
                let differ = qz.iter().zip(&fz).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{file} {text}: '{}' decisions differ in {differ} elements", w.id.name());
            }
            println!("{file}: {text}: identical decisions on the quantized and dequantized float weights");
        }
    }
}

#[test]
fn sparsegpt_requantizes_qdq_weights() {
    for (file, model) in [("digits_mlp_qdq_s8.onnx", "digits_mlp"), ("digits_cnn_qdq_u8pc.onnx", "digits_cnn")] {
        let m0 = load(&fixture(file)).unwrap();
        let calib = calib_feed(model, &m0);
        let cal = TractCalibrator::new(&calib, 16).unwrap();
        let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(&m0)).unwrap();
        let mut ms = m0.clone();
        let r = run("sparsegpt{sparsity=0.5}", &mut ms, Some(&cal));
        let mut mm = m0.clone();
        run("score{method=l1},mask{sparsity=0.5}", &mut mm, None);
        let mut pruned = 0;
        for w in quantized_weights(&m0) {
            let t = ms.graph.weight(&w.id).unwrap();
            let (q, zp) = (ints(t), zero_points(&m0.graph, &w));
            let zeros = q.iter().zip(&zp).filter(|(a, b)| a == b).count();
            if notes(&r).iter().any(|(s, n)| s == w.id.name() && n.starts_with("skipped")) {
                continue;
            }
            assert!(zeros >= q.len() / 2, "{file}: '{}' has {zeros} of {} zeros", w.id.name(), q.len());
            pruned += 1;
        }
        assert!(pruned > 0, "{file}: sparsegpt pruned nothing: {:?}", notes(&r));
        let (es, _) = output_error(&m0, &ms, &sample);
        let (em, _) = output_error(&m0, &mm, &sample);
        let acc = test_set(model).map(|(x, y)| (accuracy(&m0, &x, &y), accuracy(&ms, &x, &y), accuracy(&mm, &x, &y)));
        println!(
            "{file}: sparsegpt 50% (requantized) max |Δ output| {es:.4}, magnitude 50% {em:.4}{}",
            acc.map(|(a, b, c)| format!(
                "; accuracy dense {:.2}%, sparsegpt {:.2}%, magnitude {:.2}%",
                100.0 * a,
                100.0 * b,
                100.0 * c
            ))
            .unwrap_or_default()
        );
    }
}

/// Wanda on the dynamic (MatMulInteger) and QOperator (QLinearMatMul) char_lm: the activation is the float
/// input of the `DynamicQuantizeLinear` / `QuantizeLinear` feeding the op. Checked against norms computed
/// here: per output column, no pruned element scores above a kept one (|deq w|·‖x_k‖₂; the library scores
/// in f32, so a relative 1e-5 separates genuine inversions from rounding).
#[test]
fn wanda_on_dynamic_and_qoperator_uses_the_float_activation() {
    for file in ["char_lm_dyn_s8.onnx", "char_lm_qop.onnx"] {
        let m0 = load(&fixture(file)).unwrap();
        let g = &m0.graph;
        let calib = calib_feed("char_lm", &m0);
        let cal = TractCalibrator::new(&calib, 16).unwrap();
        let mut m1 = m0.clone();
        let r = run("score{method=wanda},mask{sparsity=0.5}", &mut m1, Some(&cal));
        let fallbacks: Vec<String> =
            notes(&r).into_iter().filter(|(_, n)| n.contains("using l1")).map(|(s, n)| format!("{s}: {n}")).collect();
        // The float activation of each weight, found here: the quantizer's input.
        let mut acts = Vec::new();
        for w in quantized_weights(&m0) {
            let node = g.node(w.uses[0].node);
            let q = g.node(g.producer_of(&node.inputs[0]).unwrap());
            if matches!(q.op_type.as_str(), "DynamicQuantizeLinear" | "QuantizeLinear") {
                acts.push((w, q.inputs[0].clone()));
            } else {
                assert!(
                    fallbacks.iter().any(|f| f.starts_with(w.id.name()) && f.contains("no float activation")),
                    "{file}: '{}' has no quantizer input but no fallback note: {fallbacks:?}",
                    w.id.name()
                );
            }
        }
        assert_eq!(fallbacks.len() + acts.len(), 9, "{file}: {fallbacks:?}");
        let names: Vec<String> = acts.iter().map(|a| a.1.clone()).collect();
        // Dynamic quantization depends on the batch (its scale is the batch's range): run the same batches
        // of 16 rows as the calibrator.
        let bytes = to_bytes(&m0).unwrap();
        let mut sums: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for batch in validate::split_batches(&calib, 16).unwrap() {
            let outs = validate::run_model(ModelSource::Bytes(&bytes), &batch, &names).unwrap();
            for (sq, (_, a)) in sums.iter_mut().zip(&outs[outs.len() - names.len()..]) {
                let k = *a.shape().last().unwrap();
                sq.resize(k, 0.0);
                for (i, v) in a.to_f64_vec().into_iter().enumerate() {
                    sq[i % k] += v * v;
                }
            }
        }
        for ((w, x), sq) in acts.iter().zip(&sums) {
            let k = sq.len();
            let t0 = g.weight(&w.id).unwrap();
            let (q0, zp, s) = (ints(t0), zero_points(g, w), scales(g, w));
            let q1 = ints(m1.graph.weight(&w.id).unwrap());
            let (rows, cols) = (t0.dims[0] as usize, t0.dims[1] as usize);
            assert_eq!(rows, k, "{file}: '{}' reads {k} features through '{x}'", w.id.name());
            for c in 0..cols {
                let score = |i: usize| ((q0[i] - zp[i]) as f64 * s[i] as f64).abs() * sq[i / cols].sqrt();
                let idx: Vec<usize> = (0..rows).map(|r| r * cols + c).collect();
                let pruned = idx.iter().filter(|&&i| q1[i] == zp[i]).count();
                assert_eq!(pruned, (rows / 2).max(idx.iter().filter(|&&i| q0[i] == zp[i]).count()));
                let max_pruned = idx.iter().filter(|&&i| q1[i] == zp[i]).map(|&i| score(i)).fold(0.0, f64::max);
                let min_kept = idx.iter().filter(|&&i| q1[i] != zp[i]).map(|&i| score(i)).fold(f64::INFINITY, f64::min);
                assert!(
                    max_pruned <= min_kept * (1.0 + 1e-5),
                    "{file}: '{}' column {c}: pruned score {max_pruned} > kept {min_kept}",
                    w.id.name()
                );
            }
        }
        println!("{file}: wanda on {} weights from float activations, {} fell back to l1", acts.len(), fallbacks.len());
    }
}
