//! `sparsify-onnx check INPUT [--n 2 --m 4] [--strict] [--ops LIST] [--names GLOB] [--exclude GLOB] [--json]
//! [--report-only]`: N:M legality per weight (TensorRT's rule: in every group of M consecutive elements along
//! the reduction axis, at most N non-zeros). The weights held to the rule are those the weight passes
//! select with the same scope (default ops Conv|Gemm|MatMul), so a pipeline's output passes.

use crate::common::print_table;
use crate::Outcome;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    input: PathBuf,
    /// Non-zeros allowed (kept) in each group.
    #[arg(long, default_value_t = 2)]
    n: usize,
    /// Group size along the reduction axis.
    #[arg(long, default_value_t = 4)]
    m: usize,
    /// Also require TensorRT-friendly channel multiples (output % 8, reduction % 16) for eligibility.
    #[arg(long)]
    strict: bool,
    /// Consuming ops whose weights are held to the rule, '|'-separated (as the passes' `ops=`; add
    /// ConvTranspose when the pipeline did).
    #[arg(long, default_value = sparsify_onnx::passes::scope::DEFAULT_OPS)]
    ops: String,
    /// Glob over weight names to check (as the passes' `names=`).
    #[arg(long, default_value = "*")]
    names: String,
    /// Glob over weight names to leave out (as the passes' `exclude=`).
    #[arg(long, default_value = "")]
    exclude: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit 0 even when an eligible weight is not compliant (report only).
    #[arg(long)]
    report_only: bool,
}

pub fn main(a: Args) -> Result<Outcome> {
    if a.n == 0 || a.n >= a.m {
        return Ok(Outcome::Usage(format!("--n must be at least 1 and below --m (got n={}, m={})", a.n, a.m)));
    }
    use sparsify_onnx::passes::{glob::Glob, scope};
    let ops = match scope::parse_known_ops(&a.ops) {
        Ok(o) => o,
        Err(e) => return Ok(Outcome::Usage(format!("--ops: {e}"))),
    };
    let model = sparsify_onnx::load(&a.input).with_context(|| format!("loading {}", a.input.display()))?;
    let scope = scope::Scope {
        ops,
        names: Glob::new(&a.names),
        exclude: (!a.exclude.is_empty()).then(|| Glob::new(&a.exclude)),
        embeddings: false,
    };
    let rows = sparsify_onnx::passes::nm_check::check_nm_scoped(&model, a.n, a.m, a.strict, &scope);
    let bad = rows.iter().filter(|r| r.eligible && r.compliant == Some(false)).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.tensor.clone(),
                    r.op.clone(),
                    format!("{:?}", r.shape),
                    r.dtype.clone(),
                    r.axis.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                    if r.eligible { "yes".into() } else { "no".into() },
                    match r.compliant {
                        Some(true) => "yes".into(),
                        Some(false) => format!("NO ({:.1}% of groups)", r.violating_fraction * 100.0),
                        None => "-".into(),
                    },
                    r.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(&["tensor", "op", "shape", "dtype", "axis", "eligible", "compliant", "reason"], &table);
        let eligible = rows.iter().filter(|r| r.eligible).count();
        println!("\n{}:{} check: {eligible} eligible weights, {bad} not compliant", a.n, a.m);
    }
    Ok(if bad > 0 && !a.report_only { Outcome::OverThreshold } else { Outcome::Ok })
}
