//! The sparsity passes, one per file, and the registry that pipeline text resolves names against.
//!
//! Shared machinery, one module per topic (each says which passes use it): [`scope`] (which weights a
//! pass touches), [`scores`] (the score analysis that masks consume), [`glob`] (name patterns),
//! [`select`] (exact-count radix selection), [`nm`] (N:M groups and kernels), [`mask_groups`] (mask
//! application per layer / row / channel / global), [`score_math`] and [`ria`] (score formulas),
//! [`obs`] (OBS solves), [`sgpt_gram`] and [`sgpt_plan`] (SparseGPT Hessians and staging),
//! [`permute_consts`], [`permute_region`] and [`permute_search`] (channel permutation for N:M).

pub mod bias_correct;
pub mod bias_shift;
pub mod block_sparsify;
pub mod budget;
pub mod calib_stats;
pub mod channels;
pub mod dead_channel_elim;
pub mod glob;
pub mod heads;
pub mod layer_sensitivity;
pub mod ls_correct;
pub mod mask;
pub mod mask_groups;
pub mod nm;
pub mod nm_check;
pub mod nm_legalize;
pub mod obs;
pub mod obs_removal;
pub mod permute;
pub mod permute_consts;
pub mod permute_region;
pub mod permute_search;
pub mod refine;
pub mod ria;
pub mod schedule;
pub mod scope;
pub mod score;
pub mod score_math;
pub mod scores;
pub mod seed;
pub mod select;
pub mod sensitivity;
pub mod sgpt_gram;
pub mod sgpt_plan;
pub mod sparsegpt;

use sparsify_pm::Registry;

/// Every pass this crate provides.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    // Each pass file exposes `INFO: PassInfo`; register it here.
    r.register(score::INFO);
    r.register(nm_legalize::INFO);
    r.register(nm_check::INFO);
    r.register(block_sparsify::INFO);
    r.register(permute::INFO);
    r.register(mask::INFO);
    r.register(sparsegpt::INFO);
    r.register(dead_channel_elim::INFO);
    r.register(bias_correct::INFO);
    r.register(refine::INFO);
    r.register(ls_correct::INFO);
    r.register(sensitivity::INFO);
    r.register(heads::INFO);
    r
}
