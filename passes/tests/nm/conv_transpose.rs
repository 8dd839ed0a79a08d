//! ConvTranspose as a weight route (`[C_in, C_out/g, kH, kW]`: output axis 1, reduction axis 0 = C_in,
//! per group): left alone by default and by `check`'s default, and handled by every weight pass when
//! asked with `ops=...|ConvTranspose`. References are written here with explicit per-group loops.

use super::*;

/// A Conv and four ConvTransposes on one image: plain, grouped (2 groups of 4 input channels), grouped
/// with 2 input channels per group (not a multiple of 4), and depthwise.
fn ct_model() -> Model {
    let mut r = Rng(21);
    let mut inits = vec![
        f32t("conv_w", &[6, 8, 3, 3], &mut r),
        f32t("ct_w", &[8, 3, 2, 2], &mut r),
        f32t("gct_w", &[8, 2, 3, 3], &mut r),
        f32t("bad_gct_w", &[8, 3, 2, 2], &mut r),
        f32t("dw_ct_w", &[8, 1, 2, 2], &mut r),
    ];
    inits.push(Tensor::from_f32("ct_b", vec![3], &[0.5, -0.25, 0.125]).unwrap());
    let s2 = [("strides", ints(&[2, 2]))];
    let nodes = vec![
        node("Conv", "conv", &["img", "conv_w"], &["y0"], &[]),
        node("ConvTranspose", "ct", &["img", "ct_w", "ct_b"], &["y1"], &s2),
        node("ConvTranspose", "gct", &["img", "gct_w"], &["y2"], &[("group", AttrValue::Int(2))]),
        node("ConvTranspose", "bad_gct", &["img", "bad_gct_w"], &["y3"], &[("group", AttrValue::Int(4))]),
        node("ConvTranspose", "dw_ct", &["img", "dw_ct_w"], &["y4"], &[("group", AttrValue::Int(8))]),
    ];
    model(inits, nodes, &[("img", &[1, 8, 5, 5])], &["y0", "y1", "y2", "y3", "y4"])
}

const WITH_CT: &str = "ops=Conv|Gemm|MatMul|ConvTranspose";

