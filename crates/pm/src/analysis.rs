//! Cached analyses. An analysis is computed by one pass and read by later ones (scores are the main
//! one); the manager drops it after a pass whose declared effects intersect what it depends on.

use crate::pass::Effects;
use std::any::Any;
use std::collections::BTreeMap;

/// A cacheable analysis result.
pub trait Analysis: Any + Send + Sync {
    /// Effects that make this analysis stale.
    const INVALIDATED_BY: Effects;
}

#[derive(Default)]
pub struct AnalysisCache {
    entries: BTreeMap<&'static str, (Effects, Box<dyn Any + Send + Sync>)>,
}

impl AnalysisCache {
    pub fn insert<A: Analysis>(&mut self, value: A) {
        self.entries.insert(std::any::type_name::<A>(), (A::INVALIDATED_BY, Box::new(value)));
    }
    pub fn get<A: Analysis>(&self) -> Option<&A> {
        self.entries.get(std::any::type_name::<A>()).and_then(|(_, b)| b.downcast_ref())
    }
    pub fn get_mut<A: Analysis>(&mut self) -> Option<&mut A> {
        self.entries.get_mut(std::any::type_name::<A>()).and_then(|(_, b)| b.downcast_mut())
    }
    pub fn remove<A: Analysis>(&mut self) -> Option<A> {
        self.entries.remove(std::any::type_name::<A>()).and_then(|(_, b)| b.downcast().ok()).map(|b| *b)
    }
    /// Drop every analysis that `effects` make stale, except the named ones.
    pub fn invalidate(&mut self, effects: Effects, keep: &[&'static str]) -> Vec<&'static str> {
        let stale: Vec<&'static str> = self
            .entries
            .iter()
            .filter(|(k, (dep, _))| dep.intersects(effects) && !keep.contains(k))
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            self.entries.remove(k);
        }
        stale
    }
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.keys().copied().collect()
    }
}
