//! `sensitivity{template,levels,output}`: an analysis pass. For each prunable weight, the model's output
//! error on the calibration data when only that weight is pruned, at each sparsity level (see
//! [`crate::layer_sensitivity`] for how candidates are built, run and cached).
//!
//! - `template` is a pipeline with `$S` where the sparsity goes, run once per level on a copy of the
//!   model (e.g. `score{method=wanda},mask{sparsity=$S}`, `sparsegpt{sparsity=$S}`,
//!   `score{method=ria},mask{sparsity=$S}`); each weight's pruned values are then tried alone.
//! - Output: the [`Curves`] analysis (read by `mask{allocate=sensitivity}` when its recipe matches, and
//!   by embedders), one note per weight with its errors, and the table in the notes of the pass.
//! - Preconditions: calibration data. Effects: annotations only. Idempotent: yes.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `template` | `score{method=wanda},mask{sparsity=$S,scope=layer}` | pipeline run per level (`$S` = level) |
//! | `levels` | `0.25\|0.5\|0.75\|0.9` | sparsity levels (`\|`-separated inside pipeline text) |
//! | `output` | first float output | the graph output compared with the dense model |
//! | `ops`, `names`, `exclude` | see [`crate::scope`] | which weights are measured |

use crate::layer_sensitivity::{layers, measure, measured_tensor, parse_levels, reaching, table, Curves};
use crate::scope::{Scope, SCOPE_OPTIONS};
use sparsify_ir::Model;
use sparsify_pm::{
    Calibrator, Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PassManager, PipelineError,
    RunEnv,
};

pub const DEFAULT_TEMPLATE: &str = "score{method=wanda},mask{sparsity=$S,scope=layer}";
pub const DEFAULT_LEVELS: &str = "0.25|0.5|0.75|0.9";

const OPTIONS: [OptionSpec; 7] = [
    OptionSpec { name: "template", default: DEFAULT_TEMPLATE, help: "pipeline run per level; $S is the sparsity" },
    OptionSpec { name: "levels", default: DEFAULT_LEVELS, help: "sparsity levels, '|'-separated" },
    OptionSpec { name: "output", default: "", help: "graph output to compare (default: the first float output)" },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "sensitivity",
    description: "measure each weight's output error when pruned alone at several sparsities (needs --calib)",
    effects: Effects::ANNOTATIONS,
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let template = opts.take_str("template").unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    let levels_text = opts.take_str("levels").unwrap_or_else(|| DEFAULT_LEVELS.to_string());
    let output = opts.take_str("output").filter(|o| !o.is_empty());
    let scope = Scope::from_options(opts)?;
    if !template.contains("$S") {
        return Err(opts.error((0, 0), "sensitivity: the template must contain $S (where the sparsity goes)"));
    }
    let levels = parse_levels(&levels_text).map_err(|e| opts.error((0, 0), format!("sensitivity: {e}")))?;
    Ok(Box::new(Sensitivity { template, levels, output, scope }))
}

pub struct Sensitivity {
    pub template: String,
    pub levels: Vec<f64>,
    pub output: Option<String>,
    pub scope: Scope,
}

impl Sensitivity {
    /// Measure the curves of `model` (the library entry point behind the pass and the subcommand).
    pub fn analyze(&self, model: &Model, cal: &dyn Calibrator) -> Result<Curves, PassError> {
        let output = measured_tensor(&model.graph, self.output.as_deref(), "sensitivity")?;
        let reg = crate::registry();
        let list = layers(&model.graph, &self.scope);
        measure(model, cal, &output, &self.template, &list, &self.levels, |s| {
            let text = self.template.replace("$S", &s.to_string());
            let pm = PassManager::parse(&text, &reg)
                .map_err(|e| PassError::Invalid { subject: "template".into(), message: e.to_string() })?;
            let mut m = model.clone();
            pm.run(&mut m, RunEnv { calibrator: Some(cal), verify_each: false, spill: None })
                .map_err(|e| PassError::Invalid { subject: format!("template at {s}"), message: e.to_string() })?;
            Ok(m)
        })
    }
}

impl Pass for Sensitivity {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let levels: Vec<String> = self.levels.iter().map(|l| l.to_string()).collect();
        let mut v = vec![
            ("template", self.template.clone()),
            ("levels", levels.join("|")),
            ("output", self.output.clone().unwrap_or_default()),
        ];
        v.extend(self.scope.options());
        v
    }
    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let curves = self.analyze(model, cx.calibrator()?)?;
        cx.stat("layers", curves.layers.len() as f64);
        cx.stat("tract_runs", curves.runs as f64);
        let reaches = reaching(&model.graph, &[&curves.output]);
        for l in &curves.layers {
            let e: Vec<String> = curves.levels.iter().zip(&l.errors).map(|(s, e)| format!("{s}: {e:.4}")).collect();
            cx.note(l.weight.clone(), format!("rel L2 of '{}' when pruned alone — {}", curves.output, e.join(", ")));
            if !reaches(&l.weight) {
                cx.note(
                    l.weight.clone(),
                    format!("does not reach '{}': its curve is flat, not a measurement", curves.output),
                );
            }
        }
        cx.note("sensitivity", table(&curves));
        cx.analyses.insert(curves);
        Ok(Changed::No)
    }
}
