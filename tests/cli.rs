//! The command line on real and deliberately broken models: exit codes, one-line errors naming the
//! problem, no partial output, inputs never modified.

mod common;

use common::proto::tiny;
use sparsify_onnx_proto as pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sparsify-onnx"))
}

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models").join(name)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn external(w: &mut pb::TensorProto, location: &str, offset: u64, length: u64) {
    w.raw_data = None;
    w.data_location = Some(1);
    let kv = |k: &str, v: String| pb::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    w.external_data =
        vec![kv("location", location.into()), kv("offset", offset.to_string()), kv("length", length.to_string())];
}

/// Run `run` on a broken model: exit 1, the error names `needle` on one line, no output is left.
fn assert_rejected(bytes: &[u8], dir: &Path, needle: &str) {
    let input = dir.join("in.onnx");
    std::fs::write(&input, bytes).unwrap();
    let out = dir.join("out.onnx");
    let o = run(&["run", input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error expected: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "no output file may be left");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    assert_eq!(std::fs::read(&input).unwrap(), bytes, "input modified");
}

#[test]
fn malformed_inputs_are_rejected_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Truncated protobuf.
    let real = std::fs::read(model("digits_mlp").join("model.onnx")).unwrap();
    assert_rejected(&real[..real.len() / 2], d, "not a valid ONNX model");
    // raw_data of the wrong length.
    assert_rejected(&tiny(|w| w.raw_data = Some(vec![0u8; 12].into())), d, "tensor 'w'");
    // External data: absolute, parent, missing, out of range, symlink out of the folder.
    assert_rejected(&tiny(|w| external(w, "/etc/hostname", 0, 16)), d, "inside the model's folder");
    assert_rejected(&tiny(|w| external(w, "../w.bin", 0, 16)), d, "inside the model's folder");
    assert_rejected(&tiny(|w| external(w, "missing.bin", 0, 16)), d, "cannot be opened");
    std::fs::write(d.join("w.bin"), [0u8; 8]).unwrap();
    assert_rejected(&tiny(|w| external(w, "w.bin", 0, 16)), d, "runs past the end");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.bin"), [0u8; 16]).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.bin"), d.join("link.bin")).unwrap();
    assert_rejected(&tiny(|w| external(w, "link.bin", 0, 16)), d, "outside the model's folder");
    // Empty file.
    assert_rejected(b"", d, "no graph");
}

