//! Import → export on the shared real models: byte-identical files, initializers and Constant weights.

use sparsify_onnx_io::{load, model_to_bytes, save, ExportOptions, ExternalMode};
use std::path::{Path, PathBuf};

fn models_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: shared models absent at {}", p.display());
        None
    }
}

const MODELS: [&str; 5] = ["digits_mlp", "digits_cnn", "char_lm", "ppocr_cls_mobile_v2", "paraphrase_minilm_l3_v2"];

#[test]
fn shared_models_round_trip_byte_identical() {
    let Some(dir) = models_dir() else { return };
    for m in MODELS {
        let path = dir.join(m).join("model.onnx");
        let original = std::fs::read(&path).unwrap();
        let model = load(&path).unwrap();
        let bytes = model_to_bytes(&model).unwrap();
        assert!(bytes == original, "{m}: re-encoded model differs from the input ({} vs {} bytes)", bytes.len(), original.len());
    }
}

#[test]
fn external_data_round_trips_and_stays_external() {
    let Some(dir) = models_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = load(&dir.join("digits_mlp/model.onnx")).unwrap();
    let ext = tmp.path().join("ext.onnx");
    save(&model, &ext, &ExportOptions { external: ExternalMode::Always, threshold: 1024 }).unwrap();
    assert!(tmp.path().join("ext.onnx.data").exists());
    let back = load(&ext).unwrap();
    assert!(back.graph.initializers.iter().any(|t| matches!(t.storage, sparsify_ir::Storage::External { .. })));
    for (a, b) in model.graph.initializers.iter().zip(&back.graph.initializers) {
        assert_eq!(a.bytes(), b.bytes(), "{}", a.name);
    }
    // Saved again with defaults: stays external, and re-loading gives the same weights.
    let again = tmp.path().join("again.onnx");
    save(&back, &again, &ExportOptions::default()).unwrap();
    assert!(tmp.path().join("again.onnx.data").exists());
    let back2 = load(&again).unwrap();
    for (a, b) in model.graph.initializers.iter().zip(&back2.graph.initializers) {
        assert_eq!(a.bytes(), b.bytes(), "{}", a.name);
    }
}
