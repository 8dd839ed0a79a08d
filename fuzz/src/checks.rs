//! The properties the parser fuzz targets check, one function per target. Shared with the normal test
//! suite: `tests/fuzz_regressions.rs` includes this file and runs every kept crash input through it, so
//! a fixed crash stays fixed without nightly or cargo-fuzz.
//!
//! Every function accepts any bytes: errors are fine (they must format to one line), panics are bugs.

use bytes::Bytes;
use sparsify_ir::{Model, Tensor};
use sparsify_onnx_io::{model_from_bytes, model_to_bytes, LoadOptions};
use sparsify_pm::{parse_pipeline, PassManager};
use std::path::Path;

/// Model bytes → load (external data resolved in `base_dir`, if any) → verify → dump → export inline →
/// re-load. A model that loads must export, and the export must load to the same IR and export again to
/// the same bytes (a fixed point).
pub fn model_roundtrip(data: &[u8], base_dir: Option<&Path>) {
    let opts = LoadOptions { base_dir: base_dir.map(Path::to_path_buf) };
    let model = match model_from_bytes(Bytes::copy_from_slice(data), &opts) {
        Ok(m) => m,
        Err(e) => return one_line(&e.to_string()),
    };
    let _ = sparsify_ir::verify::verify(&model.graph);
    let dump = sparsify_ir::print::dump_model(&model);
    let bytes = match model_to_bytes(&model) {
        Ok(b) => b,
        Err(sparsify_onnx_io::IoError::TooLarge { .. }) => return,
        Err(e) => panic!("a loaded model does not export: {e}"),
    };
    let again = model_from_bytes(Bytes::from(bytes.clone()), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("the exported model does not load: {e}"));
    assert_eq!(dump, sparsify_ir::print::dump_model(&again), "re-loaded IR differs");
    assert_same_tensors(&model, &again);
    let bytes2 = model_to_bytes(&again).expect("the re-loaded model exports");
    assert!(bytes == bytes2, "export → load → export is not a fixed point");
}

fn tensors(m: &Model) -> Vec<&Tensor> {
    let g = &m.graph;
    g.initializers.iter().chain(g.nodes().filter_map(|(_, n)| n.constant_tensor())).collect()
}

fn assert_same_tensors(a: &Model, b: &Model) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len(), "tensor count differs");
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!((&x.name, x.dtype, &x.dims), (&y.name, y.dtype, &y.dims), "tensor header differs");
        assert!(x.bytes() == y.bytes(), "tensor '{}': bytes differ after a round trip", x.name);
        assert_eq!(x.strings, y.strings, "tensor '{}': strings differ", x.name);
    }
}

/// Pipeline text → parse → print → parse: the same elements (a fixed point at the syntax level); and,
/// when the passes and options are valid, canonical text → parse → canonical text is the identity.
pub fn pipeline_fixed_point(text: &str) {
    match parse_pipeline(text) {
        Ok(els) => {
            let printed = sparsify_pm::pipeline::print_pipeline(&els);
            let again = parse_pipeline(&printed)
                .unwrap_or_else(|e| panic!("printed form {printed:?} of {text:?} does not parse: {e}"));
            let strip = |v: &[sparsify_pm::Element]| -> Vec<(String, Vec<(String, String)>)> {
                v.iter()
                    .map(|e| (e.name.clone(), e.options.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect()))
                    .collect()
            };
            assert_eq!(strip(&els), strip(&again), "print/parse changed {text:?} (printed {printed:?})");
            assert_eq!(printed, sparsify_pm::pipeline::print_pipeline(&again), "printing is not stable");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let registry = sparsify_passes::registry();
    match PassManager::parse(text, &registry) {
        Ok(pm) => {
            let canonical = pm.canonical();
            let again = PassManager::parse(&canonical, &registry)
                .unwrap_or_else(|e| panic!("canonical form {canonical:?} of {text:?} does not parse: {e}"));
            assert_eq!(canonical, again.canonical(), "canonical text is not a fixed point");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Errors must say something.
fn one_line(msg: &str) {
    assert!(!msg.is_empty(), "empty error message");
}
