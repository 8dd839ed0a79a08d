//! Staged calibration (`TractCalibrator::with_stage_bytes`): the model runs in tract stage by stage and
//! the passes see the same statistics as with the whole model — same Wanda decisions, same SparseGPT
//! weights — on the bundled models, with stages small enough that every weighted op is its own stage.

mod common;

use sparsify_onnx::ir::Model;
use sparsify_onnx::{input_decls, to_bytes, validate, Calibrator, Pipeline, TractCalibrator};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn pruned(m: &Model, text: &str, cal: &TractCalibrator) -> Vec<u8> {
    let mut m = m.clone();
    Pipeline::parse(text).unwrap().run(&mut m, Some(cal as &dyn Calibrator)).unwrap();
    to_bytes(&m).unwrap()
}

#[test]
fn staged_calibration_gives_the_whole_model_results() {
    for name in ["char_lm", "digits_cnn"] {
        let dir = common::bundled(name);
        let m = common::model(&dir);
        let feed = validate::load_feed(&dir.join("calib"), &input_decls(&m)).unwrap();
        let whole = TractCalibrator::new(&feed, 16).unwrap().with_stage_bytes(None);
        let sweeps = Arc::new(AtomicUsize::new(0));
        let seen = sweeps.clone();
        let staged = TractCalibrator::new(&feed, 16)
            .unwrap()
            .with_stage_bytes(Some(1))
            .with_progress(Box::new(move |_, total| seen.store(total, Ordering::Relaxed)));
        let batches = staged.batches().len();
        for text in ["score{method=wanda},mask{sparsity=0.5}", "sparsegpt{sparsity=0.5}"] {
            let (a, b) = (pruned(&m, text, &whole), pruned(&m, text, &staged));
            assert!(a == b, "{name} {text}: staged calibration changed the result");
        }
        let total = sweeps.load(Ordering::Relaxed);
        assert!(total >= 3 * batches, "{name}: {total} stage-batches for {batches} batches: not staged");
        println!("{name}: {} stages of {batches} batches, same bytes", total / batches);
    }
}
