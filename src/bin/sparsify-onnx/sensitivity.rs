//! `sparsify-onnx sensitivity MODEL --calib PATH [--pipeline-template TEXT] [--levels L] [--output NAME]
//! [--cache FILE] [--json FILE]`: per prunable weight, the output error on the calibration data when only
//! that weight is pruned at each level (the `sensitivity` analysis pass), as a table.
//!
//! `--cache FILE` keeps measured curves in a JSON file keyed by model hash, template, levels, output
//! and calibration data: a repeated run (or one with the same key) reads them instead of measuring.

use crate::common::{missing_folder, write_json};
use crate::Outcome;
use anyhow::{Context, Result};
use sparsify_onnx::passes::layer_sensitivity::{parse_levels, reaching, remember, table, Curves};
use sparsify_onnx::passes::scope::Scope;
use sparsify_onnx::passes::sensitivity::{Sensitivity, DEFAULT_LEVELS, DEFAULT_TEMPLATE};
use sparsify_onnx::{Pipeline, TractCalibrator};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model (never modified).
    model: PathBuf,
    /// Calibration data: a .npz or a folder of .npy files (as for `run --calib`).
    #[arg(long)]
    calib: PathBuf,
    /// Rows per calibration batch run in tract.
    #[arg(long, default_value_t = 16)]
    calib_batch: usize,
    /// Pipeline run once per level, `$S` standing for the sparsity.
    #[arg(long, default_value = DEFAULT_TEMPLATE)]
    pipeline_template: String,
    /// Sparsity levels, separated by '|' or ','.
    #[arg(long, default_value = DEFAULT_LEVELS)]
    levels: String,
    /// Tensor to compare: a graph output or any computed tensor (default: the first float output).
    #[arg(long)]
    output: Option<String>,
    /// JSON cache of measured curves (read if present, updated after measuring).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Write the curves as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn main(a: Args) -> Result<Outcome> {
    if a.calib_batch == 0 {
        return Ok(Outcome::Usage("--calib-batch must be at least 1".into()));
    }
    if !a.pipeline_template.contains("$S") {
        return Ok(Outcome::Usage("--pipeline-template must contain $S (where the sparsity goes)".into()));
    }
    if let Err(e) = Pipeline::parse(&a.pipeline_template.replace("$S", "0.5")) {
        return Ok(Outcome::Usage(format!("--pipeline-template: {e}")));
    }
    let levels = match parse_levels(&a.levels) {
        Ok(l) => l,
        Err(e) => return Ok(Outcome::Usage(format!("--levels: {e}"))),
    };
    for (flag, p) in [("--cache", a.cache.as_deref()), ("--json", a.json.as_deref())] {
        if let Some(why) = p.and_then(|p| missing_folder(flag, p)) {
            return Ok(Outcome::Usage(why));
        }
    }
    let model = sparsify_onnx::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let decls = sparsify_onnx::input_decls(&model);
    let feed = sparsify_onnx::validate::load_feed(&a.calib, &decls)
        .with_context(|| format!("loading calibration data from {}", a.calib.display()))?;
    let cal = TractCalibrator::new(&feed, a.calib_batch)?;
    let mut cache: BTreeMap<String, Curves> = BTreeMap::new();
    if let Some(p) = a.cache.as_ref().filter(|p| p.exists()) {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        cache = serde_json::from_str(&text).with_context(|| format!("{}: not a sensitivity cache", p.display()))?;
        for c in cache.values() {
            remember(c.clone());
        }
    }
    let pass = Sensitivity {
        template: a.pipeline_template.clone(),
        levels,
        output: a.output.clone(),
        scope: Scope::default(),
    };
    let start = Instant::now();
    let curves = pass.analyze(&model, &cal)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sensitivity of '{}' (rel. L2 of output '{}' on the calibration set, one weight pruned at a time)",
        a.model.display(),
        curves.output
    );
    println!("template: {}", curves.recipe);
    print!("{}", table(&curves));
    let reaches = reaching(&model.graph, &[&curves.output]);
    let flat: Vec<&str> = curves.layers.iter().filter(|l| !reaches(&l.weight)).map(|l| l.weight.as_str()).collect();
    if !flat.is_empty() {
        println!("not measured (they do not reach '{}'; their curves are flat): {}", curves.output, flat.join(", "));
    }
    if curves.runs == 0 {
        println!("{} layers from the cache ({secs:.2} s)", curves.layers.len());
    } else {
        println!("{} layers, {} candidate runs in tract, {secs:.2} s", curves.layers.len(), curves.runs);
    }
    if let Some(p) = &a.cache {
        cache.insert(curves.key.clone(), Curves { runs: 0, ..curves.clone() });
        write_json(p, &cache)?;
    }
    if let Some(j) = &a.json {
        write_json(j, &curves)?;
    }
    Ok(Outcome::Ok)
}
