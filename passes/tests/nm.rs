//! N:M legalization, the `check` report, block sparsity and channel permutation on models built in
//! code, each compared with an independent reference written here with plain strided loops.
#![allow(clippy::type_complexity)] // fixture tables of test cases

use sparsify_ir::{AttrValue, DType, Graph, Model, Node, Tensor, ValueInfo, WeightId};
use sparsify_passes::nm_check::{all_compliant, check_nm};
use sparsify_passes::registry;
use sparsify_passes::scores::WeightScores;
use sparsify_passes::util::permute_region::{find_region, WeightIndex};
use sparsify_pm::{
    AnalysisCache, CalibError, CalibRequest, CalibStat, Calibrator, FeatureAxis, PassCx, PassManager, RunEnv, RunReport,
};
use std::collections::BTreeMap;

// ---------- building models ----------

struct Rng(u64);
impl Rng {
    /// Values in [-1, 1) with 1/1024 resolution, never exactly 0.
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let v = (self.0 % 2047) as f32 - 1023.0;
        (if v == 0.0 { 1.0 } else { v }) / 1024.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn f32t(name: &str, dims: &[i64], rng: &mut Rng) -> Tensor {
    let n = dims.iter().product::<i64>() as usize;
    Tensor::from_f32(name, dims.to_vec(), &rng.vec(n)).unwrap()
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, AttrValue)]) -> Node {
    let mut n = Node::new(op, name, inputs, outputs);
    for (k, v) in attrs {
        n.set_attr(k, v.clone());
    }
    n
}

fn ints(v: &[i64]) -> AttrValue {
    AttrValue::Ints(v.to_vec())
}

fn model(inits: Vec<Tensor>, nodes: Vec<Node>, inputs: &[(&str, &[i64])], outputs: &[&str]) -> Model {
    let mut g = Graph::new();
    g.initializers = inits;
    g.inputs = inputs.iter().map(|(n, d)| ValueInfo::tensor(n, 1, d)).collect();
    g.outputs = outputs.iter().map(|n| ValueInfo::tensor(n, 1, &[])).collect();
    let g = g.with_nodes(nodes);
    Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] }
}

fn run(m: &mut Model, pipeline: &str) -> RunReport {
    let pm = PassManager::parse(pipeline, &registry()).unwrap();
    pm.run(m, RunEnv::default()).unwrap()
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.graph.weight(&WeightId::Init(name.into())).unwrap().to_f32().unwrap().iter().copied().collect()
}

fn notes_for<'a>(r: &'a RunReport, pass: &str, subject: &str) -> Vec<&'a str> {
    r.passes
        .iter()
        .filter(|p| p.pass == pass)
        .flat_map(|p| p.notes.iter())
        .filter(|n| n.subject == subject)
        .map(|n| n.message.as_str())
        .collect()
}

// ---------- the independent reference ----------

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// N:M with plain loops: every element whose coordinate along `axis` is a multiple of m starts a group
/// of m elements `stride` apart; non-zeros rank first, then score, ties keep the lower index.
fn ref_nm(w: &[f32], scores: &[f32], shape: &[usize], axis: usize, n: usize, m: usize) -> Vec<f32> {
    let st = strides(shape)[axis];
    let mut out = w.to_vec();
    for i in 0..w.len() {
        if !((i / st) % shape[axis]).is_multiple_of(m) {
            continue;
        }
        let mut members: Vec<usize> = (0..m).map(|k| i + k * st).collect();
        members.sort_by(|&x, &y| {
            (w[y] != 0.0).cmp(&(w[x] != 0.0)).then(scores[y].partial_cmp(&scores[x]).unwrap()).then(x.cmp(&y))
        });
        for &j in &members[n..] {
            out[j] = 0.0;
        }
    }
    out
}

