//! Structured channel removal with calibrated scores and reconstruction (issue 12): the table of
//! `docs/results.md`, "Structured removal with reconstruction".
//!
//! ```text
//! cargo run --example structured              # every model (MiniLM when ../shared/models has it)
//! cargo run --example structured -- char_lm   # one model
//! ```
//!
//! Each row runs `mask{granularity=coupled,...},dead-channel-elim` with calibration on the model's
//! `calib/` inputs (batches of 16), then measures on the held-out `sample/` inputs: relative L2 of the
//! main output vs dense, the task metric, and the parameters left (float initializers and Constant
//! nodes, new bias entries included). It also checks that the eliminated
//! model's outputs equal the masked-and-repaired model's (rel L2 printed in the last column).

use anyhow::{anyhow, bail, Result};
use sparsify_onnx::validate::{self, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};
use std::path::Path;
use std::time::Instant;

#[path = "common/tasks.rs"]
mod tasks;
use tasks::{run, Spec, MODELS};

/// (label, mask options).
const ROWS: &[(&str, &str)] = &[
    ("norm, no repair (today)", "criterion=norm,reconstruct=none"),
    ("wanda + bias (FLAP-like)", "criterion=wanda,reconstruct=bias"),
    ("flap + bias (FLAP)", "criterion=flap,reconstruct=bias"),
    ("wanda + lsq refit", "criterion=wanda,reconstruct=lsq"),
    ("obs + lsq (reference algorithm)", "criterion=obs,reconstruct=lsq"),
    ("obs + obs (default with --calib)", "criterion=obs,reconstruct=obs"),
    ("obs + obs, scope=global", "criterion=obs,reconstruct=obs,scope=global"),
];

fn main() -> Result<()> {
    let only: Option<String> = std::env::args().nth(1);
    println!(
        "| model | removed | selection + repair | rel. L2 vs dense | task metric | parameters | eliminated vs masked | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for spec in MODELS {
        if spec.name == "digits_mlp" || only.as_deref().is_some_and(|o| o != spec.name) {
            continue;
        }
        let Some(dir) = tasks::model_dir(spec.name) else { continue };
        let levels: &[f64] =
            if spec.name == "digits_cnn" || spec.name == "ppocr_cls_mobile_v2" { &[0.25] } else { &[0.25, 0.5] };
        evaluate(spec, &dir, levels)?;
    }
    Ok(())
}

fn params(m: &sparsify_onnx::ir::Model) -> usize {
    sparsify_passes::dead_channel_elim::param_count(&m.graph)
}

fn evaluate(spec: &Spec, dir: &Path, levels: &[f64]) -> Result<()> {
    let dense = load(&dir.join("model.onnx"))?;
    let decls = input_decls(&dense);
    let sample = validate::load_feed(&dir.join("sample"), &decls)?;
    let calib = TractCalibrator::new(&validate::load_feed(&dir.join("calib"), &decls)?, 16)?;
    let dense_out = run(&to_bytes(&dense)?, &sample)?;
    let dense_metric = (spec.metric)(dir, &to_bytes(&dense)?, &decls)?;
    println!(
        "| {} | 0 | dense | 0 | {dense_metric:.4} ({}) | {} | — | — |",
        spec.name,
        spec.metric_name,
        params(&dense)
    );
    let pick = |outs: &[(String, validate::Array)], other: &[(String, validate::Array)]| -> Result<f64> {
        let cmp = validate::compare_outputs(outs, other, &Thresholds::default());
        let o = cmp
            .outputs
            .iter()
            .find(|o| o.name == spec.output || (spec.output.is_empty() && o.dtype == "float32"))
            .ok_or_else(|| anyhow!("no output '{}'", spec.output))?;
        Ok(o.rel_l2_err)
    };
    let cnn = levels.len() == 1;
    for &s in levels {
        let mut norm_params = 0;
        for (label, opts) in ROWS {
            let start = Instant::now();
            let mut masked = dense.clone();
            Pipeline::parse(&format!("mask{{sparsity={s},granularity=coupled,{opts}}}"))?
                .run(&mut masked, Some(&calib))?;
            let secs = start.elapsed().as_secs_f64();
            let mut small = masked.clone();
            Pipeline::parse("dead-channel-elim")?.run(&mut small, None)?;
            let small_bytes = to_bytes(&small)?;
            let small_out = run(&small_bytes, &sample)?;
            let err = pick(&dense_out, &small_out)?;
            let exact = pick(&run(&to_bytes(&masked)?, &sample)?, &small_out)?;
            let metric = (spec.metric)(dir, &small_bytes, &decls)?;
            if !err.is_finite() {
                bail!("{}: non-finite error for {label}", spec.name);
            }
            println!(
                "| {} | {:.0}% | {label} | {err:.4} | {metric:.4} | {} | {exact:.1e} | {secs:.1} |",
                spec.name,
                s * 100.0,
                params(&small),
            );
            if opts.starts_with("criterion=norm") {
                norm_params = params(&small);
            }
        }
        if cnn {
            // scope=global removes cheaper channels: raise its fraction until the parameter count is at
            // most the norm row's, for a comparison at the same size.
            for step in 0..=40 {
                let g = s + 0.01 * step as f64;
                let mut small = dense.clone();
                let text = format!("mask{{sparsity={g},granularity=coupled,scope=global}},dead-channel-elim");
                Pipeline::parse(&text)?.run(&mut small, Some(&calib))?;
                if params(&small) <= norm_params {
                    let bytes = to_bytes(&small)?;
                    let err = pick(&dense_out, &run(&bytes, &sample)?)?;
                    let metric = (spec.metric)(dir, &bytes, &decls)?;
                    println!(
                        "| {} | {:.0}% | obs + obs, scope=global, at the norm row's size | {err:.4} | {metric:.4} | {} | — | — |",
                        spec.name,
                        g * 100.0,
                        params(&small)
                    );
                    break;
                }
            }
        }
    }
    Ok(())
}
