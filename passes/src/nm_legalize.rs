//! `nm-legalize`: make weights N:M sparse along their reduction axis (NVIDIA Ampere 2:4 and any 0<N<M).
//!
//! N:M here means **N kept out of every M** consecutive elements (NVIDIA's meaning; some tools count the
//! pruned ones instead). Groups run along the weight's reduction (input-channel) axis as the weight
//! analysis maps it through Transpose/Cast/DequantizeLinear, independently for every output channel and
//! kernel position: Conv `[M, C/g, kH, kW]` groups along C/g (per group), ConvTranspose
//! `[C_in, C_out/g, kH, kW]` (only with `ops=...|ConvTranspose`) along C_in (axis 0; C_in/g must be a
//! multiple of M, so no group of M straddles two conv groups), Gemm/MatMul along K, rank-3+
//! MatMul weights `[.., K, N]` along axis r-2. In every group the N highest-scoring elements stay and the
//! rest become zero (`Tensor::zero_where`, kept elements bit-identical). Scores come from a preceding
//! `score` pass (the `WeightScores` analysis), else |w|. Already-zero elements rank below every non-zero
//! one (they count as pruned), then by score, ties keep the lower index — so the pass works on dense and
//! on already-masked weights and is idempotent.
//!
//! Skipped, each with a note: axis conflicts of shared weights, dtypes other than f32/f16/bf16 (f64 and
//! integer/quantized weights), depthwise convs, reduction dims (per group) not a multiple of M, and with
//! `strict=true` output dims not a multiple of 8 or reduction dims not a multiple of 16 (apex ASP).
//! With `permute=true` a channel permutation ([`crate::permute`]) runs first.
//!
//! Preconditions: none. Effects: weight values (cached scores are updated: pruned → 0, and preserved).
//! Idempotent: yes. Counters: `eligible`, `legalized` (weights changed), `already_compliant`,
//! `skipped`, `zeros_added`, `retained_score_plain` (and `_permuted` with `permute=true`).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `n` | `2` | elements kept in every group |
//! | `m` | `4` | group size along the reduction axis |
//! | `strict` | `false` | also require output % 8 == 0 and reduction % 16 == 0 |
//! | `permute` | `false` | search a channel permutation first (Pool & Yu, 2021) |
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights |

use crate::nm::{nm_eligibility, nm_keep_keys, nm_keep_retained_by, AxisView};
use crate::permute::{nm_source, permute_for_nm, retained_of, retained_total};
use crate::scope::{Scope, SCOPE_OPTIONS};
use crate::score::ScoreRecipe;
use crate::scores::{selection_keys, MagKeys, WeightScores};
use sparsify_ir::{Graph, Model, WeightInfo};
use sparsify_pm::{
    with_store_behind, Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PipelineError,
};

const OPTIONS: [OptionSpec; 8] = [
    OptionSpec { name: "n", default: "2", help: "elements KEPT in every group of m (NVIDIA's meaning: 2:4 keeps 2)" },
    OptionSpec { name: "m", default: "4", help: "group size along the reduction axis" },
    OptionSpec { name: "strict", default: "false", help: "also require output % 8 == 0 and reduction % 16 == 0" },
    OptionSpec { name: "permute", default: "false", help: "permute channels first to keep more score" },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "nm-legalize",
    description: "N:M sparsity (N kept of every M) along each weight's reduction axis, e.g. Ampere 2:4",
    effects: Effects::WEIGHT_VALUES,
    options: &OPTIONS,
    build,
};

/// Read and check `n` and `m` (0 < n < m).
pub fn parse_nm(opts: &mut Options<'_>, pass: &str) -> Result<(usize, usize), PipelineError> {
    let n = opts.take_usize("n", 2)?;
    let m = opts.take_usize("m", 4)?;
    if n == 0 || n >= m {
        return Err(opts.error((0, 0), format!("{pass}: need 0 < n < m (n kept of every m), got n={n}, m={m}")));
    }
    Ok((n, m))
}

/// The same check for passes built directly (not from pipeline text).
pub fn check_nm_args(n: usize, m: usize) -> Result<(), PassError> {
    if n == 0 || n >= m {
        return Err(PassError::Invalid {
            subject: format!("{n}:{m}"),
            message: "need 0 < n < m (n kept of every m)".into(),
        });
    }
    Ok(())
}

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let (n, m) = parse_nm(opts, "nm-legalize")?;
    let strict = opts.take_bool("strict", false)?;
    let permute = opts.take_bool("permute", false)?;
    Ok(Box::new(NmLegalize { n, m, strict, permute, scope: Scope::from_options(opts)? }))
}

pub struct NmLegalize {
    pub n: usize,
    pub m: usize,
    pub strict: bool,
    pub permute: bool,
    pub scope: Scope,
}

/// The weights a scope selects for N:M.
pub struct NmCandidates {
    /// Eligible weights with the axis their groups run along.
    pub eligible: Vec<(WeightInfo, usize)>,
    /// (weight name, reason) of the others.
    pub skipped: Vec<(String, String)>,
}

