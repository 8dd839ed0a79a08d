//! `score`: compute the [`WeightScores`] analysis (one importance value per weight element) that `mask`,
//! `nm-legalize` and `block-sparsify` consume.
//!
//! - `l1` = |w|, `l2` = w², `wanda` = |w_ij| · ‖X_j‖₂ (design notes §5), where j is the element's index
//!   along the weight's reduction axis and ‖X_j‖₂ the L2 norm of input feature j of the consuming op over
//!   every calibration row (all leading axes for MatMul/Gemm, batch × spatial positions for Conv input
//!   channels; for a grouped Conv, feature `group · C/g + j`). The norms come from ONE calibrator call
//!   (one tract pass over the calibration set) covering every scored weight. The norm is not divided by
//!   the row count, exactly as the formula reads; per-tensor and per-row decisions do not depend on it.
//! - A weight shared by consumers with different activations gets the sum of the squared norms (noted).
//!   For Wanda, weights with an axis conflict, embedding tables, MatMul `A` constants and consumers whose
//!   activation cannot be used fall back to l1, with a note each.
//! - Quantized weights are scored on their dequantized values `(q − zp)·scale` (`sparsify_ir::quant`), so
//!   decisions equal those on the float weight. Wanda's activation: in QDQ graphs the op's float input
//!   (the activation's `DequantizeLinear` output); for `QLinearConv`/`QLinearMatMul`/`QGemm`/
//!   `MatMulInteger`/`ConvInteger`, the float input of the `QuantizeLinear`/`DynamicQuantizeLinear`
//!   producing the integer input, else l1 with a note (an integer tensor from another quantized op).
//!
//! - `ria` = (|w|/Σ_row|w| + |w|/Σ_col|w|)·‖X_j‖₂^a (RIA, Zhang et al. 2024; rows = output channels,
//!   columns = the elements reading one input, see [`crate::ria`]), from the same one-sweep norms
//!   as Wanda, with Wanda's fallbacks. `mask` compares RIA scores per layer by default (`scope=auto`).
//!   `mask{steps>1}` does not recompute RIA between steps (it keeps the first scores).
//!
//! Preconditions: `wanda` and `ria` need calibration data (`--calib`). Effects: annotations only (the analysis).
//! Errors: a NaN/Inf weight names the tensor. Idempotent: yes (it only replaces the analysis).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `method` | `l1` | `l1` \| `l2` \| `wanda` \| `ria` |
//! | `a` | `0.5` | RIA: exponent of the activation norm (only with `method=ria`) |
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights are scored |

use crate::scope::{Scope, SCOPE_OPTIONS};
use crate::score_math::{check_norms, FeatureMap, Method};
use crate::scores::{FeatureNorms, WeightScores};
use sparsify_ir::{Graph, Model, WeightInfo, WeightUse};
use sparsify_pm::{
    Analysis, CalibRequest, CalibStat, Calibrator, Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError,
    PassInfo, PipelineError,
};

const OPTIONS: [OptionSpec; 6] = [
    OptionSpec {
        name: "method",
        default: "l1",
        help: "l1 = |w|, l2 = w², wanda = |w|·‖X_j‖₂, ria = relative importance · ‖X_j‖₂^a (wanda, ria need --calib)",
    },
    OptionSpec { name: "a", default: "0.5", help: "RIA: exponent of the activation norm (method=ria only)" },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "score",
    description: "compute per-element importance scores (l1, l2 or Wanda) for the masks that follow",
    effects: Effects::ANNOTATIONS,
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let method = opts.take_choice("method", &["l1", "l2", "wanda", "ria"], "l1")?;
    let method = Method::parse(&method).unwrap_or(Method::L1);
    let ria_a = match opts.take_str("a") {
        None => 0.5,
        Some(_) if method != Method::Ria => {
            return Err(opts.error((0, 0), "score: option 'a' applies to method=ria only"))
        }
        Some(v) => match v.parse::<f64>() {
            Ok(a) if a.is_finite() && a >= 0.0 => a,
            _ => return Err(opts.error((0, 0), format!("score: option 'a' must be a number >= 0, got '{v}'"))),
        },
    };
    let scope = Scope::from_options(opts)?;
    Ok(Box::new(ScorePass { method, scope, ria_a }))
}

