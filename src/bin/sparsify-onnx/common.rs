//! Helpers shared by the subcommands: input feeds, thresholds, JSON output, tables.

use anyhow::{Context, Result};
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{Feed, Status, Thresholds, ValidationReport};
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
            Ok(sparsify_onnx::validate::random_feed(&decls, &overrides, seed)?)
        }
    }
}

/// Write JSON atomically (temporary file, then rename).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    write_atomic(path, text.as_bytes())
}

/// Write a file atomically: a temporary file in the same folder, then rename; nothing is left at
/// `path` (nor a temporary file) if writing fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
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

/// Print a validation report as a table.
pub fn print_validation(r: &ValidationReport, th: &Thresholds) {
    println!("validation in tract (thresholds: rel L2 <= {:e}, cosine >= {})", th.max_rel_l2, th.min_cosine);
    let rows: Vec<Vec<String>> = r
        .outputs
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                format!("{}{:?}", o.dtype, o.shape),
                format!("{:.3e}", o.max_abs_err),
                format!("{:.3e}", o.rel_l2_err),
                format!("{:.6}", o.cosine),
                o.top1_agreement.map(|t| format!("{:.2}%", t * 100.0)).unwrap_or_else(|| "-".into()),
                if o.bit_identical { "yes".into() } else { "no".into() },
                if o.within_threshold { "ok".into() } else { "OVER".into() },
            ]
        })
        .collect();
    print_table(&["output", "type", "max abs", "rel L2", "cosine", "top-1 agree", "bit-identical", "status"], &rows);
    match &r.status {
        Status::Passed => println!("result: passed"),
        Status::OverThreshold => println!("result: over threshold"),
        Status::NotValidated { reason } => println!("result: NOT VALIDATED: {reason}"),
    }
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
