//! `dead-channel-elim`: remove output channels that are exactly zero, for real (design notes §7).
//!
//! - Purpose: a channel whose producer rows (Conv weight axis 0, Gemm/MatMul output axis, depthwise
//!   rows) and bias are exactly zero is removed from the producers (weights, bias, BatchNorm's four
//!   parameters, broadcast constants) and from every coupled consumer (Conv input columns, Gemm/MatMul
//!   reduction rows), through activations, pooling, BatchNorm, residual `Add`/`Sum`/`Mul`/`Where`,
//!   `Concat`/`Split`/`Slice`, `Flatten`/`Reshape` into Gemm/MatMul and depthwise Conv
//!   ([`crate::channels`] is the analysis). The model gets smaller and faster in any runtime.
//! - A zero channel with a non-zero bias, BatchNorm shift or activation at 0 outputs a constant; it is
//!   removed only when that constant can be folded exactly into every consumer's bias (Gemm, MatMul,
//!   unpadded Conv; a missing bias is created), else kept with the reason in the notes.
//! - Quantized (QDQ) weights: the integer constant behind a `DequantizeLinear` is sliced like a float
//!   weight, with its scale and zero point when they are per axis along the sliced axis; an int32 bias
//!   behind its own `DequantizeLinear` goes with its per-channel scale. A shared per-axis scale / zero point
//!   keeps the channels (noted); a non-zero constant is not folded through a quantized consumer weight.
//! - QOperator / integer ops (`QLinearConv`, `QLinearMatMul`, `com.microsoft.QGemm`, `MatMulInteger`,
//!   `ConvInteger`; [`crate::channels`]' `qops.rs`): a channel whose weight slice sits at its zero point and
//!   whose int32 bias entry is 0 (or whose requantized bias saturates to the output zero point, e.g. a
//!   fused Relu) outputs exactly the output zero point, i.e. dequantizes to 0. It is removed from the
//!   producer (weight output axis, per-channel weight scale / zero point, int32 bias) and from the
//!   consumers' reduction axis (QLinearConv weight axis 1, QLinearMatMul / MatMulInteger B rows, QGemm B
//!   rows or columns per `transB`), through per-tensor `QuantizeLinear` / `DequantizeLinear`,
//!   `DynamicQuantizeLinear` (exact zeros only: its scale is the batch's range), MaxPool, Flatten and the
//!   other pass-through ops. A consumer's "zero" is its input zero point. A channel that is constant but
//!   not at the consumer's zero point is kept, noted with the constant and the zero point. Grouped
//!   quantized Convs are not sliced (noted). Per-tensor scales / zero points never change.
//! - Never touched: channels reaching a graph output, shared weights, channels under normalizations
//!   across the channel axis, anything the analysis does not understand (each noted for dead channels).
//!   Grouped convs lose equal counts per group; a tensor always keeps at least one channel.
//! - Preconditions: none (a graph without producers is left unchanged).
//! - Effects: weight values (folded biases), weight shapes, topology (new bias inputs, an `Add` after a
//!   bias-less MatMul, `group` attributes, shape constants). `value_info` shapes of changed tensors are
//!   updated; entries that cannot be updated are dropped and named in the notes.
//! - Report: per layer the channels removed; counters `channels_removed`, `channels_kept_dead`,
//!   `params_before/after`, `macs_before/after` (per example: symbolic dims count as 1), `biases_folded`.
//! - Idempotent: the pass repeats analysis → plan → slice (up to 8 rounds) until nothing is removable —
//!   removing channels can make more removable (a grouped consumer down to its kept dead channels) —
//!   so a second run changes nothing (found by the `graphs` fuzz target).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `fold` | `true` | fold constant outputs of dead channels into consumer biases (else keep such channels) |

use crate::channels::shapes::{self, Shape};
use crate::channels::zero_slices_of;
use crate::channels::{analyze, fold, plan, slice};
use sparsify_ir::{Graph, Model, NodeId};
use sparsify_pm::{Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PipelineError};
use std::collections::BTreeMap;

const OPTIONS: [OptionSpec; 1] =
    [OptionSpec { name: "fold", default: "true", help: "fold constant outputs of dead channels into consumer biases" }];