fn ref_violations(w: &[f32], shape: &[usize], axis: usize, n: usize, m: usize) -> (usize, usize) {
    let st = strides(shape)[axis];
    let (mut bad, mut total) = (0, 0);
    for i in 0..w.len() {
        if ((i / st) % shape[axis]).is_multiple_of(m) {
            total += 1;
            if (0..m).filter(|k| w[i + k * st] != 0.0).count() > n {
                bad += 1;
            }
        }
    }
    (bad, total)
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

// ---------- every route ----------

/// One model with a weight on every route; returns it with (weight, shape, expected axis or skip text).
fn routes_model() -> (Model, Vec<(&'static str, Vec<usize>, Result<usize, &'static str>)>) {
    let mut r = Rng(7);
    let mut inits = vec![
        f32t("conv_w", &[6, 8, 3, 3], &mut r),
        f32t("gconv_w", &[6, 4, 3, 3], &mut r),
        f32t("dw_w", &[8, 1, 3, 3], &mut r),
        f32t("gemm_b0", &[8, 6], &mut r),
        f32t("gemm_b1", &[6, 8], &mut r),
        f32t("gemm_at", &[8, 5], &mut r),
        f32t("mm2", &[8, 6], &mut r),
        f32t("mm3", &[2, 8, 6], &mut r),
        f32t("tr_w", &[2, 6, 8, 3], &mut r),
        f32t("shared", &[8, 8], &mut r),
        f32t("odd", &[6, 8], &mut r),
    ];
    let mut h = Tensor::new("half_w", DType::F16, vec![8, 6], vec![0u8; 96].into()).unwrap();
    let hv: Vec<f64> = r.vec(48).iter().map(|v| *v as f64).collect();
    h.write_f64(&ndarray::ArrayD::from_shape_vec(vec![8, 6], hv).unwrap()).unwrap();
    inits.push(h);
    let q: Vec<u8> = (0..48).map(|i| (i * 37 % 251) as u8).collect();
    inits.push(Tensor::new("q_w", DType::I8, vec![8, 6], q.into()).unwrap());
    inits.push(Tensor::from_f32("q_scale", vec![], &[0.05]).unwrap());
    let d: Vec<u8> = r.vec(48).iter().flat_map(|v| (*v as f64).to_le_bytes()).collect();
    inits.push(Tensor::new("f64_w", DType::F64, vec![8, 6], d.into()).unwrap());
    let nodes = vec![
        node("Conv", "conv", &["img", "conv_w"], &["y0"], &[]),
        node("Conv", "gconv", &["img", "gconv_w"], &["y1"], &[("group", AttrValue::Int(2))]),
        node("Conv", "dwconv", &["img", "dw_w"], &["y2"], &[("group", AttrValue::Int(8))]),
        node("Gemm", "gemm0", &["x", "gemm_b0"], &["y3"], &[]),
        node("Gemm", "gemm1", &["x", "gemm_b1"], &["y4"], &[("transB", AttrValue::Int(1))]),
        node("Gemm", "gemm_a", &["gemm_at", "xb"], &["y5"], &[("transA", AttrValue::Int(1))]),
        node("MatMul", "mm2", &["x", "mm2"], &["y6"], &[]),
        node("MatMul", "mm3", &["x3", "mm3"], &["y7"], &[]),
        node("Transpose", "tr", &["tr_w"], &["tr_out"], &[("perm", ints(&[1, 2, 3, 0]))]),
        node("Conv", "trconv", &["img", "tr_out"], &["y8"], &[]),
        node("Cast", "cast", &["half_w"], &["half_f32"], &[("to", AttrValue::Int(1))]),
        node("MatMul", "mm_cast", &["x", "half_f32"], &["y9"], &[]),
        node("DequantizeLinear", "dq", &["q_w", "q_scale"], &["q_f32"], &[]),
        node("MatMul", "mm_dq", &["x", "q_f32"], &["y10"], &[]),
        node("MatMul", "mm_shared", &["x", "shared"], &["y11"], &[]),
        node("Gemm", "gemm_shared", &["x", "shared"], &["y12"], &[("transB", AttrValue::Int(1))]),
        node("MatMul", "mm_odd", &["x6", "odd"], &["y13"], &[]),
        node("MatMul", "mm_f64", &["x", "f64_w"], &["y14"], &[]),
    ];
    let outs = ["y0", "y1", "y2", "y3", "y4", "y5", "y6", "y7", "y8", "y9", "y10", "y11", "y12", "y13", "y14"];
    let inputs: [(&str, &[i64]); 5] =
        [("img", &[1, 8, 5, 5]), ("x", &[3, 8]), ("xb", &[8, 3]), ("x3", &[2, 3, 8]), ("x6", &[3, 6])];
    let m = model(inits, nodes, &inputs, &outs);
    let expect = vec![
        ("conv_w", vec![6, 8, 3, 3], Ok(1)),
        ("gconv_w", vec![6, 4, 3, 3], Ok(1)),
        ("dw_w", vec![8, 1, 3, 3], Err("depthwise")),
        ("gemm_b0", vec![8, 6], Ok(0)),
        ("gemm_b1", vec![6, 8], Ok(1)),
        ("gemm_at", vec![8, 5], Ok(0)),
        ("mm2", vec![8, 6], Ok(0)),
        ("mm3", vec![2, 8, 6], Ok(1)),
        // Conv input axis 1 is weight axis perm[1] = 2 (Polygraphy's perm.index(1) = 0 would be wrong).
        ("tr_w", vec![2, 6, 8, 3], Ok(2)),
        ("half_w", vec![8, 6], Ok(0)),
        ("q_w", vec![8, 6], Err("dtype i8")),
        ("shared", vec![8, 8], Err("axis conflict")),
        ("odd", vec![6, 8], Err("not a multiple of m=4")),
        ("f64_w", vec![8, 6], Err("f64")),
    ];
    (m, expect)
}

#[test]
fn every_route_matches_the_reference_and_skips_say_why() {
    let (mut m, expect) = routes_model();
    let before: BTreeMap<&str, Vec<f32>> =
        expect.iter().filter(|e| e.2.is_ok()).map(|(n, ..)| (*n, values(&m, n))).collect();
    let raw_before: BTreeMap<&str, Vec<u8>> = expect
        .iter()
        .map(|(n, ..)| (*n, m.graph.weight(&WeightId::Init(n.to_string())).unwrap().bytes().to_vec()))
        .collect();
    // Dense weights violate 2:4 in every group; check_nm agrees with the reference count.
    let rows = check_nm(&m, 2, 4, false);
    for (name, shape, want) in &expect {
        let row = rows.iter().find(|r| r.tensor == *name).unwrap_or_else(|| panic!("no row for {name}"));
        match want {
            Ok(axis) => {
                assert!(row.eligible, "{name}: {:?}", row.reason);
                assert_eq!(row.axis, Some(*axis), "{name}");
                let (bad, total) = ref_violations(&before[name], shape, *axis, 2, 4);
                assert_eq!((row.violating_groups, row.total_groups), (bad, total), "{name}");
                assert_eq!(row.compliant, Some(false), "{name}");
            }
            Err(why) => {
                assert!(!row.eligible && row.reason.as_deref().unwrap_or("").contains(why), "{name}: {:?}", row.reason);
            }
        }
    }
    assert!(!all_compliant(&rows));

    let report = run(&mut m, "nm-legalize{n=2,m=4}");
    let c = &report.passes[0].counters;
    let n_ok = expect.iter().filter(|e| e.2.is_ok()).count();
    assert_eq!(c["eligible"], n_ok as f64);
    assert_eq!(c["skipped"], (expect.len() - n_ok) as f64);
    let mut zeros = 0usize;
    for (name, shape, want) in &expect {
        match want {
            Ok(axis) => {
                let after = values(&m, name);
                let w = &before[name];
                let want_vals = ref_nm(w, &abs(w), shape, *axis, 2, 4);
                assert_eq!(after, want_vals, "{name}");
                zeros += want_vals.iter().filter(|v| **v == 0.0).count();
                let notes = notes_for(&report, "nm-legalize", name);
                assert!(notes.iter().any(|n| n.contains(&format!("along axis {axis}"))), "{name}: {notes:?}");
            }
            Err(why) => {
                let raw = m.graph.weight(&WeightId::Init(name.to_string())).unwrap().bytes().to_vec();
                assert_eq!(raw, raw_before[name], "{name} must be untouched");
                let notes = notes_for(&report, "nm-legalize", name);
                assert!(notes.iter().any(|n| n.starts_with("skipped") && n.contains(why)), "{name}: {notes:?}");
            }
        }
    }
    assert_eq!(c["zeros_added"], zeros as f64);
    // check_nm agrees with the legalized model.
    let rows = check_nm(&m, 2, 4, false);
    assert!(all_compliant(&rows));
    for r in rows.iter().filter(|r| r.eligible) {
        assert_eq!(r.violating_groups, 0, "{}", r.tensor);
        assert!(r.total_groups > 0);
    }
    // The f16 weight is still f16 and the kept elements are bit-identical.
    let hw = m.graph.weight(&WeightId::Init("half_w".into())).unwrap();
    assert_eq!(hw.dtype, DType::F16);
    for (i, ch) in hw.bytes().chunks(2).enumerate() {
        if ch != [0, 0] {
            assert_eq!(ch, &raw_before["half_w"][2 * i..2 * i + 2]);
        }
    }
    // Idempotent.
    let snapshot: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    let again = run(&mut m, "nm-legalize{n=2,m=4}");
    assert_eq!(again.passes[0].counters["zeros_added"], 0.0);
    assert!(!again.passes[0].changed);
    let now: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    assert_eq!(snapshot, now);
}

#[test]
fn other_patterns_ties_and_masked_weights() {
    // 1:3 and 3:8 on a MatMul weight; masked input; ties keep the lower index.
    for (n, mm, k) in [(1usize, 3usize, 6usize), (3, 8, 16), (2, 4, 8)] {
        let mut r = Rng(99 + n as u64);
        let mut w = r.vec(k * 5);
        for i in (0..w.len()).step_by(3) {
            w[i] = 0.0; // already masked
        }
        w[5] = 0.5;
        w[10] = -0.5; // a tie in magnitude
        let mut m = model(
            vec![Tensor::from_f32("w", vec![k as i64, 5], &w).unwrap()],
            vec![node("MatMul", "mm", &["x", "w"], &["y"], &[])],
            &[("x", &[2, k as i64])],
            &["y"],
        );
        run(&mut m, &format!("nm-legalize{{n={n},m={mm}}}"));
        assert_eq!(values(&m, "w"), ref_nm(&w, &abs(&w), &[k, 5], 0, n, mm), "{n}:{mm}");
        let rows = check_nm(&m, n, mm, false);
        assert_eq!(rows[0].compliant, Some(true));
    }
    let all_equal = vec![1.0f32; 8];
    let mut m = model(
        vec![Tensor::from_f32("w", vec![2, 4], &all_equal).unwrap()],
        vec![node("Gemm", "g", &["x", "w"], &["y"], &[("transB", AttrValue::Int(1))])],
        &[("x", &[1, 4])],
        &["y"],
    );
    run(&mut m, "nm-legalize");
    assert_eq!(values(&m, "w"), vec![1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
}

#[test]
fn bad_options_and_strict_mode() {
    for bad in ["nm-legalize{n=4,m=4}", "nm-legalize{n=0}", "check{n=3,m=2}", "nm-legalize{x=1}"] {
        assert!(PassManager::parse(bad, &registry()).is_err(), "{bad}");
    }
    let pm = PassManager::parse("nm-legalize{n=2,m=4}", &registry()).unwrap();
    assert_eq!(
        pm.canonical(),
        "nm-legalize{n=2,m=4,strict=false,permute=false,ops=Conv|Gemm|MatMul,names=*,exclude=\"\",embeddings=false}"
    );
    let mut r = Rng(3);
    let mut m = model(
        vec![f32t("a", &[8, 16], &mut r), f32t("b", &[6, 16], &mut r), f32t("c", &[8, 8], &mut r)],
        vec![
            node("Gemm", "ga", &["x", "a"], &["ya"], &[("transB", AttrValue::Int(1))]),
            node("Gemm", "gb", &["x", "b"], &["yb"], &[("transB", AttrValue::Int(1))]),
            node("Gemm", "gc", &["x8", "c"], &["yc"], &[("transB", AttrValue::Int(1))]),
        ],
        &[("x", &[1, 16]), ("x8", &[1, 8])],
        &["ya", "yb", "yc"],
    );
    let b_before = values(&m, "b");
    let rep = run(&mut m, "nm-legalize{strict=true}");
    assert_eq!(rep.passes[0].counters["eligible"], 1.0);
    assert!(notes_for(&rep, "nm-legalize", "b")[0].contains("multiple of 8"));
    assert!(notes_for(&rep, "nm-legalize", "c")[0].contains("multiple of 16"));
    assert_eq!(values(&m, "b"), b_before);
    let rows = check_nm(&m, 2, 4, true);
    assert_eq!(rows.iter().filter(|r| r.eligible).count(), 1);
    // the check pass changes nothing and reports
    let rep = run(&mut m, "check{n=2,m=4}");
    assert!(!rep.passes[0].changed);
    assert_eq!(rep.passes[0].counters["eligible"], 3.0);
    assert_eq!(rep.passes[0].counters["compliant"], 1.0);
    assert_eq!(rep.passes[0].counters["violating_weights"], 2.0);
}

// ---------- scores from the analysis ----------

#[test]
fn cached_scores_drive_the_choice_and_are_updated() {
    let w: Vec<f32> = (0..16).map(|i| i as f32 + 1.0).collect();
    let mut m = model(
        vec![Tensor::from_f32("w", vec![4, 4], &w).unwrap()],
        vec![node("Gemm", "g", &["x", "w"], &["y"], &[("transB", AttrValue::Int(1))])],
        &[("x", &[1, 4])],
        &["y"],
    );
    // Scores that prefer the smallest magnitudes.
    let s: Vec<f32> = (0..16).map(|i| 100.0 - i as f32).collect();
    let mut cache = AnalysisCache::default();
    let mut scores = WeightScores { method: "test".into(), scores: BTreeMap::new() };
    scores.scores.insert(WeightId::Init("w".into()), ndarray::ArrayD::from_shape_vec(vec![4, 4], s.clone()).unwrap());
    cache.insert(scores);
    let pass = registry().build("nm-legalize", &[]).unwrap();
    let mut cx = PassCx::new(&mut cache, None);
    pass.run(&mut m, &mut cx).unwrap();
    drop(cx);
    assert_eq!(values(&m, "w"), ref_nm(&w, &s, &[4, 4], 1, 2, 4));
    let cached = cache.get::<WeightScores>().unwrap().scores[&WeightId::Init("w".into())].clone();
    for (c, v) in cached.iter().zip(values(&m, "w")) {
        assert_eq!(*c == 0.0, v == 0.0);
    }
}

/// Fixed per-feature squared norms, as a calibrator would measure them.
struct FakeCalib(Vec<f64>);
impl Calibrator for FakeCalib {
    fn collect(&self, _m: &Model, reqs: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        reqs.iter()
            .map(|r| match r {
                CalibRequest::FeatureSqNorm { tensor, axis: FeatureAxis::Last } if tensor == "x" => {
                    Ok(CalibStat::FeatureSqNorm { sums: self.0.clone(), rows: 4 })
                }
                other => Err(CalibError(format!("unexpected request {other:?}"))),
            })
            .collect()
    }
}

#[test]
fn wanda_scores_drive_nm_legalize() {
    let mut r = Rng(11);
    let w = r.vec(8 * 6);
    let mut m = model(
        vec![Tensor::from_f32("w", vec![8, 6], &w).unwrap()],
        vec![node("MatMul", "mm", &["x", "w"], &["y"], &[])],
        &[("x", &[4, 8])],
        &["y"],
    );
    let sq = vec![1.0, 100.0, 0.01, 4.0, 9.0, 0.25, 16.0, 1.0];
    let calib = FakeCalib(sq.clone());
    let pm = PassManager::parse("score{method=wanda},nm-legalize{n=2,m=4}", &registry()).unwrap();
    pm.run(&mut m, RunEnv { calibrator: Some(&calib), verify_each: true }).unwrap();
    // Reference: |w_kj| · ‖X_k‖₂, 2:4 along K (axis 0).
    let scores: Vec<f32> = (0..48).map(|i| w[i].abs() * (sq[i / 6] as f32).sqrt()).collect();
    let want = ref_nm(&w, &scores, &[8, 6], 0, 2, 4);
    assert_eq!(values(&m, "w"), want);
    assert_ne!(want, ref_nm(&w, &abs(&w), &[8, 6], 0, 2, 4), "the test must tell wanda from magnitude");
}

// ---------- block sparsity ----------

/// Reference block pruning on a 2-D view given as (rows, cols, flat index of each view cell).
fn ref_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    at: &dyn Fn(usize, usize) -> usize,
    br: usize,
    bc: usize,
    s: f64,
) -> Vec<f32> {
    let (nbr, nbc) = (rows.div_ceil(br), cols.div_ceil(bc));
    let mut blocks: Vec<(bool, f64, usize)> = Vec::new();
    for b in 0..nbr * nbc {
        let (r0, c0) = (b / nbc * br, b % nbc * bc);
        let mut sum = 0.0;
        let mut nz = false;
        for r in r0..(r0 + br).min(rows) {
            for c in c0..(c0 + bc).min(cols) {
                sum += w[at(r, c)].abs() as f64;
                nz |= w[at(r, c)] != 0.0;
            }
        }
        blocks.push((nz, sum, b));
    }
    blocks.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.partial_cmp(&b.1).unwrap()).then(b.2.cmp(&a.2)));
    let k = (s * (nbr * nbc) as f64 + 1e-9).floor() as usize;
    let mut out = w.to_vec();
    for &(_, _, b) in &blocks[..k] {
        let (r0, c0) = (b / nbc * br, b % nbc * bc);
        for r in r0..(r0 + br).min(rows) {
            for c in c0..(c0 + bc).min(cols) {
                out[at(r, c)] = 0.0;
            }
        }
    }
    out
}

