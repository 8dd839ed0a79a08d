//! `sparsify-onnx run INPUT -o OUTPUT [--pipeline TEXT] [--calib PATH] [--inputs PATH] [--validate] [--json FILE]
//! [--report FILE.html] [--quiet]`.

use crate::common::{feed_for, missing_folder, print_table, print_validation, write_json};
use crate::{progress, report, Outcome};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use sparsify_onnx::validate::{Status, Thresholds, ValidationReport};
use sparsify_onnx::{ExportOptions, ExternalMode, Pipeline, RunReport, TractCalibrator};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The input ONNX model (never modified).
    input: PathBuf,
    /// Where to write the transformed model.
    #[arg(short, long)]
    output: PathBuf,
    /// Pipeline text, e.g. 'score{method=l1},mask{sparsity=0.5}'. None or empty: no passes.
    #[arg(short, long, default_value = "")]
    pipeline: String,
    /// Calibration data for activation-aware passes: a .npz (keys = graph input names), a folder of
    /// `<input name>.npy` / `input_<k>.npy` files, or a folder of such folders (one sample each).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Rows per calibration batch run in tract (along each input's batch axis; the last may be smaller).
    #[arg(long, default_value_t = 16)]
    calib_batch: usize,
    /// Which calibration input marks real tokens (0 = padding, not counted in the statistics): `auto`
    /// detects an input named like `attention_mask` holding 0/1 values of the token inputs' shape;
    /// `none` counts every position; or the input's name.
    #[arg(long, default_value = "auto")]
    calib_mask: String,
    /// Calibrate stage by stage when the model's weights exceed this many MiB: tract then holds one
    /// stage (at most this much weight) at a time, with the same statistics. 0 = always the whole model.
    #[arg(long, default_value_t = 64)]
    calib_stage_mib: usize,
    /// Inputs for --validate (same formats as --calib); seeded random from declared shapes if absent.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Concrete shape for a symbolic input when generating random inputs: name=d0,d1,...
    #[arg(long = "input-shape")]
    input_shape: Vec<String>,
    /// Run original and result in tract on the same inputs and report how far the outputs moved.
    #[arg(long)]
    validate: bool,
    /// With --validate: fail (exit 3) when an output's relative L2 error exceeds this. Without this and
    /// --min-cosine, validation shows the fidelity figures with no verdict.
    #[arg(long)]
    max_rel_l2: Option<f64>,
    /// With --validate: fail (exit 3) when an output's cosine similarity is below this.
    #[arg(long)]
    min_cosine: Option<f64>,
    /// Write the run report (and validation) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report (pipeline and timing, per-layer charts, legality, validation,
    /// what was skipped) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bars (they are drawn only when stdout and stderr are terminals anyway).
    #[arg(short, long)]
    quiet: bool,
    /// External data for the output: auto (as the input, or when over 2 GiB), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    external_data: String,
    /// Seed for random validation inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    input: String,
    output: String,
    report: &'a RunReport,
    /// How the calibration data was run (batch axes, inputs passed whole, files run as given).
    calibration_notes: Vec<String>,
    /// The validation report; without thresholds its `status` is "Measured" and outputs carry no
    /// `within_threshold` (figures only, no verdict).
    validation: Option<serde_json::Value>,
    /// The thresholds enforced (only those given on the command line), or null: no verdict asked.
    thresholds: Option<Thresholds>,
}