pub const INFO: PassInfo = PassInfo {
    name: "dead-channel-elim",
    description: "remove exactly-zero channels from producers and all coupled consumers (smaller, faster model)",
    effects: Effects(Effects::WEIGHT_VALUES.0 | Effects::WEIGHT_SHAPES.0 | Effects::TOPOLOGY.0),
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    Ok(Box::new(DeadChannelElim { fold: opts.take_bool("fold", true)? }))
}

/// The pass; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadChannelElim {
    pub fold: bool,
}

impl Default for DeadChannelElim {
    fn default() -> Self {
        DeadChannelElim { fold: true }
    }
}

/// Parameter count: elements of every float initializer and float `Constant` node.
pub fn param_count(g: &Graph) -> usize {
    let init = g.initializers.iter().filter(|t| t.dtype.is_prunable_float()).map(|t| t.numel().unwrap_or(0));
    let consts = g
        .nodes()
        .filter_map(|(_, n)| n.constant_tensor())
        .filter(|t| t.dtype.is_prunable_float())
        .map(|t| t.numel().unwrap_or(0));
    init.chain(consts).sum()
}

/// Multiply-accumulates of Conv/Gemm/MatMul with constant weights, per example: weight elements times
/// output positions, with symbolic or unknown dims (batch, sequence, dynamic H×W) counted as 1.
pub fn mac_count(g: &Graph) -> u64 {
    let sh: BTreeMap<String, Shape> = shapes::infer(g);
    let known = |s: Option<&Shape>, skip_first: bool, drop_last: usize| -> u64 {
        let Some(s) = s else { return 1 };
        let end = s.len().saturating_sub(drop_last);
        s.iter().take(end).skip(usize::from(skip_first)).map(|d| d.unwrap_or(1).max(1) as u64).product()
    };
    let mut total = 0u64;
    for (_, n) in g.nodes() {
        let w = match n.op_type.as_str() {
            "Conv" | "Gemm" | "MatMul" => {
                n.inputs.get(1).and_then(|b| g.constant_source(b)).and_then(|id| g.weight(&id))
            }
            _ => None,
        };
        let Some(w) = w else { continue };
        let numel = w.numel().unwrap_or(0) as u64;
        let out = sh.get(&n.outputs[0]);
        let positions = match n.op_type.as_str() {
            "Conv" => out.map_or(1, |s| s.iter().skip(2).map(|d| d.unwrap_or(1).max(1) as u64).product()),
            "Gemm" => 1,
            _ => known(out, true, 1),
        };
        total += numel * positions;
    }
    total
}

fn layer_name(g: &Graph, id: NodeId) -> String {
    g.node(id).display_name()
}

impl Pass for DeadChannelElim {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        vec![("fold", self.fold.to_string())]
    }

    /// Rounds to a fixed point: removing channels can make more removable (a grouped Conv that could
    /// only lose equal counts per group may lose whole groups once they are down to their kept dead
    /// channels; the channels those fed become constant). Later rounds add their removals to the
    /// report; the "kept" notes and counters describe the final model.
    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        const ROUNDS: usize = 8;
        if self.round(model, cx)? == Changed::No {
            return Ok(Changed::No);
        }
        let mut more = false;
        for _ in 1..ROUNDS {
            let mut cache = sparsify_pm::AnalysisCache::default();
            let mut rcx = PassCx::new(&mut cache, cx.calibrator);
            let changed = self.round(model, &mut rcx)?;
            let kept = |n: &sparsify_pm::Note| n.message.starts_with("kept ");
            if changed == Changed::No {
                // Later rounds removed more: the first round's "kept" notes are stale; report the final
                // model's (its channel indices).
                if more {
                    cx.notes.retain(|n| !kept(n));
                    cx.notes.extend(rcx.notes.into_iter().filter(kept).map(|mut n| {
                        n.message.push_str(" (channel indices of the final model)");
                        n
                    }));
                    if let Some(v) = rcx.counters.get("channels_kept_dead") {
                        cx.counters.insert("channels_kept_dead".into(), *v);
                    }
                }
                break;
            }
            more = true;
            cx.notes.extend(rcx.notes.into_iter().filter(|n| n.message.starts_with("removed ")));
            for key in ["channels_removed", "biases_folded"] {
                cx.stat(key, rcx.counters.get(key).copied().unwrap_or(0.0));
            }
            for key in ["params_after", "macs_after"] {
                if let Some(v) = rcx.counters.get(key) {
                    cx.counters.insert(key.into(), *v);
                }
            }
        }
        Ok(Changed::Yes)
    }
}