/// The weights `scope` selects, split into eligible (with their N:M axis) and skipped (with the reason).
/// Unlike [`Scope::select`], non-float weights are kept here so that their skip is reported.
pub fn nm_candidates(g: &Graph, scope: &Scope, m: usize, strict: bool) -> NmCandidates {
    let (mut eligible, mut skipped) = (Vec::new(), Vec::new());
    for w in g.find_weights() {
        if scope.left_out(&w).is_some() {
            continue;
        }
        let Some(t) = g.weight(&w.id) else { continue };
        if let Err(why) = g.weight_prunable(&w.id) {
            skipped.push((w.id.name().to_string(), why));
            continue;
        }
        match nm_eligibility(&w, t, m, strict) {
            Ok(axis) => eligible.push((w, axis)),
            Err(why) => skipped.push((w.id.name().to_string(), why)),
        }
    }
    if scope.embeddings {
        for sel in scope.select(g).into_iter().filter(|s| s.info.is_none()) {
            skipped.push((sel.id.name().to_string(), "embedding table: no reduction axis to group along".into()));
        }
    }
    NmCandidates { eligible, skipped }
}

impl Pass for NmLegalize {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("n", self.n.to_string()),
            ("m", self.m.to_string()),
            ("strict", self.strict.to_string()),
            ("permute", self.permute.to_string()),
        ];
        v.extend(self.scope.options());
        v
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let (n, m) = (self.n, self.m);
        check_nm_args(n, m)?;
        let NmCandidates { eligible, skipped } = nm_candidates(&model.graph, &self.scope, m, self.strict);
        cx.stat("eligible", eligible.len() as f64);
        cx.stat("skipped", skipped.len() as f64);
        for (name, why) in skipped {
            cx.note(name, format!("skipped: {why}"));
        }
        let mut changed = false;
        if self.permute {
            let plain = retained_total(&model.graph, cx, &eligible, n, m)?;
            cx.stat("retained_score_plain", plain);
            changed |= permute_for_nm(model, cx, &eligible, n, m)?;
            let permuted = retained_total(&model.graph, cx, &eligible, n, m)?;
            cx.stat("retained_score_permuted", permuted);
        }
        // Without permutation the weights legalized are the ones `retained_score_plain` is about: their
        // retained totals come from the same visit of each group (added in the same order).
        let mut plain = 0.0;
        let (mut legalized, mut already, mut zeros) = (0usize, 0usize, 0usize);
        let stage = cx.stage("nm-legalize: weights", eligible.len());
        let spill = cx.spill;
        // Each legalized weight is stored on a helper thread while the next one is computed.
        with_store_behind(&mut model.graph, spill, |g, behind| {
            for (info, axis) in &eligible {
                stage.inc(1);
                let (z, retained) = legalize_one(g, cx, info, *axis, n, m)?;
                plain += retained;
                if z > 0 {
                    behind.hand(g, &info.id)?;
                    legalized += 1;
                } else {
                    already += 1;
                }
                zeros += z;
            }
            Ok(())
        })?;
        changed |= legalized > 0;
        if !self.permute {
            cx.stat("retained_score_plain", plain);
        }
        cx.stat("legalized", legalized as f64);
        cx.stat("already_compliant", already as f64);
        cx.stat("zeros_added", zeros as f64);
        if changed {
            cx.preserve::<WeightScores>();
            cx.preserve::<ScoreRecipe>();
        }
        Ok(if changed { Changed::Yes } else { Changed::No })
    }
}

/// Legalize one weight along `axis`: keep the top `n` of every group of `m` (zeros first out), note
/// the outcome, and zero the pruned entries of its stored scores. Returns how many elements were zeroed
/// and the weight's retained score before (`nm_retained_vals` of its scores, zeros as 0).
fn legalize_one(
    g: &mut Graph,
    cx: &mut PassCx<'_>,
    info: &WeightInfo,
    axis: usize,
    n: usize,
    m: usize,
) -> Result<(usize, f64), PassError> {
    let view = AxisView::new(&g.weight(&info.id).map(|t| t.shape()).unwrap_or_default(), axis);
    let (keep, retained) = {
        // Quantized weights are read dequantized (`weight_view`); f32 magnitude keys from the bytes.
        let t = crate::scores::weight_view(g, &info.id)?;
        let src = nm_source(cx.analyses.get::<WeightScores>(), &t, &info.id)?;
        match MagKeys::of(&src, &t) {
            // The score of a zero element is 0; |±0| and (±0)² are +0 already.
            Some(mk) => nm_keep_retained_by(t.numel()?, |i| mk.key(i), |i| mk.score(i), view, n, m),
            None => {
                let retained = retained_of(&src, &t, view, n, m)?;
                let (keys, _, _) = selection_keys(src, &t)?;
                (nm_keep_keys(&keys, view, n, m), retained)
            }
        }
    };
    let z = g.zero_weight_where(&info.id, &keep)?;
    let groups = view.groups(m);
    let what = if z > 0 { format!("zeroed {z} elements") } else { "already compliant".to_string() };
    cx.note(info.id.name(), format!("{n}:{m} along axis {axis}: {what} ({groups} groups)"));
    if let Some(s) = cx.analyses.get_mut::<WeightScores>().and_then(|s| s.scores.get_mut(&info.id)) {
        for (v, k) in s.iter_mut().zip(&keep) {
            if !k {
                *v = 0.0;
            }
        }
    }
    Ok((z, retained))
}
