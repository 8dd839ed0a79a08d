//! `ls-correct`: exact on built models whose "pruned" outputs are affine functions of the dense ones,
//! the paired calibrator statistics against direct sums, masks and N:M patterns kept on char_lm, and
//! the measured gain after Wanda 50% on char_lm.

mod common;

use common::built::{cnn, mlp};
use ndarray::{ArrayD, IxDyn};
use sparsify_onnx::ir::{Model, WeightId};
use sparsify_onnx::passes::ls_correct::LsCorrect;
use sparsify_onnx::passes::nm_check::{all_compliant, check_nm};
use sparsify_onnx::passes::scope::Scope;
use sparsify_onnx::validate::{self, Array, Feed, ModelSource};
use sparsify_onnx::{to_bytes, Calibrator, Pipeline, TractCalibrator};
use sparsify_pm::{AnalysisCache, DenseSnapshot, FeatureAxis, PairRequest, Pass, PassCx};
use std::collections::BTreeMap;

/// Deterministic varied input of `shape` named "x".
fn varied_feed(shape: &[usize], seed: f32) -> Feed {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i as f32 + 1.0) * seed).sin() + 0.3 * ((i as f32) * 0.37).cos()).collect();
    Feed { arrays: vec![("x".into(), Array::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()))] }
}

use common::rel_l2;

/// Multiply `weight`'s slice `index` along `axis` by `by`.
fn scale_channel(m: &mut Model, weight: &str, axis: usize, index: usize, by: f64) {
    let id = WeightId::Init(weight.into());
    let mut v = m.graph.weight_values_f64(&id).unwrap();
    for (ix, x) in v.indexed_iter_mut() {
        if ix[axis] == index {
            *x *= by;
        }
    }
    m.graph.write_weight_f64(&id, &v).unwrap();
}

fn add_to(m: &mut Model, init: &str, by: f64) {
    let t = m.graph.initializer_mut(init).unwrap();
    let v = t.to_f64().unwrap().mapv(|x| x + by);
    t.write_f64(&v).unwrap();
}

/// Run `ls-correct` on `current` with `dense` as the reference (what a pipeline's snapshot holds);
/// returns the pass's counters and notes.
fn correct(dense: &Model, current: &mut Model, cal: &dyn Calibrator) -> (BTreeMap<String, f64>, Vec<String>) {
    let mut cache = AnalysisCache::default();
    cache.insert(DenseSnapshot { model: dense.clone() });
    let mut cx = PassCx::new(&mut cache, Some(cal));
    LsCorrect { scale: true, max_scale: f64::INFINITY, min_positions: 1, scope: Scope::default() }
        .run(current, &mut cx)
        .unwrap();
    (cx.counters.clone(), cx.notes.iter().map(|n| format!("{}: {}", n.subject, n.message)).collect())
}

/// A "pruned" model whose op outputs are exact affine functions of the dense ones (a weight channel
/// scaled, a bias changed) is corrected back to the dense output, stage by stage, to float rounding:
/// MatMul followed by Add, a bare MatMul (new Add), Conv with and without bias, Gemm with alpha/beta.
#[test]
fn exact_when_the_pruned_output_is_affine_in_the_dense_one() {
    // mlp: x → MatMul w1 [8, 6] → Add c1 → Relu → MatMul w2 [6, 5] → y (out axis 1).
    let dense = mlp();
    let mut cur = dense.clone();
    scale_channel(&mut cur, "w1", 1, 2, 0.5);
    scale_channel(&mut cur, "w2", 1, 4, 3.0);
    let feed = varied_feed(&[4, 3, 8], 0.91);
    run_exact("mlp", &dense, cur, &feed, 2);
    // cnn: Conv w1 (bias b1) → Relu → Conv w2 (group 2, no bias) → Flatten → Gemm w3 (transB, alpha 2,
    // beta 0.5, C).
    let dense = cnn();
    let mut cur = dense.clone();
    scale_channel(&mut cur, "w1", 0, 1, 0.5);
    add_to(&mut cur, "b1", 0.25);
    scale_channel(&mut cur, "w2", 0, 3, 0.25);
    scale_channel(&mut cur, "w3", 0, 2, 1.75);
    add_to(&mut cur, "c3", -0.6);
    let feed = varied_feed(&[3, 2, 6, 6], 0.53);
    run_exact("cnn", &dense, cur, &feed, 3);
}

