//! The attention-head removal table of `docs/results.md` (issue 12 item 3): `prune-heads` (calibrated
//! OBS choice + repair of the output projection) against a data-free baseline (heads with the least
//! value-column × output-row norm, no repair), alone and combined with FFN channel removal, on char_lm and
//! MiniLM L3: parameters, MACs, relative L2 of the main output vs dense on the held-out `sample/` inputs,
//! the task metric, removed-vs-masked agreement in tract, and tract latency on `sample/` (dense and
//! pruned runs alternate; medians of each, so load from other processes hits both alike).
//!
//! ```text
//! cargo run --example heads            # both models
//! cargo run --example heads -- char_lm # one model
//! ```

use anyhow::{anyhow, Result};
use sparsify_onnx::ir::Model;
use sparsify_onnx::passes::dead_channel_elim::{mac_count, param_count};
use sparsify_onnx::validate::{self, Feed, ModelSource, Runner, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};
use std::time::{Duration, Instant};

#[path = "common/tasks.rs"]
mod tasks;
use tasks::{run, MODELS};

const FFN: &str = "score{method=l2},mask{sparsity=0.5,granularity=coupled},dead-channel-elim";

/// (label, pipeline); a pipeline holding `prune-heads{...}` is also run with `remove=false` to check
/// that the removed model equals the masked-and-repaired one.
fn rows() -> Vec<(String, String)> {
    vec![
        ("dense".into(), String::new()),
        ("heads 25%, norm baseline (no repair)".into(), "prune-heads{fraction=0.25,score=norm}".into()),
        ("heads 25%, OBS + repair".into(), "prune-heads{fraction=0.25}".into()),
        ("heads 25%, OBS + repair, global budget".into(), "prune-heads{fraction=0.25,budget=global}".into()),
        ("FFN 50% (l2, coupled)".into(), FFN.into()),
        ("FFN 50% + heads 25% OBS".into(), format!("{FFN},prune-heads{{fraction=0.25}}")),
        ("heads 25% OBS + FFN 50%".into(), format!("prune-heads{{fraction=0.25}},{FFN}")),
    ]
}

/// Medians and minima of `runs` alternating runs of `a` and `b` (load from other processes hits both
/// alike; the minimum is the run least disturbed by it).
fn interleaved(a: &Runner, b: &Runner, feed: &Feed, runs: usize) -> Result<[(Duration, Duration); 2]> {
    a.run(feed)?;
    b.run(feed)?;
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        for (r, t) in [(a, &mut ta), (b, &mut tb)] {
            let s = Instant::now();
            std::hint::black_box(r.run(feed)?);
            t.push(s.elapsed());
        }
    }
    ta.sort();
    tb.sort();
    Ok([(ta[runs / 2], tb[runs / 2]), (ta[0], tb[0])])
}

fn main() -> Result<()> {
    let only: Option<String> = std::env::args().nth(1);
    println!(
        "| model | pipeline | params | MACs/example | rel. L2 vs dense | task metric | removed vs masked rel. L2 | tract ms dense → pruned (interleaved medians) | speedup (medians) | speedup (minima) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for spec in MODELS.iter().filter(|s| ["char_lm", "paraphrase_minilm_l3_v2"].contains(&s.name)) {
        if only.as_deref().is_some_and(|o| o != spec.name) {
            continue;
        }
        let Some(dir) = tasks::model_dir(spec.name) else { continue };
        let dense = load(&dir.join("model.onnx"))?;
        let decls = input_decls(&dense);
        let sample = validate::load_feed(&dir.join("sample"), &decls)?;
        let calib = TractCalibrator::new(&validate::load_feed(&dir.join("calib"), &decls)?, 16)?;
        let dense_out = run(&to_bytes(&dense)?, &sample)?;
        // RUNS overrides the number of interleaved latency runs per row.
        let runs = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(if spec.name == "char_lm" {
            41
        } else {
            15
        });
        let dense_runner = Runner::new(ModelSource::Bytes(&to_bytes(&dense)?), Some(&sample), &[])?;
        for (label, text) in rows() {
            let mut m: Model = dense.clone();
            if !text.is_empty() {
                Pipeline::parse(&text)?.run(&mut m, Some(&calib))?;
            }
            let bytes = to_bytes(&m)?;
            let metric = (spec.metric)(&dir, &bytes, &decls)?;
            let out = run(&bytes, &sample)?;
            let cmp = validate::compare_outputs(&dense_out, &out, &Thresholds::default());
            let o = cmp
                .outputs
                .iter()
                .find(|o| o.name == spec.output)
                .ok_or_else(|| anyhow!("no output '{}'", spec.output))?;
            let vs_masked = if text.contains("prune-heads") && !text.contains("score=norm") {
                let masked_text = text.replace("prune-heads{fraction=0.25", "prune-heads{remove=false,fraction=0.25");
                let mut mm = dense.clone();
                Pipeline::parse(&masked_text)?.run(&mut mm, Some(&calib))?;
                let cm = validate::compare_outputs(&run(&to_bytes(&mm)?, &sample)?, &out, &Thresholds::default());
                let e = cm.outputs.iter().map(|o| o.rel_l2_err).fold(0.0f64, f64::max);
                format!("{e:.1e}")
            } else {
                "—".into()
            };
            let runner = Runner::new(ModelSource::Bytes(&bytes), Some(&sample), &[])?;
            let [(d, p), (dmin, pmin)] = interleaved(&dense_runner, &runner, &sample, runs)?;
            let ms = |t: Duration| t.as_secs_f64() * 1e3;
            println!(
                "| {} | {label} | {} | {} | {:.4} | {} {metric:.4} | {vs_masked} | {:.1} → {:.1} | {:.2}× | {:.2}× |",
                spec.name,
                param_count(&m.graph),
                mac_count(&m.graph),
                o.rel_l2_err,
                spec.metric_name,
                ms(d),
                ms(p),
                ms(d) / ms(p),
                ms(dmin) / ms(pmin)
            );
        }
    }
    Ok(())
}
