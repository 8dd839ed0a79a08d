//! Running the shared reference models through tract: reproduction of the onnxruntime
//! outputs, self-validation, extra outputs, random feeds with symbolic dims, bad models.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use sparsify_validate::npy::read_npy;
use sparsify_validate::{
    load_feed, random_feed, run_model, split_batches, validate, ModelSource, Runner, Status, Thresholds, ValidateError,
};

/// Loads the sample feed, runs the model and checks every output against onnxruntime's.
fn reproduces_ort(model: &str, tol: f64) -> anyhow::Result<()> {
    let Some(dir) = common::model_dir(model) else {
        return Ok(());
    };
    let t0 = Instant::now();
    let feed = load_feed(&dir.join("sample"), &common::decls(model))?;
    let outputs = run_model(ModelSource::Path(&dir.join("model.onnx")), &feed, &[])?;
    assert_eq!(outputs.len(), common::output_count(model));
    for (k, (name, got)) in outputs.iter().enumerate() {
        let want = read_npy(&dir.join(format!("sample/ort_output_{k}.npy")))?;
        assert_eq!(got.shape(), want.shape(), "{model} output {k} `{name}`");
        assert_eq!(got.dtype_name(), want.dtype_name(), "{model} output {k} `{name}`");
        let max = got.to_f64_vec().iter().zip(want.to_f64_vec()).map(|(a, b)| (a - b).abs()).fold(0.0f64, f64::max);
        assert!(max <= tol, "{model} output {k} `{name}`: max abs diff {max} > {tol}");
        eprintln!("{model} output {k} `{name}` {:?}: max |tract - ort| = {max:e}", got.shape());
    }
    eprintln!("{model}: {:.2?}", t0.elapsed());
    Ok(())
}

#[test]
fn digits_mlp_matches_ort_exactly() -> anyhow::Result<()> {
    reproduces_ort("digits_mlp", 0.0)
}

#[test]
fn digits_cnn_matches_ort() -> anyhow::Result<()> {
    reproduces_ort("digits_cnn", 1e-4)
}

#[test]
fn char_lm_matches_ort() -> anyhow::Result<()> {
    reproduces_ort("char_lm", 1e-4)
}

#[test]
fn ppocr_matches_ort() -> anyhow::Result<()> {
    reproduces_ort("ppocr_cls_mobile_v2", 1e-4)
}

#[test]
fn minilm_matches_ort() -> anyhow::Result<()> {
    reproduces_ort("paraphrase_minilm_l3_v2", 1e-4)
}

#[test]
fn validate_same_model_passes_bit_identical() -> anyhow::Result<()> {
    for model in ["digits_mlp", "digits_cnn", "char_lm"] {
        let Some(dir) = common::model_dir(model) else {
            return Ok(());
        };
        let feed = load_feed(&dir.join("sample"), &common::decls(model))?;
        let path = dir.join("model.onnx");
        let bytes = std::fs::read(&path)?;
        let r = validate(ModelSource::Path(&path), ModelSource::Bytes(&bytes), &feed, &Thresholds::default());
        assert_eq!(r.status, Status::Passed, "{model}: {r:?}");
        assert!(r.outputs.iter().all(|o| o.bit_identical), "{model}: {r:?}");
        assert_eq!(r.outputs[0].top1_agreement, Some(1.0));
    }
    Ok(())
}

#[test]
fn extra_outputs_expose_intermediate_tensors() -> anyhow::Result<()> {
    let Some(dir) = common::model_dir("digits_mlp") else {
        return Ok(());
    };
    let feed = load_feed(&dir.join("sample"), &common::decls("digits_mlp"))?;
    let src = ModelSource::Path(&dir.join("model.onnx"));
    let extras = vec!["/Relu_1_output_0".to_string(), "/fc1/Gemm_output_0".to_string(), "x".to_string()];
    let out = run_model(src, &feed, &extras)?;
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["logits", "/Relu_1_output_0", "/fc1/Gemm_output_0", "x"]);
    assert_eq!(out[1].1.shape(), &[450, 128]);
    assert_eq!(out[2].1.shape(), &[450, 256]);
    assert!(out[1].1.to_f64_vec().iter().all(|&v| v >= 0.0), "a ReLU output");
    assert_eq!(&out[3].1, feed.get("x").unwrap());
    // The graph output is unchanged by the extra outputs.
    let plain = run_model(src, &feed, &[])?;
    assert_eq!(plain[0], out[0]);
    // Unknown names are reported as such.
    let err = run_model(src, &feed, &["no_such_tensor".to_string()]).unwrap_err();
    assert!(matches!(err, ValidateError::UnknownTensor { .. }), "{err}");
    Ok(())
}

