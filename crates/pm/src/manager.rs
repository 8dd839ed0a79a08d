//! The pass manager: builds passes from pipeline text through the registry, runs them in order, verifies
//! the IR after each one, checks that a pass changed no more than it declared, drops stale analyses and
//! collects statistics and timing.

use crate::analysis::AnalysisCache;
use crate::calib::Calibrator;
use crate::options::Options;
use crate::pass::{Changed, Effects, Pass, PassCx, PassError, Registry};
use crate::pipeline::{parse_pipeline, quote_value, PipelineError};
use crate::progress::Progress;
use crate::report::{totals, weight_table, PassStats, RunReport};
use sparsify_ir::verify::{verify, VerifyError};
use sparsify_ir::Model;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum PmError {
    #[error("pass '{pass}' (pipeline element {index}) failed: {source}")]
    Failed { pass: String, index: usize, source: PassError },
    #[error("the IR is invalid after pass '{after_pass}':\n{}", list(.errors))]
    VerifyFailed { after_pass: String, errors: Vec<VerifyError> },
    #[error("the input model is invalid:\n{}", list(.errors))]
    InvalidInput { errors: Vec<VerifyError> },
    #[error("internal error: pass '{pass}' changed {what} but declares only [{declared}]")]
    UndeclaredEffect { pass: String, what: String, declared: String },
}

fn list(errors: &[VerifyError]) -> String {
    errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n")
}

/// What a run needs besides the model.
#[derive(Clone, Copy)]
pub struct RunEnv<'a> {
    pub calibrator: Option<&'a dyn Calibrator>,
    /// Run the IR verifier after every pass (default on).
    pub verify_each: bool,
    /// Where passes put finished tensors (default: none, they stay in memory).
    pub spill: Option<&'a dyn crate::Spill>,
}

impl Default for RunEnv<'_> {
    fn default() -> Self {
        RunEnv { calibrator: None, verify_each: true, spill: None }
    }
}

/// An ordered list of configured passes.
#[derive(Default)]
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
}

impl PassManager {
    /// Parse pipeline text, checking pass names and options against the registry.
    pub fn parse(text: &str, registry: &Registry) -> Result<PassManager, PipelineError> {
        let mut passes = Vec::new();
        for el in parse_pipeline(text)? {
            let info = registry.get(&el.name).ok_or_else(|| PipelineError {
                text: text.to_string(),
                span: el.name_span,
                message: format!("unknown pass '{}' (valid passes: {})", el.name, registry.names().join(", ")),
            })?;
            let mut opts = Options {
                pass: el.name.clone(),
                text,
                items: el.options.into_iter().map(|(k, v, s)| (k, v, s, false)).collect(),
                specs: info.options,
            };
            let pass = (info.build)(&mut opts)?;
            opts.finish()?;
            passes.push(pass);
        }
        Ok(PassManager { passes })
    }

    pub fn push(&mut self, pass: Box<dyn Pass>) {
        self.passes.push(pass);
    }

    pub fn passes(&self) -> &[Box<dyn Pass>] {
        &self.passes
    }

    /// The canonical pipeline text: every option explicit, in each pass's fixed order.
    pub fn canonical(&self) -> String {
        self.passes.iter().map(|p| element_text(p.as_ref())).collect::<Vec<_>>().join(",")
    }

    /// Run every pass in order on `model`.
    pub fn run(&self, model: &mut Model, env: RunEnv<'_>) -> Result<RunReport, PmError> {
        self.run_with_progress(model, env, None)
    }

    /// [`PassManager::run`], reporting each pass and the long loops inside passes to `progress`.
    pub fn run_with_progress(
        &self,
        model: &mut Model,
        env: RunEnv<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<RunReport, PmError> {
        let before = weight_table(model);
        if env.verify_each {
            let errors = verify(&model.graph);
            if !errors.is_empty() {
                return Err(PmError::InvalidInput { errors });
            }
        }
        let mut cache = AnalysisCache::default();
        if self.passes.iter().any(|p| p.needs_dense_snapshot()) {
            cache.insert(crate::DenseSnapshot { model: model.clone() });
        }
        let mut stats = Vec::new();
        for (index, pass) in self.passes.iter().enumerate() {
            let fp = Fingerprint::of(model);
            let start = Instant::now();
            let mut cx = PassCx::new(&mut cache, env.calibrator).with_progress(progress);
            cx.spill = env.spill;
            let changed = pass.run(model, &mut cx).map_err(|source| PmError::Failed {
                pass: pass.name().to_string(),
                index: index + 1,
                source,
            })?;
            let millis = start.elapsed().as_secs_f64() * 1e3;
            let PassCx { counters, notes, weight_metrics, preserved, .. } = cx;
            if env.verify_each {
                let errors = verify(&model.graph);
                if !errors.is_empty() {
                    return Err(PmError::VerifyFailed { after_pass: pass.name().to_string(), errors });
                }
            }
            fp.check(model, pass.as_ref())?;
            if changed == Changed::Yes {
                cache.invalidate(pass.effects(), &preserved);
            }
            stats.push(PassStats {
                pass: pass.name().to_string(),
                element: element_text(pass.as_ref()),
                millis,
                changed: changed == Changed::Yes,
                counters,
                notes,
                weight_metrics,
            });
        }
        let after = weight_table(model);
        let mut weights = after;
        for w in &mut weights {
            if let Some(b) = before.iter().find(|b| b.name == w.name) {
                w.sparsity_before = b.sparsity_before;
            }
        }
        Ok(RunReport {
            pipeline: self.canonical(),
            passes: stats,
            totals_weights: totals(weights.iter().filter(|w| !w.embedding)),
            totals_with_embeddings: totals(weights.iter()),
            weights,
        })
    }
}

fn element_text(p: &dyn Pass) -> String {
    let opts = p.options();
    if opts.is_empty() {
        return p.name().to_string();
    }
    let body: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={}", quote_value(v))).collect();
    format!("{}{{{}}}", p.name(), body.join(","))
}

/// Cheap structural fingerprint: topology and weight shapes, to catch undeclared effects.
struct Fingerprint {
    topology: Vec<(String, Vec<String>, Vec<String>)>,
    shapes: Vec<(String, Vec<i64>)>,
}

impl Fingerprint {
    fn of(m: &Model) -> Fingerprint {
        let g = &m.graph;
        let mut shapes: Vec<(String, Vec<i64>)> =
            g.initializers.iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
        shapes.extend(g.nodes().filter_map(|(_, n)| n.constant_tensor()).map(|t| (t.name.clone(), t.dims.clone())));
        Fingerprint {
            topology: g.nodes().map(|(_, n)| (n.op_type.clone(), n.inputs.clone(), n.outputs.clone())).collect(),
            shapes,
        }
    }

    fn check(&self, m: &Model, pass: &dyn Pass) -> Result<(), PmError> {
        let now = Fingerprint::of(m);
        let declared = pass.effects();
        let fail = |what: &str| PmError::UndeclaredEffect {
            pass: pass.name().to_string(),
            what: what.to_string(),
            declared: declared.names().join(", "),
        };
        if now.topology != self.topology && !declared.intersects(Effects::TOPOLOGY) {
            return Err(fail("the graph topology"));
        }
        if now.shapes != self.shapes && !declared.intersects(Effects::WEIGHT_SHAPES.union(Effects::TOPOLOGY)) {
            return Err(fail("weight shapes"));
        }
        Ok(())
    }
}
