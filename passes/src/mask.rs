//! `mask`: zero the lowest-scoring weights, with exact counts (design notes §5).
//!
//! - Scores come from the [`WeightScores`] analysis (the `score` pass); without it, |w| with the note
//!   "no score analysis: using l1". Elements are zeroed with `Tensor::zero_where`, so kept values stay
//!   bit-identical.
//! - `granularity=element`: exactly floor(S·n) zeros per comparison group (`scope`): `layer` = the whole
//!   tensor, `row` = each output channel (along the weight's output axis, every other axis flattened;
//!   axis 0 for embedding tables), `global` = all selected tensors together. `auto` (the default) means
//!   `row` when the scores are Wanda's (as in its paper) and `layer` otherwise.
//! - `granularity=channel`: floor(S·C) whole output channels per tensor, ranked by the L2 norm of the
//!   channel's scores (sqrt(Σ s²); for l2 scores sqrt(Σ s) = ‖w‖₂), and the matching entries of the
//!   op's bias (Conv input 2, Gemm C) are zeroed too. The pruned channels are listed in the notes.
//! - `granularity=coupled` (see [`crate::channels::mask_coupled`] and [`crate::channels::calibrated`]):
//!   channels coupled across layers (residual adds, BatchNorm, depthwise convs, consumers) are chosen as
//!   a group and pruned by zeroing their producer rows and biases, so `dead-channel-elim` removes them.
//!   `criterion` picks them: `norm` (the sum of the norms of every coupled producer row and consumer
//!   column, from the score analysis or |w|), `wanda` (Σ over the consumers of ‖X_j‖·‖W_j‖, from the
//!   consumer's input Gram), `flap` (FLAP's fluctuation Var(X_j)·‖W_j‖²), `obs` (greedy structured OBS: least increase of the consumers' output error
//!   after their refit). `reconstruct` repairs the consumers that lose inputs, from their calibration
//!   Grams: `obs` (refit of the kept input rows and of the bias), `lsq` (kept rows only), `bias`
//!   (bias compensation Σ E\[x_j\]·W_j), `none`. `auto` (default for both) is `obs` with calibration data
//!   and `norm` / `none` without, so pipelines without `--calib` behave as before. `scope=global` spends
//!   one budget, floor(S·N) of the N removable channels of every group, across layers by ΔE divided by
//!   the consumer's output energy (needs `obs`, `wanda` or `flap`); otherwise floor(S·n) of each group's n
//!   channels. Needs `steps=1`. With reconstruction the pass may add a bias to a consumer (topology).
//! - Lowest scores go first; ties prune the higher index first (the lower index is kept); weights that
//!   are already zero count as pruned and go before everything else, so a group that already has more
//!   zeros than the target is left as it is.
//! - `steps=k>1`: gradual post-training pruning: step i targets `schedule`'s sparsity at i of k
//!   (`linear` S·i/k, `cubic` S·(1−(1−i/k)³)); between steps Wanda scores are recomputed on the partly
//!   pruned model (recalibration through the calibrator), magnitude scores just lose the pruned entries.
//!
//! Effects: weight values (coupled with reconstruction: also topology, a consumer may get a bias).
//! Afterwards the cached scores of pruned elements are 0 and the analysis is preserved, so a later
//! `nm-legalize` keeps using it. Idempotent: running it on its own output (or twice) changes nothing
//! (coupled with reconstruction: the removed channels are dead, so they are chosen again and their
//! refit is zero; the outputs stay within float rounding, tested). Weights whose axes conflict are
//! skipped for `row`/`channel` (noted).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `sparsity` | `0.5` | target fraction of zeros, in [0, 1] |
//! | `granularity` | `element` | `element` \| `channel` (whole output channels and their bias) \| `coupled` (coupled channel groups) |
//! | `scope` | `auto` | comparison group: `auto` \| `layer` \| `row` \| `global` (channel: `auto` \| `layer`; coupled: not `row`) |
//! | `steps` | `1` | number of pruning steps |
//! | `criterion` | `auto` | coupled only: `auto` \| `obs` \| `wanda` \| `flap` \| `norm` |
//! | `reconstruct` | `auto` | coupled only: `auto` \| `obs` \| `lsq` \| `bias` \| `none` |
//! | `damp` | `0.01` | coupled only: Gram dampening, fraction of the mean diagonal |
//! | `schedule` | `oneshot` | `oneshot` (needs `steps=1`) \| `linear` \| `cubic` |
//! | `allocate`, `max_error`, `output`, `min_sparsity`, `max_sparsity`, `levels` | see [`crate::budget`] | sparsity budgets (sensitivity allocation, error bound; `output` names the graph output measured) |
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights are masked |

