//! # sparsify-onnx
//!
//! Sparsity transformations over ONNX graphs: load a model, run a pipeline of passes, validate the
//! result against the original in tract, save it. This crate is the API boundary for embedders; the
//! crates behind it (`sparsify-ir`, `sparsify-pm`, `sparsify-passes`, `sparsify-onnx-io`,
//! `sparsify-validate`) are internal.
//!
//! ```
//! # fn main() -> Result<(), sparsify_onnx::Error> {
//! use sparsify_onnx::{ir::{Graph, Model, Node, Tensor, ValueInfo}, Pipeline};
//! // A one-node model built in code; `sparsify_onnx::load(path)` reads one from a file.
//! let mut g = Graph::new();
//! g.inputs.push(ValueInfo::tensor("x", 1, &[1, 2]));
//! g.outputs.push(ValueInfo::tensor("y", 1, &[1, 2]));
//! g.initializers.push(Tensor::from_f32("w", vec![2, 2], &[1.0, -3.0, 0.5, 2.0]).unwrap());
//! let g = g.with_nodes(vec![Node::new("MatMul", "mm", &["x", "w"], &["y"])]);
//! let mut model = Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] };
//! let pipeline = Pipeline::parse("score{method=l1},mask{sparsity=0.5}")?;
//! let report = pipeline.run(&mut model, None)?;
//! assert_eq!(report.weights[0].sparsity_after, 0.5);
//! // The two smallest magnitudes (0.5 and 1.0) were zeroed; the others are untouched.
//! let w = model.graph.initializer("w").unwrap().to_f32().unwrap();
//! assert_eq!(w.as_slice().unwrap(), &[0.0, -3.0, 0.0, 2.0]);
//! assert!(pipeline.canonical().starts_with("score{method=l1,"));
//! # Ok(()) }
//! ```

pub mod calibrate;
mod graph_slice;
pub mod staged;
pub mod token_mask;
pub mod variants;

pub use calibrate::TractCalibrator;
pub use sparsify_ir as ir;
pub use sparsify_onnx_io::{write_file_atomic, AtomicFile, ExportOptions, ExternalMode, Scratch};
pub use sparsify_passes as passes;
/// The seed library API for code that embeds the library (e.g. a training loop): importance scores,
/// unstructured and N:M masks over `ndarray` weights, and pruning schedules.
pub use sparsify_passes::schedule::PruningSchedule;
pub use sparsify_passes::seed;
pub use sparsify_passes::seed::{
    generate_nm_mask, generate_unstructured_mask, Importance, ImportanceScores, Layer, MagnitudeImportance,
    PruningError, SparsityMask, SparsityPattern, WandaImportance,
};
pub use sparsify_pm::{weight_table, Calibrator, Progress, RunReport, Stage, WeightRow};
pub use sparsify_validate as validate;

use sparsify_ir::{Dim, Model};
use sparsify_pm::{PassManager, Registry, RunEnv};
use sparsify_validate::{InputDecl, ModelSource, Thresholds, ValidationReport};
use std::path::Path;