#[test]
fn block_sparsify_matches_the_reference_with_edge_blocks() {
    let mut r = Rng(5);
    let conv = r.vec(6 * 3 * 2 * 2); // [M=6, C=3, 2, 2] -> view [6, 12]
    let kn = r.vec(10 * 7); // Gemm transB=0 [K=10, N=7] -> view [7, 10]
    let mm3 = r.vec(2 * 5 * 3); // MatMul [b=2, K=5, N=3] -> view [3, K·b = 10], columns (k, b)
    let mut m = model(
        vec![
            Tensor::from_f32("conv", vec![6, 3, 2, 2], &conv).unwrap(),
            Tensor::from_f32("kn", vec![10, 7], &kn).unwrap(),
            Tensor::from_f32("mm3", vec![2, 5, 3], &mm3).unwrap(),
        ],
        vec![
            node("Conv", "c", &["img", "conv"], &["y0"], &[]),
            node("Gemm", "g", &["x", "kn"], &["y1"], &[]),
            node("MatMul", "mm", &["x3", "mm3"], &["y2"], &[]),
        ],
        &[("img", &[1, 3, 4, 4]), ("x", &[1, 10]), ("x3", &[2, 1, 5])],
        &["y0", "y1", "y2"],
    );
    let rep = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5}");
    let conv_want = ref_blocks(&conv, 6, 12, &|r, c| r * 12 + c, 4, 4, 0.5);
    let kn_want = ref_blocks(&kn, 7, 10, &|r, c| c * 7 + r, 4, 4, 0.5);
    let mm3_want = ref_blocks(&mm3, 3, 10, &|r, c| (c % 2) * 15 + (c / 2) * 3 + r, 4, 4, 0.5);
    assert_eq!(values(&m, "conv"), conv_want);
    assert_eq!(values(&m, "kn"), kn_want);
    assert_eq!(values(&m, "mm3"), mm3_want);
    let c = &rep.passes[0].counters;
    // blocks: conv 2x3 = 6 -> 3; kn 2x3 = 6 -> 3; mm3 1x3 = 3 -> 1
    assert_eq!(c["blocks_total"], 15.0);
    assert_eq!(c["blocks_pruned"], 7.0);
    assert!(notes_for(&rep, "block-sparsify", "kn")[0].contains("block density 0.5000"));
    let snap = values(&m, "kn");
    let again = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5}");
    assert_eq!(again.passes[0].counters["zeros_added"], 0.0);
    assert_eq!(values(&m, "kn"), snap);
    assert!(PassManager::parse("block-sparsify{block=4}", &registry()).is_err());
    assert!(PassManager::parse("block-sparsify{sparsity=1.5}", &registry()).is_err());
}