#[test]
fn external_data_in_the_folder_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("w.bin"), [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    std::fs::write(d.join("in.onnx"), tiny(|w| external(w, "w.bin", 0, 16))).unwrap();
    let o =
        run(&["run", d.join("in.onnx").to_str().unwrap(), "-o", d.join("out.onnx").to_str().unwrap(), "--validate"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Kept external, written beside the output.
    assert!(d.join("out.onnx.data").exists());
}

/// An output file that is one of the input's external-data files (by the `.data` name the output takes,
/// or named directly, also through a hard link) is refused before any work; the input is untouched.
#[test]
fn outputs_never_land_on_the_inputs_external_data() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    for (location, output, extra) in [
        ("out.onnx.data", "out.onnx", &[][..]),
        ("w.bin", "w.bin", &[][..]),
        ("w.bin", "w.bin", &["--external-data", "never"][..]),
        ("w.bin", "link.onnx.data", &[][..]),
    ] {
        std::fs::write(d.join(location), &w).unwrap();
        if output == "link.onnx.data" {
            std::fs::hard_link(d.join(location), d.join(output)).unwrap();
        }
        let model = tiny(|t| external(t, location, 0, 16));
        std::fs::write(d.join("in.onnx"), &model).unwrap();
        let out = if output == "link.onnx.data" { d.join("link.onnx") } else { d.join(output) };
        let input = d.join("in.onnx");
        let args = ["run", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--pipeline", "mask"];
        let o = run(&[&args[..], extra].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{location} / {output}: {err}");
        assert!(err.contains("refusing to overwrite the input"), "{err}");
        assert_eq!(std::fs::read(d.join(location)).unwrap(), w, "{location} modified");
        assert_eq!(std::fs::read(d.join("in.onnx")).unwrap(), model);
        std::fs::remove_file(d.join(location)).unwrap();
        let _ = std::fs::remove_file(d.join("link.onnx.data"));
    }
}

/// Mistakes found before any work, so a failed run leaves nothing: a report on the model output or on
/// the other report, a report folder that does not exist (exit 1), bad `--input-shape` text and an op
/// type no weight is selected through (usage, exit 2).
#[test]
fn side_output_and_option_mistakes_are_caught_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = model("digits_mlp").join("model.onnx");
    let out = d.join("o.onnx");
    let (m, o) = (m.to_str().unwrap(), out.to_str().unwrap());
    let report = d.join("r.json");
    let r = report.to_str().unwrap();
    let missing = d.join("nodir/r.html");
    for (extra, code, needle) in [
        (vec!["--json", o], 1, "is the output model"),
        (vec!["--json", r, "--report", r], 1, "are the same file"),
        (vec!["--report", missing.to_str().unwrap()], 1, "does not exist"),
        (vec!["--validate", "--input-shape", "x=a,b"], 2, "is not a positive integer"),
        (vec!["--input-shape", "x=1,64"], 2, "give it with --validate"),
        (vec!["--calib-batch", "0"], 2, "at least 1"),
        (vec!["--pipeline", "score{ops=Matmul},mask"], 2, "did you mean 'MatMul'?"),
    ] {
        let o = run(&[&["run", m, "-o", o][..], &extra].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(d).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{extra:?} left {left:?}");
    }
    let o = run(&["check", m, "--ops", "Foo"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Token ids beyond the embedding table make tract panic inside Gather: the run fails with an error
/// saying so (exit 1, no panic message, no output), for calibration and for validation inputs.
#[test]
fn out_of_range_token_ids_are_an_error_not_a_crash() {
    use sparsify_onnx::validate::{npy, Array};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("bad")).unwrap();
    let ids = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[4, 64]), |i| if i[1] == 7 { 5000 } else { 3 });
    npy::write_npy(&d.join("bad/input_0.npy"), &Array::I64(ids)).unwrap();
    let m = model("char_lm").join("model.onnx");
    let out = d.join("o.onnx");
    let (m, o, bad) = (m.to_str().unwrap(), out.to_str().unwrap(), d.join("bad"));
    for extra in [
        vec!["--pipeline", "score{method=wanda},mask", "--calib", bad.to_str().unwrap()],
        vec!["--validate", "--inputs", bad.to_str().unwrap()],
    ] {
        let r = run(&[&["run", m, "-o", o][..], &extra].concat());
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains("tract stopped on these inputs") && !err.contains("panicked"), "{err}");
        let _ = std::fs::remove_file(&out);
    }
}

#[test]
fn bad_pipelines_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.onnx");
    let m = model("digits_mlp").join("model.onnx");
    for (pipeline, needle) in [
        ("nosuch-pass", "unknown pass 'nosuch-pass' (valid passes:"),
        ("score{method=l1", "expected"),
        ("score{method=l1} x", "expected ','"),
    ] {
        let o = run(&["run", m.to_str().unwrap(), "-o", out.to_str().unwrap(), "--pipeline", pipeline]);
        assert_eq!(o.status.code(), Some(2), "{pipeline}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{pipeline}: {}", stderr(&o));
        assert!(!out.exists());
    }
}

#[test]
fn a_calibration_mask_that_is_not_an_input_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.onnx");
    let dir = model("char_lm");
    let (m, calib) = (dir.join("model.onnx"), dir.join("calib"));
    let args = ["run", m.to_str().unwrap(), "-o", out.to_str().unwrap(), "--calib", calib.to_str().unwrap()];
    let o = run(&[&args[..], &["--pipeline", "score{method=wanda},mask", "--calib-mask", "attention_mask"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("calibration mask input 'attention_mask' is not in the calibration data"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn refuses_to_overwrite_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("m.onnx");
    std::fs::copy(model("digits_mlp").join("model.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = run(&["run", input.to_str().unwrap(), "-o", input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refusing"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn run_without_passes_then_validate_and_external_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = model("digits_cnn");
    let input = m.join("model.onnx");
    let out = d.join("o.onnx");
    let json = d.join("r.json");
    let o = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--validate",
        "--inputs",
        m.join("sample").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // No thresholds given: figures only, no verdict.
    assert_eq!(report["validation"]["status"], "Measured");
    assert!(report["thresholds"].is_null());
    assert_eq!(report["validation"]["outputs"][0]["bit_identical"], true);
    assert_eq!(report["validation"]["outputs"][0]["rel_l2_err"], 0.0);
    // validate subcommand agrees.
    let o = run(&[
        "validate",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--inputs",
        m.join("sample").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // External data on request, then kept external on a second run.
    let ext = d.join("ext.onnx");
    let o = run(&["run", input.to_str().unwrap(), "-o", ext.to_str().unwrap(), "--external-data", "always"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(d.join("ext.onnx.data").exists());
    let ext2 = d.join("ext2.onnx");
    let o = run(&[
        "run",
        ext.to_str().unwrap(),
        "-o",
        ext2.to_str().unwrap(),
        "--validate",
        "--inputs",
        m.join("sample").to_str().unwrap(),
        "--max-rel-l2",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(d.join("ext2.onnx.data").exists());
}

#[test]
fn validation_over_threshold_exits_3_and_unrunnable_is_not_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = model("digits_mlp");
    let input = m.join("model.onnx");
    // Perturb one weight through the library to get a genuinely different model.
    let mut model = sparsify_onnx_load(&input);
    let t = &mut model.graph.initializers[0];
    let mut v = t.to_f64().unwrap();
    v.iter_mut().for_each(|x| *x *= 1.5);
    t.write_f64(&v).unwrap();
    let changed = d.join("changed.onnx");
    sparsify_onnx::save(&model, &changed, &Default::default()).unwrap();
    let o = run(&[
        "validate",
        input.to_str().unwrap(),
        changed.to_str().unwrap(),
        "--inputs",
        m.join("sample").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("OVER"));
    // A transformed file tract cannot load: "not validated", never passing.
    let junk = d.join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07junk").unwrap();
    let o = run(&[
        "validate",
        input.to_str().unwrap(),
        junk.to_str().unwrap(),
        "--inputs",
        m.join("sample").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not validated"), "{}", stderr(&o));
}

fn sparsify_onnx_load(p: &Path) -> sparsify_onnx::ir::Model {
    sparsify_onnx::load(p).unwrap()
}

#[test]
fn inspect_lists_constant_node_weights() {
    let o = run(&["inspect", model("ppocr_cls_mobile_v2").join("model.onnx").to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let count = |op: &str| rows.iter().filter(|r| r["op"] == op && r["storage"] == "constant-node").count();
    assert_eq!((count("Conv"), count("MatMul")), (53, 1));
    let o = run(&["list-passes"]);
    assert_eq!(o.status.code(), Some(0));
}