use crate::budget::{Budget, BUDGET_OPTIONS};
use crate::channels::calibrated::{Criterion, Reconstruct, Settings};
use crate::mask_groups::{apply_mask, plan_targets, Granularity, Group, MaskConfig};
use crate::schedule::PruningSchedule;
use crate::scope::{Scope, SCOPE_OPTIONS};
use crate::score::{compute_scores, ScoreRecipe};
use crate::score_math::Method;
use crate::scores::WeightScores;
use sparsify_ir::Model;
use sparsify_pm::{Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PipelineError};

const OPTIONS: [OptionSpec; 21] = [
    OptionSpec { name: "sparsity", default: "0.5", help: "target fraction of zeros per comparison group, in [0, 1]" },
    OptionSpec {
        name: "granularity",
        default: "element",
        help: "element | channel (whole output channels + bias) | coupled (coupled channel groups)",
    },
    OptionSpec {
        name: "scope",
        default: "auto",
        help: "comparison group: auto (row for wanda, else layer) | layer | row | global",
    },
    OptionSpec {
        name: "steps",
        default: "1",
        help: "prune in this many steps (gradual; Wanda is recalibrated between steps)",
    },
    OptionSpec {
        name: "schedule",
        default: "oneshot",
        help: "sparsity per step: oneshot (steps=1) | linear | cubic (Zhu & Gupta)",
    },
    OptionSpec {
        name: "criterion",
        default: "auto",
        help: "granularity=coupled: channel choice: auto (obs with --calib, else norm) | obs (least output error \
               after refit, greedy) | wanda (‖X_j‖·‖W_j‖ over the consumers) | flap (Var(X_j)·‖W_j‖², FLAP's \
               fluctuation) | norm (weight norms)",
    },
    OptionSpec {
        name: "reconstruct",
        default: "auto",
        help: "granularity=coupled: repair of the consumers: auto (obs with --calib, else none) | obs (OBS refit of \
               kept rows and bias) | lsq (refit of kept rows) | bias (bias compensation) | none",
    },
    OptionSpec {
        name: "damp",
        default: "0.01",
        help: "granularity=coupled: Gram dampening, as a fraction of its mean diagonal",
    },
    BUDGET_OPTIONS[0],
    BUDGET_OPTIONS[1],
    BUDGET_OPTIONS[2],
    BUDGET_OPTIONS[3],
    BUDGET_OPTIONS[4],
    BUDGET_OPTIONS[5],
    BUDGET_OPTIONS[6],
    BUDGET_OPTIONS[7],
    BUDGET_OPTIONS[8],
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "mask",
    description: "zero the lowest-scoring weights: exact counts per layer, row or globally, or whole channels",
    effects: Effects::WEIGHT_VALUES,
    options: &OPTIONS,
    build,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    OneShot,
    Linear,
    Cubic,
}

pub struct MaskPass {
    sparsity: f64,
    granularity: Granularity,
    group: Group,
    steps: usize,
    schedule: Schedule,
    scope: Scope,
    /// `granularity=coupled`: group-aware channel masking (crate::channels::mask_coupled).
    coupled: bool,
    /// `granularity=coupled`: `criterion` / `reconstruct` (None = auto) and `damp`.
    criterion: Option<Criterion>,
    reconstruct: Option<Reconstruct>,
    damp: f64,
    /// `allocate=sensitivity` / `max_error` (crate::budget).
    budget: Option<Budget>,
}

