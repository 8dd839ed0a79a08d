//! `run --validate` on a lossy pipeline: fidelity figures without a verdict unless the user gave a
//! threshold; `validate` keeps its exact-rewrite defaults.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models").join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsify-onnx")).args(args).output().expect("binary runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn lossy_run_shows_figures_and_judges_only_given_thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model("digits_cnn");
    let (input, sample) = (m.join("model.onnx"), m.join("sample"));
    let out = tmp.path().join("o.onnx");
    let json = tmp.path().join("r.json");
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "run",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--pipeline",
            "score{method=l2},mask{sparsity=0.5}",
            "--validate",
            "--inputs",
            sample.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = base(&[]);
    let o = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains("OVER") && !stdout.contains("over threshold"), "{stdout}");
    assert!(stdout.contains("rel L2") && stdout.contains("no verdict"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["validation"]["status"], "Measured");
    assert!(r["thresholds"].is_null());
    let rel = r["validation"]["outputs"][0]["rel_l2_err"].as_f64().unwrap();
    assert!(rel > 1e-4, "50% pruning moves the outputs: {rel}");
    assert!(r["validation"]["outputs"][0].get("within_threshold").is_none());

    // A threshold the result misses: OVER, the verdict line and exit 3.
    let tight = format!("{}", rel / 2.0);
    let args = base(&["--max-rel-l2", &tight]);
    let o = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stdout.contains("OVER") && stdout.contains("result: over threshold"), "{stdout}");
    assert!(!stdout.contains("cosine >="), "only the given threshold is in force: {stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["validation"]["status"], "OverThreshold");
    assert_eq!(r["thresholds"]["max_rel_l2"].as_f64(), Some(rel / 2.0));

    // A threshold the result meets: passed, exit 0.
    let loose = format!("{}", rel * 2.0);
    let args = base(&["--max-rel-l2", &loose]);
    let o = run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("result: passed"), "{stdout}");

    // `validate` keeps its defaults (relative L2 <= 1e-4): the lossy result is over them.
    let o = run(&["validate", input.to_str().unwrap(), out.to_str().unwrap(), "--inputs", sample.to_str().unwrap()]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stdout.contains("OVER") && stdout.contains("rel L2 <= 1e-4"), "{stdout}");
}
