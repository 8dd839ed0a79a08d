//! The accuracy tables of `docs/results.md` (issue 11): bias correction and RIA next to Wanda and
//! SparseGPT, and error-bounded budgets (uniform vs sensitivity allocation).
//!
//! ```text
//! cargo run --release --example accuracy -- bias      # bias-correct / RIA rows
//! cargo run --release --example accuracy -- ls        # ls-correct rows (issue 15)
//! cargo run --release --example accuracy -- budget    # mask{max_error=E}, uniform vs allocate=sensitivity
//! cargo run --release --example accuracy -- budget char_lm   # one model
//! cargo run --release --example accuracy -- quality   # issue 15: real-token statistics, refine, recipes
//! cargo run --release --example accuracy -- sweep ppocr_cls_mobile_v2   # uniform (row, layer) vs allocate=sensitivity,
//!                                                   # sparsity 0.05..0.90: error on the sample
//! ```
//!
//! Calibration uses each model's `calib/` inputs (batches of 16); errors are measured on the held-out
//! `sample/` inputs, which calibration never sees.

use anyhow::{anyhow, bail, Result};
use sparsify_onnx::token_mask::TokenMask;
use sparsify_onnx::validate::{self, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};
use std::path::Path;
use std::time::Instant;

#[path = "common/tasks.rs"]
mod tasks;
use tasks::{run, Spec, MODELS};

