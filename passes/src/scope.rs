//! Which weights a pass touches. Shared by every weight pass through the options `ops`, `names`,
//! `exclude` and `embeddings`.
//!
//! Defaults: weights of Conv, Gemm and MatMul with at least two dimensions and a float dtype; embedding
//! tables (Gather data) only with `embeddings=true`; ConvTranspose only when named in `ops`
//! (`ops=Conv|Gemm|MatMul|ConvTranspose`). The same default ([`DEFAULT_OPS`]) decides which weights the
//! `check` pass and subcommand hold to N:M, so a pipeline's output always passes `check` with the same
//! N:M settings and scope.

use crate::glob::Glob;
use sparsify_ir::{Graph, WeightId, WeightInfo};
use sparsify_pm::{OptionSpec, Options, PipelineError};

/// The consuming ops every scoped pass (and `check`) selects by default.
pub const DEFAULT_OPS: &str = "Conv|Gemm|MatMul";

/// Option specs every scoped pass lists (append to the pass's own).
pub const SCOPE_OPTIONS: [OptionSpec; 4] = [
    OptionSpec {
        name: "ops",
        default: DEFAULT_OPS,
        help: "consuming op types to include, '|'-separated (ConvTranspose too)",
    },
    OptionSpec { name: "names", default: "*", help: "glob over weight names to include ('|' separates alternatives)" },
    OptionSpec { name: "exclude", default: "", help: "glob over weight names to skip" },
    OptionSpec { name: "embeddings", default: "false", help: "also select embedding tables (Gather data)" },
];

#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub ops: Vec<String>,
    pub names: Glob,
    pub exclude: Option<Glob>,
    pub embeddings: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Scope { ops: parse_ops(DEFAULT_OPS), names: Glob::new("*"), exclude: None, embeddings: false }
    }
}

/// A weight a scoped pass selected. Embedding tables have no `info` (no consumer axes).
#[derive(Debug, Clone)]
pub struct Selected {
    pub id: WeightId,
    pub info: Option<WeightInfo>,
}

impl Scope {
    pub fn from_options(opts: &mut Options<'_>) -> Result<Scope, PipelineError> {
        let mut s = Scope::default();
        if let Some(ops) = opts.take_str("ops") {
            s.ops = parse_known_ops(&ops).map_err(|e| opts.error((0, 0), format!("{}: {e}", opts.pass_name())))?;
        }
        if let Some(n) = opts.take_str("names") {
            s.names = Glob::new(&n);
        }
        s.exclude = opts.take_str("exclude").filter(|e| !e.is_empty()).map(|e| Glob::new(&e));
        s.embeddings = opts.take_bool("embeddings", false)?;
        Ok(s)
    }

    /// The scope's options in canonical order.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ops", self.ops.join("|")),
            ("names", self.names.as_str().to_string()),
            ("exclude", self.exclude.as_ref().map(|g| g.as_str().to_string()).unwrap_or_default()),
            ("embeddings", self.embeddings.to_string()),
        ]
    }

    pub fn name_ok(&self, name: &str) -> bool {
        self.names.matches(name) && !self.exclude.as_ref().is_some_and(|e| e.matches(name))
    }

    /// Why the scope leaves a (consumer-read) weight out, by its consumers and name only; `None` when
    /// it is in scope. Dtype and rank are not looked at here.
    pub fn left_out(&self, w: &WeightInfo) -> Option<String> {
        // A quantized op is in scope with its float op (QLinearConv with Conv, MatMulInteger with MatMul).
        let in_ops = |op: &str| self.ops.iter().any(|o| o == op || o == sparsify_ir::quant::float_op(op));
        if let Some(u) = w.uses.iter().find(|u| !in_ops(&u.op)) {
            return Some(format!(
                "{} is not in ops={} (add it with ops={}|{})",
                u.op,
                self.ops.join("|"),
                self.ops.join("|"),
                u.op
            ));
        }
        if !self.name_ok(w.id.name()) {
            return Some("name not selected by names/exclude".into());
        }
        None
    }

    /// The selected weights in graph order: float, rank ≥ 2, consumed by an op in `ops` (every consumer
    /// must be in scope), name matching. Embedding tables follow when asked.
    pub fn select(&self, g: &Graph) -> Vec<Selected> {
        let mut out = Vec::new();
        for w in g.find_weights() {
            let Some(t) = g.weight(&w.id) else { continue };
            if g.weight_prunable(&w.id).is_err() || t.dims.len() < 2 {
                continue;
            }
            if self.left_out(&w).is_some() {
                continue;
            }
            out.push(Selected { id: w.id.clone(), info: Some(w) });
        }
        if self.embeddings {
            for (_, n) in g.nodes() {
                if n.op_type != "Gather" {
                    continue;
                }
                let Some(id) = n.inputs.first().and_then(|i| g.constant_source(i)) else { continue };
                let ok = g.weight(&id).is_some_and(|t| t.dtype.is_prunable_float() && t.dims.len() == 2);
                if ok && self.name_ok(id.name()) && !out.iter().any(|s| s.id == id) {
                    out.push(Selected { id, info: None });
                }
            }
        }
        out
    }
}

/// `"Conv|Gemm"` → `["Conv", "Gemm"]` (blanks dropped).
pub fn parse_ops(text: &str) -> Vec<String> {
    text.split('|').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect()
}

/// [`parse_ops`], refusing an op type no weight can be selected through (a typo would otherwise
/// select nothing in silence), with the spelling meant when only the case differs.
pub fn parse_known_ops(text: &str) -> Result<Vec<String>, String> {
    let ops = parse_ops(text);
    if let Some(bad) = ops.iter().find(|o| !sparsify_ir::weights::WEIGHT_OPS.contains(&o.as_str())) {
        let hint = sparsify_ir::weights::WEIGHT_OPS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(bad))
            .map(|k| format!(" (did you mean '{k}'?)"));
        return Err(format!(
            "unknown op type '{bad}'{} in ops; weights are selected through {}",
            hint.unwrap_or_default(),
            sparsify_ir::weights::WEIGHT_OPS.join(", ")
        ));
    }
    Ok(ops)
}
