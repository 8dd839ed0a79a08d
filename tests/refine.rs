//! `refine` (issue 15): sign-tested swaps on char_lm keep every row's pruned count, keep the kept values
//! dense, keep 2:4 groups legal, and lower the output error of Wanda 50% on held-out data.

mod common;

use common::{feed, model, targeted};
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{self, ModelSource, Thresholds};
use sparsify_onnx::{to_bytes, Calibrator, Pipeline, TractCalibrator};

fn pruned(m0: &Model, text: &str, cal: &TractCalibrator) -> Model {
    let mut m = m0.clone();
    Pipeline::parse(text).unwrap().run(&mut m, Some(cal as &dyn Calibrator)).unwrap();
    m
}

/// Per MatMul weight [K, N] (reduction axis 0): the values, column by column (one output row each).
fn rows(m: &Model, name: &str) -> Vec<Vec<f32>> {
    let w = m.graph.weight(&targeted(m).into_iter().find(|w| w.id.name() == name).unwrap().id).unwrap();
    let (k, n) = (w.dims[0] as usize, w.dims[1] as usize);
    let v: Vec<f32> = w.to_f32().unwrap().iter().copied().collect();
    (0..n).map(|j| (0..k).map(|i| v[i * n + j]).collect()).collect()
}

#[test]
fn refine_on_char_lm_keeps_counts_values_and_patterns_and_lowers_the_error() {
    let dir = common::bundled("char_lm");
    let m0 = model(&dir);
    let cal = TractCalibrator::new(&feed(&dir, "calib", &m0), 16).unwrap();
    let sample = feed(&dir, "sample", &m0);
    let dense = validate::run_model(ModelSource::Bytes(&to_bytes(&m0).unwrap()), &sample, &[]).unwrap();
    let err = |m: &Model| {
        let out = validate::run_model(ModelSource::Bytes(&to_bytes(m).unwrap()), &sample, &[]).unwrap();
        validate::compare_outputs(&dense, &out, &Thresholds::default()).outputs[0].rel_l2_err
    };
    let names: Vec<String> = targeted(&m0).iter().map(|w| w.id.name().to_string()).collect();

    let wanda = pruned(&m0, "score{method=wanda},mask{sparsity=0.5}", &cal);
    let refined = pruned(&m0, "score{method=wanda},mask{sparsity=0.5},refine", &cal);
    let mut moved = 0;
    for name in &names {
        let (d, a, b) = (rows(&m0, name), rows(&wanda, name), rows(&refined, name));
        for ((d, a), b) in d.iter().zip(&a).zip(&b) {
            let zeros = |r: &[f32]| r.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros(a), zeros(b), "{name}: a row's pruned count changed");
            for (x, y) in b.iter().zip(d) {
                assert!(*x == 0.0 || x.to_bits() == y.to_bits(), "{name}: a kept value is not the dense one");
            }
            moved += a.iter().zip(b).filter(|(x, y)| (**x == 0.0) != (**y == 0.0)).count();
        }
    }
    let (e_wanda, e_refined) = (err(&wanda), err(&refined));
    println!("char_lm Wanda 50%: rel L2 {e_wanda:.4}, + refine {e_refined:.4} ({moved} mask entries moved)");
    assert!(moved > 0, "refine swapped nothing");
    assert!(e_refined < e_wanda, "refine must lower the error ({e_refined} vs {e_wanda})");

    let nm = pruned(&m0, "score{method=wanda},nm-legalize{n=2,m=4},refine", &cal);
    let plain = pruned(&m0, "score{method=wanda},nm-legalize{n=2,m=4}", &cal);
    let mut swapped = false;
    for name in &names {
        for (r, p) in rows(&nm, name).iter().zip(rows(&plain, name)) {
            for g in r.chunks(4) {
                assert!(g.iter().filter(|v| **v != 0.0).count() <= 2, "{name}: a group of 4 breaks 2:4");
            }
            swapped |= r.iter().zip(&p).any(|(x, y)| (*x == 0.0) != (*y == 0.0));
        }
    }
    assert!(swapped, "refine made no swap within 2:4 groups");
    println!("char_lm Wanda 2:4: rel L2 {:.4}, + refine {:.4}", err(&plain), err(&nm));
}