const BIAS_ROWS: &[(&str, &str)] = &[
    ("wanda 50%", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50% + bias-correct", "score{method=wanda},mask{sparsity=0.5},bias-correct"),
    ("ria 50%", "score{method=ria},mask{sparsity=0.5}"),
    ("ria 50% + bias-correct", "score{method=ria},mask{sparsity=0.5},bias-correct"),
    ("sparsegpt 50%", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 50% + bias-correct", "sparsegpt{sparsity=0.5},bias-correct"),
    ("wanda 2:4", "score{method=wanda},nm-legalize{n=2,m=4}"),
    ("wanda 2:4 + bias-correct", "score{method=wanda},nm-legalize{n=2,m=4},bias-correct"),
    ("ria 2:4 + bias-correct", "score{method=ria},nm-legalize{n=2,m=4},bias-correct"),
    ("sparsegpt 2:4", "sparsegpt{n=2,m=4}"),
    ("sparsegpt 2:4 + bias-correct", "sparsegpt{n=2,m=4},bias-correct"),
];

/// Issue 15 rows. A label ending in "(padding counted)" calibrates with `--calib-mask none`.
const QUALITY_ROWS: &[(&str, &str)] = &[
    ("wanda 50% (padding counted)", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50%", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50% + refine", "score{method=wanda},mask{sparsity=0.5},refine"),
    ("sparsegpt 50% (padding counted)", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 50%", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 50% damp=0.1", "sparsegpt{sparsity=0.5,damp=0.1}"),
    ("wanda 2:4", "score{method=wanda},nm-legalize{n=2,m=4}"),
    ("wanda 2:4 + refine", "score{method=wanda},nm-legalize{n=2,m=4},refine"),
    ("sparsegpt 2:4 (padding counted)", "sparsegpt{n=2,m=4}"),
    ("sparsegpt 2:4", "sparsegpt{n=2,m=4}"),
    ("sparsegpt 2:4 damp=0.1", "sparsegpt{n=2,m=4,damp=0.1}"),
    ("wanda 50% + refine + ls-correct", "score{method=wanda},mask{sparsity=0.5},refine,ls-correct"),
    ("sparsegpt 50% + ls-correct", "sparsegpt{sparsity=0.5},ls-correct"),
    ("recipe 50%: sparsegpt damp=0.1 + ls-correct", "sparsegpt{sparsity=0.5,damp=0.1},ls-correct"),
    ("sparsegpt 2:4 + ls-correct", "sparsegpt{n=2,m=4},ls-correct"),
    ("recipe 2:4: sparsegpt damp=0.1 + ls-correct", "sparsegpt{n=2,m=4,damp=0.1},ls-correct"),
];

/// LS correction (issue 15): each pruning with and without `ls-correct`, and the shift alone
/// (`scale=false`, a sequential mean correction of the outputs) to show what the slope adds.
const LS_ROWS: &[(&str, &str)] = &[
    ("wanda 50%", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50% + bias-correct", "score{method=wanda},mask{sparsity=0.5},bias-correct"),
    ("wanda 50% + ls-correct{scale=false}", "score{method=wanda},mask{sparsity=0.5},ls-correct{scale=false}"),
    ("wanda 50% + ls-correct", "score{method=wanda},mask{sparsity=0.5},ls-correct"),
    ("sparsegpt 50%", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 50% + ls-correct", "sparsegpt{sparsity=0.5},ls-correct"),
    ("wanda 2:4", "score{method=wanda},nm-legalize{n=2,m=4}"),
    ("wanda 2:4 + ls-correct", "score{method=wanda},nm-legalize{n=2,m=4},ls-correct"),
    ("sparsegpt 2:4", "sparsegpt{n=2,m=4}"),
    ("sparsegpt 2:4 + ls-correct", "sparsegpt{n=2,m=4},ls-correct"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, only) = match args.as_slice() {
        [m] => (m.clone(), None),
        [m, name] => (m.clone(), Some(name.clone())),
        _ => bail!("usage: accuracy bias|budget|quality|ls|sweep [MODEL]"),
    };
    match mode.as_str() {
        "bias" | "quality" | "ls" | "sweep" => println!("| model | pipeline | task metric | value | rel. L2 vs dense | weight sparsity | seconds |\n|---|---|---|---|---|---|---|"),
        "budget" => println!(
            "| model | allocation | error bound E | global sparsity | validated rel. L2 (calib) | held-out rel. L2 (sample) | task metric | seconds |\n|---|---|---|---|---|---|---|---|"
        ),
        _ => bail!("unknown mode '{mode}'"),
    }
    for spec in MODELS {
        if only.as_deref().is_some_and(|o| o != spec.name) {
            continue;
        }
        let Some(dir) = tasks::model_dir(spec.name) else { continue };
        if mode == "sweep" {
            // Same Wanda scores both ways; the sensitivity curves are measured once (cached in process).
            let mut rows = Vec::new();
            for i in 1..=18 {
                let s = f64::from(i) * 0.05;
                rows.push((format!("uniform {s:.2}"), format!("score{{method=wanda}},mask{{sparsity={s:.2}}}")));
                // The comparison group the allocation uses (scope=auto is per row for Wanda scores).
                rows.push((
                    format!("uniform layer {s:.2}"),
                    format!("score{{method=wanda}},mask{{sparsity={s:.2},scope=layer}}"),
                ));
                rows.push((
                    format!("sensitivity {s:.2}"),
                    format!("score{{method=wanda}},mask{{sparsity={s:.2},allocate=sensitivity}}"),
                ));
            }
            evaluate(spec, &dir, &rows, false)?;
        } else if mode == "bias" || mode == "quality" || mode == "ls" {
            let table = match mode.as_str() {
                "bias" => BIAS_ROWS,
                "quality" => QUALITY_ROWS,
                _ => LS_ROWS,
            };
            let rows: Vec<(String, String)> = table.iter().map(|(l, t)| (l.to_string(), t.to_string())).collect();
            evaluate(spec, &dir, &rows, false)?;
        } else {
            // The bound is on the output the model is judged by (the table's held-out column).
            let out = if spec.output.is_empty() { String::new() } else { format!(",output={}", spec.output) };
            let mut rows = Vec::new();
            for e in [0.05, 0.1, 0.2] {
                rows.push((format!("uniform|{e}"), format!("score{{method=wanda}},mask{{max_error={e}{out}}}")));
                rows.push((
                    format!("owl|{e}"),
                    format!("score{{method=wanda}},mask{{max_error={e},allocate=owl{out}}}"),
                ));
                rows.push((
                    format!("sensitivity|{e}"),
                    format!("score{{method=wanda}},mask{{max_error={e},allocate=sensitivity{out}}}"),
                ));
            }
            evaluate(spec, &dir, &rows, true)?;
        }
    }
    Ok(())
}

fn evaluate(spec: &Spec, dir: &Path, rows: &[(String, String)], budget: bool) -> Result<()> {
    let dense = load(&dir.join("model.onnx"))?;
    let decls = input_decls(&dense);
    let sample = validate::load_feed(&dir.join("sample"), &decls)?;
    let calib_feed = validate::load_feed(&dir.join("calib"), &decls)?;
    let calib = TractCalibrator::new(&calib_feed, 16)?;
    let counted = TractCalibrator::new(&calib_feed, 16)?.with_token_mask(&TokenMask::Off)?;
    let dense_out = run(&to_bytes(&dense)?, &sample)?;
    for (label, text) in rows {
        let start = Instant::now();
        let mut m = dense.clone();
        let cal = if label.ends_with("(padding counted)") { &counted } else { &calib };
        let report = Pipeline::parse(text)?.run(&mut m, Some(cal))?;
        let secs = start.elapsed().as_secs_f64();
        let bytes = to_bytes(&m)?;
        let metric = (spec.metric)(dir, &bytes, &decls)?;
        let cmp = validate::compare_outputs(&dense_out, &run(&bytes, &sample)?, &Thresholds::default());
        let o = cmp
            .outputs
            .iter()
            .find(|o| o.name == spec.output || (spec.output.is_empty() && o.dtype == "float32"))
            .ok_or_else(|| anyhow!("no output '{}'", spec.output))?;
        let sparsity = report.totals_weights.sparsity_after;
        if budget {
            let (alloc, e) = label.split_once('|').unwrap_or((label, ""));
            let mask = report.passes.iter().find(|p| p.pass == "mask").ok_or_else(|| anyhow!("no mask pass"))?;
            let chosen: f64 = mask
                .notes
                .iter()
                .find(|n| n.message.starts_with("chosen global sparsity"))
                .and_then(|n| n.message.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
                .unwrap_or(f64::NAN);
            let calib_err = mask
                .notes
                .iter()
                .filter_map(|n| {
                    let rest = n.message.strip_prefix("global sparsity ")?;
                    let (s, e) = rest.split_once(": validated rel L2 ")?;
                    // "E" or "E (largest of ...)" when several tensors are bounded.
                    let e = e.split_whitespace().next()?;
                    Some((s.parse::<f64>().ok()?, e.parse::<f64>().ok()?))
                })
                .filter(|(s, _)| (s - chosen).abs() < 1e-9)
                .map(|(_, e)| e)
                .next_back()
                .unwrap_or(f64::NAN);
            println!(
                "| {} | {alloc} | {e} | {sparsity:.4} | {calib_err:.4} | {:.4} | {metric:.4} | {secs:.1} |",
                spec.name, o.rel_l2_err
            );
        } else {
            println!(
                "| {} | {label} | {} | {metric:.4} | {:.4} | {sparsity:.4} | {secs:.2} |",
                spec.name, spec.metric_name, o.rel_l2_err
            );
        }
    }
    Ok(())
}