/// Note the dead output channels of weights whose op the analysis never slices (ConvTranspose; a MatMul
/// or Gemm that reads its weight as the first input), which would otherwise go unreported; returns how
/// many.
fn note_unsliced_weights(g: &Graph, cx: &mut PassCx<'_>) -> usize {
    let mut n = 0;
    for w in g.find_weights() {
        let Some(u) = w.uses.first().filter(|_| w.conflict.is_none()) else { continue };
        let why = match (u.op.as_str(), u.slot) {
            ("ConvTranspose", _) => "ConvTranspose outputs are not sliced by this pass".to_string(),
            (op @ ("MatMul" | "Gemm"), 0) => format!(
                "{op} reads its weight '{}' as the first input (W·x); only a weight read as the second input is sliced",
                w.id.name()
            ),
            _ => continue,
        };
        let Some(t) = g.weight(&w.id) else { continue };
        let flags = g.weight_zero_flags(&w.id).unwrap_or_else(|_| t.zero_flags());
        let dead: Vec<usize> =
            zero_slices_of(t, &flags, w.out_axis()).iter().enumerate().filter(|(_, z)| **z).map(|(c, _)| c).collect();
        if dead.is_empty() {
            continue;
        }
        cx.note(u.node_name.clone(), format!("kept {} dead channel(s) {dead:?}: {why}", dead.len()));
        n += dead.len();
    }
    n
}

