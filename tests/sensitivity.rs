//! `sparsify-onnx sensitivity`: the table, the cache file answering a repeat, usage errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models").join(name)
}

#[test]
fn table_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("sens.json");
    let dir = model("digits_mlp");
    let args = |c: &mut Command| {
        c.arg("sensitivity")
            .arg(dir.join("model.onnx"))
            .arg("--calib")
            .arg(dir.join("calib"))
            .args(["--levels", "0.5,0.9", "--cache"])
            .arg(&cache);
    };
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparsify-onnx"));
    args(&mut c);
    let first = c.output().unwrap();
    let out1 = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(out1.contains("6 candidate runs in tract"), "{out1}");
    let rows1: Vec<&str> = out1.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows1.len(), 4, "header + 3 weights: {out1}");
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparsify-onnx"));
    args(&mut c);
    let second = c.output().unwrap();
    let out2 = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(out2.contains("3 layers from the cache"), "{out2}");
    let rows2: Vec<&str> = out2.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows1, rows2);
}

#[test]
fn bad_template_is_a_usage_error() {
    let dir = model("digits_mlp");
    for t in ["mask{sparsity=0.5}", "nosuchpass{$S}"] {
        let o = Command::new(env!("CARGO_BIN_EXE_sparsify-onnx"))
            .arg("sensitivity")
            .arg(dir.join("model.onnx"))
            .arg("--calib")
            .arg(dir.join("calib"))
            .args(["--pipeline-template", t])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{t}: {}", String::from_utf8_lossy(&o.stderr));
    }
}