#[test]
fn runner_runs_calibration_batches_of_different_sizes() -> anyhow::Result<()> {
    let Some(dir) = common::model_dir("digits_cnn") else {
        return Ok(());
    };
    let feed = load_feed(&dir.join("calib"), &common::decls("digits_cnn"))?;
    let batches = split_batches(&feed, 50)?;
    let extras = vec!["/Relu_output_0".to_string()];
    assert_eq!(batches.len(), 3, "50 + 50 + 28 rows");
    let runner = Runner::new(ModelSource::Path(&dir.join("model.onnx")), Some(&batches[0]), &extras)?;
    assert_eq!(runner.output_names().len(), 2);
    let mut rows = 0;
    for b in &batches {
        let out = runner.run(b)?;
        let n = b.arrays[0].1.shape()[0];
        assert_eq!(out[0].1.shape(), &[n, 10]);
        assert_eq!(out[1].1.shape()[0], n);
        rows += n;
    }
    assert_eq!(rows, feed.arrays[0].1.shape()[0]);
    // Batched results equal the one-shot run.
    let whole = run_model(ModelSource::Path(&dir.join("model.onnx")), &batches[0], &[])?;
    let first = runner.run(&batches[0])?;
    assert_eq!(whole[0], first[0]);
    Ok(())
}

#[test]
fn ppocr_random_feed_with_symbolic_dims() -> anyhow::Result<()> {
    let Some(dir) = common::model_dir("ppocr_cls_mobile_v2") else {
        return Ok(());
    };
    let decls = common::decls("ppocr_cls_mobile_v2");
    let mut ov = BTreeMap::new();
    let (name, shape) = sparsify_validate::parse_input_shape("x=1,3,48,192")?;
    ov.insert(name, shape);
    let feed = random_feed(&decls, &ov, 7)?;
    let out = run_model(ModelSource::Path(&dir.join("model.onnx")), &feed, &[])?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "save_infer_model/scale_0.tmp_1");
    assert_eq!(out[0].1.shape(), &[1, 2]);
    let probs = out[0].1.to_f64_vec();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "softmax output {probs:?}");
    Ok(())
}

#[test]
fn garbage_model_is_a_tract_error_and_not_validated() -> anyhow::Result<()> {
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let feed = random_feed(&common_decl(), &BTreeMap::new(), 1)?;
    let err = run_model(ModelSource::Bytes(&garbage), &feed, &[]).unwrap_err();
    assert!(matches!(err, ValidateError::Tract { .. }), "{err:?}");
    let text = b"this is not an onnx model".to_vec();
    let err = run_model(ModelSource::Bytes(&text), &feed, &[]).unwrap_err();
    assert!(matches!(err, ValidateError::Tract { .. }), "{err:?}");
    eprintln!("garbage model error: {err}");
    let r = validate(ModelSource::Bytes(&garbage), ModelSource::Bytes(&garbage), &feed, &Thresholds::default());
    match &r.status {
        Status::NotValidated { reason } => assert!(reason.contains("tract"), "{reason}"),
        other => panic!("expected NotValidated, got {other:?}"),
    }
    // A good original with a garbage transformed model is NotValidated too, never Passed.
    if let Some(dir) = common::model_dir("digits_mlp") {
        let feed = load_feed(&dir.join("sample"), &common::decls("digits_mlp"))?;
        let path = dir.join("model.onnx");
        let r = validate(ModelSource::Path(&path), ModelSource::Bytes(&garbage), &feed, &Thresholds::default());
        assert!(matches!(r.status, Status::NotValidated { .. }), "{r:?}");
        // Missing model file.
        let missing = dir.join("does_not_exist.onnx");
        let r = validate(ModelSource::Path(&path), ModelSource::Path(&missing), &feed, &Thresholds::default());
        assert!(matches!(r.status, Status::NotValidated { .. }), "{r:?}");
    }
    Ok(())
}

fn common_decl() -> Vec<sparsify_validate::InputDecl> {
    vec![sparsify_validate::InputDecl {
        name: "x".into(),
        elem_type: 1,
        dims: vec![sparsify_validate::Dim::Fixed(1), sparsify_validate::Dim::Fixed(4)],
    }]
}

#[test]
fn runner_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Runner>();
}
