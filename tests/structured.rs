//! Structured channel removal with calibrated scores and reconstruction (issue 12):
//! `mask{granularity=coupled,criterion=...,reconstruct=...},dead-channel-elim` on real models.
//!
//! - char_lm at 50% of the MLP hidden channels: the calibrated default (criterion=obs,
//!   reconstruct=obs) has a far lower held-out output error than the weight-norm mask (measured numbers
//!   asserted), and the eliminated model equals the masked-and-repaired one in tract.
//! - digits_cnn at 25% (Conv consumers through the im2col Gram, a Flatten → Gemm consumer): same
//!   exactness; reconstruction beats the norm mask at the same parameter count.
//! - ppocr_cls_mobile_v2 (groups with several consumers): the default beats the norm mask, and the
//!   global budget at no more parameters than the norm mask has less than half its error.
//! - Running `dead-channel-elim` again changes nothing; running the mask again on its own output changes
//!   nothing; pipeline text stays backward compatible.
//!
//! The exactness of the OBS row removal against a brute-force least-squares refit is unit-tested in
//! `passes/src/channels/obs_removal.rs`.

mod common;

use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::load_feed;
use sparsify_onnx::{input_decls, Pipeline, TractCalibrator};
use sparsify_passes::dead_channel_elim::param_count;

use common::{outputs_rel_l2 as rel, run};

struct Outcome {
    masked: Model,
    elim: Model,
    /// Held-out rel L2 of the eliminated model vs dense.
    err: f64,
}

/// Mask with `opts` (calibrated on calib/), eliminate, check exactness and idempotence in tract.
fn prune(name: &str, opts: &str, output: &str) -> Outcome {
    let dir = common::bundled(name);
    let dense = common::model(&dir);
    let decls = input_decls(&dense);
    let calib = TractCalibrator::new(&load_feed(&dir.join("calib"), &decls).unwrap(), 16).unwrap();
    let sample = common::feed(&dir, "sample", &dense);
    let mut masked = dense.clone();
    let text = format!("mask{{granularity=coupled,{opts}}}");
    let r = Pipeline::parse(&text).unwrap().run(&mut masked, Some(&calib)).unwrap();
    assert!(r.passes[0].changed, "{name} {opts}: nothing pruned");
    let mut elim = masked.clone();
    Pipeline::parse("dead-channel-elim").unwrap().run(&mut elim, None).unwrap();
    let (out_m, out_e) = (run(&masked, &sample), run(&elim, &sample));
    let exact = rel(&out_m, &out_e, "");
    assert!(exact <= 1e-5, "{name} {opts}: eliminated vs masked rel L2 {exact:e}");
    assert!(param_count(&elim.graph) < param_count(&dense.graph));
    let mut again = elim.clone();
    let r2 = Pipeline::parse("dead-channel-elim").unwrap().run(&mut again, None).unwrap();
    assert!(!r2.passes[0].changed, "{name} {opts}: second dead-channel-elim changed the model");
    assert_eq!(sparsify_onnx::to_bytes(&again).unwrap(), sparsify_onnx::to_bytes(&elim).unwrap());
    let err = rel(&run(&dense, &sample), &out_e, output);
    eprintln!(
        "{name} {opts}: held-out rel L2 {err:.4}, params {} -> {}, eliminated vs masked {exact:.1e}",
        param_count(&dense.graph),
        param_count(&elim.graph)
    );
    Outcome { masked, elim, err }
}

#[test]
fn char_lm_calibrated_repair_beats_the_norm_mask_at_half() {
    let norm = prune("char_lm", "sparsity=0.5,criterion=norm,reconstruct=none", "logits");
    let obs = prune("char_lm", "sparsity=0.5", "logits");
    // Measured (docs/results.md): norm 0.468, obs + obs 0.207 (the reference: 0.207).
    assert!(norm.err > 0.45, "norm {}", norm.err);
    assert!(obs.err < 0.2075, "obs {}", obs.err);
    assert!(obs.err < 0.5 * norm.err);
    // Same channels counted per group: the same parameter count.
    assert_eq!(param_count(&obs.elim.graph), param_count(&norm.elim.graph));
    // The mask is idempotent: on its own (masked and repaired) output it changes nothing.
    let dir = common::bundled("char_lm");
    let calib = TractCalibrator::new(&load_feed(&dir.join("calib"), &input_decls(&obs.masked)).unwrap(), 16).unwrap();
    let mut again = obs.masked.clone();
    Pipeline::parse("mask{sparsity=0.5,granularity=coupled}").unwrap().run(&mut again, Some(&calib)).unwrap();
    let sample = common::feed(&dir, "sample", &obs.masked);
    let drift = rel(&run(&obs.masked, &sample), &run(&again, &sample), "");
    assert!(drift <= 1e-6, "second mask run moved the outputs by {drift:e}");
}

