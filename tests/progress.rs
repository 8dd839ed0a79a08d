//! Progress reporting through the facade on real models: every long pass opens a stage and ticks it to
//! its total; calibration reports each batch of each sweep; nothing changes in the result.

mod common;

use common::bundled;
use sparsify_onnx::validate::load_feed;
use sparsify_onnx::{input_decls, load, Calibrator, Pipeline, Progress, Stage, TractCalibrator};
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// Records (label, total, steps ticked) per stage.
#[derive(Default)]
struct Recorder(Log);

struct Rec(Log, usize);

impl Stage for Rec {
    fn inc(&self, steps: u64) {
        self.0.lock().unwrap()[self.1].2 += steps;
    }
}

impl Progress for Recorder {
    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage> {
        let mut v = self.0.lock().unwrap();
        v.push((label.to_string(), total, 0));
        Box::new(Rec(self.0.clone(), v.len() - 1))
    }
}

/// Each stage's (label, total, ticks seen), and the calibration callbacks' (done, total).
type Seen = (Vec<(String, u64, u64)>, Vec<(usize, usize)>);

fn stages(model: &str, pipeline: &str) -> Seen {
    let dir = bundled(model);
    let mut m = load(&dir.join("model.onnx")).unwrap();
    let feed = load_feed(&dir.join("calib"), &input_decls(&m)).unwrap();
    let batches: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let seen = batches.clone();
    let calib = TractCalibrator::new(&feed, 16)
        .unwrap()
        .with_progress(Box::new(move |done, total| seen.lock().unwrap().push((done, total))));
    let rec = Recorder::default();
    let p = Pipeline::parse(pipeline).unwrap();
    let with = p.run_with_progress(&mut m, Some(&calib as &dyn Calibrator), &rec).unwrap();
    let b = batches.lock().unwrap().clone();
    // The same run without a listener gives the same weights.
    let mut plain = load(&dir.join("model.onnx")).unwrap();
    let without = p.run(&mut plain, Some(&calib as &dyn Calibrator)).unwrap();
    let sp = |r: &sparsify_onnx::RunReport| r.weights.iter().map(|w| w.sparsity_after).collect::<Vec<_>>();
    assert_eq!(sp(&with), sp(&without));
    let log = rec.0.lock().unwrap().clone();
    (log, b)
}

fn assert_complete(log: &[(String, u64, u64)], label: &str) {
    let s = log.iter().find(|s| s.0 == label).unwrap_or_else(|| panic!("no '{label}' stage in {log:?}"));
    assert!(s.1 > 0, "'{label}' has no steps: {log:?}");
    assert_eq!(s.2, s.1, "'{label}' ticked {} of {} steps", s.2, s.1);
}

#[test]
fn long_passes_report_stages_ticked_to_their_total() {
    let (log, batches) = stages(
        "digits_cnn",
        "score{method=wanda},mask{sparsity=0.5,steps=2,schedule=linear},nm-legalize{n=2,m=4,permute=true},dead-channel-elim",
    );
    for label in ["mask: steps", "nm-legalize: weights", "permutation search: weights"] {
        assert_complete(&log, label);
    }
    let mask = log.iter().find(|s| s.0 == "mask: steps").unwrap();
    assert_eq!(mask.1, 2, "one step per schedule step");
    assert_complete(&log, "dead-channel-elim: analyse, plan, fold, slice");
    // Calibration: every sweep reports batches 1..=total in order (Wanda once, once more between steps).
    assert!(!batches.is_empty());
    let total = batches[0].1;
    assert!(total >= 1);
    let sweeps = batches.len() / total;
    assert!(sweeps >= 2, "{batches:?}");
    let expect: Vec<(usize, usize)> = (0..sweeps).flat_map(|_| (1..=total).map(move |d| (d, total))).collect();
    assert_eq!(batches, expect);

    let (log, _) = stages("digits_mlp", "sparsegpt{n=2,m=4},mask{sparsity=0.6,granularity=coupled}");
    assert_complete(&log, "sparsegpt: weights");
    assert_complete(&log, "mask (coupled channels)");
}
