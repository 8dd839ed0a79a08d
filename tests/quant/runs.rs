//! Tract runs of the pruned fixtures, and the test-set, accuracy and output-error helpers.

use crate::common;
use crate::common::quant::{fixture, run, FIXTURES};
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{self, Array, Feed, ModelSource};
use sparsify_onnx::{input_decls, load, to_bytes};

pub(crate) fn test_set(model: &str) -> Option<(Array, Vec<i64>)> {
    let dir = common::bundled(model);
    let x = validate::npy::read_npy(&dir.join("test_x.npy")).ok()?;
    let y = validate::npy::read_npy(&dir.join("test_y.npy")).ok()?;
    Some((x, y.to_f64_vec().iter().map(|v| *v as i64).collect()))
}

pub(crate) fn accuracy(m: &Model, x: &Array, y: &[i64]) -> f64 {
    let name = input_decls(m)[0].name.clone();
    let feed = Feed { arrays: vec![(name, x.clone())] };
    let out = validate::run_model(ModelSource::Bytes(&to_bytes(m).unwrap()), &feed, &[]).unwrap();
    let logits = out[0].1.to_f64_vec();
    let k = logits.len() / y.len();
    let hits = y
        .iter()
        .enumerate()
        .filter(|(i, &l)| {
            let row = &logits[i * k..(i + 1) * k];
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best as i64 == l
        })
        .count();
    hits as f64 / y.len() as f64
}

/// Max |pruned − dense| over the sample outputs, and the dense output's max |value|.
pub(crate) fn output_error(dense: &Model, pruned: &Model, feed: &Feed) -> (f64, f64) {
    let a = validate::run_model(ModelSource::Bytes(&to_bytes(dense).unwrap()), feed, &[]).unwrap();
    let b = validate::run_model(ModelSource::Bytes(&to_bytes(pruned).unwrap()), feed, &[]).unwrap();
    let (a, b) = (a[0].1.to_f64_vec(), b[0].1.to_f64_vec());
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(err.is_finite());
    (err, a.iter().map(|x| x.abs()).fold(0.0, f64::max))
}

/// Runs every pruned fixture in tract and prints the output error against the quantized dense model
/// (and digits accuracy). Formats tract cannot run are reported "not validated".
#[test]
fn pruned_quantized_models_run_in_tract() {
    let pipelines = ["score{method=l1},mask{sparsity=0.5}", "nm-legalize{n=2,m=4}"];
    for (file, model, tract_runs) in FIXTURES {
        let m0 = load(&fixture(file)).unwrap();
        if !tract_runs {
            println!("{file}: not validated (com.microsoft.QGemm runs in onnxruntime only)");
            continue;
        }
        let sample = validate::load_feed(&common::bundled(model).join("sample"), &input_decls(&m0)).unwrap();
        for text in pipelines {
            let mut m1 = m0.clone();
            run(text, &mut m1, None);
            let (err, scale) = output_error(&m0, &m1, &sample);
            assert!(err > 0.0, "{file}: {text} changed nothing");
            let acc = test_set(model).map(|(x, y)| (accuracy(&m0, &x, &y), accuracy(&m1, &x, &y)));
            println!(
                "{file}: {text}: max |Δ output| {err:.4} (dense max |output| {scale:.2}){}",
                acc.map(|(a, b)| format!(", test accuracy {:.2}% → {:.2}%", 100.0 * a, 100.0 * b)).unwrap_or_default()
            );
        }
    }
}
