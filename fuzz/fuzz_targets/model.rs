//! Model bytes → load (without, then with an external-data folder) → verify → export → re-load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Holds `weights.onnx.data`, the external data the `ext_*` seed models refer to (read only).
const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

fuzz_target!(|data: &[u8]| {
    sparsify_fuzz::checks::model_roundtrip(data, None);
    sparsify_fuzz::checks::model_roundtrip(data, Some(Path::new(DATA_DIR)));
});
