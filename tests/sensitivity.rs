//! `sparsify-onnx sensitivity`: the table, the cache file answering a repeat, usage errors.

mod common;

use sparsify_onnx::ir::{Model, Tensor, WeightId};
use sparsify_onnx::variants::VariantPaths;
use sparsify_onnx::{input_decls, validate, Calibrator, TractCalibrator};
use sparsify_pm::{CalibError, CalibRequest, CalibStat};
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

/// The tract calibrator's `collect` alone: `variant_errors` falls back to the trait's default (one whole
/// model per variant), the reference the prepared suffix runs must equal.
struct PerCopy<'a>(&'a TractCalibrator);

impl Calibrator for PerCopy<'_> {
    fn collect(&self, model: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        self.0.collect(model, requests)
    }
}

/// `t` with every other element zeroed (and the rest scaled by `k`).
fn altered(t: &Tensor, k: f32) -> Tensor {
    let v: Vec<f32> =
        t.to_f32().unwrap().iter().enumerate().map(|(i, x)| if i % 2 == 0 { 0.0 } else { x * k }).collect();
    Tensor::from_f32(t.name.clone(), t.dims.clone(), &v).unwrap()
}

#[test]
fn variant_errors_equal_one_whole_model_run_per_variant() {
    for name in ["char_lm", "digits_cnn", "digits_mlp"] {
        let dir = model(name);
        let mut m = common::model(&dir);
        // Weights stored as Constant nodes (ppocr) take the per-copy path; here every weight is an initializer.
        let ids: Vec<String> = common::targeted(&m)
            .into_iter()
            .filter_map(|w| match w.id {
                WeightId::Init(n) => Some(n),
                WeightId::Const(_) => None,
            })
            .collect();
        assert!(ids.len() >= 2, "{name}: {ids:?}");
        let feed = validate::load_feed(&dir.join("calib"), &input_decls(&m)).unwrap();
        let cal = TractCalibrator::new(&feed, 7).unwrap();
        let output = m.graph.outputs[0].name.clone();
        let g = &mut m.graph;
        let t = |n: &str| g.initializer(n).unwrap().clone();
        let (first, last) = (t(&ids[0]), t(&ids[ids.len() - 1]));
        let variants = vec![
            vec![altered(&first, 1.0)],
            vec![],
            vec![altered(&last, 1.5)],
            vec![altered(&first, 0.5), altered(&last, 1.0)],
            vec![altered(&t(&ids[ids.len() / 2]), 1.0)],
            vec![first.clone()],
        ];
        let fast = cal.variant_errors(&m, &output, &variants).unwrap();
        let slow = PerCopy(&cal).variant_errors(&m, &output, &variants).unwrap();
        eprintln!("{name}: prepared {fast:?}\n{name}: per copy {slow:?}");
        // Four groups (first, last, first+last, middle), each run as a suffix of the graph.
        assert_eq!(
            cal.variant_paths(),
            VariantPaths { suffix: 4, whole: 0, copies: 0 },
            "{name}: {:?}",
            cal.variant_paths()
        );
        assert_eq!(fast[1], 0.0);
        assert_eq!(fast[5], 0.0, "{name}: an unchanged tensor is the model itself");
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "{name}: {a} vs {b}");
        }
        assert!(fast[0] > 0.0 && fast[2] > 0.0 && fast[3] > 0.0 && fast[4] > 0.0);
        let mut bad = altered(&first, 1.0);
        bad.dims = vec![bad.numel().unwrap() as i64];
        assert!(cal.variant_errors(&m, &output, &[vec![bad]]).is_err(), "{name}: a reshaped tensor is refused");
    }
}
