//! `prune-heads`: on char_lm (fused qkv + Split, Concat-built shapes) and on a small BERT-like model built
//! here with shape constants shared by every layer, the model with heads removed computes in tract what
//! the masked-and-repaired model (`remove=false`) computes; parameters drop; `dead-channel-elim` on the
//! result changes nothing; unrecognised attention (a rotary-like op on the query path) is left unchanged
//! with a note.

mod common;

use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{run_model, Array, Feed, ModelSource};
use sparsify_onnx::{Calibrator, Pipeline, RunReport, TractCalibrator};
use sparsify_passes::dead_channel_elim::param_count;

fn run(m: &Model, feed: &Feed) -> Vec<(String, Array)> {
    let bytes = sparsify_onnx::to_bytes(m).unwrap();
    run_model(ModelSource::Bytes(&bytes), feed, &[]).unwrap()
}

/// Relative L2 over every output.
fn rel(a: &[(String, Array)], b: &[(String, Array)]) -> f64 {
    let (mut d2, mut n2) = (0f64, 0f64);
    assert_eq!(a.len(), b.len());
    for ((_, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape());
        for (p, q) in x.to_f64_vec().iter().zip(y.to_f64_vec()) {
            d2 += (p - q).powi(2);
            n2 += p * p;
        }
    }
    (d2 / n2.max(1e-300)).sqrt()
}

fn notes(r: &RunReport) -> Vec<String> {
    r.passes.iter().flat_map(|p| p.notes.iter().map(|n| format!("{}: {}", n.subject, n.message))).collect()
}

fn counter(r: &RunReport, k: &str) -> f64 {
    r.passes.last().unwrap().counters.get(k).copied().unwrap_or(0.0)
}

/// Removed vs masked-and-repaired in tract, parameters, dead-channel-elim fixed point. Returns the
/// removed model and its report.
fn removed_equals_masked(name: &str, m: &Model, calib: &dyn Calibrator, feed: &Feed, opts: &str) -> (Model, RunReport) {
    let mut removed = m.clone();
    let r = Pipeline::parse(&format!("prune-heads{{{opts}}}")).unwrap().run(&mut removed, Some(calib)).unwrap();
    let mut masked = m.clone();
    Pipeline::parse(&format!("prune-heads{{{opts},remove=false}}")).unwrap().run(&mut masked, Some(calib)).unwrap();
    let (yr, ym, yd) = (run(&removed, feed), run(&masked, feed), run(m, feed));
    let e = rel(&ym, &yr);
    eprintln!(
        "{name}: {} heads removed of {}, params {} -> {}, removed vs masked rel L2 {e:.2e}, vs dense {:.4}; notes {:?}",
        counter(&r, "heads_removed"),
        counter(&r, "heads_before"),
        param_count(&m.graph),
        param_count(&removed.graph),
        rel(&yd, &yr),
        notes(&r)
    );
    assert!(counter(&r, "heads_removed") > 0.0, "{name}: nothing removed: {:?}", notes(&r));
    assert!(e <= 1e-5, "{name}: removed vs masked rel L2 {e:e}");
    assert!(param_count(&removed.graph) < param_count(&m.graph));
    assert_eq!(counter(&r, "params_after"), param_count(&removed.graph) as f64);
    let mut again = removed.clone();
    let r2 = Pipeline::parse("dead-channel-elim").unwrap().run(&mut again, None).unwrap();
    assert!(!r2.passes[0].changed, "{name}: dead-channel-elim changed the removed model");
    assert_eq!(sparsify_onnx::to_bytes(&again).unwrap(), sparsify_onnx::to_bytes(&removed).unwrap());
    (removed, r)
}

#[test]
fn char_lm_fused_qkv_removed_equals_masked() {
    let dir = common::bundled("char_lm");
    let m = common::model(&dir);
    let calib = TractCalibrator::new(&common::feed(&dir, "calib", &m), 16).unwrap();
    let feed = common::feed(&dir, "sample", &m);
    let (removed, r) = removed_equals_masked("char_lm", &m, &calib, &feed, "fraction=0.25");
    assert_eq!(counter(&r, "blocks"), 2.0);
    assert_eq!(counter(&r, "heads_removed"), 2.0, "4 -> 3 heads in both blocks");
    let g = &removed.graph;
    let dims = |n: &str| g.weight(&g.constant_source(n).unwrap()).unwrap().dims.clone();
    assert_eq!(dims("onnx::MatMul_243"), vec![128, 288], "fused qkv: 3 × 3 heads × 32");
    assert_eq!(dims("blocks.0.qkv.bias"), vec![288]);
    assert_eq!(dims("onnx::MatMul_257"), vec![96, 128], "O loses one head's rows");
    // Fixed point of the selection: zero heads requested changes nothing.
    let mut same = removed.clone();
    let r0 =
        Pipeline::parse("prune-heads{fraction=0}").unwrap().run(&mut same, Some(&calib as &dyn Calibrator)).unwrap();
    assert!(!r0.passes[0].changed);
    assert_eq!(sparsify_onnx::to_bytes(&same).unwrap(), sparsify_onnx::to_bytes(&removed).unwrap());
}
