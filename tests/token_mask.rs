//! Real-token calibration statistics (issue 15): on padded calibration data the attention mask changes
//! Wanda's decisions and lowers its error on MiniLM L3; on unpadded data it changes nothing.

mod common;

use common::{feed, model};
use sparsify_onnx::token_mask::TokenMask;
use sparsify_onnx::validate::{self, Array, Feed, ModelSource, Thresholds};
use sparsify_onnx::{to_bytes, Calibrator, Pipeline, TractCalibrator};

const WANDA: &str = "score{method=wanda},mask{sparsity=0.5}";

fn pruned(m0: &sparsify_onnx::ir::Model, cal: &TractCalibrator) -> Vec<u8> {
    let mut m = m0.clone();
    Pipeline::parse(WANDA).unwrap().run(&mut m, Some(cal as &dyn Calibrator)).unwrap();
    to_bytes(&m).unwrap()
}

fn rel_l2(dense: &[(String, Array)], bytes: &[u8], sample: &Feed) -> f64 {
    let out = validate::run_model(ModelSource::Bytes(bytes), sample, &[]).unwrap();
    let rep = validate::compare_outputs(dense, &out, &Thresholds::default());
    rep.outputs.iter().find(|o| o.name == "461").expect("embedding output 461").rel_l2_err
}

#[test]
fn real_token_statistics_change_wanda_on_padded_data_and_nothing_on_unpadded() {
    let Some(dir) = common::minilm() else { return };
    let m0 = model(&dir);
    let calib = feed(&dir, "calib", &m0);
    let sample = feed(&dir, "sample", &m0);
    let dense = validate::run_model(ModelSource::Bytes(&to_bytes(&m0).unwrap()), &sample, &[]).unwrap();

    let auto = TractCalibrator::new(&calib, 16).unwrap();
    assert_eq!(auto.token_mask(), Some("attention_mask"), "the mask input is detected");
    let off = TractCalibrator::new(&calib, 16).unwrap().with_token_mask(&TokenMask::Off).unwrap();
    assert_eq!(off.token_mask(), None);
    assert_ne!(auto.fingerprint(), off.fingerprint(), "caches must not mix masked and unmasked statistics");
    let (real, all) = (pruned(&m0, &auto), pruned(&m0, &off));
    assert!(real != all, "padded positions no longer count: Wanda's masks must change");
    let (e_real, e_all) = (rel_l2(&dense, &real, &sample), rel_l2(&dense, &all, &sample));
    println!("MiniLM L3 Wanda 50%: rel L2 {e_all:.4} counting padding, {e_real:.4} real tokens only");
    assert!(e_real < e_all, "real-token statistics must lower the error ({e_real} vs {e_all})");

    // The same token ids without padding (every mask entry 1): detection still applies, nothing changes.
    let ones = Feed {
        arrays: calib
            .arrays
            .iter()
            .map(|(n, a)| match (n.as_str(), a) {
                ("attention_mask", Array::I64(x)) => (n.clone(), Array::I64(x.mapv(|_| 1))),
                _ => (n.clone(), a.clone()),
            })
            .collect(),
    };
    let auto = TractCalibrator::new(&ones, 16).unwrap();
    assert_eq!(auto.token_mask(), Some("attention_mask"));
    let off = TractCalibrator::new(&ones, 16).unwrap().with_token_mask(&TokenMask::Off).unwrap();
    assert!(pruned(&m0, &auto) == pruned(&m0, &off), "unpadded data: the mask must change nothing");
}

/// Gram matrices and means count real tokens only when there are at least twice as many as features;
/// MiniLM's calibration set has 1106 real positions of 2048: its 384-wide inputs count real tokens, its
/// 1536-wide FFN input counts every position (for Gram and mean alike), Wanda norms always real tokens.
#[test]
fn grams_and_means_fall_back_to_every_position_when_real_tokens_are_few() {
    use sparsify_pm::{CalibRequest, CalibStat, FeatureAxis};
    let Some(dir) = common::minilm() else { return };
    let m0 = model(&dir);
    let cal = TractCalibrator::new(&feed(&dir, "calib", &m0), 16).unwrap();
    let g = &m0.graph;
    let input_of = |k: i64| {
        let w = g.find_weights().into_iter().find(|w| g.weight(&w.id).unwrap().dims[0] == k).unwrap();
        g.node(w.uses[0].node).inputs[0].clone()
    };
    for (k, want) in [(384usize, 1106u64), (1536, 2048)] {
        let tensor = input_of(k as i64);
        let axis = FeatureAxis::Last;
        let reqs = [
            CalibRequest::Gram { tensor: tensor.clone(), axis },
            CalibRequest::FeatureSum { tensor: tensor.clone(), axis },
            CalibRequest::FeatureSqNorm { tensor, axis },
        ];
        let st = cal.collect(&m0, &reqs).unwrap();
        let rows: Vec<u64> = st
            .iter()
            .map(|s| match s {
                CalibStat::Gram { rows, .. }
                | CalibStat::FeatureSum { rows, .. }
                | CalibStat::FeatureSqNorm { rows, .. } => *rows,
                _ => panic!("unexpected answer"),
            })
            .collect();
        assert_eq!(rows, vec![want, want, 1106], "{k} features");
    }
}

#[test]
fn a_named_mask_must_exist_and_hold_zeros_and_ones() {
    let dir = common::bundled("char_lm");
    let m0 = model(&dir);
    let calib = feed(&dir, "calib", &m0);
    let cal = TractCalibrator::new(&calib, 16).unwrap();
    assert_eq!(cal.token_mask(), None, "char_lm has no mask input");
    let err = TractCalibrator::new(&calib, 16).unwrap().with_token_mask(&TokenMask::Input("attention_mask".into()));
    let msg = err.err().expect("a missing mask input is an error").to_string();
    assert!(msg.contains("'attention_mask'"), "{msg}");
    let name = calib.arrays[0].0.clone();
    let err = TractCalibrator::new(&calib, 16).unwrap().with_token_mask(&TokenMask::Input(name.clone()));
    let msg = err.err().expect("token ids are not a 0/1 mask").to_string();
    assert!(msg.contains(&name) && msg.contains("0 and 1"), "{msg}");
}