// ---------- channel permutation ----------

/// A tiny evaluator for 2-D graphs (Gemm, MatMul, BatchNormalization, Relu, Sigmoid, Add, Mul).
fn eval(m: &Model, x: &[f64], rows: usize) -> BTreeMap<String, Vec<f64>> {
    let g = &m.graph;
    let mut env: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new(); // values, columns
    env.insert("x".into(), (x.to_vec(), x.len() / rows));
    let konst = |name: &str| -> Vec<f64> { g.initializer(name).unwrap().to_f64().unwrap().iter().copied().collect() };
    for (_, n) in g.nodes() {
        let get = |i: usize| env.get(&n.inputs[i]).cloned();
        let (out, cols) = match n.op_type.as_str() {
            "Gemm" | "MatMul" => {
                let (a, k) = get(0).unwrap();
                let t = g.initializer(&n.inputs[1]).unwrap();
                let w = konst(&n.inputs[1]);
                let tb = n.attr_int("transB").unwrap_or(0) != 0;
                let nn = if tb { t.dims[0] as usize } else { t.dims[1] as usize };
                let mut y = vec![0.0; rows * nn];
                for r in 0..rows {
                    for j in 0..nn {
                        let mut acc = 0.0;
                        for kk in 0..k {
                            let wv = if tb { w[j * k + kk] } else { w[kk * nn + j] };
                            acc += a[r * k + kk] * wv;
                        }
                        y[r * nn + j] = acc + n.inputs.get(2).map_or(0.0, |b| konst(b)[j]);
                    }
                }
                (y, nn)
            }
            "BatchNormalization" => {
                let (a, c) = get(0).unwrap();
                let p: Vec<Vec<f64>> = (1..5).map(|i| konst(&n.inputs[i])).collect();
                let y = (0..a.len()).map(|i| {
                    let j = i % c;
                    (a[i] - p[2][j]) / (p[3][j] + 1e-5).sqrt() * p[0][j] + p[1][j]
                });
                (y.collect(), c)
            }
            "Relu" | "Sigmoid" => {
                let (a, c) = get(0).unwrap();
                let f = |v: f64| if n.op_type == "Relu" { v.max(0.0) } else { 1.0 / (1.0 + (-v).exp()) };
                (a.iter().map(|&v| f(v)).collect(), c)
            }
            "Add" | "Mul" => {
                let (a, c) = get(0).unwrap();
                let b: Vec<f64> = match get(1) {
                    Some((b, _)) => b,
                    None => konst(&n.inputs[1]),
                };
                let y = (0..a.len()).map(|i| {
                    let bv = if b.len() == a.len() { b[i] } else { b[i % c % b.len()] };
                    if n.op_type == "Add" {
                        a[i] + bv
                    } else {
                        a[i] * bv
                    }
                });
                (y.collect(), c)
            }
            op => panic!("eval: {op}"),
        };
        env.insert(n.outputs[0].clone(), (out, cols));
    }
    g.outputs.iter().map(|o| (o.name.clone(), env[&o.name].0.clone())).collect()
}