/// How the cached scores were made, so `mask{steps=k}` can recompute Wanda on the partly pruned model.
/// Lives and dies with [`WeightScores`] (same invalidation; passes that preserve one preserve both).
#[derive(Debug, Clone)]
pub struct ScoreRecipe {
    pub method: Method,
    pub scope: Scope,
}

impl Analysis for ScoreRecipe {
    const INVALIDATED_BY: Effects = WeightScores::INVALIDATED_BY;
}

pub struct ScorePass {
    pub method: Method,
    pub scope: Scope,
    /// RIA's exponent `a`.
    pub ria_a: f64,
}

impl Pass for ScorePass {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("method", self.method.name().to_string())];
        if self.method == Method::Ria {
            v.push(("a", self.ria_a.to_string()));
        }
        v.extend(self.scope.options());
        v
    }
    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let out = compute_scores_with(model, &self.scope, self.method, self.ria_a, cx.calibrator)?;
        cx.stat("weights_scored", out.scores.len() as f64);
        cx.stat("wanda_fallback_l1", out.fallbacks as f64);
        if matches!(self.method, Method::Wanda | Method::Ria) {
            cx.stat("calib_activations", out.activations as f64);
        }
        for (subject, message) in out.notes {
            cx.note(subject, message);
        }
        cx.analyses.insert(out.scores);
        cx.analyses.insert(ScoreRecipe { method: self.method, scope: self.scope.clone() });
        Ok(Changed::No)
    }
}

/// The result of [`compute_scores`].
pub struct Computed {
    pub scores: WeightScores,
    /// (subject, message) notes: fallbacks and shared-weight decisions.
    pub notes: Vec<(String, String)>,
    /// Weights scored with l1 although Wanda was asked for.
    pub fallbacks: usize,
    /// Distinct activations collected from the calibrator.
    pub activations: usize,
}

/// Score every weight `scope` selects in `model` with `method` (RIA with a = 0.5).
pub fn compute_scores(
    model: &Model,
    scope: &Scope,
    method: Method,
    calibrator: Option<&dyn Calibrator>,
) -> Result<Computed, PassError> {
    compute_scores_with(model, scope, method, 0.5, calibrator)
}

