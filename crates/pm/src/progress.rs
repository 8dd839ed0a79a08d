//! Progress of long work inside passes (per-weight loops, solver stages), reported to whoever drives the
//! pipeline. Libraries only report; whether and how to show it (the command line draws terminal bars) is
//! the caller's business, so no terminal crate appears below the CLI.

/// Receives progress stages. Implemented by the caller of [`crate::PassManager::run_with_progress`].
pub trait Progress: Send + Sync {
    /// A stage of `total` steps begins (e.g. `nm-legalize` over 42 weights). It ends when the returned
    /// handle is dropped.
    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage>;
}

/// One running stage: advanced by [`Stage::inc`], ended by dropping it. `Sync` so rayon workers can tick.
pub trait Stage: Send + Sync {
    fn inc(&self, steps: u64);
}

/// The stage used when nobody listens.
pub struct NoStage;

impl Stage for NoStage {
    fn inc(&self, _steps: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Changed, Effects, Pass, PassCx, PassError, PassManager, RunEnv};
    use sparsify_ir::{Graph, Model};
    use std::sync::{Arc, Mutex};

    /// Records (label, total, steps ticked) per stage.
    #[derive(Default)]
    struct Recorder(Arc<Mutex<Vec<(String, u64, u64)>>>);

    struct Rec(Arc<Mutex<Vec<(String, u64, u64)>>>, usize);

    impl Stage for Rec {
        fn inc(&self, steps: u64) {
            self.0.lock().unwrap()[self.1].2 += steps;
        }
    }

    impl Progress for Recorder {
        fn stage(&self, label: &str, total: u64) -> Box<dyn Stage> {
            let mut v = self.0.lock().unwrap();
            v.push((label.to_string(), total, 0));
            Box::new(Rec(self.0.clone(), v.len() - 1))
        }
    }

    /// A pass with a three-step loop.
    struct Ticker;

    impl Pass for Ticker {
        fn name(&self) -> &'static str {
            "ticker"
        }
        fn effects(&self) -> Effects {
            Effects::NONE
        }
        fn options(&self) -> Vec<(&'static str, String)> {
            vec![]
        }
        fn run(&self, _: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
            let stage = cx.stage("ticker: items", 3);
            for _ in 0..3 {
                stage.inc(1);
            }
            Ok(Changed::No)
        }
    }

    #[test]
    fn pass_stages_reach_the_listener_only_when_there_is_one() {
        let mut pm = PassManager::default();
        pm.push(Box::new(Ticker));
        let mut model = Model { ir_version: Some(8), opset_import: vec![], graph: Graph::new(), opaque: vec![] };
        let rec = Recorder::default();
        pm.run_with_progress(&mut model, RunEnv::default(), Some(&rec)).unwrap();
        assert_eq!(*rec.0.lock().unwrap(), vec![("ticker: items".to_string(), 3, 3)]);
        pm.run(&mut model, RunEnv::default()).unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 1, "a run without a listener reports nowhere");
    }
}