fn mlp(seed: u64) -> Model {
    let mut r = Rng(seed);
    let pos: Vec<f32> = r.vec(16).iter().map(|v| v.abs() + 0.5).collect();
    let inits = vec![
        f32t("w1", &[16, 8], &mut r),
        f32t("b1", &[16], &mut r),
        f32t("bn_s", &[16], &mut r),
        f32t("bn_b", &[16], &mut r),
        f32t("bn_m", &[16], &mut r),
        Tensor::from_f32("bn_v", vec![16], &pos).unwrap(),
        f32t("w2", &[12, 16], &mut r),
        f32t("b2", &[12], &mut r),
        f32t("w3", &[12, 8], &mut r),
        f32t("b3", &[8], &mut r),
        Tensor::from_f32("half", vec![], &[0.5]).unwrap(),
        f32t("w4", &[16, 8], &mut r),
    ];
    let t1 = [("transB", AttrValue::Int(1))];
    let nodes = vec![
        node("Gemm", "g1", &["x", "w1", "b1"], &["h1"], &t1),
        node("BatchNormalization", "bn", &["h1", "bn_s", "bn_b", "bn_m", "bn_v"], &["h2"], &[]),
        node("Relu", "relu", &["h2"], &["h3"], &[]),
        node("Gemm", "g2", &["h3", "w2", "b2"], &["h4"], &t1),
        node("MatMul", "mm4", &["h3", "w4"], &["y2"], &[]),
        node("Sigmoid", "sig", &["h4"], &["h5"], &[]),
        node("MatMul", "mm3", &["h5", "w3"], &["h6"], &[]),
        node("Add", "add3", &["h6", "b3"], &["h7"], &[]),
        node("Mul", "scale", &["h7", "half"], &["y1"], &[]),
    ];
    model(inits, nodes, &[("x", &[4, 8])], &["y1", "y2"])
}

