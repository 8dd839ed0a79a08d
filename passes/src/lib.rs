//! The sparsity passes, one per file, and the registry that pipeline text resolves names against.
//!
//! Shared pieces: [`scope`] (which weights a pass touches), [`scores`] (the score analysis that masks
//! consume), [`glob`] (name patterns).

pub mod glob;
pub mod scope;
pub mod scores;

use sparsify_pm::Registry;

/// Every pass this crate provides.
pub fn registry() -> Registry {
    let r = Registry::new();
    // Each pass file exposes `INFO: PassInfo`; register it here.
    r
}
