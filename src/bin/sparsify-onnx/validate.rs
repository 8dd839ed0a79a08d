//! `sparsify-onnx validate ORIGINAL TRANSFORMED [--inputs PATH] [--json]`.

use crate::common::{feed_for, print_validation, thresholds};
use crate::Outcome;
use anyhow::{bail, Context, Result};
use sparsify_onnx::validate::Status;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    original: PathBuf,
    transformed: PathBuf,
    /// Inputs: .npz or a folder of .npy files; seeded random from declared shapes if absent.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Concrete shape for a symbolic input when generating random inputs: name=d0,d1,...
    #[arg(long = "input-shape")]
    input_shape: Vec<String>,
    /// Maximum relative L2 error per output (default 1e-4).
    #[arg(long)]
    max_rel_l2: Option<f64>,
    /// Minimum cosine similarity per output (default 0.9999).
    #[arg(long)]
    min_cosine: Option<f64>,
    /// Maximum absolute error per output (off by default).
    #[arg(long)]
    max_abs: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<Outcome> {
    if !a.input_shape.is_empty() && a.inputs.is_some() {
        return Ok(Outcome::Usage("--input-shape sizes random inputs: give it without --inputs".into()));
    }
    let model = sparsify_onnx::load(&a.original).with_context(|| format!("loading {}", a.original.display()))?;
    let feed = feed_for(&model, a.inputs.as_deref(), &a.input_shape, a.seed)?;
    let th = thresholds(a.max_rel_l2, a.min_cosine, a.max_abs);
    let v = sparsify_onnx::validate_files(&a.original, &a.transformed, &feed, &th);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_validation(&v, Some(&th));
    }
    match v.status {
        Status::Passed => Ok(Outcome::Ok),
        Status::OverThreshold => Ok(Outcome::OverThreshold),
        Status::NotValidated { reason } => bail!("not validated: {reason}"),
    }
}