fn assert_same_outputs(a: &Model, b: &Model) {
    let x: Vec<f64> = Rng(77).vec(32).iter().map(|&v| v as f64).collect();
    let (ya, yb) = (eval(a, &x, 4), eval(b, &x, 4));
    for (k, va) in &ya {
        let vb = &yb[k];
        let num: f64 = va.iter().zip(vb).map(|(p, q)| (p - q) * (p - q)).sum::<f64>().sqrt();
        let den: f64 = va.iter().map(|p| p * p).sum::<f64>().sqrt();
        assert!(num / den < 1e-12, "output {k}: rel L2 {}", num / den);
    }
}

#[test]
fn permutation_is_exact_and_keeps_more() {
    let orig = mlp(21);
    let mut m = orig.clone();
    let rep = run(&mut m, "permute-channels{n=2,m=4}");
    let c = &rep.passes[0].counters;
    assert_eq!(c["regions_permuted"], 2.0, "{:?}", rep.passes[0].notes);
    assert!(c["retained_score_permuted"] > c["retained_score_plain"], "{c:?}");
    assert!(notes_for(&rep, "permute-channels", "w1")[0].contains("graph input"));
    assert_ne!(values(&m, "w2"), values(&orig, "w2"));
    assert_ne!(values(&m, "bn_v"), values(&orig, "bn_v"));
    assert_same_outputs(&orig, &m);
    // the permuted weights are a permutation of the originals
    let mut a = values(&m, "w4");
    let mut b = values(&orig, "w4");
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    assert_eq!(a, b);
    // permute-then-legalize equals legalize{permute=true}; retained counters agree
    let mut both = orig.clone();
    let rep2 = run(&mut both, "nm-legalize{n=2,m=4,permute=true}");
    run(&mut m, "nm-legalize{n=2,m=4}");
    for t in &m.graph.initializers {
        assert_eq!(t.bytes(), both.graph.initializer(&t.name).unwrap().bytes(), "{}", t.name);
    }
    let c2 = &rep2.passes[0].counters;
    assert_eq!(c2["retained_score_permuted"], c["retained_score_permuted"]);
    assert!(all_compliant(&check_nm(&both, 2, 4, false)));
    // legalizing after the permutation keeps the retained score it promised
    let kept: f64 = ["w1", "w2", "w3", "w4"].iter().flat_map(|w| values(&both, w)).map(|v| v.abs() as f64).sum();
    assert!((kept - c2["retained_score_permuted"]).abs() < 1e-3, "{kept} vs {c2:?}");
    // idempotent
    let snap: Vec<Vec<u8>> = both.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    let again = run(&mut both, "nm-legalize{n=2,m=4,permute=true}");
    assert!(!again.passes[0].changed, "{:?}", again.passes[0].notes);
    let now: Vec<Vec<u8>> = both.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    assert_eq!(snap, now);
}

