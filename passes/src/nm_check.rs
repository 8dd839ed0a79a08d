//! `check`: N:M legality report (design notes §6) — changes nothing.
//!
//! For every weight the weight analysis finds (Conv, ConvTranspose, Gemm, MatMul; any dtype): whether it
//! is eligible for N:M (or why not: outside the scope, axis conflict, dtype, depthwise, reduction dim per
//! group not a multiple of M, strict channel multiples), the axis, and whether it complies with
//! TensorRT's rule — in
//! every group of M consecutive elements along the reduction axis, for each output channel and kernel
//! position, at most N non-zeros — with the count and fraction of violating groups.
//! [`check_nm`] is the library function behind both this pass and the `check` subcommand, whose exit
//! code is 0 only when [`all_compliant`] holds.
//!
//! Scope: only the weights the weight passes select with the same `ops` / `names` / `exclude` are held to
//! the rule (default `ops=Conv|Gemm|MatMul`, [`crate::scope::DEFAULT_OPS`]); the others are listed as not
//! eligible with the reason (e.g. "ConvTranspose is not in ops=Conv|Gemm|MatMul"). So the output of
//! `nm-legalize` always passes `check` with the same n, m, strict and scope: with the defaults, or with
//! `ops=Conv|Gemm|MatMul|ConvTranspose` on both.
//!
//! Preconditions: none. Effects: none (rows go to the pass's notes and counters). Idempotent: yes.
//! Counters: `weights`, `eligible`, `compliant`, `violating_weights`, `violating_groups`, `total_groups`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `n` | `2` | at most n non-zeros (kept) in every group of m |
//! | `m` | `4` | group size along the reduction axis |
//! | `strict` | `false` | eligibility also requires output % 8 == 0 and reduction % 16 == 0 |
//! | `ops`, `names`, `exclude` | see [`crate::scope`] | which weights are held to the rule |

use crate::nm::{nm_eligibility, nm_violations, AxisView};
use crate::nm_legalize::parse_nm;
use crate::scope::{Scope, SCOPE_OPTIONS};
use serde::Serialize;
use sparsify_ir::Model;
use sparsify_pm::{Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PipelineError};

/// One weight's N:M legality.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NmCheckRow {
    pub tensor: String,
    /// Op of the (first) consumer.
    pub op: String,
    /// Consuming node names, comma-separated when shared.
    pub node: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub eligible: bool,
    /// Why the weight is not eligible.
    pub reason: Option<String>,
    /// The reduction axis the groups run along (weight layout); `None` on an axis conflict.
    pub axis: Option<usize>,
    /// `Some(true)` when no group holds more than n non-zeros; `None` for ineligible weights.
    pub compliant: Option<bool>,
    pub violating_groups: usize,
    pub total_groups: usize,
    pub violating_fraction: f64,
}

/// Check every weight of `model` against N:M (`n` kept of every `m`), with the default scope (the
/// weights the weight passes select by default).
pub fn check_nm(model: &Model, n: usize, m: usize, strict: bool) -> Vec<NmCheckRow> {
    check_nm_scoped(model, n, m, strict, &Scope::default())
}

/// [`check_nm`] with a scope: weights `scope` leaves out are rows with `eligible: false` and the reason.
pub fn check_nm_scoped(model: &Model, n: usize, m: usize, strict: bool, scope: &Scope) -> Vec<NmCheckRow> {
    let g = &model.graph;
    let mut rows = Vec::new();
    for w in g.find_weights() {
        let Some(t) = g.weight(&w.id) else { continue };
        let mut row = NmCheckRow {
            tensor: w.id.name().to_string(),
            op: w.op().to_string(),
            node: w.uses.iter().map(|u| u.node_name.as_str()).collect::<Vec<_>>().join(", "),
            shape: t.dims.clone(),
            dtype: t.dtype.name(),
            eligible: false,
            reason: None,
            axis: w.conflict.is_none().then(|| w.red_axis()),
            compliant: None,
            violating_groups: 0,
            total_groups: 0,
            violating_fraction: 0.0,
        };
        if let Some(why) = scope.left_out(&w) {
            row.reason = Some(format!("not selected: {why}"));
            rows.push(row);
            continue;
        }
        match g.weight_prunable(&w.id).and_then(|_| nm_eligibility(&w, t, m, strict)) {
            Err(why) => row.reason = Some(why),
            Ok(axis) => {
                let Ok(zeros) = g.weight_zero_flags(&w.id) else { continue };
                let nonzero: Vec<bool> = zeros.iter().map(|z| !z).collect();
                let (bad, total) = nm_violations(&nonzero, AxisView::new(&t.shape(), axis), n, m);
                row.eligible = true;
                row.compliant = Some(bad == 0);
                row.violating_groups = bad;
                row.total_groups = total;
                row.violating_fraction = if total == 0 { 0.0 } else { bad as f64 / total as f64 };
            }
        }
        rows.push(row);
    }
    rows
}

