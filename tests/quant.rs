//! Quantized models (issue 14), on the committed fixtures in `tests/data/quant/` (made once by
//! `scripts/make_quant_fixtures.py` with onnxruntime's quantizer; no Python here): QDQ int8 per tensor,
//! QDQ uint8 per channel (zero point 128), dynamic (MatMulInteger) and QOperator (QLinearConv, QGemm,
//! QLinearMatMul).
//!
//! The checks decode the quantized bytes and zero points here, independently of `sparsify_ir::quant`:
//! exact floor(n/2) dequantized zeros (`q == zp`) with kept bytes identical, magnitude decisions on the
//! dequantized values, N:M along the reduction axis (the TensorRT 2:4 rule), `inspect` counting q == zp,
//! Wanda on QDQ equal to Wanda on the dequantized float model, tract runs with the output error printed.

mod common;

use common::quant::{fixture, ints, notes, quantized_weights, run, scales, zero_points, FIXTURES};
use common::rel_l2;

use sparsify_onnx::ir::{DType, Model, Tensor, WeightId};
use sparsify_onnx::validate::{self, Array, Feed, ModelSource};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};

#[test]
fn every_format_exposes_its_quantized_weights() {
    let want = [3, 3, 9, 3, 9];
    for ((file, _, _), n) in FIXTURES.iter().zip(want) {
        let m = load(&fixture(file)).unwrap();
        let ws = quantized_weights(&m);
        assert_eq!(ws.len(), n, "{file}");
        for w in &ws {
            let p = m.graph.weight_quant(&w.id).unwrap().unwrap_or_else(|| panic!("{file}: {}", w.id.name()));
            let zp = zero_points(&m.graph, w);
            let inner = zp.len() / p.zero_point.len();
            assert!(zp.iter().enumerate().all(|(i, z)| *z == p.zero_point[i / inner]), "{file}: '{}'", w.id.name());
            assert!(w.uses[0].quant.is_some(), "{file}: '{}' records its quantization slots", w.id.name());
            // Dequantized values equal (q − zp)·scale decoded here.
            let t = m.graph.weight(&w.id).unwrap();
            let (q, zp, s) = (ints(t), zero_points(&m.graph, w), scales(&m.graph, w));
            let v = m.graph.weight_values(&w.id).unwrap();
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, (q[i] - zp[i]) as f32 * s[i], "{file}: '{}'[{i}]", w.id.name());
            }
        }
        // The default scope (Conv|Gemm|MatMul) selects every one of them.
        let sel = sparsify_onnx::passes::scope::Scope::default().select(&m.graph);
        assert_eq!(sel.iter().filter(|s| s.info.is_some()).count(), n, "{file}: default scope");
    }
}

#[test]
fn magnitude_half_is_exact_in_dequantized_zeros_and_keeps_bytes() {
    for (file, _, _) in FIXTURES {
        let m0 = load(&fixture(file)).unwrap();
        let mut m1 = m0.clone();
        run("score{method=l1},mask{sparsity=0.5}", &mut m1, None);
        for w in quantized_weights(&m0) {
            let (t0, t1) = (m0.graph.weight(&w.id).unwrap(), m1.graph.weight(&w.id).unwrap());
            let (q0, q1, zp, s) = (ints(t0), ints(t1), zero_points(&m0.graph, &w), scales(&m0.graph, &w));
            let n = q0.len();
            let zeros0 = (0..n).filter(|&i| q0[i] == zp[i]).count();
            let zeros1 = (0..n).filter(|&i| q1[i] == zp[i]).count();
            assert_eq!(zeros1, (n / 2).max(zeros0), "{file}: '{}' ({n} elements)", w.id.name());
            let (mut max_pruned, mut min_kept) = (0f32, f32::INFINITY);
            for i in 0..n {
                if q1[i] != zp[i] {
                    assert_eq!(q1[i], q0[i], "{file}: kept element {i} of '{}' changed", w.id.name());
                    min_kept = min_kept.min(((q0[i] - zp[i]) as f32 * s[i]).abs());
                } else {
                    max_pruned = max_pruned.max(((q0[i] - zp[i]) as f32 * s[i]).abs());
                }
            }
            assert!(max_pruned <= min_kept, "{file}: '{}': pruned |w| {max_pruned} > kept {min_kept}", w.id.name());
            // Byte-level: only pruned elements differ.
            let b0 = t0.bytes();
            let b1 = t1.bytes();
            assert!((0..n).all(|i| b0[i] == b1[i] || q1[i] == zp[i]), "{file}");
        }
        println!("{file}: exact floor(n/2) dequantized zeros, kept bytes identical");
    }
}