/// x -> Gemm(w1) -> <between> -> Gemm(w2) -> y, for refusal cases.
fn refusal_case(
    between: Vec<Node>,
    last_in: &str,
    extra_out: Option<&str>,
    extra_inits: Vec<Tensor>,
) -> (Model, RunReport) {
    let mut r = Rng(4);
    let mut inits = vec![f32t("w1", &[8, 8], &mut r), f32t("w2", &[4, 8], &mut r)];
    inits.extend(extra_inits);
    let t1 = [("transB", AttrValue::Int(1))];
    let mut nodes = vec![node("Gemm", "g1", &["x", "w1"], &["h"], &t1)];
    nodes.extend(between);
    nodes.push(node("Gemm", "g2", &[last_in, "w2"], &["y"], &t1));
    let mut outs = vec!["y"];
    outs.extend(extra_out);
    let mut m = model(inits, nodes, &[("x", &[2, 8]), ("x2", &[2, 8])], &outs);
    let before: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    let rep = run(&mut m, "permute-channels");
    let after: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    assert_eq!(before, after, "a refused region must stay untouched");
    (m, rep)
}

#[test]
fn permutation_refuses_what_it_cannot_prove() {
    let shape = Tensor::new(
        "shape",
        DType::I64,
        vec![2],
        [2i64, 8].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    )
    .unwrap();
    let cases: Vec<(Vec<Node>, &str, Option<&str>, Vec<Tensor>, &str)> = vec![
        (
            vec![node("Reshape", "rs", &["h", "shape"], &["h2"], &[])],
            "h2",
            None,
            vec![shape],
            "Reshape 'rs' is not known",
        ),
        (vec![node("Relu", "relu", &["h"], &["h2"], &[])], "h2", Some("h2"), vec![], "graph output"),
        (vec![node("Softmax", "sm", &["h"], &["h2"], &[])], "h2", None, vec![], "Softmax 'sm'"),
        (vec![node("Add", "res", &["h", "x2"], &["h2"], &[])], "h2", None, vec![], "'x2' is a graph input"),
        (
            vec![
                node("Gemm", "g1b", &["x", "w1"], &["hb"], &[("transB", AttrValue::Int(1))]),
                node("Add", "a", &["h", "hb"], &["h2"], &[]),
            ],
            "h2",
            None,
            vec![],
            "shared by 2 consumers",
        ),
    ];
    for (between, last, out, inits, want) in cases {
        let (_, rep) = refusal_case(between, last, out, inits);
        let notes = notes_for(&rep, "permute-channels", "w2");
        assert!(notes.iter().any(|n| n.starts_with("not permuted") && n.contains(want)), "{want}: {notes:?}");
    }
}

