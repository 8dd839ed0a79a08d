//! Helpers shared by the root integration tests.
#![allow(dead_code)]

pub mod built;
pub mod proto;

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