/// Everything that can go wrong, by stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] sparsify_onnx_io::IoError),
    #[error(transparent)]
    Pipeline(#[from] sparsify_pm::PipelineError),
    #[error(transparent)]
    Pass(#[from] sparsify_pm::PmError),
    #[error(transparent)]
    Validate(#[from] sparsify_validate::ValidateError),
    /// Calibration data that cannot be used as asked (e.g. a `--calib-mask` input that is not 0/1).
    #[error("calibration: {0}")]
    Calibration(String),
}

/// Load an ONNX model (external data resolved next to it, mapped lazily).
pub fn load(path: &Path) -> Result<Model, Error> {
    Ok(sparsify_onnx_io::load(path)?)
}

pub use sparsify_onnx_io::{input_files, output_files, same_file};

/// Save atomically: nothing is left at `path` if writing fails.
pub fn save(model: &Model, path: &Path, opts: &ExportOptions) -> Result<(), Error> {
    Ok(sparsify_onnx_io::save(model, path, opts)?)
}

/// [`save`] after [`Pipeline::run_with`] with a scratch: tensors already written in place in the output's
/// data file (a scratch made by [`Scratch::for_output`] for this path and options) are not written again,
/// spilled ones are copied file to file. Same bytes as [`save`].
pub fn save_with_scratch(model: &Model, path: &Path, opts: &ExportOptions, scratch: &Scratch) -> Result<(), Error> {
    Ok(sparsify_onnx_io::save_with_scratch(model, path, opts, scratch)?)
}

/// Encode a model inline into memory.
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, Error> {
    Ok(sparsify_onnx_io::model_to_bytes(model)?)
}

/// The registry of every pass.
pub fn registry() -> Registry {
    sparsify_passes::registry()
}

/// A parsed pipeline, ready to run.
pub struct Pipeline {
    manager: PassManager,
}

impl Pipeline {
    /// Parse pipeline text such as `score{method=l1},mask{sparsity=0.5}`; empty text is no passes.
    pub fn parse(text: &str) -> Result<Pipeline, Error> {
        Ok(Pipeline { manager: PassManager::parse(text, &registry())? })
    }

    /// The pipeline with every option explicit.
    pub fn canonical(&self) -> String {
        self.manager.canonical()
    }

    /// Run on `model`. Passes that need activations use `calibrator` (see [`TractCalibrator`]).
    pub fn run(&self, model: &mut Model, calibrator: Option<&dyn Calibrator>) -> Result<RunReport, Error> {
        Ok(self.manager.run(model, RunEnv { calibrator, ..Default::default() })?)
    }

    /// [`Pipeline::run`], reporting the long loops inside passes (per weight, per solver stage) to
    /// `progress`. Calibration batches report through [`TractCalibrator::with_progress`].
    pub fn run_with_progress(
        &self,
        model: &mut Model,
        calibrator: Option<&dyn Calibrator>,
        progress: &dyn Progress,
    ) -> Result<RunReport, Error> {
        self.run_with(model, calibrator, Some(progress), None)
    }

    /// [`Pipeline::run`] with optional progress and an optional `scratch`: with one, every tensor a pass
    /// rewrites is stored there as soon as it is final (the model then holds mapped views of the stored
    /// bytes), so working memory stays near the largest tensor instead of growing with every modified
    /// weight. Same results, same saved bytes (save with [`save_with_scratch`] to copy them file to file).
    pub fn run_with(
        &self,
        model: &mut Model,
        calibrator: Option<&dyn Calibrator>,
        progress: Option<&dyn Progress>,
        scratch: Option<&Scratch>,
    ) -> Result<RunReport, Error> {
        let spill = scratch.map(ScratchSpill);
        let env = RunEnv { calibrator, verify_each: true, spill: spill.as_ref().map(|s| s as &dyn sparsify_pm::Spill) };
        Ok(self.manager.run_with_progress(model, env, progress)?)
    }
}

/// The pass manager's [`sparsify_pm::Spill`] hook over a [`Scratch`] file.
struct ScratchSpill<'a>(&'a Scratch);

impl sparsify_pm::Spill for ScratchSpill<'_> {
    fn store(&self, name: &str, bytes: &[u8]) -> Result<bytes::Bytes, sparsify_pm::PassError> {
        self.0
            .store_named(name, bytes)
            .map_err(|e| sparsify_pm::PassError::Invalid { subject: name.to_string(), message: e.to_string() })
    }
}

/// The graph inputs that are fed at run time (initializers excluded), as validation wants them.
pub fn input_decls(model: &Model) -> Vec<InputDecl> {
    let g = &model.graph;
    g.inputs
        .iter()
        .filter(|i| g.initializer(&i.name).is_none())
        .map(|i| InputDecl {
            name: i.name.clone(),
            elem_type: i.elem_type.unwrap_or(1),
            dims: i
                .shape
                .as_ref()
                .map(|s| {
                    s.iter()
                        .map(|d| match d {
                            Dim::Value(v) => sparsify_validate::Dim::Fixed(*v),
                            Dim::Param(p) => sparsify_validate::Dim::Named(p.clone()),
                            Dim::Unknown => sparsify_validate::Dim::Unknown,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Run both models in tract on the same inputs and compare every output.
pub fn validate_files(
    original: &Path,
    transformed: &Path,
    feed: &sparsify_validate::Feed,
    th: &Thresholds,
) -> ValidationReport {
    sparsify_validate::validate(ModelSource::Path(original), ModelSource::Path(transformed), feed, th)
}