#[test]
fn conv_region_spans_bn_depthwise_pooling_siblings_and_reshaped_constants() {
    let mut r = Rng(8);
    let bias_shape = Tensor::new(
        "bshape",
        DType::I64,
        vec![4],
        [1i64, 8, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    )
    .unwrap();
    let inits = vec![
        f32t("c1", &[8, 3, 3, 3], &mut r),
        f32t("c1b", &[8], &mut r),
        f32t("s", &[8], &mut r),
        f32t("b", &[8], &mut r),
        f32t("mu", &[8], &mut r),
        f32t("var", &[8], &mut r),
        f32t("vec", &[8], &mut r),
        bias_shape,
        Tensor::from_f32("six", vec![], &[6.0]).unwrap(),
        f32t("dw", &[8, 1, 3, 3], &mut r),
        f32t("dwb", &[8], &mut r),
        f32t("c2", &[4, 8, 1, 1], &mut r),
        f32t("c3", &[6, 8, 3, 3], &mut r),
        f32t("gc", &[4, 4, 1, 1], &mut r),
    ];
    let nodes = vec![
        node("Conv", "conv1", &["img", "c1", "c1b"], &["a"], &[]),
        node("BatchNormalization", "bn", &["a", "s", "b", "mu", "var"], &["b1"], &[]),
        node("Reshape", "rs", &["vec", "bshape"], &["vec4"], &[]),
        node("Add", "addv", &["b1", "vec4"], &["b2"], &[]),
        node("Div", "div", &["b2", "six"], &["b3"], &[]),
        node("Conv", "dwconv", &["b3", "dw", "dwb"], &["d"], &[("group", AttrValue::Int(8))]),
        node("Relu", "relu", &["d"], &["e"], &[]),
        node("GlobalAveragePool", "gap", &["e"], &["p"], &[]),
        node("Conv", "conv2", &["p", "c2"], &["y1"], &[]),
        node("MaxPool", "mp", &["e"], &["q"], &[("kernel_shape", ints(&[2, 2]))]),
        node("Conv", "conv3", &["q", "c3"], &["y2"], &[]),
        node("Conv", "gconv", &["q", "gc"], &["y3"], &[("group", AttrValue::Int(2))]),
    ];
    let m = model(inits, nodes, &[("img", &[1, 3, 8, 8])], &["y1", "y2", "y3"]);
    let g = &m.graph;
    let idx = WeightIndex::new(g);
    let conv2 = g.nodes().find(|(_, n)| n.display_name() == "conv2").unwrap().0;
    // The grouped conv sibling makes the region unprovable ...
    let err = find_region(g, &idx, conv2).unwrap_err();
    assert!(err.contains("grouped conv"), "{err}");
    // ... without it the region is complete.
    let mut m2 = m.clone();
    let gid = m2.graph.nodes().find(|(_, n)| n.display_name() == "gconv").unwrap().0;
    m2.graph.remove_node(gid);
    m2.graph.outputs.retain(|o| o.name != "y3");
    let g = &m2.graph;
    let idx = WeightIndex::new(g);
    let conv2 = g.nodes().find(|(_, n)| n.display_name() == "conv2").unwrap().0;
    let reg = find_region(g, &idx, conv2).unwrap();
    assert_eq!(reg.width, 8);
    let cons: Vec<&str> = reg.consumers.iter().map(|(_, t)| t.id.name()).collect();
    assert_eq!(cons, vec!["c2", "c3"]);
    let mut edits: Vec<(String, usize)> = reg.edits.iter().map(|t| (t.id.name().to_string(), t.axis)).collect();
    edits.sort();
    let want: Vec<(String, usize)> =
        [("b", 0), ("c1", 0), ("c1b", 0), ("dw", 0), ("dwb", 0), ("mu", 0), ("s", 0), ("var", 0), ("vec", 0)]
            .iter()
            .map(|(n, a)| (n.to_string(), *a))
            .collect();
    assert_eq!(edits, want);
}