/// The TensorRT 2:4 rule on the dequantized weight: in every run of 4 consecutive elements along the
/// reduction axis, at most 2 are non-zero (q != zp). Returns (groups, violating groups).
fn nm_violations(q: &[i32], zp: &[i32], dims: &[usize], red: usize) -> (usize, usize) {
    let inner: usize = dims[red + 1..].iter().product();
    let outer: usize = dims[..red].iter().product();
    let (mut groups, mut bad) = (0, 0);
    for o in 0..outer {
        for r0 in (0..dims[red]).step_by(4) {
            for k in 0..inner {
                let nz = (r0..r0 + 4).filter(|&r| {
                    let i = (o * dims[red] + r) * inner + k;
                    q[i] != zp[i]
                });
                groups += 1;
                bad += usize::from(nz.count() > 2);
            }
        }
    }
    (groups, bad)
}

#[test]
fn nm_legalize_output_passes_check_and_the_tensorrt_rule() {
    for (file, _, _) in FIXTURES {
        let m0 = load(&fixture(file)).unwrap();
        let mut m1 = m0.clone();
        run("nm-legalize{n=2,m=4}", &mut m1, None);
        let rows = sparsify_onnx::passes::nm_check::check_nm(&m1, 2, 4, false);
        assert!(sparsify_onnx::passes::nm_check::all_compliant(&rows), "{file}: {rows:?}");
        let rows0 = sparsify_onnx::passes::nm_check::check_nm(&m0, 2, 4, false);
        let mut checked = 0;
        for w in quantized_weights(&m0) {
            let t = m1.graph.weight(&w.id).unwrap();
            let dims = t.shape();
            if !dims[w.red_axis()].is_multiple_of(4) {
                continue;
            }
            let zp = zero_points(&m0.graph, &w);
            let (groups, bad) = nm_violations(&ints(t), &zp, &dims, w.red_axis());
            assert_eq!(bad, 0, "{file}: '{}' violates 2:4 in {bad} of {groups} groups", w.id.name());
            let (_, bad0) = nm_violations(&ints(m0.graph.weight(&w.id).unwrap()), &zp, &dims, w.red_axis());
            assert!(bad0 > 0, "{file}: '{}' was already 2:4 (the check proves nothing)", w.id.name());
            let row = rows.iter().find(|r| r.tensor == w.id.name()).unwrap();
            assert!(row.eligible && row.compliant == Some(true), "{file}: {row:?}");
            let row0 = rows0.iter().find(|r| r.tensor == w.id.name()).unwrap();
            assert_eq!(row0.compliant, Some(false), "{file}: check saw the dense weight as compliant");
            checked += 1;
        }
        assert!(checked > 0, "{file}: no weight was checked");
        println!("{file}: {checked} weights 2:4 along the reduction axis on dequantized values");
    }
}