/// N:M on a ConvTranspose weight `[C_in, C_out/g, k..]` with plain loops: for each conv group, each
/// output channel of the group and each kernel position, the group's input channels in runs of `m`.
fn ref_nm_convt(w: &[f32], scores: &[f32], shape: &[usize], groups: usize, n: usize, m: usize) -> Vec<f32> {
    let (cin, cout_g) = (shape[0], shape[1]);
    let kpos: usize = shape[2..].iter().product();
    let per_group = cin / groups;
    let at = |c: usize, o: usize, k: usize| (c * cout_g + o) * kpos + k;
    let mut out = w.to_vec();
    for grp in 0..groups {
        for o in 0..cout_g {
            for k in 0..kpos {
                for start in (0..per_group).step_by(m) {
                    let mut members: Vec<usize> = (0..m).map(|j| at(grp * per_group + start + j, o, k)).collect();
                    members.sort_by(|&x, &y| {
                        (w[y] != 0.0)
                            .cmp(&(w[x] != 0.0))
                            .then(scores[y].partial_cmp(&scores[x]).unwrap())
                            .then(x.cmp(&y))
                    });
                    for &j in &members[n..] {
                        out[j] = 0.0;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn convtranspose_is_outside_the_default_scope_of_passes_and_check_alike() {
    let mut m = ct_model();
    let before: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    let rep = run(&mut m, "score{method=l1},nm-legalize{n=2,m=4}");
    assert_eq!(rep.passes[1].counters["eligible"], 1.0, "only the Conv weight is in the default scope");
    for (i, t) in m.graph.initializers.iter().enumerate().skip(1) {
        assert_eq!(t.bytes(), &before[i][..], "{} must stay dense", t.name);
    }
    // The default check holds exactly the same weights to the rule: the output passes.
    let rows = check_nm(&m, 2, 4, false);
    assert!(all_compliant(&rows));
    for name in ["ct_w", "gct_w", "bad_gct_w", "dw_ct_w"] {
        let row = rows.iter().find(|r| r.tensor == name).unwrap();
        assert!(!row.eligible, "{name}");
        let why = row.reason.as_deref().unwrap();
        assert!(why.contains("ConvTranspose is not in ops=Conv|Gemm|MatMul"), "{name}: {why}");
    }
    // The check pass with the default options agrees.
    let rep = run(&mut m, "check");
    assert_eq!(rep.passes[0].counters["eligible"], 1.0);
    assert_eq!(rep.passes[0].counters["violating_weights"], 0.0);
    // Asked to include ConvTranspose, check sees the dense weights as violations.
    let rep = run(&mut m, &format!("check{{{WITH_CT}}}"));
    assert_eq!(rep.passes[0].counters["eligible"], 3.0);
    assert_eq!(rep.passes[0].counters["violating_weights"], 2.0);
}

#[test]
fn convtranspose_nm_runs_along_c_in_per_group() {
    let mut m = ct_model();
    let ct = values(&m, "ct_w");
    let gct = values(&m, "gct_w");
    let scope = sparsify_passes::scope::Scope {
        ops: sparsify_passes::scope::parse_ops("Conv|Gemm|MatMul|ConvTranspose"),
        ..Default::default()
    };
    let rows = sparsify_passes::nm_check::check_nm_scoped(&m, 2, 4, false, &scope);
    let row = |name: &str| rows.iter().find(|r| r.tensor == name).unwrap().clone();
    for (name, w, shape) in [("ct_w", &ct, [8usize, 3, 2, 2]), ("gct_w", &gct, [8, 2, 3, 3])] {
        let r = row(name);
        assert!(r.eligible, "{name}: {:?}", r.reason);
        assert_eq!(r.axis, Some(0), "{name}");
        assert_eq!((r.violating_groups, r.total_groups), ref_violations(w, &shape, 0, 2, 4), "{name}");
    }
    assert!(row("bad_gct_w").reason.unwrap().contains("2 channels per group, not a multiple of m=4"));
    assert!(row("dw_ct_w").reason.unwrap().contains("depthwise"));

    let rep = run(&mut m, &format!("nm-legalize{{n=2,m=4,{WITH_CT}}}"));
    assert_eq!(rep.passes[0].counters["eligible"], 3.0);
    assert_eq!(values(&m, "ct_w"), ref_nm_convt(&ct, &abs(&ct), &[8, 3, 2, 2], 1, 2, 4));
    assert_eq!(values(&m, "gct_w"), ref_nm_convt(&gct, &abs(&gct), &[8, 2, 3, 3], 2, 2, 4));
    assert!(notes_for(&rep, "nm-legalize", "ct_w")[0].contains("along axis 0"));
    assert!(notes_for(&rep, "nm-legalize", "bad_gct_w")[0].starts_with("skipped"));
    // Both the scoped check and the default check pass the output.
    assert!(all_compliant(&sparsify_passes::nm_check::check_nm_scoped(&m, 2, 4, false, &scope)));
    assert!(all_compliant(&check_nm(&m, 2, 4, false)));
    // 1:4 on the grouped weight, checked against the same loops.
    let mut m = ct_model();
    run(&mut m, &format!("nm-legalize{{n=1,m=4,{WITH_CT}}}"));
    assert_eq!(values(&m, "gct_w"), ref_nm_convt(&gct, &abs(&gct), &[8, 2, 3, 3], 2, 1, 4));
}

/// Squared norms of the 8 input channels of `img`, as a calibrator measures them (batch × spatial).
struct ImgCalib(Vec<f64>);
impl Calibrator for ImgCalib {
    fn collect(&self, _m: &Model, reqs: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        reqs.iter()
            .map(|r| match r {
                CalibRequest::FeatureSqNorm { tensor, axis: FeatureAxis::Index(1) } if tensor == "img" => {
                    Ok(CalibStat::FeatureSqNorm { sums: self.0.clone(), rows: 25 })
                }
                other => Err(CalibError(format!("unexpected request {other:?}"))),
            })
            .collect()
    }
}

#[test]
fn wanda_scores_a_convtranspose_by_its_input_channel_norms() {
    let sq = vec![1.0, 100.0, 0.01, 4.0, 9.0, 0.25, 16.0, 1.0];
    for (name, shape, groups) in [("ct_w", [8usize, 3, 2, 2], 1usize), ("gct_w", [8, 2, 3, 3], 2)] {
        let mut m = ct_model();
        let w = values(&m, name);
        let calib = ImgCalib(sq.clone());
        let text = format!("score{{method=wanda,{WITH_CT}}},nm-legalize{{n=2,m=4,{WITH_CT}}}");
        let pm = PassManager::parse(&text, &registry()).unwrap();
        let rep = pm.run(&mut m, RunEnv { calibrator: Some(&calib), verify_each: true, spill: None }).unwrap();
        assert_eq!(rep.passes[0].counters["wanda_fallback_l1"], 0.0);
        // |w[c, o, k]| · ‖img_c‖₂: the input channel is the index along axis 0, whatever the groups.
        let per_c = w.len() / 8;
        let scores: Vec<f32> = (0..w.len()).map(|i| w[i].abs() * (sq[i / per_c] as f32).sqrt()).collect();
        let want = ref_nm_convt(&w, &scores, &shape, groups, 2, 4);
        assert_eq!(values(&m, name), want, "{name}");
        assert_ne!(want, ref_nm_convt(&w, &abs(&w), &shape, groups, 2, 4), "{name}: must tell wanda from l1");
    }
}

#[test]
fn masks_on_convtranspose_rows_channels_and_sparsegpt_skip() {
    // Element masks: exact counts per tensor.
    let mut m = ct_model();
    run(&mut m, &format!("mask{{sparsity=0.5,names=ct_w|gct_w,{WITH_CT}}}"));
    for (name, n) in [("ct_w", 96usize), ("gct_w", 144)] {
        let zeros = values(&m, name).iter().filter(|v| **v == 0.0).count();
        assert_eq!(zeros, n / 2, "{name}");
    }
    // Channel masks: output channels are weight axis 1 (and the bias); grouped ConvTranspose is skipped.
    let mut m = ct_model();
    let ct = values(&m, "ct_w");
    let rep = run(&mut m, &format!("mask{{sparsity=0.5,granularity=channel,names=ct_w|gct_w,{WITH_CT}}}"));
    let norm =
        |o: usize| -> f64 { (0..ct.len()).filter(|i| (i / 4) % 3 == o).map(|i| (ct[i] as f64).powi(2)).sum::<f64>() };
    let lowest = (0..3).min_by(|&a, &b| norm(a).partial_cmp(&norm(b)).unwrap()).unwrap();
    let after = values(&m, "ct_w");
    for (i, v) in after.iter().enumerate() {
        assert_eq!(*v == 0.0, (i / 4) % 3 == lowest, "element {i}");
    }
    let b = values(&m, "ct_b");
    assert_eq!((0..3).filter(|&o| b[o] == 0.0).collect::<Vec<_>>(), vec![lowest]);
    let gct_note = notes_for(&rep, "mask", "gct_w");
    assert!(gct_note.iter().any(|n| n.contains("grouped ConvTranspose")), "{gct_note:?}");

    // SparseGPT: a clear skip, no calibration asked for nothing.
    let mut m = ct_model();
    let calib = ImgCalib(vec![1.0; 8]);
    let pm = PassManager::parse("sparsegpt{sparsity=0.5,ops=ConvTranspose}", &registry()).unwrap();
    let before = values(&m, "ct_w");
    let rep = pm.run(&mut m, RunEnv { calibrator: Some(&calib), verify_each: true, spill: None }).unwrap();
    let notes = notes_for(&rep, "sparsegpt", "ct_w");
    assert!(notes.iter().any(|n| n.starts_with("skipped") && n.contains("im2col")), "{notes:?}");
    assert_eq!(values(&m, "ct_w"), before);
}