/// [`compute_scores`] with RIA's exponent `ria_a`.
pub fn compute_scores_with(
    model: &Model,
    scope: &Scope,
    method: Method,
    ria_a: f64,
    calibrator: Option<&dyn Calibrator>,
) -> Result<Computed, PassError> {
    let activation_aware = matches!(method, Method::Wanda | Method::Ria);
    let g = &model.graph;
    let mut out = Computed {
        scores: WeightScores { method: method.name().to_string(), ..Default::default() },
        notes: Vec::new(),
        fallbacks: 0,
        activations: 0,
    };
    // Plan: which weights use Wanda, and with which activation requests.
    let mut requests: Vec<CalibRequest> = Vec::new();
    let mut plans = Vec::new();
    for sel in scope.select(g) {
        // Float weights must be finite; quantized ones must dequantize (scales, zero points) and be finite.
        crate::scores::weight_view(g, &sel.id)?.check_finite()?;
        let plan = match (method, &sel.info) {
            (_, Some(info)) if activation_aware => match wanda_plan(g, info) {
                Ok(p) => Some(p.into_iter().map(|(req, map)| (request_index(&mut requests, req), map)).collect()),
                Err(why) => {
                    out.notes.push((sel.id.name().to_string(), format!("wanda not applicable ({why}): using l1")));
                    out.fallbacks += 1;
                    None
                }
            },
            (_, None) if activation_aware => {
                out.notes.push((sel.id.name().to_string(), "embedding table has no input features: using l1".into()));
                out.fallbacks += 1;
                None
            }
            _ => None,
        };
        plans.push((sel.id, plan));
    }
    let stats = if requests.is_empty() {
        Vec::new()
    } else {
        let cal = calibrator.ok_or(PassError::NeedsCalibration)?;
        let stats = cal.collect(model, &requests)?;
        if stats.len() != requests.len() {
            return Err(invalid("calibration", "the calibrator answered a different number of requests"));
        }
        out.activations = requests.len();
        stats
    };
    // l1 / l2 (and Wanda's fallbacks) are derived from the weight when read: nothing is stored.
    let derived = if method == Method::L2 { Method::L2 } else { Method::L1 };
    for (id, plan) in plans {
        match plan {
            None => {
                out.scores.derived.insert(id, derived);
            }
            Some(uses) => {
                let uses: Vec<(usize, FeatureMap)> = uses;
                let t = model.graph.weight(&id).ok_or_else(|| invalid(id.name(), "weight not found"))?;
                match wanda_for(t, &uses, &stats, &requests, method, ria_a) {
                    Ok((s, note)) => {
                        if let Some(n) = note {
                            out.notes.push((id.name().to_string(), n));
                        }
                        match s {
                            Scored::Array(a) => {
                                out.scores.scores.insert(id, a);
                            }
                            Scored::Norms(f) => {
                                out.scores.wanda.insert(id, f);
                            }
                        }
                    }
                    Err(why) => {
                        out.notes.push((id.name().to_string(), format!("wanda not applicable ({why}): using l1")));
                        out.fallbacks += 1;
                        out.scores.derived.insert(id, Method::L1);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn invalid(subject: &str, message: &str) -> PassError {
    PassError::Invalid { subject: subject.to_string(), message: message.to_string() }
}

fn request_index(requests: &mut Vec<CalibRequest>, req: CalibRequest) -> usize {
    match requests.iter().position(|r| *r == req) {
        Some(i) => i,
        None => {
            requests.push(req);
            requests.len() - 1
        }
    }
}

/// Per consumer: the activation statistic to request and how weight elements map to its features.
fn wanda_plan(g: &Graph, info: &WeightInfo) -> Result<Vec<(CalibRequest, FeatureMap)>, String> {
    if let Some(c) = &info.conflict {
        return Err(format!("axis conflict: {c}"));
    }
    info.uses.iter().map(|u| consumer_activation(g, u)).collect()
}

/// The data input of the op consuming a weight, its feature axis, and the element → feature map.
fn consumer_activation(g: &Graph, u: &WeightUse) -> Result<(CalibRequest, FeatureMap), String> {
    use sparsify_pm::FeatureAxis::{Index, Last};
    let node = g.node(u.node);
    let flag = |a: &str| node.attr_int(a).unwrap_or(0) != 0;
    let (input, axis, conv_groups) = match (node.op_type.as_str(), u.slot) {
        ("Conv", 1) => (0, Index(1), u.groups),
        ("ConvTranspose", 1) => (0, Index(1), 1),
        ("Gemm", 1) => (0, if flag("transA") { Index(0) } else { Last }, 1),
        ("Gemm", 0) => (1, if flag("transB") { Last } else { Index(0) }, 1),
        ("MatMul", 1) => (0, Last, 1),
        // Quantized ops: the float activation before the input's quantizer (below).
        ("ConvInteger", 1) | ("QLinearConv", 3) => (0, Index(1), u.groups),
        ("MatMulInteger", 1) | ("QLinearMatMul", 3) | ("MatMulIntegerToFloat", 1) | ("DynamicQuantizeMatMul", 1) => {
            (0, Last, 1)
        }
        ("QGemm", 3) => (0, if flag("transA") { Index(0) } else { Last }, 1),
        (op, slot) => return Err(format!("{op} input {slot} as the weight")),
    };
    let tensor = node.inputs.get(input).filter(|s| !s.is_empty()).ok_or("the op has no data input")?;
    let quantized_op = sparsify_ir::quant::float_op(&node.op_type) != node.op_type;
    let tensor = &if quantized_op { float_activation(g, tensor, &u.node_name)? } else { tensor.clone() };
    if g.constant_source(tensor).is_some() {
        return Err(format!("the data input '{tensor}' of '{}' is a constant", u.node_name));
    }
    let map = FeatureMap { out_axis: u.out_axis, red_axis: u.red_axis, conv_groups };
    Ok((CalibRequest::FeatureSqNorm { tensor: tensor.clone(), axis }, map))
}

/// The float tensor a quantized op's integer data input was quantized from: the input of the
/// `QuantizeLinear` / `DynamicQuantizeLinear` producing it. An integer tensor from another quantized op (or
/// a layout op over one) has no float activation: an error, and the weight falls back to l1. Other
/// producers (a float input, as `DynamicQuantizeMatMul` reads) are returned as they are.
pub(crate) fn float_activation(g: &Graph, tensor: &str, node: &str) -> Result<String, String> {
    let Some(p) = g.producer_of(tensor) else { return Ok(tensor.to_string()) };
    let p = g.node(p);
    match p.op_type.as_str() {
        "QuantizeLinear" | "DynamicQuantizeLinear" if p.outputs.first().is_some_and(|o| o == tensor) => {
            p.inputs.first().cloned().ok_or_else(|| format!("'{}' has no input", p.display_name()))
        }
        "QLinearConv"
        | "QLinearMatMul"
        | "QGemm"
        | "QLinearAdd"
        | "QLinearMul"
        | "QLinearConcat"
        | "QLinearAveragePool"
        | "QLinearGlobalAveragePool"
        | "QLinearLeakyRelu"
        | "QLinearSigmoid"
        | "MaxPool"
        | "Reshape"
        | "Transpose"
        | "Flatten"
        | "Squeeze"
        | "Unsqueeze" => Err(format!(
            "the data input '{tensor}' of '{node}' is an integer tensor from '{}' ({}), with no float activation \
             to calibrate on",
            p.display_name(),
            p.op_type
        )),
        _ => Ok(tensor.to_string()),
    }
}

fn request_tensor(r: &CalibRequest) -> &str {
    match r {
        CalibRequest::FeatureSqNorm { tensor, .. } => tensor,
        #[allow(unreachable_patterns)]
        _ => "?",
    }
}

/// Wanda scores from the collected statistics; a note when several activations were combined.
/// Activation-aware scores of one weight: RIA as an array, Wanda as per-feature norms (derived on read).
enum Scored {
    Array(ndarray::ArrayD<f32>),
    Norms(FeatureNorms),
}

fn wanda_for(
    t: &sparsify_ir::Tensor,
    uses: &[(usize, FeatureMap)],
    stats: &[CalibStat],
    requests: &[CalibRequest],
    method: Method,
    ria_a: f64,
) -> Result<(Scored, Option<String>), String> {
    let mut distinct: Vec<usize> = uses.iter().map(|(r, _)| *r).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut sq: Option<Vec<f64>> = None;
    for &r in &distinct {
        let tensor = request_tensor(&requests[r]);
        let CalibStat::FeatureSqNorm { sums, rows } = &stats[r] else {
            return Err(format!("the calibrator answered another statistic for '{tensor}'"));
        };
        if *rows == 0 {
            return Err(format!("no calibration rows reached '{tensor}'"));
        }
        if let Some(bad) = sums.iter().find(|v| !v.is_finite()) {
            return Err(format!("activation '{tensor}' has a non-finite squared norm ({bad})"));
        }
        match &mut sq {
            None => sq = Some(sums.clone()),
            Some(acc) if acc.len() == sums.len() => acc.iter_mut().zip(sums).for_each(|(a, b)| *a += b),
            Some(acc) => return Err(format!("consumers see {} and {} features", acc.len(), sums.len())),
        }
    }
    let norms: Vec<f64> = sq.unwrap_or_default().iter().map(|v| v.sqrt()).collect();
    let map = uses[0].1;
    let s = match method {
        Method::Ria => Scored::Array(crate::ria::ria(&t.to_f32().map_err(|e| e.to_string())?, &map, &norms, ria_a)?),
        _ => {
            let shape = t.shape();
            map.check(&shape)?;
            check_norms(&map, &shape, &norms)?;
            Scored::Norms(FeatureNorms { map, norms })
        }
    };
    let note = (distinct.len() > 1).then(|| {
        let names: Vec<String> = distinct.iter().map(|&r| format!("'{}'", request_tensor(&requests[r]))).collect();
        format!("shared weight: squared activation norms of {} summed", names.join(", "))
    });
    Ok((s, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsify_ir::{Node, Tensor};

    fn model() -> Model {
        let mut g = Graph::new();
        g.initializers.push(Tensor::from_f32("w", vec![2, 2], &[1.0, -3.0, 0.0, 2.0]).unwrap());
        let g = g.with_nodes(vec![Node::new("MatMul", "mm", &["x", "w"], &["y"])]);
        Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] }
    }

    #[test]
    fn magnitude_scores_and_wanda_without_calibration() {
        let m = model();
        let out = compute_scores(&m, &Scope::default(), Method::L2, None).unwrap();
        let s = out.scores.get(&m.graph, &sparsify_ir::WeightId::Init("w".into())).unwrap();
        assert_eq!(s.as_slice().unwrap(), &[1.0, 9.0, 0.0, 4.0]);
        assert!(out.scores.scores.is_empty(), "l2 scores are derived on read, not stored");
        let e = compute_scores(&m, &Scope::default(), Method::Wanda, None).err().unwrap();
        assert!(matches!(e, PassError::NeedsCalibration), "{e}");
    }
}