/// The most pruning steps accepted (each step re-scores every weight).
pub const MAX_STEPS: usize = 1000;

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let sparsity_given = opts.given("sparsity");
    let sparsity = opts.take_range("sparsity", 0.5, 0.0, 1.0)?;
    let gran = opts.take_choice("granularity", &["element", "channel", "coupled"], "element")?;
    let coupled = gran == "coupled";
    let granularity = match gran.as_str() {
        "channel" | "coupled" => Granularity::Channel,
        _ => Granularity::Element,
    };
    let group = match opts.take_choice("scope", &["auto", "layer", "row", "global"], "auto")?.as_str() {
        "layer" => Group::Layer,
        "row" => Group::Row,
        "global" => Group::Global,
        _ => Group::Auto,
    };
    let steps = opts.take_usize("steps", 1)?;
    let schedule = match opts.take_choice("schedule", &["oneshot", "linear", "cubic"], "oneshot")?.as_str() {
        "linear" => Schedule::Linear,
        "cubic" => Schedule::Cubic,
        _ => Schedule::OneShot,
    };
    let criterion = match opts.take_choice("criterion", &["auto", "obs", "wanda", "flap", "norm"], "auto")?.as_str() {
        "obs" => Some(Criterion::Obs),
        "wanda" => Some(Criterion::Wanda),
        "flap" => Some(Criterion::Flap),
        "norm" => Some(Criterion::Norm),
        _ => None,
    };
    let reconstruct = match opts.take_choice("reconstruct", &["auto", "obs", "lsq", "bias", "none"], "auto")?.as_str() {
        "obs" => Some(Reconstruct::Obs),
        "lsq" => Some(Reconstruct::Lsq),
        "bias" => Some(Reconstruct::Bias),
        "none" => Some(Reconstruct::None),
        _ => None,
    };
    let damp = opts.take_range("damp", 0.01, 0.0, 100.0)?;
    let budget = Budget::from_options(opts)?;
    let scope = Scope::from_options(opts)?;
    if !coupled && (criterion.is_some() || reconstruct.is_some() || damp != 0.01) {
        return Err(opts.error((0, 0), "mask: criterion, reconstruct and damp apply to granularity=coupled"));
    }
    if coupled && group == Group::Row {
        return Err(opts.error((0, 0), "mask: granularity=coupled takes scope=auto, layer (per group) or global"));
    }
    if sparsity_given && budget.as_ref().is_some_and(|b| b.max_error.is_some()) {
        return Err(opts.error((0, 0), "mask: max_error chooses the sparsity: give max_error or sparsity, not both"));
    }
    if budget.is_some() && (granularity != Granularity::Element || steps > 1) {
        return Err(opts.error((0, 0), "mask: allocate=sensitivity / max_error need granularity=element and steps=1"));
    }
    if steps == 0 || steps > MAX_STEPS {
        return Err(opts.error((0, 0), format!("mask: option 'steps' must be between 1 and {MAX_STEPS}, got {steps}")));
    }
    if steps > 1 && schedule == Schedule::OneShot {
        return Err(
            opts.error((0, 0), "mask: steps > 1 needs schedule=linear or schedule=cubic (oneshot prunes at once)")
        );
    }
    if granularity == Granularity::Channel && !coupled && matches!(group, Group::Row | Group::Global) {
        return Err(opts.error(
            (0, 0),
            "mask: granularity=channel compares channels within each tensor: use scope=auto or scope=layer",
        ));
    }
    if coupled && steps > 1 {
        return Err(opts.error((0, 0), "mask: granularity=coupled prunes in one step (steps=1)"));
    }
    Ok(Box::new(MaskPass {
        sparsity,
        granularity,
        group,
        steps,
        schedule,
        scope,
        coupled,
        criterion,
        reconstruct,
        damp,
        budget,
    }))
}

impl MaskPass {
    /// Target sparsity after step `i` of `steps` (1-based).
    fn target_at(&self, i: usize) -> f64 {
        let end = self.steps as u64;
        let s = match self.schedule {
            Schedule::OneShot => self.sparsity * PruningSchedule::OneShot { step: 1 }.sparsity_at(i as u64),
            Schedule::Linear => PruningSchedule::Gradual {
                start_step: 0,
                end_step: end,
                initial_sparsity: 0.0,
                final_sparsity: self.sparsity,
                frequency: 1,
            }
            .sparsity_at(i as u64),
            Schedule::Cubic => PruningSchedule::Cubic { start_step: 0, end_step: end, final_sparsity: self.sparsity }
                .sparsity_at(i as u64),
        };
        if i == self.steps {
            self.sparsity
        } else {
            s
        }
    }
}