fn run_exact(name: &str, dense: &Model, mut cur: Model, feed: &Feed, ops: usize) {
    let cal = TractCalibrator::new(feed, 2).unwrap();
    let before = rel_l2(dense, &cur, feed);
    let (counters, notes) = correct(dense, &mut cur, &cal);
    let after = rel_l2(dense, &cur, feed);
    println!("{name}: rel L2 {before:.4} -> {after:.2e}; {counters:?}\n  {}", notes.join("\n  "));
    assert!(before > 1e-2, "{name}: the edit should move the output ({before})");
    assert!(after < 1e-6, "{name}: ls-correct is not exact ({after})");
    assert_eq!(counters.get("ops_corrected").copied(), Some(ops as f64), "{notes:?}");
    assert_eq!(counters.get("stages").copied(), Some(ops as f64), "{notes:?}");
    // On a held-out input too (the affine relation holds everywhere).
    let other = varied_feed(feed.arrays[0].1.shape(), 0.29);
    assert!(rel_l2(dense, &cur, &other) < 1e-6);
}

/// The paired statistics of the calibrator equal direct sums over both models' activations.
#[test]
fn paired_statistics_match_a_direct_computation() {
    let dense = mlp();
    let mut cur = dense.clone();
    scale_channel(&mut cur, "w1", 1, 0, 0.0);
    scale_channel(&mut cur, "w1", 1, 3, -2.0);
    let feed = varied_feed(&[5, 3, 8], 0.71);
    let cal = TractCalibrator::new(&feed, 2).unwrap();
    let req = PairRequest { reference: "h".into(), current: "h".into(), axis: FeatureAxis::Last };
    let st = cal.collect_paired(&dense, &cur, &[req]).unwrap().remove(0);
    let act = |m: &Model| {
        let outs = validate::run_model(ModelSource::Bytes(&to_bytes(m).unwrap()), &feed, &["h".to_string()]).unwrap();
        outs.last().unwrap().1.to_f64_vec()
    };
    let (y, yt) = (act(&dense), act(&cur));
    assert_eq!((st.rows, st.channels()), (15, 6));
    for c in 0..6 {
        let pick = |v: &[f64]| v.iter().skip(c).step_by(6).copied().collect::<Vec<f64>>();
        let (a, b) = (pick(&yt), pick(&y));
        let close = |x: f64, want: f64| (x - want).abs() <= 1e-9 * (1.0 + want.abs());
        assert!(close(st.sum_cur[c], a.iter().sum()));
        assert!(close(st.sum_ref[c], b.iter().sum()));
        assert!(close(st.sq_cur[c], a.iter().map(|x| x * x).sum()));
        assert!(close(st.cross[c], a.iter().zip(&b).map(|(x, y)| x * y).sum()));
    }
    // Channel 0 is fully "pruned" (constant 0 output): the fit keeps a = 1 and shifts the mean.
    let fit = sparsify_onnx::passes::ls_correct::fit_channels(&st, Some(f64::INFINITY)).unwrap();
    assert_eq!(fit.a[0], 1.0);
    assert!(fit.constant >= 1);
    // Channel 3 is anti-correlated (a < 0): refused, a = 1.
    assert_eq!(fit.a[3], 1.0);
    assert!(fit.rejected >= 1);
}

/// Zero positions of every weight of char_lm before and after `ls-correct` (weights in scope).
fn zero_flags(m: &Model) -> Vec<(String, Vec<bool>)> {
    common::targeted(m).iter().map(|w| (w.id.name().to_string(), m.graph.weight_zero_flags(&w.id).unwrap())).collect()
}

/// After Wanda 2:4 and after magnitude 50%, ls-correct keeps every zero and every kept weight (so N:M
/// groups keep their pattern) and changes the kept values.
#[test]
fn keeps_masks_and_nm_patterns_on_char_lm() {
    let dir = common::bundled("char_lm");
    let dense = common::model(&dir);
    let cal = TractCalibrator::new(&common::feed(&dir, "calib", &dense), 16).unwrap();
    for prune in ["score{method=wanda},nm-legalize{n=2,m=4}", "mask{sparsity=0.5}"] {
        let mut pruned = dense.clone();
        Pipeline::parse(prune).unwrap().run(&mut pruned, Some(&cal as &dyn Calibrator)).unwrap();
        let mut fixed = dense.clone();
        let rep = Pipeline::parse(&format!("{prune},ls-correct"))
            .unwrap()
            .run(&mut fixed, Some(&cal as &dyn Calibrator))
            .unwrap();
        let ls = rep.passes.last().unwrap();
        println!("{prune}: {:?}", ls.counters);
        assert!(ls.counters.get("ops_corrected").copied().unwrap_or(0.0) >= 3.0, "{:?}", ls.notes);
        assert_eq!(zero_flags(&pruned), zero_flags(&fixed), "{prune}: ls-correct moved a zero");
        let mut moved = 0;
        for w in common::targeted(&dense) {
            let (a, b) =
                (pruned.graph.weight_values_f64(&w.id).unwrap(), fixed.graph.weight_values_f64(&w.id).unwrap());
            moved += usize::from(a != b);
        }
        if prune.contains("nm-legalize") {
            let rows = check_nm(&fixed, 2, 4, false);
            assert!(rows.iter().filter(|r| r.eligible).count() >= 3);
            assert!(all_compliant(&rows), "{prune}: 2:4 broken after ls-correct");
        }
        assert!(moved >= 3, "{prune}: ls-correct scaled no kept weights");
    }
}