#[test]
fn digits_cnn_reconstruction_beats_the_norm_mask() {
    let norm = prune("digits_cnn", "sparsity=0.25,criterion=norm,reconstruct=none", "logits");
    let obs = prune("digits_cnn", "sparsity=0.25,criterion=obs,reconstruct=obs", "logits");
    let global = prune("digits_cnn", "sparsity=0.25,scope=global", "logits");
    // Measured: norm 0.461, obs 0.038, global 0.043.
    assert!(obs.err < 0.1 && norm.err > 0.4, "obs {} norm {}", obs.err, norm.err);
    assert!(global.err < 0.1, "global {}", global.err);
    // digits_cnn's convs have biases: reconstruction adds no parameter.
    assert_eq!(param_count(&obs.elim.graph), param_count(&norm.elim.graph));
}

#[test]
fn ppocr_groups_with_several_consumers() {
    // Residual channel groups read by several 1×1 / depthwise-fed convs: one summed ΔE per channel,
    // each consumer refit with its own Gram. Measured: norm 0.765, default 0.623, global at 29% 0.208.
    let norm = prune("ppocr_cls_mobile_v2", "sparsity=0.25,criterion=norm,reconstruct=none", "");
    let obs = prune("ppocr_cls_mobile_v2", "sparsity=0.25", "");
    let global = prune("ppocr_cls_mobile_v2", "sparsity=0.29,scope=global", "");
    assert!(obs.err < norm.err, "default {} vs norm {}", obs.err, norm.err);
    assert!(param_count(&global.elim.graph) <= param_count(&norm.elim.graph));
    assert!(global.err < 0.5 * norm.err, "global {} vs norm {}", global.err, norm.err);
}

#[test]
fn pipeline_text_and_calibration_requirements() {
    // Old texts print as before; coupled masks print the new options with their defaults.
    let p = Pipeline::parse("mask{sparsity=0.5}").unwrap();
    assert!(!p.canonical().contains("criterion"), "{}", p.canonical());
    let p = Pipeline::parse("mask{sparsity=0.5,granularity=coupled},dead-channel-elim").unwrap();
    assert!(p.canonical().contains("criterion=auto,reconstruct=auto,damp=0.01"), "{}", p.canonical());
    let p = Pipeline::parse("mask{granularity=coupled,criterion=wanda,reconstruct=bias,scope=global}").unwrap();
    assert!(p.canonical().contains("scope=global") && p.canonical().contains("criterion=wanda,reconstruct=bias"));
    for bad in [
        "mask{criterion=obs}",
        "mask{granularity=element,reconstruct=lsq}",
        "mask{granularity=coupled,criterion=best}",
        "mask{granularity=coupled,scope=row}",
    ] {
        assert!(Pipeline::parse(bad).is_err(), "{bad} parsed");
    }
    // Without calibration data: auto = today's norm mask; asking for a calibrated criterion fails clearly.
    let dir = common::bundled("char_lm");
    let dense = common::model(&dir);
    let mut a = dense.clone();
    Pipeline::parse("mask{sparsity=0.5,granularity=coupled}").unwrap().run(&mut a, None).unwrap();
    let mut b = dense.clone();
    Pipeline::parse("mask{sparsity=0.5,granularity=coupled,criterion=norm,reconstruct=none}")
        .unwrap()
        .run(&mut b, None)
        .unwrap();
    assert_eq!(sparsify_onnx::to_bytes(&a).unwrap(), sparsify_onnx::to_bytes(&b).unwrap());
    let mut c = dense.clone();
    let e = Pipeline::parse("mask{sparsity=0.5,granularity=coupled,criterion=obs}").unwrap().run(&mut c, None);
    let Err(err) = e else { panic!("obs without calibration must fail") };
    let msg = format!("{err:#}");
    assert!(msg.contains("calib"), "{msg}");
    // scope=global with the norm criterion is refused (norms are not comparable across layers).
    let calib = TractCalibrator::new(&load_feed(&dir.join("calib"), &input_decls(&dense)).unwrap(), 16).unwrap();
    let mut d = dense.clone();
    let e = Pipeline::parse("mask{granularity=coupled,criterion=norm,scope=global}").unwrap().run(&mut d, Some(&calib));
    assert!(format!("{:#}", e.err().unwrap()).contains("not comparable"));
}

/// Every structured output passes the ONNX full check (skipped when the CI venv is absent).
#[test]
fn outputs_pass_the_onnx_full_check() {
    let py = std::path::Path::new("/work/main/target/ci-venv/bin/python");
    if !py.exists() {
        eprintln!("skipped: no python with onnx at {}", py.display());
        return;
    }
    let out = prune("digits_cnn", "sparsity=0.25", "logits");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.onnx");
    sparsify_onnx::save(&out.elim, &path, &Default::default()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/onnx_check.py");
    let st = std::process::Command::new(py).arg(&script).arg(&path).output().unwrap();
    assert!(st.status.success(), "{}{}", String::from_utf8_lossy(&st.stdout), String::from_utf8_lossy(&st.stderr));
}
