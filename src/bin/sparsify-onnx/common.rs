//! Helpers shared by the subcommands: input feeds, thresholds, JSON output, tables.

use anyhow::{Context, Result};
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{Dim, Feed, Status, Thresholds, ValidationReport};
use std::collections::BTreeMap;
use std::path::Path;

/// Inputs for tract runs: from `--inputs` (.npz or folder of .npy) or seeded random from declared shapes.
pub fn feed_for(model: &Model, inputs: Option<&Path>, shapes: &[String], seed: u64) -> Result<Feed> {
    let decls = sparsify_onnx::input_decls(model);
    match inputs {
        Some(p) => sparsify_onnx::validate::load_feed(p, &decls)
            .with_context(|| format!("loading inputs from {}", p.display())),
        None => {
            let mut overrides = BTreeMap::new();
            for s in shapes {
                let (name, dims) = sparsify_onnx::validate::parse_input_shape(s)?;
                overrides.insert(name, dims);
            }
            eprintln!(
                "note: no --inputs given: validating on seeded random inputs (seed {seed}) from the declared shapes"
            );
            // Say which sizes were not declared: they are 1 in the random inputs, which can make the
            // fidelity figures unlike those of real inputs.
            let ones: Vec<String> = decls
                .iter()
                .filter(|d| !overrides.contains_key(&d.name))
                .flat_map(|d| {
                    d.dims.iter().enumerate().filter(|(_, x)| x.fixed().is_none()).map(|(i, x)| match x {
                        Dim::Named(sym) => format!("{}[{i}] ('{sym}')", d.name),
                        _ => format!("{}[{i}]", d.name),
                    })
                })
                .collect();
            if !ones.is_empty() {
                eprintln!(
                    "note: sizes not declared, set to 1 in the random inputs: {} (give --input-shape NAME=d0,d1,... \
                     or --inputs for realistic sizes)",
                    ones.join(", ")
                );
            }
            Ok(sparsify_onnx::validate::random_feed(&decls, &overrides, seed)?)
        }
    }
}

/// Why `path` (given as `flag`) cannot be written: its folder does not exist; `None` when it does.
pub fn missing_folder(flag: &str, path: &Path) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    (!dir.is_dir()).then(|| format!("{flag} '{}': the folder '{}' does not exist", path.display(), dir.display()))
}

/// Write JSON atomically (temporary file beside it, then rename; nothing left behind on failure).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    write_atomic(path, text.as_bytes())
}

/// Write a file atomically (the library's writer: temporary file in the same folder, synced, then
/// renamed; nothing is left at `path` nor a temporary file if writing fails).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sparsify_onnx::write_file_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn thresholds(max_rel_l2: Option<f64>, min_cosine: Option<f64>, max_abs: Option<f64>) -> Thresholds {
    let d = Thresholds::default();
    Thresholds {
        max_rel_l2: max_rel_l2.unwrap_or(d.max_rel_l2),
        min_cosine: min_cosine.unwrap_or(d.min_cosine),
        max_abs,
    }
}

/// Print a validation report as a table. With `th` (a verdict was asked for) each output gets an
/// ok / OVER status and the report a result line; without (`run --validate` and no thresholds given)
/// only the fidelity figures are shown.
pub fn print_validation(r: &ValidationReport, th: Option<&Thresholds>) {
    match th {
        Some(th) => println!("validation in tract (thresholds: {})", describe_thresholds(th)),
        None => println!("validation in tract: how far the outputs moved (no thresholds given, so no verdict)"),
    }
    let rows: Vec<Vec<String>> = r
        .outputs
        .iter()
        .map(|o| {
            let mut row = vec![
                o.name.clone(),
                format!("{}{:?}", o.dtype, o.shape),
                format!("{:.3e}", o.max_abs_err),
                format!("{:.3e}", o.rel_l2_err),
                format!("{:.6}", o.cosine),
                o.top1_agreement.map(|t| format!("{:.2}%", t * 100.0)).unwrap_or_else(|| "-".into()),
                if o.bit_identical { "yes".into() } else { "no".into() },
            ];
            if th.is_some() {
                row.push(if o.within_threshold { "ok".into() } else { "OVER".into() });
            }
            row
        })
        .collect();
    let mut header = vec!["output", "type", "max abs", "rel L2", "cosine", "top-1 agree", "bit-identical"];
    if th.is_some() {
        header.push("status");
    }
    print_table(&header, &rows);
    match (&r.status, th) {
        (Status::NotValidated { reason }, _) => println!("result: NOT VALIDATED: {reason}"),
        (_, None) => println!("(fidelity figures only: pass --max-rel-l2 / --min-cosine for a verdict)"),
        (Status::Passed, Some(_)) => println!("result: passed"),
        (Status::OverThreshold, Some(_)) => println!("result: over threshold"),
    }
}

/// The thresholds in force, skipping unbounded ones (`run` enforces only those the user gave).
fn describe_thresholds(th: &Thresholds) -> String {
    let mut parts = Vec::new();
    if th.max_rel_l2.is_finite() {
        parts.push(format!("rel L2 <= {:e}", th.max_rel_l2));
    }
    if th.min_cosine.is_finite() {
        parts.push(format!("cosine >= {}", th.min_cosine));
    }
    if let Some(a) = th.max_abs {
        parts.push(format!("max abs <= {a:e}"));
    }
    parts.join(", ")
}

/// A plain left-aligned table.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = width[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    line(width.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
}
