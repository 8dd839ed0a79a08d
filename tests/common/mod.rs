//! Helpers shared by the root integration tests.
#![allow(dead_code)]

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
