//! N:M legalization on every weight route, option errors, strict mode, and scores from the analysis.

use super::*;

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
        // int8 behind DequantizeLinear (zero point absent = 0): legalized on its dequantized values (issue 14).
        ("q_w", vec![8, 6], Ok(0)),
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
                // zeros added: q_w holds one zero already (q = 0 at index 0)
                zeros += want_vals.iter().filter(|v| **v == 0.0).count() - w.iter().filter(|v| **v == 0.0).count();
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
    let mut scores = WeightScores { method: "test".into(), scores: BTreeMap::new(), ..Default::default() };
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
    pm.run(&mut m, RunEnv { calibrator: Some(&calib), ..Default::default() }).unwrap();
    // Reference: |w_kj| · ‖X_k‖₂, 2:4 along K (axis 0).
    let scores: Vec<f32> = (0..48).map(|i| w[i].abs() * (sq[i / 6] as f32).sqrt()).collect();
    let want = ref_nm(&w, &scores, &[8, 6], 0, 2, 4);
    assert_eq!(values(&m, "w"), want);
    assert_ne!(want, ref_nm(&w, &abs(&w), &[8, 6], 0, 2, 4), "the test must tell wanda from magnitude");
}
