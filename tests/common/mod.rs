//! Helpers shared by the root integration tests.
#![allow(dead_code)]

pub mod built;
pub mod proto;
pub mod quant;

use sparsify_onnx::ir::{Model, WeightInfo};
use sparsify_onnx::validate::{self, Feed};
use sparsify_onnx::{input_decls, load};
use std::path::{Path, PathBuf};

/// The four small models bundled in the repository.
pub const BUNDLED: [&str; 4] = ["digits_mlp", "digits_cnn", "char_lm", "ppocr_cls_mobile_v2"];

pub fn bundled(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models").join(name)
}

/// The MiniLM folder in ../shared/models, or None (with a message) when absent.
pub fn minilm() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/paraphrase_minilm_l3_v2");
    if p.join("model.onnx").exists() {
        Some(p)
    } else {
        eprintln!("skipped: paraphrase_minilm_l3_v2 absent at {}", p.display());
        None
    }
}

/// Every model folder available: the bundled four, plus MiniLM when present.
pub fn all_models() -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = BUNDLED.iter().map(|m| (m.to_string(), bundled(m))).collect();
    if let Some(p) = minilm() {
        v.push(("paraphrase_minilm_l3_v2".into(), p));
    }
    v
}

/// Load `<dir>/model.onnx`.
pub fn model(dir: &Path) -> Model {
    load(&dir.join("model.onnx")).unwrap()
}

/// The `.npy` feed in `<dir>/<sub>` for `m`'s inputs.
pub fn feed(dir: &Path, sub: &str, m: &Model) -> Feed {
    validate::load_feed(&dir.join(sub), &input_decls(m)).unwrap()
}

/// The weights the default scope targets, decided here from the op types: float weights of rank ≥ 2
/// read only by Conv, Gemm or MatMul.
pub fn targeted(m: &Model) -> Vec<WeightInfo> {
    let g = &m.graph;
    g.find_weights()
        .into_iter()
        .filter(|w| {
            let t = g.weight(&w.id).unwrap();
            t.dtype.is_prunable_float()
                && t.dims.len() >= 2
                && w.uses.iter().all(|u| ["Conv", "Gemm", "MatMul"].contains(&u.op.as_str()))
        })
        .collect()
}

/// Every output of `m` on `feed`, run in tract.
pub fn run(m: &Model, feed: &Feed) -> Vec<(String, validate::Array)> {
    let bytes = sparsify_onnx::to_bytes(m).unwrap();
    validate::run_model(validate::ModelSource::Bytes(&bytes), feed, &[]).unwrap()
}

/// Relative L2 of `b` against `a`, over output `name` (every output when empty), outputs in the same
/// order and shapes.
pub fn outputs_rel_l2(a: &[(String, validate::Array)], b: &[(String, validate::Array)], name: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "output count");
    let (mut d2, mut n2) = (0f64, 0f64);
    for ((na, x), (_, y)) in a.iter().zip(b) {
        if !name.is_empty() && na != name {
            continue;
        }
        assert_eq!(x.shape(), y.shape(), "output '{na}'");
        for (p, q) in x.to_f64_vec().iter().zip(y.to_f64_vec()) {
            d2 += (p - q).powi(2);
            n2 += p * p;
        }
    }
    (d2 / n2.max(1e-300)).sqrt()
}

/// Relative L2 of `b`'s first output against `a`'s on `feed` (as `--validate` reports it).
pub fn rel_l2(a: &Model, b: &Model, feed: &Feed) -> f64 {
    let rep = validate::compare_outputs(&run(a, feed), &run(b, feed), &validate::Thresholds::default());
    rep.outputs[0].rel_l2_err
}