/// Wanda 50% on char_lm: the held-out output error drops with ls-correct (measured, docs/results.md).
#[test]
fn lowers_the_error_of_wanda_on_char_lm() {
    let dir = common::bundled("char_lm");
    let dense = common::model(&dir);
    let cal = TractCalibrator::new(&common::feed(&dir, "calib", &dense), 16).unwrap();
    let sample = common::feed(&dir, "sample", &dense);
    let mut plain = dense.clone();
    let prune = "score{method=wanda},mask{sparsity=0.5}";
    Pipeline::parse(prune).unwrap().run(&mut plain, Some(&cal as &dyn Calibrator)).unwrap();
    let mut fixed = dense.clone();
    Pipeline::parse(&format!("{prune},ls-correct")).unwrap().run(&mut fixed, Some(&cal as &dyn Calibrator)).unwrap();
    let (e0, e1) = (rel_l2(&dense, &plain, &sample), rel_l2(&dense, &fixed, &sample));
    println!("char_lm wanda 50%: rel L2 {e0:.4} -> {e1:.4} with ls-correct");
    assert!(e1 < 0.95 * e0, "ls-correct did not lower the error by 5% ({e0} -> {e1})");
}

/// Wanda 50% on ppocr_cls_mobile_v2 (16 calibration images): with the slope limited to [1/2, 2] (the
/// default `max_scale=2`) ls-correct lowers the held-out error; unlimited, the fit of channels seen at 16
/// positions does not carry over and the error rises (both measured, docs/results.md).
#[test]
fn the_slope_limit_makes_ls_correct_help_ppocr_after_wanda() {
    let dir = common::bundled("ppocr_cls_mobile_v2");
    let dense = common::model(&dir);
    let cal = TractCalibrator::new(&common::feed(&dir, "calib", &dense), 16).unwrap();
    let sample = common::feed(&dir, "sample", &dense);
    let prune = "score{method=wanda},mask{sparsity=0.5}";
    let run = |text: &str| {
        let mut m = dense.clone();
        Pipeline::parse(text).unwrap().run(&mut m, Some(&cal as &dyn Calibrator)).unwrap();
        rel_l2(&dense, &m, &sample)
    };
    let (e0, e1, e_free) =
        (run(prune), run(&format!("{prune},ls-correct")), run(&format!("{prune},ls-correct{{max_scale=1e12}}")));
    println!("ppocr wanda 50%: rel L2 {e0:.4}; ls-correct {e1:.4}; unlimited slope {e_free:.4}");
    assert!(e1 < e0, "ls-correct (max_scale=2) must lower the error ({e0} -> {e1})");
    assert!(e_free > e1, "the limit is what helps here ({e_free} vs {e1})");
}

/// An op whose output has fewer calibration positions per channel than `min_positions` is left alone,
/// with the reason in the report.
#[test]
fn few_positions_are_left_alone() {
    let dense = mlp();
    let feed = varied_feed(&[4, 3, 8], 0.91);
    let cal = TractCalibrator::new(&feed, 2).unwrap();
    let mut m = dense.clone();
    let rep = Pipeline::parse("mask{sparsity=0.5},ls-correct{min_positions=13}")
        .unwrap()
        .run(&mut m, Some(&cal as &dyn Calibrator))
        .unwrap();
    let ls = rep.passes.last().unwrap();
    assert_eq!(ls.counters.get("ops_corrected"), None, "{:?}", ls.notes);
    assert_eq!(ls.counters.get("ops_skipped").copied(), Some(2.0));
    assert!(ls.notes.iter().all(|n| n.message.contains("only 12 calibration positions")), "{:?}", ls.notes);
    // The default (1) corrects them.
    let mut m = dense.clone();
    let rep =
        Pipeline::parse("mask{sparsity=0.5},ls-correct").unwrap().run(&mut m, Some(&cal as &dyn Calibrator)).unwrap();
    assert_eq!(rep.passes.last().unwrap().counters.get("ops_corrected").copied(), Some(2.0));
}
