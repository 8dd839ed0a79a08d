//! The dense reference: the model as it entered the pipeline, recorded by the manager when a pass asks
//! for it ([`crate::Pass::needs_dense_snapshot`]; `bias-correct` does). Tensors share their bytes with
//! the model (copy on write), so the copy costs the graph structure, not the weights.
//!
//! It survives weight-value changes (that is its purpose) and is dropped by passes that change weight
//! shapes or topology, and by channel permutations (which reorder the weights it would be compared with).

use crate::analysis::Analysis;
use crate::pass::Effects;
use sparsify_ir::Model;

pub struct DenseSnapshot {
    pub model: Model,
}

impl Analysis for DenseSnapshot {
    const INVALIDATED_BY: Effects = Effects(Effects::WEIGHT_SHAPES.0 | Effects::TOPOLOGY.0);
}

impl DenseSnapshot {
    /// The dense model for `pass`, or the error saying why there is none (a permutation or a shape /
    /// topology change earlier in the pipeline dropped it).
    pub fn model_for(cache: &crate::analysis::AnalysisCache, pass: &str) -> Result<Model, crate::PassError> {
        match cache.get::<DenseSnapshot>() {
            Some(s) => Ok(s.model.clone()),
            None => Err(crate::PassError::Invalid {
                subject: pass.into(),
                message: "no dense reference: a channel permutation or a pass that changed shapes or topology ran \
                          earlier in this pipeline (run such passes in a separate pipeline first)"
                    .into(),
            }),
        }
    }
}
