//! Dense / pruned numbers for every shared model: the task metric and the output error against the
//! dense model, one row per pipeline. The table is Markdown, as pasted into `docs/results.md`.
//!
//! ```text
//! cargo run --release --example results -- [--models DIR]
//! ```
//!
//! Without `--models`, the four bundled models are read from `tests/data/models` and MiniLM from
//! `../shared/models` (skipped with a message when absent). With `--models DIR`, every model is read
//! from `DIR/<name>`. Calibration (for Wanda) uses each model's `calib/` folder; the output error uses
//! the `sample/` inputs. To add a row (2:4, SparseGPT, ...), add a `(label, pipeline)` to [`ROWS`].

use anyhow::{anyhow, bail, Context, Result};
use sparsify_onnx::validate::{self, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "common/tasks.rs"]
mod tasks;
use tasks::{run, Spec, MODELS};

/// The rows of the table: a label and the pipeline that produces it ("" = the dense model).
const ROWS: &[(&str, &str)] = &[
    ("dense", ""),
    ("magnitude 50%", "score{method=l1},mask{sparsity=0.5}"),
    ("magnitude 50% per row", "score{method=l1},mask{sparsity=0.5,scope=row}"),
    ("wanda 50%", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50%, 4 cubic steps", "score{method=wanda},mask{sparsity=0.5,steps=4,schedule=cubic}"),
    ("sparsegpt 50%", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 2:4", "sparsegpt{n=2,m=4}"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let models_dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--models" => Some(PathBuf::from(dir)),
        _ => bail!("usage: results [--models DIR]"),
    };
    println!(
        "| model | pipeline | task metric | value | rel. L2 vs dense | cosine vs dense | weight sparsity | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for spec in MODELS {
        let dir = match &models_dir {
            Some(d) if d.join(spec.name).join("model.onnx").exists() => d.join(spec.name),
            Some(d) => {
                eprintln!("skipped: {} absent at {}", spec.name, d.join(spec.name).display());
                continue;
            }
            None => match tasks::model_dir(spec.name) {
                Some(d) => d,
                None => continue,
            },
        };
        evaluate(spec, &dir).with_context(|| spec.name.to_string())?;
    }
    Ok(())
}

fn evaluate(spec: &Spec, dir: &Path) -> Result<()> {
    let dense = load(&dir.join("model.onnx"))?;
    let decls = input_decls(&dense);
    let sample = validate::load_feed(&dir.join("sample"), &decls)?;
    let calib = TractCalibrator::new(&validate::load_feed(&dir.join("calib"), &decls)?, 16)?;
    let dense_bytes = to_bytes(&dense)?;
    let dense_out = run(&dense_bytes, &sample)?;
    for (label, text) in ROWS {
        let start = Instant::now();
        let mut m = dense.clone();
        let report = Pipeline::parse(text)?.run(&mut m, Some(&calib))?;
        let secs = start.elapsed().as_secs_f64();
        let bytes = to_bytes(&m)?;
        let metric = (spec.metric)(dir, &bytes, &decls)?;
        let out = run(&bytes, &sample)?;
        let cmp = validate::compare_outputs(&dense_out, &out, &Thresholds::default());
        let o = cmp
            .outputs
            .iter()
            .find(|o| o.name == spec.output || (spec.output.is_empty() && o.dtype == "float32"))
            .ok_or_else(|| anyhow!("no output '{}'", spec.output))?;
        println!(
            "| {} | {label} | {} | {metric:.4} | {:.4} | {:.4} | {:.4} | {secs:.2} |",
            spec.name, spec.metric_name, o.rel_l2_err, o.cosine, report.totals_weights.sparsity_after
        );
    }
    Ok(())
}