/// The `check` verdict: every eligible weight complies.
pub fn all_compliant(rows: &[NmCheckRow]) -> bool {
    rows.iter().all(|r| !r.eligible || r.compliant == Some(true))
}

const OPTIONS: [OptionSpec; 6] = [
    OptionSpec { name: "n", default: "2", help: "at most n non-zeros (kept) in every group of m" },
    OptionSpec { name: "m", default: "4", help: "group size along the reduction axis" },
    OptionSpec {
        name: "strict",
        default: "false",
        help: "eligibility also requires output % 8 == 0, reduction % 16 == 0",
    },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
];

pub const INFO: PassInfo = PassInfo {
    name: "check",
    description: "report N:M legality per weight (TensorRT rule: at most n non-zeros in every m); changes nothing",
    effects: Effects::NONE,
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let (n, m) = parse_nm(opts, "check")?;
    let strict = opts.take_bool("strict", false)?;
    let mut scope = Scope::default();
    if let Some(ops) = opts.take_str("ops") {
        scope.ops = crate::scope::parse_known_ops(&ops).map_err(|e| opts.error((0, 0), format!("check: {e}")))?;
    }
    if let Some(names) = opts.take_str("names") {
        scope.names = crate::glob::Glob::new(&names);
    }
    scope.exclude = opts.take_str("exclude").filter(|e| !e.is_empty()).map(|e| crate::glob::Glob::new(&e));
    Ok(Box::new(Check { n, m, strict, scope }))
}

pub struct Check {
    pub n: usize,
    pub m: usize,
    pub strict: bool,
    /// Which weights are held to the rule (`embeddings` is not used: tables have no reduction axis).
    pub scope: Scope,
}

impl Pass for Check {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("n", self.n.to_string()), ("m", self.m.to_string()), ("strict", self.strict.to_string())];
        v.extend(self.scope.options().into_iter().take(3));
        v
    }
    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let rows = check_nm_scoped(model, self.n, self.m, self.strict, &self.scope);
        let (n, m) = (self.n, self.m);
        for key in ["weights", "eligible", "compliant", "violating_weights", "violating_groups", "total_groups"] {
            cx.stat(key, 0.0);
        }
        for r in &rows {
            cx.stat("weights", 1.0);
            let msg = match (&r.reason, r.compliant) {
                (Some(why), _) => format!("not eligible: {why}"),
                (None, Some(true)) => {
                    cx.stat("compliant", 1.0);
                    format!("{n}:{m} along axis {}: compliant ({} groups)", r.axis.unwrap_or(0), r.total_groups)
                }
                _ => {
                    cx.stat("violating_weights", 1.0);
                    format!(
                        "{n}:{m} along axis {}: NOT compliant, {}/{} groups ({:.2}%) hold more than {n} non-zeros",
                        r.axis.unwrap_or(0),
                        r.violating_groups,
                        r.total_groups,
                        100.0 * r.violating_fraction
                    )
                }
            };
            if r.eligible {
                cx.stat("eligible", 1.0);
                cx.stat("violating_groups", r.violating_groups as f64);
                cx.stat("total_groups", r.total_groups as f64);
            }
            cx.note(r.tensor.clone(), msg);
        }
        Ok(Changed::No)
    }
}
