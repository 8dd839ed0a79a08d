//! The [`Pass`] trait, what a pass declares, the context it runs in, and the registry of passes.

use crate::analysis::AnalysisCache;
use crate::calib::{CalibError, Calibrator};
use crate::options::{OptionSpec, Options};
use crate::pipeline::PipelineError;
use crate::progress::{NoStage, Progress, Stage};
use crate::report::Note;
use sparsify_ir::{Model, TensorError};
use std::collections::BTreeMap;

/// What a pass may change: an upper bound, checked by the manager and used to drop cached analyses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effects(pub u8);

impl Effects {
    pub const NONE: Effects = Effects(0);
    /// Analyses or report annotations only.
    pub const ANNOTATIONS: Effects = Effects(1);
    /// Weight values (same shapes).
    pub const WEIGHT_VALUES: Effects = Effects(2);
    /// Weight shapes (e.g. removed channels).
    pub const WEIGHT_SHAPES: Effects = Effects(4);
    /// Nodes, edges, graph inputs/outputs.
    pub const TOPOLOGY: Effects = Effects(8);

    pub fn union(self, o: Effects) -> Effects {
        Effects(self.0 | o.0)
    }
    pub fn intersects(self, o: Effects) -> bool {
        self.0 & o.0 != 0
    }
    pub fn names(self) -> Vec<&'static str> {
        let all = [(1, "annotations"), (2, "weight-values"), (4, "weight-shapes"), (8, "topology")];
        all.iter().filter(|(b, _)| self.0 & b != 0).map(|(_, n)| *n).collect()
    }
}

/// Whether a run changed the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    No,
    Yes,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{subject}: {message}")]
    Invalid { subject: String, message: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The message includes the calibrator's, so the calibrator error is not also a `source` (an error
    /// chain would print it twice).
    #[error("calibration failed: {0}")]
    Calibration(CalibError),
    #[error("this pass needs calibration data: pass --calib PATH (a .npz or a folder of .npy files)")]
    NeedsCalibration,
}

impl From<CalibError> for PassError {
    fn from(e: CalibError) -> Self {
        PassError::Calibration(e)
    }
}

/// The context a pass runs in: cached analyses, calibration, statistics and notes.
pub struct PassCx<'a> {
    pub analyses: &'a mut AnalysisCache,
    pub calibrator: Option<&'a dyn Calibrator>,
    /// Where finished tensors go (see [`crate::Spill`]); `None` keeps them in memory.
    pub spill: Option<&'a dyn crate::Spill>,
    pub counters: BTreeMap<String, f64>,
    pub notes: Vec<Note>,
    /// Per-weight measurements (metric name → weight → value), e.g. a reconstruction error; the HTML
    /// report charts each metric per layer.
    pub weight_metrics: BTreeMap<String, BTreeMap<String, f64>>,
    pub(crate) preserved: Vec<&'static str>,
    pub(crate) progress: Option<&'a dyn Progress>,
}

impl<'a> PassCx<'a> {
    pub fn new(analyses: &'a mut AnalysisCache, calibrator: Option<&'a dyn Calibrator>) -> PassCx<'a> {
        PassCx {
            analyses,
            calibrator,
            spill: None,
            counters: BTreeMap::new(),
            notes: Vec::new(),
            weight_metrics: BTreeMap::new(),
            preserved: Vec::new(),
            progress: None,
        }
    }

    /// Report progress of long work to `progress` (see [`PassCx::stage`]).
    pub fn with_progress(mut self, progress: Option<&'a dyn Progress>) -> PassCx<'a> {
        self.progress = progress;
        self
    }

    /// Start a progress stage of `total` steps (a weight, a solver stage); tick it with `inc(1)`, end it
    /// by dropping it. Free when nobody listens.
    pub fn stage(&self, label: &str, total: usize) -> Box<dyn Stage> {
        match self.progress {
            Some(p) => p.stage(label, total as u64),
            None => Box::new(NoStage),
        }
    }

    /// Record a per-weight measurement (e.g. `reconstruction loss` of one weight).
    pub fn weight_metric(&mut self, metric: &str, weight: &str, value: f64) {
        self.weight_metrics.entry(metric.to_string()).or_default().insert(weight.to_string(), value);
    }

    /// Hand a tensor whose new bytes are final to the spill (no-op without one).
    pub fn settle(&self, t: &mut sparsify_ir::Tensor) -> Result<(), PassError> {
        match self.spill {
            Some(s) => s.settle(t),
            None => Ok(()),
        }
    }

    /// Add to a named counter (shown in the statistics table).
    pub fn stat(&mut self, key: &str, by: f64) {
        *self.counters.entry(key.to_string()).or_default() += by;
    }

    /// A note about one subject (a tensor or node): a skip reason, a warning, a decision.
    pub fn note(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.notes.push(Note { subject: subject.into(), message: message.into() });
    }

    /// Keep analysis `A` cached after this pass even though its effects would drop it (the pass updated it).
    pub fn preserve<A: crate::Analysis>(&mut self) {
        self.preserved.push(std::any::type_name::<A>());
    }

    pub fn calibrator(&self) -> Result<&'a dyn Calibrator, PassError> {
        self.calibrator.ok_or(PassError::NeedsCalibration)
    }
}

/// A model transformation with a stable kebab-case name and typed options.
pub trait Pass: Send + Sync {
    fn name(&self) -> &'static str;
    /// Upper bound of what the pass may change.
    fn effects(&self) -> Effects;
    /// Every option with its value (defaults made explicit), in a fixed order: the canonical text.
    fn options(&self) -> Vec<(&'static str, String)>;
    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError>;
    /// True when the pass needs the model as it entered the pipeline ([`crate::DenseSnapshot`]); the
    /// manager then records it before the first pass.
    fn needs_dense_snapshot(&self) -> bool {
        false
    }
}

/// A registered pass: its name, description, option specs and builder.
#[derive(Clone, Copy)]
pub struct PassInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub effects: Effects,
    pub options: &'static [OptionSpec],
    pub build: fn(&mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError>,
}

/// All passes a pipeline may name.
#[derive(Clone, Default)]
pub struct Registry {
    passes: Vec<PassInfo>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }
    pub fn register(&mut self, info: PassInfo) {
        self.passes.retain(|p| p.name != info.name);
        self.passes.push(info);
    }
    pub fn get(&self, name: &str) -> Option<&PassInfo> {
        self.passes.iter().find(|p| p.name == name)
    }
    pub fn passes(&self) -> &[PassInfo] {
        &self.passes
    }
    /// Build one pass from key/value options (no pipeline text needed).
    pub fn build(&self, name: &str, pairs: &[(&str, &str)]) -> Result<Box<dyn Pass>, PipelineError> {
        let info = self.get(name).ok_or_else(|| PipelineError {
            text: name.to_string(),
            span: (0, name.len()),
            message: format!("unknown pass '{name}' (valid passes: {})", self.names().join(", ")),
        })?;
        let mut opts = Options::from_pairs(name, pairs, info.options);
        let p = (info.build)(&mut opts)?;
        opts.finish()?;
        Ok(p)
    }
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name).collect()
    }
}
