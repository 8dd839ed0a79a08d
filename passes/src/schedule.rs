//! Pruning schedules for training loops that embed the library (design notes §5), and for the `mask`
//! pass's post-training gradual pruning (`mask{steps=k,schedule=linear|cubic}`).
//!
//! Semantics follow entrenar's `PruningSchedule` (prior-art §1), including its one asymmetry:
//! [`PruningSchedule::OneShot`] returns the **fraction of the target** (0.0 before `step`, 1.0 at and
//! after it), while `Gradual` and `Cubic` return the sparsity itself.
//!
//! ```
//! use sparsify_passes::schedule::PruningSchedule;
//! let cubic = PruningSchedule::Cubic { start_step: 0, end_step: 100, final_sparsity: 0.8 };
//! assert_eq!(cubic.sparsity_at(0), 0.0);
//! assert!((cubic.sparsity_at(50) - 0.7).abs() < 1e-12); // 0.8 · (1 − 0.5³)
//! assert_eq!(cubic.sparsity_at(100), 0.8);
//! assert_eq!(PruningSchedule::OneShot { step: 10 }.sparsity_at(9), 0.0);
//! assert_eq!(PruningSchedule::OneShot { step: 10 }.sparsity_at(10), 1.0);
//! cubic.validate().unwrap();
//! ```

use serde::{Deserialize, Serialize};

/// When and how much to prune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PruningSchedule {
    /// Prune everything at `step`: `sparsity_at` is 0.0 before it and 1.0 (the full target) from it on.
    OneShot { step: u64 },
    /// Linear from `initial_sparsity` at `start_step` to `final_sparsity` at `end_step`, updated every
    /// `frequency` steps (the value holds between updates).
    Gradual { start_step: u64, end_step: u64, initial_sparsity: f64, final_sparsity: f64, frequency: u64 },
    /// Zhu & Gupta (2017): `s_t = s_f · (1 − (1 − t/T)³)` with `t = step − start_step`,
    /// `T = end_step − start_step`; 0 before `start_step`, `s_f` from `end_step` on.
    Cubic { start_step: u64, end_step: u64, final_sparsity: f64 },
}

impl Default for PruningSchedule {
    fn default() -> Self {
        PruningSchedule::OneShot { step: 0 }
    }
}

/// Why a schedule is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid pruning schedule: {0}")]
pub struct ScheduleError(pub String);

impl PruningSchedule {
    /// The sparsity (or, for `OneShot`, the fraction of the target) at `step`.
    pub fn sparsity_at(&self, step: u64) -> f64 {
        match *self {
            PruningSchedule::OneShot { step: at } => {
                if step >= at {
                    1.0
                } else {
                    0.0
                }
            }
            PruningSchedule::Gradual { start_step, end_step, initial_sparsity, final_sparsity, frequency } => {
                if step < start_step {
                    return 0.0;
                }
                if step >= end_step {
                    return final_sparsity;
                }
                let f = frequency.max(1);
                let t = (step - start_step) / f * f;
                let span = (end_step - start_step) as f64;
                initial_sparsity + (final_sparsity - initial_sparsity) * (t as f64 / span)
            }
            PruningSchedule::Cubic { start_step, end_step, final_sparsity } => {
                if step < start_step {
                    return 0.0;
                }
                if step >= end_step {
                    return final_sparsity;
                }
                let frac = (step - start_step) as f64 / (end_step - start_step) as f64;
                final_sparsity * (1.0 - (1.0 - frac).powi(3))
            }
        }
    }

    /// Whether a training loop should recompute the mask at `step`.
    pub fn should_prune_at_step(&self, step: u64) -> bool {
        match *self {
            PruningSchedule::OneShot { step: at } => step == at,
            PruningSchedule::Gradual { start_step, end_step, frequency, .. } => {
                step >= start_step && step <= end_step && (step - start_step).is_multiple_of(frequency.max(1))
            }
            PruningSchedule::Cubic { start_step, end_step, .. } => step >= start_step && step <= end_step,
        }
    }

