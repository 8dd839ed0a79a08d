//! Group-aware channel masking, `mask{granularity=coupled}` (a `coupled=true` option would have changed
//! the canonical text of every existing mask pipeline): channels that dead-channel elimination can only
//! remove together are scored and pruned together.
//!
//! For every coupled group ([`channel_groups`]) whose producer weights are all in scope, floor(S·n) of its
//! n removable channels are pruned, lowest group score first ([`group_scores`]: the sum of the norms of
//! every coupled producer row and consumer column); ties prune the higher index first. Pruning zeroes
//! the producer rows (including depthwise rows) and per-channel biases ([`zero_channels`]). Channels
//! whose producer rows and biases are already zero count as pruned and go first, so running it twice
//! changes nothing.

use super::calibrated::{self, Eligible, Settings};
use super::graph::zero_slices;
use super::groups::{channel_groups, zero_channels, ChannelGroup, SliceRole};
use crate::scope::Scope;
use sparsify_ir::{Graph, Model, WeightId};
use sparsify_pm::{Changed, PassCx, PassError};
use std::collections::BTreeSet;

/// Per channel: whether its producer rows and biases are all exactly zero.
fn already_zero(g: &Graph, grp: &ChannelGroup) -> Vec<bool> {
    let mut out = vec![true; grp.channels];
    for s in grp.slices.iter().filter(|s| matches!(s.role, SliceRole::Producer | SliceRole::Bias)) {
        let Some(t) = g.weight(&s.weight) else { return vec![false; grp.channels] };
        let z = zero_slices(t, s.axis);
        for e in &s.entries {
            out[e.channel] &= z[e.index];
        }
    }
    out
}

/// Run the coupled channel mask on `model` over the weights `scope` selects, with the selection
/// criterion, repair and budget of `set` (see [`super::calibrated`]).
pub fn mask_coupled(
    model: &mut Model,
    cx: &mut PassCx<'_>,
    set: Settings,
    scope: &Scope,
) -> Result<Changed, PassError> {
    let g = &model.graph;
    let selected: BTreeSet<WeightId> = scope.select(g).into_iter().map(|x| x.id).collect();
    let mut eligible: Vec<Eligible> = Vec::new();
    for grp in channel_groups(g) {
        let producers: Vec<&WeightId> =
            grp.slices.iter().filter(|x| x.role == SliceRole::Producer).map(|x| &x.weight).collect();
        let Some(first) = producers.first().map(|w| w.name().to_string()) else { continue };
        if producers.iter().any(|w| !selected.contains(*w)) {
            continue;
        }
        let free: Vec<usize> = (0..grp.channels).filter(|&c| grp.blocked[c].is_none()).collect();
        if free.is_empty() {
            let why = grp.blocked.iter().flatten().next().cloned().unwrap_or_default();
            cx.note(first, format!("coupled channels not pruned: {why}"));
            continue;
        }
        let zero = already_zero(g, &grp);
        eligible.push(Eligible { group: grp, free, zero, subject: first });
    }
    let (picks, mut changed) = calibrated::run(model, cx, eligible, set)?;
    let g = &mut model.graph;
    for (grp, chans) in &picks {
        changed += zero_channels(g, grp, chans)?;
        cx.stat("channels_pruned", chans.len() as f64);
    }
    cx.stat("coupled_groups", picks.len() as f64);
    cx.stat("elements_zeroed", changed as f64);
    Ok(if changed > 0 { Changed::Yes } else { Changed::No })
}
