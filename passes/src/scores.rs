//! The score analysis: one non-negative importance value per weight element, same shape as the weight.
//! Written by the `score` pass, read by `mask`, `nm-legalize` and `block-sparsify`. When absent, those
//! passes fall back to magnitude (|w|) and say so in their notes.

use ndarray::ArrayD;
use sparsify_ir::{Graph, TensorError, WeightId};
use sparsify_pm::{Analysis, Effects};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct WeightScores {
    /// "l1", "l2" or "wanda".
    pub method: String,
    pub scores: BTreeMap<WeightId, ArrayD<f32>>,
}

impl Analysis for WeightScores {
    const INVALIDATED_BY: Effects = Effects(Effects::WEIGHT_VALUES.0 | Effects::WEIGHT_SHAPES.0 | Effects::TOPOLOGY.0);
}

/// Scores for one weight: from the analysis when present, else |w|. Errors on NaN/Inf weights.
pub fn scores_or_magnitude(
    g: &Graph,
    scores: Option<&WeightScores>,
    id: &WeightId,
) -> Result<ArrayD<f32>, TensorError> {
    if let Some(s) = scores.and_then(|s| s.scores.get(id)) {
        return Ok(s.clone());
    }
    Ok(g.weight_values(id)?.mapv(f32::abs))
}
