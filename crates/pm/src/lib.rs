//! The pass manager: the [`Pass`] trait, the pipeline text (`name{key=value,...},name2`), the pass
//! [`Registry`], the analysis cache, calibration hooks and per-pass statistics.
//!
//! Knows nothing of protobuf, tract, files or the terminal: calibration data arrives through the
//! [`Calibrator`] trait, implemented by the facade.

pub mod analysis;
pub mod calib;
pub mod manager;
pub mod options;
pub mod pass;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod snapshot;
pub mod spill;

pub use analysis::{Analysis, AnalysisCache};
pub use calib::{
    apply_variant, check_variant, rel_l2, CalibError, CalibRequest, CalibStat, Calibrator, FeatureAxis, PairRequest,
    PairStat, RelL2,
};
pub use manager::{PassManager, PmError, RunEnv};
pub use options::{OptionSpec, Options};
pub use pass::{Changed, Effects, Pass, PassCx, PassError, PassInfo, Registry};
pub use pipeline::{parse_pipeline, Element, PipelineError};
pub use progress::{NoStage, Progress, Stage};
pub use report::{weight_table, Note, PassStats, RunReport, WeightRow};
pub use snapshot::DenseSnapshot;
pub use spill::{with_store_behind, Spill, StoreBehind};
