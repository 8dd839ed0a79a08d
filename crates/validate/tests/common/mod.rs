//! Shared helpers for the integration tests: locating `/work/shared/models` and hand-written
//! input declarations of the five reference models (this crate does not parse ONNX itself).
#![allow(dead_code)]

use std::path::PathBuf;

use sparsify_validate::{Dim, InputDecl};

/// The shared model folder, or `None` (after printing why) when it is absent.
pub fn models_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models"));
    if dir.join("README.md").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: shared models absent ({})", dir.display());
        None
    }
}

/// The folder of one model, if the shared models are present.
pub fn model_dir(name: &str) -> Option<PathBuf> {
    models_dir().map(|d| d.join(name))
}

fn decl(name: &str, elem_type: i32, dims: Vec<Dim>) -> InputDecl {
    InputDecl { name: name.to_string(), elem_type, dims }
}

fn batch() -> Dim {
    Dim::Named("batch".into())
}

/// Input declarations of the reference models, in graph-input order.
pub fn decls(model: &str) -> Vec<InputDecl> {
    match model {
        "digits_mlp" => vec![decl("x", 1, vec![batch(), Dim::Fixed(64)])],
        "digits_cnn" => {
            vec![decl("x", 1, vec![batch(), Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8)])]
        }
        "char_lm" => vec![decl("tokens", 7, vec![batch(), Dim::Fixed(64)])],
        "ppocr_cls_mobile_v2" => {
            vec![decl("x", 1, vec![Dim::Fixed(-1), Dim::Fixed(3), Dim::Named("?".into()), Dim::Named("?".into())])]
        }
        "paraphrase_minilm_l3_v2" => vec![
            decl("input_ids", 7, vec![batch(), Dim::Named("sequence".into())]),
            decl("attention_mask", 7, vec![batch(), Dim::Named("sequence".into())]),
        ],
        other => panic!("unknown model {other}"),
    }
}

/// Number of graph outputs of each reference model.
pub fn output_count(model: &str) -> usize {
    if model == "paraphrase_minilm_l3_v2" {
        4
    } else {
        1
    }
}
