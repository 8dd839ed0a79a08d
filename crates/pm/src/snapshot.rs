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
