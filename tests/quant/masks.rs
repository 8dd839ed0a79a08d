//! Data-free masks on quantized weights: exact dequantized zeros, N:M along the reduction axis, zero points
//! written for block and channel masks, `inspect` counting q == zp, permutation refused.

use crate::common::quant::{fixture, ints, notes, quantized_weights, run, scales, zero_points, FIXTURES};
use sparsify_onnx::{load, to_bytes};

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