#[test]
fn inspect_counts_zero_points_not_zero_bytes() {
    let path = fixture("digits_cnn_qdq_u8pc.onnx");
    let m = load(&path).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sparsify-onnx"))
        .args(["inspect", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let mut zero_bytes_seen = false;
    for w in quantized_weights(&m) {
        let t = m.graph.weight(&w.id).unwrap();
        let (q, zp) = (ints(t), zero_points(&m.graph, &w));
        assert!(zp.iter().all(|&z| z == 128), "fixture: zero point 128");
        let n = q.len() as f64;
        let want = q.iter().zip(&zp).filter(|(a, b)| a == b).count() as f64 / n;
        let raw_zero = q.iter().filter(|&&x| x == 0).count() as f64 / n;
        zero_bytes_seen |= raw_zero > 0.0;
        let row = rows.iter().find(|r| r["tensor"] == w.id.name()).unwrap();
        assert_eq!(row["sparsity"].as_f64().unwrap(), want, "{}", w.id.name());
        assert!(row["note"].is_null(), "{}: {}", w.id.name(), row["note"]);
        let q = row["quant"].as_str().unwrap();
        assert!(q.starts_with("per axis 0, zero point 128"), "{}: {q}", w.id.name());
        println!("{}: sparsity {want:.4} (q == 0 would say {raw_zero:.4})", w.id.name());
    }
    assert!(zero_bytes_seen, "no q == 0 element: the test would not tell the two counts apart");
    // The first conv has no element at its zero point: a dense weight reports sparsity 0.
    let conv1 = rows.iter().find(|r| r["tensor"] == "onnx::Conv_21_quantized").unwrap();
    assert_eq!(conv1["sparsity"].as_f64().unwrap(), 0.0);
}

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

fn calib_feed(model: &str, m: &Model) -> Feed {
    validate::load_feed(&common::bundled(model).join("calib"), &input_decls(m)).unwrap()
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

fn test_set(model: &str) -> Option<(Array, Vec<i64>)> {
    let dir = common::bundled(model);
    let x = validate::npy::read_npy(&dir.join("test_x.npy")).ok()?;
    let y = validate::npy::read_npy(&dir.join("test_y.npy")).ok()?;
    Some((x, y.to_f64_vec().iter().map(|v| *v as i64).collect()))
}

fn accuracy(m: &Model, x: &Array, y: &[i64]) -> f64 {
    let name = input_decls(m)[0].name.clone();
    let feed = Feed { arrays: vec![(name, x.clone())] };
    let out = validate::run_model(ModelSource::Bytes(&to_bytes(m).unwrap()), &feed, &[]).unwrap();
    let logits = out[0].1.to_f64_vec();
    let k = logits.len() / y.len();
    let hits = y
        .iter()
        .enumerate()
        .filter(|(i, &l)| {
            let row = &logits[i * k..(i + 1) * k];
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best as i64 == l
        })
        .count();
    hits as f64 / y.len() as f64
}

/// Max |pruned − dense| over the sample outputs, and the dense output's max |value|.
fn output_error(dense: &Model, pruned: &Model, feed: &Feed) -> (f64, f64) {
    let a = validate::run_model(ModelSource::Bytes(&to_bytes(dense).unwrap()), feed, &[]).unwrap();
    let b = validate::run_model(ModelSource::Bytes(&to_bytes(pruned).unwrap()), feed, &[]).unwrap();
    let (a, b) = (a[0].1.to_f64_vec(), b[0].1.to_f64_vec());
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(err.is_finite());
    (err, a.iter().map(|x| x.abs()).fold(0.0, f64::max))
}

/// Runs every pruned fixture in tract and prints the output error against the quantized dense model
/// (and digits accuracy). Formats tract cannot run are reported "not validated".
#[test]
fn pruned_quantized_models_run_in_tract() {
    let pipelines = ["score{method=l1},mask{sparsity=0.5}", "nm-legalize{n=2,m=4}"];
    for (file, model, tract_runs) in FIXTURES {
        let m0 = load(&fixture(file)).unwrap();
        if !tract_runs {
            println!("{file}: not validated (com.microsoft.QGemm runs in onnxruntime only)");
            continue;
        }
        let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(&m0)).unwrap();
        for text in pipelines {
            let mut m1 = m0.clone();
            run(text, &mut m1, None);
            let (err, scale) = output_error(&m0, &m1, &sample);
            assert!(err > 0.0, "{file}: {text} changed nothing");
            let acc = test_set(model).map(|(x, y)| (accuracy(&m0, &x, &y), accuracy(&m1, &x, &y)));
            println!(
                "{file}: {text}: max |Δ output| {err:.4} (dense max |output| {scale:.2}){}",
                acc.map(|(a, b)| format!(", test accuracy {:.2}% → {:.2}%", 100.0 * a, 100.0 * b)).unwrap_or_default()
            );
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

/// dead-channel-elim on QDQ fixtures: quantized weights lose their dead rows and the matching consumer
/// columns, per-axis scales / zero points along the sliced axis shrink with them, and the result computes
/// exactly what the masked model computes (tract, sample inputs).
#[test]
fn dead_channel_elim_slices_qdq_weights_with_their_scales_and_zero_points() {
    for (file, model) in [("digits_mlp_qdq_s8.onnx", "digits_mlp"), ("digits_cnn_qdq_u8pc.onnx", "digits_cnn")] {
        let m0 = load(&fixture(file)).unwrap();
        let mut masked = m0.clone();
        run("mask{granularity=channel,sparsity=0.25}", &mut masked, None);
        let mut m1 = masked.clone();
        let r = run("dead-channel-elim", &mut m1, None);
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
        let m0 = load(&fixture(file)).unwrap();
        let mut masked = m0.clone();
        run("mask{granularity=channel,sparsity=0.25}", &mut masked, None);
        let mut m1 = masked.clone();
        let r = run("dead-channel-elim", &mut m1, None);
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

/// block-sparsify and channel masks on the uint8 zero-point-128 model: every changed element becomes its
/// zero point (writing byte 0 would be the value −128·scale), kept bytes stay, and a channel mask zeroes
/// whole output channels of the dequantized weight.
#[test]
fn block_and_channel_masks_write_zero_points() {
    let m0 = load(&fixture("digits_cnn_qdq_u8pc.onnx")).unwrap();
    for text in ["block-sparsify{block=1x4,sparsity=0.5}", "score{method=l1},mask{sparsity=0.5,granularity=channel}"] {
        let mut m1 = m0.clone();
        run(text, &mut m1, None);
        let mut changed = 0;
        for w in quantized_weights(&m0) {
            let (q0, q1) = (ints(m0.graph.weight(&w.id).unwrap()), ints(m1.graph.weight(&w.id).unwrap()));
            let zp = zero_points(&m0.graph, &w);
            for i in 0..q0.len() {
                if q1[i] != q0[i] {
                    assert_eq!(q1[i], zp[i], "{text}: '{}'[{i}] became {} (zero point {})", w.id.name(), q1[i], zp[i]);
                    changed += 1;
                }
            }
            let s = m1.graph.weight_sparsity(&w.id).unwrap();
            assert!((0.4..=0.6).contains(&s), "{text}: '{}' sparsity {s}", w.id.name());
            if text.contains("channel") {
                let rows = m0.graph.weight(&w.id).unwrap().dims[0] as usize;
                let per = q1.len() / rows;
                let dead = (0..rows).filter(|r| (0..per).all(|k| q1[r * per + k] == zp[r * per + k])).count();
                assert_eq!(dead, rows / 2, "{text}: '{}' dead channels", w.id.name());
            }
        }
        assert!(changed > 0, "{text}: nothing changed");
    }
}

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

/// Channel permutation would have to permute per-channel scales and zero points with the rows: it refuses
/// every quantized weight with a note, and the model is unchanged.
#[test]
fn permutation_refuses_quantized_weights() {
    for (file, _, _) in FIXTURES {
        let m0 = load(&fixture(file)).unwrap();
        let mut m1 = m0.clone();
        let r = run("nm-legalize{n=2,m=4,permute=true}", &mut m1, None);
        let refused = notes(&r).iter().filter(|(_, n)| n.starts_with("not permuted")).count();
        let eligible = quantized_weights(&m0)
            .iter()
            .filter(|w| m0.graph.weight(&w.id).unwrap().shape()[w.red_axis()].is_multiple_of(4))
            .count();
        assert!(eligible > 0 && refused >= eligible, "{file}: {:?}", notes(&r));
        let mut m2 = m0.clone();
        run("nm-legalize{n=2,m=4}", &mut m2, None);
        assert!(to_bytes(&m1).unwrap() == to_bytes(&m2).unwrap(), "{file}: permute=true changed more than 2:4");
    }
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