pub fn main(a: Args) -> Result<Outcome> {
    if a.calib_batch == 0 {
        return Ok(Outcome::Usage("--calib-batch must be at least 1".into()));
    }
    let pipeline = match Pipeline::parse(&a.pipeline) {
        Ok(p) => p,
        Err(sparsify_onnx::Error::Pipeline(e)) => return Ok(Outcome::Usage(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if !a.input_shape.is_empty() && (!a.validate || a.inputs.is_some()) {
        return Ok(Outcome::Usage(
            "--input-shape sizes the random inputs of --validate: give it with --validate and without --inputs".into(),
        ));
    }
    for s in &a.input_shape {
        if let Err(e) = sparsify_onnx::validate::parse_input_shape(s) {
            return Ok(Outcome::Usage(e.to_string()));
        }
    }
    let mut model = sparsify_onnx::load(&a.input).with_context(|| format!("loading {}", a.input.display()))?;
    let external = match a.external_data.as_str() {
        "always" => ExternalMode::Always,
        "never" => ExternalMode::Never,
        _ => ExternalMode::Auto,
    };
    let opts = ExportOptions { external, ..Default::default() };
    check_output_paths(&a, &model, &opts)?;
    let bars = progress::wanted(a.quiet).then(progress::Bars::new);
    let calibrator = match &a.calib {
        Some(p) => {
            let decls = sparsify_onnx::input_decls(&model);
            let samples = sparsify_onnx::validate::load_samples(p, &decls)
                .with_context(|| format!("loading calibration data from {}", p.display()))?;
            let calib = TractCalibrator::plan(&samples, &decls, a.calib_batch)?
                .with_token_mask(&sparsify_onnx::token_mask::TokenMask::parse(&a.calib_mask))?
                .with_stage_bytes((a.calib_stage_mib > 0).then_some(a.calib_stage_mib << 20));
            for n in calib.notes() {
                println!("calibration: {n}");
            }
            Some(match &bars {
                Some(b) => calib.with_progress(progress::calibration(b.clone())),
                None => calib,
            })
        }
        None => None,
    };
    let calib_notes: Vec<String> = calibrator.as_ref().map(|c| c.notes().to_vec()).unwrap_or_default();
    let calibrator = calibrator.as_ref().map(|c| c as &dyn sparsify_onnx::Calibrator);
    // Rewritten tensors are stored as soon as they are final: straight into the output's external-data
    // file when it will have one (laid out now, renamed into place by the save), else in an unlinked
    // spill file beside the output. Memory stays bounded by the largest tensor. Without a writable
    // folder they stay in memory (the save then reports the folder).
    let scratch = sparsify_onnx::Scratch::for_output(&model, &a.output, &opts).ok();
    let progress = bars.as_ref().map(|b| b.as_ref() as &dyn sparsify_onnx::Progress);
    let report = pipeline.run_with(&mut model, calibrator, progress, scratch.as_ref())?;
    match &scratch {
        Some(s) => sparsify_onnx::save_with_scratch(&model, &a.output, &opts, s),
        None => sparsify_onnx::save(&model, &a.output, &opts),
    }
    .with_context(|| format!("saving {}", a.output.display()))?;
    print_report(&report);
    println!("wrote {}", a.output.display());

    let mut outcome = Outcome::Ok;
    let mut validation = None;
    let mut checked = None;
    let enforce = a.max_rel_l2.is_some() || a.min_cosine.is_some();
    // A verdict only against thresholds the user gave: the defaults of `validate` are those of an exact
    // rewrite, which every lossy pipeline is "over".
    let th = (a.max_rel_l2.is_some() || a.min_cosine.is_some()).then(|| Thresholds {
        max_rel_l2: a.max_rel_l2.unwrap_or(f64::INFINITY),
        min_cosine: a.min_cosine.unwrap_or(f64::NEG_INFINITY),
        max_abs: None,
    });
    if a.validate {
        let feed = feed_for(&model, a.inputs.as_deref(), &a.input_shape, a.seed)?;
        let unbounded = Thresholds { max_rel_l2: f64::INFINITY, min_cosine: f64::NEG_INFINITY, max_abs: None };
        let v = sparsify_onnx::validate_files(&a.input, &a.output, &feed, th.as_ref().unwrap_or(&unbounded));
        println!();
        print_validation(&v, th.as_ref());
        let json = validation_json(&v, th.is_some())?;
        match &v.status {
            Status::NotValidated { reason } => {
                let reason = reason.clone();
                write_outputs(&a, &model, &report, calib_notes, Some(json), Some(&v), th, enforce)?;
                bail!("the result was written but could not be validated: {reason}");
            }
            Status::OverThreshold if th.is_some() => outcome = Outcome::OverThreshold,
            _ => {}
        }
        validation = Some(json);
        checked = Some(v);
    }
    write_outputs(&a, &model, &report, calib_notes, validation, checked.as_ref(), th, enforce)?;
    Ok(outcome)
}

/// Before any work: no file the run writes (the model, its data file, `--json`, `--report`) may be one of
/// the input's files or another of them, and the reports' folders must exist (a run that failed at the
/// end would otherwise leave some outputs and not others).
fn check_output_paths(a: &Args, model: &sparsify_onnx::ir::Model, opts: &ExportOptions) -> Result<()> {
    let same = |x: &Path, y: &Path| x == y || sparsify_onnx::same_file(x, y);
    let inputs = sparsify_onnx::input_files(model, &a.input);
    let outputs = sparsify_onnx::output_files(model, &a.output, opts);
    for out in &outputs {
        if let Some(inp) = inputs.iter().find(|i| same(i, out)) {
            bail!(
                "the output file '{}' is the input's file '{}': refusing to overwrite the input",
                out.display(),
                inp.display()
            );
        }
    }
    let side: Vec<(&str, &Path)> = [("--json", a.json.as_deref()), ("--report", a.report.as_deref())]
        .into_iter()
        .filter_map(|(f, p)| Some((f, p?)))
        .collect();
    for (i, (flag, p)) in side.iter().enumerate() {
        let named = outputs.iter().zip(["the output model", "the output's data file"]);
        let files = named.chain(inputs.iter().map(|i| (i, "an input file")));
        if let Some((_, what)) = files.into_iter().find(|(o, _)| same(p, o)) {
            bail!("{flag} '{}' is {what}: give the report its own file", p.display());
        }
        if let Some((f2, p2)) = side[..i].iter().find(|(_, q)| same(p, q)) {
            bail!("{flag} and {f2} are the same file '{}'", p2.display());
        }
        if let Some(why) = missing_folder(flag, p) {
            bail!(why);
        }
    }
    Ok(())
}

/// The validation report as JSON; without a verdict, status "Measured" and no per-output verdicts.
fn validation_json(v: &ValidationReport, verdict: bool) -> Result<serde_json::Value> {
    let mut json = serde_json::to_value(v)?;
    if !verdict && !matches!(v.status, Status::NotValidated { .. }) {
        json["status"] = serde_json::Value::from("Measured");
        if let Some(outs) = json["outputs"].as_array_mut() {
            for o in outs.iter_mut().filter_map(|o| o.as_object_mut()) {
                o.remove("within_threshold");
            }
        }
    }
    Ok(json)
}

/// `--report` then `--json`, each written atomically (also when validation could not run).
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    a: &Args,
    model: &sparsify_onnx::ir::Model,
    report: &RunReport,
    calibration_notes: Vec<String>,
    validation: Option<serde_json::Value>,
    checked: Option<&ValidationReport>,
    thresholds: Option<Thresholds>,
    enforced: bool,
) -> Result<()> {
    write_html(a, model, report, checked, enforced)?;
    if let Some(j) = &a.json {
        let out = JsonOut {
            input: show(&a.input),
            output: show(&a.output),
            report,
            calibration_notes,
            validation,
            thresholds,
        };
        write_json(j, &out)?;
    }
    Ok(())
}

/// `--report FILE.html`, written atomically.
fn write_html(
    a: &Args,
    model: &sparsify_onnx::ir::Model,
    report: &RunReport,
    validation: Option<&sparsify_onnx::validate::ValidationReport>,
    enforced: bool,
) -> Result<()> {
    let Some(path) = &a.report else { return Ok(()) };
    let page = report::Page { input: &a.input, output: &a.output, report, model, validation, enforced };
    report::write(path, &page).with_context(|| format!("writing the report {}", path.display()))?;
    println!("wrote report {}", path.display());
    Ok(())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

fn print_report(r: &RunReport) {
    println!("pipeline: {}", if r.pipeline.is_empty() { "(no passes)" } else { &r.pipeline });
    for p in &r.passes {
        let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {} — {:.1} ms{}{}",
            p.element,
            p.millis,
            if p.changed { "" } else { " (no change)" },
            if counters.is_empty() { String::new() } else { format!(": {}", counters.join(", ")) }
        );
        for n in p.notes.iter().take(50) {
            println!("    {}: {}", n.subject, n.message);
        }
        if p.notes.len() > 50 {
            println!("    ... {} more notes (see --json)", p.notes.len() - 50);
        }
    }
    let rows: Vec<Vec<String>> = r
        .weights
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.op.clone(),
                format!("{:?}", w.shape),
                w.dtype.clone(),
                format!("{:.3}", w.sparsity_before),
                format!("{:.3}", w.sparsity_after),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        print_table(&["weight", "op", "shape", "dtype", "sparsity before", "after"], &rows);
    }
    let t = &r.totals_weights;
    let te = &r.totals_with_embeddings;
    println!(
        "\nweights: {} elements, sparsity {:.3} -> {:.3}; with embedding tables: {} elements, {:.3} -> {:.3}",
        t.elements, t.sparsity_before, t.sparsity_after, te.elements, te.sparsity_before, te.sparsity_after
    );
    println!(
        "what this buys: zeros stored densely shrink nothing and speed up nothing by themselves; 2:4 patterns need sparse \
         tensor cores (Ampere+, TensorRT); removed channels (dead-channel-elim) make the model smaller and faster everywhere."
    );
}
