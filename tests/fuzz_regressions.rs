//! Every input a fuzz target ever crashed on (`tests/data/fuzz/<target>/`), and the committed seed
//! corpora (`fuzz/seeds/<target>/`), run through the same checks as the fuzz targets
//! (`fuzz/src/checks.rs`, `fuzz/src/calib_check.rs`), so fixed crashes stay fixed in the normal suite — no nightly or cargo-fuzz
//! needed. See docs/reliability.md.

#[path = "../fuzz/src/calib_check.rs"]
mod calib_check;
#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in [root.join("tests/data/fuzz").join(target), root.join("fuzz/seeds").join(target)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            v.extend(rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    v.sort();
    assert!(!v.is_empty(), "no inputs for the {target} target");
    v
}

#[test]
fn model_inputs_round_trip() {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/data");
    for p in inputs("model") {
        let bytes = std::fs::read(&p).unwrap();
        checks::model_roundtrip(&bytes, None);
        checks::model_roundtrip(&bytes, Some(&data_dir));
    }
}

#[test]
fn pipeline_inputs_reach_a_fixed_point() {
    for p in inputs("pipeline") {
        let bytes = std::fs::read(&p).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            checks::pipeline_fixed_point(text);
        }
    }
}

#[test]
fn calib_inputs_read_or_fail_cleanly() {
    for p in inputs("calib") {
        calib_check::calib_bytes(&std::fs::read(&p).unwrap());
    }
}