impl Pass for MaskPass {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        // Reconstruction may give a consumer a new bias (input or Add node).
        if self.coupled && self.reconstruct != Some(Reconstruct::None) {
            Effects(Effects::WEIGHT_VALUES.0 | Effects::TOPOLOGY.0)
        } else {
            INFO.effects
        }
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            (
                "granularity",
                match (self.coupled, self.granularity) {
                    (true, _) => "coupled",
                    (false, Granularity::Channel) => "channel",
                    _ => "element",
                }
                .to_string(),
            ),
            ("scope", self.group.name().to_string()),
            ("steps", self.steps.to_string()),
            (
                "schedule",
                match self.schedule {
                    Schedule::OneShot => "oneshot",
                    Schedule::Linear => "linear",
                    Schedule::Cubic => "cubic",
                }
                .to_string(),
            ),
        ];
        // max_error chooses the sparsity (and refuses one given beside it): the canonical text omits it.
        if self.budget.as_ref().is_none_or(|b| b.max_error.is_none()) {
            v.insert(0, ("sparsity", format!("{}", self.sparsity)));
        }
        if self.coupled {
            let auto = |n: Option<&'static str>| n.unwrap_or("auto").to_string();
            v.push(("criterion", auto(self.criterion.map(Criterion::name))));
            v.push(("reconstruct", auto(self.reconstruct.map(Reconstruct::name))));
            v.push(("damp", format!("{}", self.damp)));
        }
        if let Some(b) = &self.budget {
            v.extend(b.options());
        }
        v.extend(self.scope.options());
        v
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        if let Some(b) = &self.budget {
            return crate::budget::run(b, model, cx, self.sparsity, &self.scope);
        }
        if self.coupled {
            let stage = cx.stage("mask (coupled channels)", 1);
            let calibrated = cx.calibrator.is_some();
            let set = Settings {
                sparsity: self.sparsity,
                criterion: self.criterion.unwrap_or(if calibrated { Criterion::Obs } else { Criterion::Norm }),
                reconstruct: self.reconstruct.unwrap_or(if calibrated { Reconstruct::Obs } else { Reconstruct::None }),
                global: self.group == Group::Global,
                damp: self.damp,
            };
            let changed = crate::channels::mask_coupled(model, cx, set, &self.scope);
            stage.inc(1);
            return changed;
        }
        let method = match cx.analyses.get::<WeightScores>() {
            Some(s) => s.method.clone(),
            None => {
                cx.note("mask", "no score analysis: using l1");
                "l1".to_string()
            }
        };
        let group = match (self.group, self.granularity) {
            (Group::Auto, Granularity::Element) if method == "wanda" => Group::Row,
            (Group::Auto, _) => Group::Layer,
            (g, _) => g,
        };
        let cfg = MaskConfig { granularity: self.granularity, group, l2_scores: method == "l2" };
        let plan = plan_targets(&model.graph, &self.scope, &cfg);
        for (name, why) in &plan.skipped {
            cx.note(name.clone(), format!("skipped: {why}"));
        }
        for (name, msg) in plan.notes {
            cx.note(name, msg);
        }
        cx.stat("tensors_skipped", plan.skipped.len() as f64);
        let targets = plan.targets;
        if targets.is_empty() {
            cx.note("mask", "no weight selected");
            return Ok(Changed::No);
        }
        let before: Vec<f64> = targets.iter().map(|t| model.graph.weight_sparsity(&t.id).unwrap_or(0.0)).collect();
        let recipe = cx.analyses.get::<ScoreRecipe>().cloned();
        let mut added = vec![0usize; targets.len()];
        let mut outcome = None;
        let mut changed = false;
        let stage = cx.stage("mask: steps", self.steps);
        for step in 1..=self.steps {
            if step > 1 {
                if let Some(r) = recipe.as_ref().filter(|r| r.method == Method::Wanda) {
                    if cx.analyses.get::<WeightScores>().is_some() {
                        let fresh = compute_scores(model, &r.scope, Method::Wanda, cx.calibrator)?;
                        cx.analyses.insert(fresh.scores);
                        cx.stat("recalibrations", 1.0);
                    }
                }
            }
            let s = self.target_at(step);
            let spill = cx.spill;
            let scores = cx.analyses.get_mut::<WeightScores>();
            let out = apply_mask(&mut model.graph, &targets, scores, s, &cfg, spill)?;
            for (a, o) in added.iter_mut().zip(&out.per_target) {
                *a += o.zeros_added;
            }
            cx.stat("bias_entries_zeroed", out.bias_zeroed as f64);
            changed |= out.any_changed;
            outcome = Some(out);
            stage.inc(1);
        }
        let out = outcome.expect("steps >= 1");
        for (i, t) in targets.iter().enumerate() {
            let after = model.graph.weight_sparsity(&t.id).unwrap_or(0.0);
            let o = &out.per_target[i];
            let mut msg = format!(
                "method={method} granularity={} group={}: sparsity {:.4} -> {:.4} (+{} zeros)",
                self.granularity.name(),
                group.name(),
                before[i],
                after,
                added[i]
            );
            if o.score_fallback {
                msg.push_str("; not in the score analysis: scored by |w|");
            }
            if let Some(ch) = &o.channels {
                msg.push_str(&format!("; zero output channels {ch:?} of {}", o.channel_count));
                cx.stat("channels_pruned", ch.len() as f64);
            }
            cx.note(t.id.name(), msg);
            cx.stat("elements", o.elements as f64);
        }
        cx.stat("tensors_masked", targets.len() as f64);
        cx.stat("zeros_added", added.iter().sum::<usize>() as f64);
        cx.stat("steps", self.steps as f64);
        if changed {
            cx.preserve::<WeightScores>();
            cx.preserve::<ScoreRecipe>();
            Ok(Changed::Yes)
        } else {
            Ok(Changed::No)
        }
    }
}