impl DeadChannelElim {
    /// One analysis → plan → fold → slice round.
    fn round(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let stage = cx.stage("dead-channel-elim: analyse, plan, fold, slice", 4);
        let g = &mut model.graph;
        let a = analyze(g);
        stage.inc(1);
        let p = plan::plan(g, &a, self.fold);
        stage.inc(1);
        let (params0, macs0) = (param_count(g), mac_count(g));
        // kept dead channels, per producer and reason
        let mut kept: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut n_kept = 0;
        for (id, out) in &a.producers {
            for (c, &x) in a.layouts[out].atoms.iter().enumerate() {
                if let Some(why) = p.kept.get(&a.find(x)) {
                    kept.entry((layer_name(g, *id), why.clone())).or_default().push(c);
                    n_kept += 1;
                }
            }
        }
        for ((layer, why), chans) in &kept {
            cx.note(layer.clone(), format!("kept {} dead channel(s) {:?}: {why}", chans.len(), chans));
        }
        n_kept += note_unsliced_weights(g, cx);
        cx.stat("channels_kept_dead", n_kept as f64);
        cx.stat("params_before", params0 as f64);
        cx.stat("macs_before", macs0 as f64);
        if p.remove.is_empty() {
            stage.inc(2); // nothing to fold or slice
            cx.stat("channels_removed", 0.0);
            cx.stat("params_after", params0 as f64);
            cx.stat("macs_after", macs0 as f64);
            return Ok(Changed::No);
        }
        let per_layer: Vec<(String, usize, usize)> = a
            .producers
            .iter()
            .map(|(id, out)| {
                let atoms = &a.layouts[out].atoms;
                (layer_name(g, *id), atoms.len() - slice::kept(&a, &p, atoms).len(), atoms.len())
            })
            .collect();
        let (extra, folds) = fold::fold(g, &a, &p)?;
        stage.inc(1);
        let mut sites = a.sites.clone();
        sites.extend(extra);
        let dropped = slice::apply(g, &a, &p, &sites)?;
        stage.inc(1);
        g.relink();
        let mut removed = 0;
        for (layer, r, n) in per_layer.iter().filter(|l| l.1 > 0) {
            removed += r;
            cx.note(layer.clone(), format!("removed {r} of {n} output channels ({} left)", n - r));
        }
        for d in &dropped {
            cx.note(d.clone(), "value_info entry dropped: its shape could not be updated");
        }
        let (params1, macs1) = (param_count(g), mac_count(g));
        cx.note(
            "model",
            format!(
                "parameters {params0} -> {params1}, MACs per example {macs0} -> {macs1} (symbolic dims counted as 1)"
            ),
        );
        cx.stat("channels_removed", removed as f64);
        cx.stat("biases_folded", folds as f64);
        cx.stat("params_after", params1 as f64);
        cx.stat("macs_after", macs1 as f64);
        Ok(Changed::Yes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsify_ir::{Node, Tensor, ValueInfo};

    fn mlp(zero_rows: &[usize]) -> Model {
        let mut w1: Vec<f32> = (0..4 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut b1 = vec![0.1f32, -0.2, 0.3, 0.05];
        for &r in zero_rows {
            w1[r * 3..r * 3 + 3].fill(0.0);
            b1[r] = 0.0;
        }
        let w2: Vec<f32> = (0..2 * 4).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut g = Graph::new();
        g.initializers.push(Tensor::from_f32("w1", vec![4, 3], &w1).unwrap());
        g.initializers.push(Tensor::from_f32("b1", vec![4], &b1).unwrap());
        g.initializers.push(Tensor::from_f32("w2", vec![2, 4], &w2).unwrap());
        g.inputs.push(ValueInfo::tensor("x", 1, &[1, 3]));
        g.outputs.push(ValueInfo::tensor("y", 1, &[1, 2]));
        g.value_info.push(ValueInfo::tensor("h", 1, &[1, 4]));
        let mut fc1 = Node::new("Gemm", "fc1", &["x", "w1", "b1"], &["h"]);
        fc1.set_attr("transB", sparsify_ir::AttrValue::Int(1));
        let mut fc2 = Node::new("Gemm", "fc2", &["r", "w2"], &["y"]);
        fc2.set_attr("transB", sparsify_ir::AttrValue::Int(1));
        let g = g.with_nodes(vec![fc1, Node::new("Relu", "relu", &["h"], &["r"]), fc2]);
        Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] }
    }

    fn run(m: &mut Model) -> (Changed, Vec<String>) {
        let mut cache = sparsify_pm::AnalysisCache::default();
        let mut cx = PassCx::new(&mut cache, None);
        let c = DeadChannelElim::default().run(m, &mut cx).unwrap();
        (c, cx.notes.iter().map(|n| format!("{}: {}", n.subject, n.message)).collect())
    }

    /// A Gemm that reads its weight as A (`W · x`) is not sliced; its dead rows are reported, not
    /// passed over in silence.
    #[test]
    fn weights_read_as_the_first_input_are_reported_not_silently_skipped() {
        let mut w: Vec<f32> = (0..4 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        w[3..6].fill(0.0);
        let mut g = Graph::new();
        g.initializers.push(Tensor::from_f32("wa", vec![4, 3], &w).unwrap());
        g.inputs.push(ValueInfo::tensor("x", 1, &[3, 2]));
        g.outputs.push(ValueInfo::tensor("y", 1, &[4, 2]));
        let g = g.with_nodes(vec![
            Node::new("Gemm", "gemm_wx", &["wa", "x"], &["h"]),
            Node::new("Relu", "relu", &["h"], &["y"]),
        ]);
        let mut m = Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] };
        let (changed, notes) = run(&mut m);
        assert!(matches!(changed, Changed::No), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n
                    .starts_with("gemm_wx: kept 1 dead channel(s) [1]: Gemm reads its weight 'wa' as the first input")),
            "{notes:?}"
        );
    }

    /// The fuzz finding (docs/reliability.md): an all-zero Conv feeding a grouped Conv. One run must
    /// reach the fixed point, so a second run changes nothing.
    #[test]
    fn grouped_consumer_of_dead_channels_reaches_a_fixed_point_in_one_run() {
        let mut g = Graph::new();
        g.initializers.push(Tensor::from_f32("w1", vec![3, 1, 1, 1], &[0.0, 1.25, 0.0]).unwrap());
        g.initializers.push(Tensor::from_f32("w6", vec![6, 3, 1, 1], &[0.0; 18]).unwrap());
        let w11: Vec<f32> = (0..12).map(|i| if i % 2 == 0 { 0.25 + i as f32 * 0.125 } else { 0.0 }).collect();
        g.initializers.push(Tensor::from_f32("w11", vec![4, 3, 1, 1], &w11).unwrap());
        g.initializers.push(Tensor::from_f32("b12", vec![4], &[0.0, 1.25, 0.0, -0.75]).unwrap());
        let w19: Vec<f32> = (0..32).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
        g.initializers.push(Tensor::from_f32("w19", vec![32, 1], &w19).unwrap());
        g.inputs.push(ValueInfo::tensor("x", 1, &[1, 3, 4, 2]));
        g.outputs.push(ValueInfo::tensor("y", 1, &[1, 1]));
        let conv = |name: &str, ins: &[&str], out: &str, group: i64| {
            let mut n = Node::new("Conv", name, ins, &[out]);
            n.set_attr("group", sparsify_ir::AttrValue::Int(group));
            n.set_attr("kernel_shape", sparsify_ir::AttrValue::Ints(vec![1, 1]));
            n
        };
        let mut flat = Node::new("Flatten", "flatten", &["r"], &["f"]);
        flat.set_attr("axis", sparsify_ir::AttrValue::Int(1));
        let g = g.with_nodes(vec![
            conv("conv5", &["x", "w1"], "c5", 3),
            conv("conv10", &["c5", "w6"], "c10", 1),
            conv("conv14", &["c10", "w11", "b12"], "c14", 2),
            Node::new("Relu", "relu", &["c14"], &["r"]),
            flat,
            Node::new("MatMul", "mm", &["f", "w19"], &["y"]),
        ]);
        let mut m = Model {
            ir_version: Some(8),
            opset_import: vec![sparsify_ir::OpsetId { domain: String::new(), version: 13 }],
            graph: g,
            opaque: vec![],
        };
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::Yes, "{notes:?}");
        let (again, notes2) = run(&mut m);
        assert_eq!(again, Changed::No, "second run changed the model: {notes2:?}");
    }

    #[test]
    fn removes_zero_rows_and_matching_columns() {
        let mut m = mlp(&[1, 3]);
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::Yes, "{notes:?}");
        assert_eq!(m.graph.initializer("w1").unwrap().dims, vec![2, 3]);
        assert_eq!(m.graph.initializer("b1").unwrap().dims, vec![2]);
        assert_eq!(m.graph.initializer("w2").unwrap().dims, vec![2, 2]);
        assert_eq!(m.graph.value_info[0].shape.as_ref().unwrap()[1], sparsify_ir::Dim::Value(2));
        assert!(notes.iter().any(|n| n.contains("fc1: removed 2 of 4")), "{notes:?}");
        assert_eq!(run(&mut m).0, Changed::No, "idempotent");
    }

    #[test]
    fn output_producer_is_never_shrunk() {
        let mut m = mlp(&[]);
        let mut w2 = m.graph.initializer("w2").unwrap().to_f64().unwrap();
        w2.index_axis_mut(ndarray::Axis(0), 0).fill(0.0);
        m.graph.initializer_mut("w2").unwrap().write_f64(&w2).unwrap();
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::No);
        assert!(
            notes.iter().any(|n| n.contains("fc2: kept 1 dead channel(s) [0]: reaches graph output 'y'")),
            "{notes:?}"
        );
    }

    fn i8t(name: &str, dims: Vec<i64>, v: &[i8]) -> Tensor {
        Tensor::new(name, sparsify_ir::DType::I8, dims, v.iter().map(|&x| x as u8).collect::<Vec<u8>>().into()).unwrap()
    }

    fn dq(name: &str, ins: &[&str], out: &str, axis: i64) -> Node {
        let mut n = Node::new("DequantizeLinear", name, ins, &[out]);
        n.set_attr("axis", sparsify_ir::AttrValue::Int(axis));
        n
    }

    /// QDQ MLP: w1 int8 [4,3] per-row scale / zero point, int32 bias with per-channel scale, Relu, w2 int8
    /// [2,4] per-row (axis 0, not the sliced axis 1). Rows 1 and 3 of w1 sit at their zero points with
    /// bias 0: dead.
    fn qdq_mlp(share_scale: bool) -> Model {
        let mut g = Graph::new();
        let zp1 = [1i8, -2, 0, 3];
        let mut w1 = vec![0i8; 12];
        for r in 0..4 {
            for c in 0..3 {
                w1[r * 3 + c] = if r % 2 == 1 { zp1[r] } else { (r * 3 + c) as i8 - 4 };
            }
        }
        g.initializers.push(i8t("w1", vec![4, 3], &w1));
        g.initializers.push(Tensor::from_f32("s1", vec![4], &[0.5, 0.25, 0.125, 2.0]).unwrap());
        g.initializers.push(i8t("z1", vec![4], &zp1));
        let b: Vec<u8> = [7i32, 0, -3, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        g.initializers.push(Tensor::new("b1", sparsify_ir::DType::I32, vec![4], b.into()).unwrap());
        g.initializers.push(Tensor::from_f32("sb", vec![4], &[0.01, 0.02, 0.03, 0.04]).unwrap());
        g.initializers.push(i8t("w2", vec![2, 4], &[1, 2, 3, 4, 5, 6, 7, -8]));
        g.initializers.push(Tensor::from_f32("s2", vec![2], &[0.1, 0.2]).unwrap());
        g.inputs.push(ValueInfo::tensor("x", 1, &[1, 3]));
        g.outputs.push(ValueInfo::tensor("y", 1, &[1, 2]));
        let mut fc1 = Node::new("Gemm", "fc1", &["x", "w1d", "b1d"], &["h"]);
        fc1.set_attr("transB", sparsify_ir::AttrValue::Int(1));
        let mut fc2 = Node::new("Gemm", "fc2", &["r", "w2d"], &["y"]);
        fc2.set_attr("transB", sparsify_ir::AttrValue::Int(1));
        let mut nodes = vec![
            dq("dq1", &["w1", "s1", "z1"], "w1d", 0),
            dq("dqb", &["b1", "sb"], "b1d", 0),
            dq("dq2", &["w2", "s2"], "w2d", 0),
            fc1,
            Node::new("Relu", "relu", &["h"], &["r"]),
            fc2,
        ];
        if share_scale {
            g.initializers.push(i8t("w3", vec![4], &[1, 2, 3, 4]));
            g.outputs.push(ValueInfo::tensor("o3", 1, &[4]));
            nodes.push(dq("dq3", &["w3", "s1"], "o3", 0));
        }
        Model { ir_version: Some(8), opset_import: vec![], graph: g.with_nodes(nodes), opaque: vec![] }
    }

    #[test]
    fn slices_qdq_weights_scales_zero_points_and_quantized_bias() {
        let mut m = qdq_mlp(false);
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::Yes, "{notes:?}");
        let g = &m.graph;
        let dims = |n: &str| g.initializer(n).unwrap().dims.clone();
        assert_eq!(dims("w1"), vec![2, 3]);
        assert_eq!(g.initializer("s1").unwrap().to_f32().unwrap().as_slice().unwrap(), &[0.5, 0.125]);
        assert_eq!(&g.initializer("z1").unwrap().bytes()[..], &[1u8, 0]);
        assert_eq!(dims("b1"), vec![2]);
        assert_eq!(sparsify_ir::quant::read_ints(g.initializer("b1").unwrap()).unwrap(), vec![7, -3]);
        assert_eq!(g.initializer("sb").unwrap().to_f32().unwrap().as_slice().unwrap(), &[0.01, 0.03]);
        assert_eq!(dims("w2"), vec![2, 2]);
        assert_eq!(&g.initializer("w2").unwrap().bytes()[..], &[1u8, 3, 5, 7]);
        assert_eq!(dims("s2"), vec![2], "per axis along the unsliced axis: unchanged");
        assert_eq!(run(&mut m).0, Changed::No, "idempotent");
    }

    fn u8t(name: &str, dims: Vec<i64>, v: &[u8]) -> Tensor {
        Tensor::new(name, sparsify_ir::DType::U8, dims, v.to_vec().into()).unwrap()
    }

    /// QOperator MLP: QuantizeLinear → QLinearMatMul (w1 int8 [3,4], per-column scale / zero point) →
    /// QLinearMatMul (w2 int8 [4,2]). Columns 1 and 3 of w1 sit at their zero points: they output fc1's
    /// output zero point (10), which is what fc2 subtracts, so they go with their scales and zero points.
    #[test]
    fn slices_qlinear_matmul_weights_with_per_column_parameters() {
        let mut g = Graph::new();
        let zp1 = [1i8, -2, 0, 3];
        let w1: Vec<i8> = (0..12).map(|i| if i % 4 == 1 || i % 4 == 3 { zp1[i % 4] } else { i as i8 - 5 }).collect();
        g.initializers.push(i8t("w1", vec![3, 4], &w1));
        g.initializers.push(Tensor::from_f32("ws1", vec![4], &[0.5, 0.25, 0.125, 2.0]).unwrap());
        g.initializers.push(i8t("wz1", vec![4], &zp1));
        g.initializers.push(i8t("w2", vec![4, 2], &[1, 2, 3, 4, 5, 6, 7, -8]));
        g.initializers.push(Tensor::from_f32("ws2", vec![], &[0.1]).unwrap());
        g.initializers.push(i8t("wz2", vec![], &[0]));
        for (n, v) in [("xs", 0.1f32), ("hs", 0.05), ("ys", 0.2)] {
            g.initializers.push(Tensor::from_f32(n, vec![], &[v]).unwrap());
        }
        for (n, v) in [("xz", 128u8), ("hz", 10), ("yz", 0)] {
            g.initializers.push(u8t(n, vec![], &[v]));
        }
        g.inputs.push(ValueInfo::tensor("x", 1, &[1, 3]));
        g.outputs.push(ValueInfo::tensor("y", 2, &[1, 2]));
        let g = g.with_nodes(vec![
            Node::new("QuantizeLinear", "q", &["x", "xs", "xz"], &["xq"]),
            Node::new("QLinearMatMul", "fc1", &["xq", "xs", "xz", "w1", "ws1", "wz1", "hs", "hz"], &["h"]),
            Node::new("QLinearMatMul", "fc2", &["h", "hs", "hz", "w2", "ws2", "wz2", "ys", "yz"], &["y"]),
        ]);
        let mut m = Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] };
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::Yes, "{notes:?}");
        let g = &m.graph;
        assert_eq!(g.initializer("w1").unwrap().dims, vec![3, 2]);
        assert_eq!(g.initializer("ws1").unwrap().to_f32().unwrap().as_slice().unwrap(), &[0.5, 0.125]);
        assert_eq!(&g.initializer("wz1").unwrap().bytes()[..], &[1u8, 0]);
        assert_eq!(&g.initializer("w2").unwrap().bytes()[..], &[1u8, 2, 5, 6]);
        assert!(notes.iter().any(|n| n.contains("fc1: removed 2 of 4")), "{notes:?}");
        assert_eq!(run(&mut m).0, Changed::No, "idempotent");
    }

    /// The same MLP with fc2 reading fc1 through a zero point of 11: the dead columns output 10, a constant
    /// that is not fc2's zero point, so they stay with that reason.
    #[test]
    fn qoperator_constant_off_the_zero_point_is_kept_with_a_reason() {
        let mut g = Graph::new();
        g.initializers.push(i8t("w1", vec![2, 2], &[3, 0, -2, 0]));
        g.initializers.push(i8t("w2", vec![2, 1], &[1, 2]));
        g.initializers.push(Tensor::from_f32("s", vec![], &[0.1]).unwrap());
        g.initializers.push(u8t("z10", vec![], &[10]));
        g.initializers.push(u8t("z11", vec![], &[11]));
        g.inputs.push(ValueInfo::tensor("xq", 2, &[1, 2]));
        g.outputs.push(ValueInfo::tensor("y", 2, &[1, 1]));
        let g = g.with_nodes(vec![
            Node::new("QLinearMatMul", "fc1", &["xq", "s", "z10", "w1", "s", "", "s", "z10"], &["h"]),
            Node::new("QLinearMatMul", "fc2", &["h", "s", "z11", "w2", "s", "", "s", "z10"], &["y"]),
        ]);
        let mut m = Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] };
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::No, "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("fc1: kept 1 dead channel(s) [1]")
                && n.contains("outputs the constant 10.000000 (its zero point is 11)")),
            "{notes:?}"
        );
    }

    #[test]
    fn shared_scale_keeps_the_channels_with_a_reason() {
        let mut m = qdq_mlp(true);
        let before = m.clone();
        let (c, notes) = run(&mut m);
        assert_eq!(c, Changed::No, "{notes:?}");
        assert_eq!(m.graph.initializer("w1").unwrap().dims, before.graph.initializer("w1").unwrap().dims);
        assert!(
            notes.iter().any(|n| n.contains("fc1: kept 2 dead channel(s) [1, 3]")
                && n.contains("scale 's1' of quantized 'w1' is shared by 2 readers")),
            "{notes:?}"
        );
    }
}