    /// How many steps prune (where `should_prune_at_step` is true).
    pub fn num_pruning_steps(&self) -> u64 {
        match *self {
            PruningSchedule::OneShot { .. } => 1,
            PruningSchedule::Gradual { start_step, end_step, frequency, .. } => {
                (end_step.saturating_sub(start_step)) / frequency.max(1) + 1
            }
            PruningSchedule::Cubic { start_step, end_step, .. } => end_step.saturating_sub(start_step) + 1,
        }
    }

    /// True once the schedule has reached its final sparsity.
    pub fn is_complete(&self, step: u64) -> bool {
        match *self {
            PruningSchedule::OneShot { step: at } => step >= at,
            PruningSchedule::Gradual { end_step, .. } | PruningSchedule::Cubic { end_step, .. } => step >= end_step,
        }
    }

    /// Sparsities in [0, 1], `end_step > start_step`, `initial ≤ final`, `frequency ≥ 1`.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ScheduleError(format!("{name} must be in [0, 1], got {v}")))
            }
        };
        let span = |s: u64, e: u64| {
            if e > s {
                Ok(())
            } else {
                Err(ScheduleError(format!("end_step ({e}) must be greater than start_step ({s})")))
            }
        };
        match *self {
            PruningSchedule::OneShot { .. } => Ok(()),
            PruningSchedule::Gradual { start_step, end_step, initial_sparsity, final_sparsity, frequency } => {
                unit("initial_sparsity", initial_sparsity)?;
                unit("final_sparsity", final_sparsity)?;
                span(start_step, end_step)?;
                if initial_sparsity > final_sparsity {
                    return Err(ScheduleError(format!(
                        "initial_sparsity ({initial_sparsity}) must not exceed final_sparsity ({final_sparsity})"
                    )));
                }
                if frequency == 0 {
                    return Err(ScheduleError("frequency must be at least 1".into()));
                }
                Ok(())
            }
            PruningSchedule::Cubic { start_step, end_step, final_sparsity } => {
                unit("final_sparsity", final_sparsity)?;
                span(start_step, end_step)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PruningSchedule::*;
    use super::*;

    #[test]
    fn gradual_steps_every_frequency() {
        let s = Gradual { start_step: 10, end_step: 20, initial_sparsity: 0.1, final_sparsity: 0.6, frequency: 5 };
        s.validate().unwrap();
        assert_eq!(s.sparsity_at(5), 0.0);
        assert!((s.sparsity_at(10) - 0.1).abs() < 1e-12);
        assert!((s.sparsity_at(14) - 0.1).abs() < 1e-12, "holds until the next update");
        assert!((s.sparsity_at(15) - 0.35).abs() < 1e-12);
        assert_eq!(s.sparsity_at(25), 0.6);
        assert!(s.should_prune_at_step(15) && !s.should_prune_at_step(16));
        assert_eq!(s.num_pruning_steps(), 3);
        assert!(s.is_complete(20) && !s.is_complete(19));
    }

    #[test]
    fn cubic_is_monotone_and_front_loaded() {
        let s = Cubic { start_step: 0, end_step: 4, final_sparsity: 0.6 };
        let v: Vec<f64> = (0..=4).map(|t| s.sparsity_at(t)).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
        assert!((v[1] - 0.6 * (1.0 - 0.75f64.powi(3))).abs() < 1e-12);
        assert!(v[1] > 0.15, "cubic prunes more early than linear: {v:?}");
    }

    #[test]
    fn validation_rejects_bad_schedules() {
        assert!(Cubic { start_step: 5, end_step: 5, final_sparsity: 0.5 }.validate().is_err());
        assert!(Cubic { start_step: 0, end_step: 5, final_sparsity: 1.5 }.validate().is_err());
        let g = Gradual { start_step: 0, end_step: 5, initial_sparsity: 0.6, final_sparsity: 0.5, frequency: 1 };
        assert!(g.validate().is_err());
        let g = Gradual { start_step: 0, end_step: 5, initial_sparsity: 0.0, final_sparsity: 0.5, frequency: 0 };
        assert!(g.validate().is_err());
        assert_eq!(PruningSchedule::default(), OneShot { step: 0 });
    }
}
