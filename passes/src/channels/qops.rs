//! Quantized operators in the channel analysis: `QLinearConv`, `QLinearMatMul`, `com.microsoft.QGemm`
//! (weight at input 3, per-channel weight scale / zero point at 4 / 5, int32 bias), `MatMulInteger` /
//! `ConvInteger` (weight at input 1, weight zero point at 3, int32 output), and `DynamicQuantizeLinear`.
//!
//! They are producers and consumers like their float ops ([`super::producers`]): a producer's output
//! channel is dead when its weight slice is at its zero point and its int32 bias entry is 0 (or absent);
//! the rewrite slices the weight with its per-channel scale / zero point and the bias. A consumer ends a
//! layout on the weight's reduction axis; its [`super::Sink::zero`] is its input zero point, so a channel
//! whose constant is that zero point contributes nothing and goes.
//!
//! Constants on quantized tensors are their integer values (as a static `QuantizeLinear` writes them):
//! a dead channel of a `QLinear*` / `QGemm` producer outputs `sat(round(b·x_scale·w_scale[c]/y_scale) +
//! y_zp)` (`y_zp` when b = 0; a rounding tie is left unknown); of an integer op, 0. `DynamicQuantizeLinear`
//! has run-time parameters: only an exact 0 is known to become its zero point (its output's constants are
//! the dequantized values: 0 or unknown, and an integer op reading it with that zero point has zero 0).

use super::graph::{Builder, Param};
use super::{SinkKind, Site, SliceRole};
use sparsify_ir::{quant, AttrValue, DType, Node, NodeId};

/// The input slot of an op's weight (3 for `QLinearConv` / `QLinearMatMul` / `QGemm`, else 1).
pub(crate) fn weight_slot(n: &Node) -> usize {
    match n.op_type.as_str() {
        "QLinearConv" | "QLinearMatMul" | "QGemm" => 3,
        _ => 1,
    }
}

/// Whether the node is a quantized operator whose weight parameters are its own inputs.
pub(crate) fn is_quantized_op(n: &Node) -> bool {
    match n.op_type.as_str() {
        "QLinearConv" | "QLinearMatMul" | "MatMulInteger" | "ConvInteger" => n.is_onnx(),
        "QGemm" => n.domain.as_deref() == Some("com.microsoft"),
        _ => false,
    }
}

/// How a `QLinear*` / `QGemm` turns its int32 accumulator into its output:
/// `y = sat(round(alpha·acc·x_scale·w_scale[c] / y_scale) + y_zp)`, or the float `alpha·acc·x_scale·w_scale[c]`
/// when the op has no output scale (QGemm).
struct Requant {
    alpha: f64,
    x_scale: f64,
    w_scale: Vec<f64>,
    /// (y_scale, y_zp, type range) of a quantized output.
    out: Option<(f64, i32, (i32, i32))>,
}

impl Requant {
    /// The output of channel `c` for accumulator `acc`; `None` at a rounding tie (the runtime's `f32`
    /// arithmetic decides it).
    fn value(&self, c: usize, acc: f64) -> Option<f64> {
        let ws = if self.w_scale.len() == 1 { self.w_scale[0] } else { *self.w_scale.get(c)? };
        let real = self.alpha * acc * self.x_scale * ws;
        let Some((ys, zp, (lo, hi))) = self.out else { return Some(real) };
        if acc == 0.0 {
            return Some(f64::from(zp));
        }
        let v = real / ys;
        if !v.is_finite() || (v.abs().fract() - 0.5).abs() < 1e-3 {
            return None;
        }
        Some((v.round() + f64::from(zp)).clamp(f64::from(lo), f64::from(hi)))
    }
}

impl Builder<'_> {
    /// The constant tensor behind input `slot` of node `id`, if the input is given and constant.
    fn input_const(&self, id: NodeId, slot: usize) -> Option<Result<&sparsify_ir::Tensor, String>> {
        let n = self.g.node(id);
        let name = n.inputs.get(slot).filter(|s| !s.is_empty())?;
        Some(
            self.g
                .constant_source(name)
                .and_then(|c| self.g.weight(&c))
                .ok_or_else(|| format!("'{name}' of '{}' is computed at run time", n.display_name())),
        )
    }

    fn input_f32s(&self, id: NodeId, slot: usize) -> Result<Vec<f64>, String> {
        match self.input_const(id, slot) {
            None => Err(format!("'{}' has no input {slot}", self.g.node(id).display_name())),
            Some(t) => {
                let t = t?;
                let v: Vec<f64> = t.to_f64().map_err(|e| e.to_string())?.iter().copied().collect();
                if v.is_empty() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    return Err(format!("scale '{}' is not a finite positive number", t.name));
                }
                Ok(v)
            }
        }
    }

    /// The per-tensor zero point a quantized op applies to its input `x` (input `slot`): a constant, 0 when
    /// absent, or — for the zero point `DynamicQuantizeLinear` computed with `x` — 0 in that quantizer's
    /// dequantized constants.
    fn input_zero(&self, id: NodeId, x: &str, slot: usize) -> Result<f64, String> {
        let n = self.g.node(id);
        let Some(z) = n.inputs.get(slot).filter(|s| !s.is_empty()) else { return Ok(0.0) };
        if let Some(t) = self.g.constant_source(z).and_then(|c| self.g.weight(&c)) {
            let v = quant::read_ints(t).map_err(|e| e.to_string())?;
            return match v.as_slice() {
                [v] => Ok(f64::from(*v)),
                _ => Err(format!("input zero point '{z}' of '{}' is not per tensor", n.display_name())),
            };
        }
        let dynamic = self.g.producer_of(z).map(|p| self.g.node(p)).is_some_and(|p| {
            p.op_type == "DynamicQuantizeLinear"
                && p.outputs.first().is_some_and(|o| o == x)
                && p.outputs.get(2) == Some(z)
        });
        if dynamic {
            Ok(0.0)
        } else {
            Err(format!("input zero point '{z}' of '{}' is computed at run time", n.display_name()))
        }
    }

    /// An int32 bias (QLinearConv input 8, QGemm C) with one entry per output channel, read only by this op.
    fn int_bias(&mut self, id: NodeId, slot: usize, len: usize) -> Result<Option<Param>, String> {
        let Some(name) = self.g.node(id).inputs.get(slot).filter(|s| !s.is_empty()).cloned() else {
            return Ok(None);
        };
        self.exclusive(&name)?;
        let cid = self.g.constant_source(&name).ok_or_else(|| format!("bias '{name}' is not a constant"))?;
        let t = self.g.weight(&cid).ok_or_else(|| format!("bias '{name}' not found"))?;
        if t.dtype != DType::I32 {
            return Err(format!("bias '{name}' has dtype {}, not int32", t.dtype.name()));
        }
        let vals: Vec<f64> = quant::read_ints(t).map_err(|e| e.to_string())?.into_iter().map(f64::from).collect();
        let dims = t.shape();
        if vals.len() != len || dims.len() != 1 {
            return Err(format!("bias '{name}' has shape {dims:?}, not one entry per channel ({len})"));
        }
        Ok(Some(Param { id: cid, axis: 0, vals, input: name }))
    }

    /// The output requantization of a `QLinear*` op (scales at `x`, `w`, `y`, zero point at `y + 1`).
    fn requant(&self, id: NodeId, x: usize, w: usize, y: Option<usize>, alpha: f64) -> Result<Requant, String> {
        let out = match y {
            Some(y) if self.input_const(id, y).is_some() => {
                let ys = self.input_f32s(id, y)?;
                let (zp, range) = match self.input_const(id, y + 1) {
                    None => (0, (0, 255)),
                    Some(t) => {
                        let t = t?;
                        let zp = quant::read_ints(t).map_err(|e| e.to_string())?;
                        let range = match t.dtype {
                            DType::U8 => (0, 255),
                            DType::I8 => (-128, 127),
                            d => return Err(format!("output zero point '{}' has dtype {}", t.name, d.name())),
                        };
                        (zp.first().copied().unwrap_or(0), range)
                    }
                };
                Some((ys[0], zp, range))
            }
            _ => None,
        };
        Ok(Requant { alpha, x_scale: self.input_f32s(id, x)?[0], w_scale: self.input_f32s(id, w)?, out })
    }

    /// Replace the integer accumulators of `out`'s dead channels (what [`Builder::produce`] wrote: the
    /// bias entry, 0 without one) by the requantized output.
    fn requantize(&mut self, id: NodeId, out: &str, r: Result<Requant, String>) {
        let r = match r {
            Ok(r) => r,
            Err(e) => return self.block_tensor(out, format!("'{}': {e}", self.g.node(id).display_name())),
        };
        if let Some(cs) = self.a.consts.get_mut(out) {
            for (c, k) in cs.iter_mut().enumerate() {
                *k = k.and_then(|acc| r.value(c, acc));
            }
        }
    }

    /// Extra sites for a quantized op's own weight parameters (scale, zero point) when they are per axis
    /// along `axis`; errors name the tensor when they are shared or malformed.
    pub fn qop_param_sites(&self, id: NodeId, axis: usize, atoms: &[usize]) -> Result<Vec<Site>, String> {
        let n = self.g.node(id);
        if !is_quantized_op(n) {
            return Ok(vec![]);
        }
        let slot = weight_slot(n);
        let rank = n.inputs.get(slot).and_then(|w| self.g.constant_source(w)).and_then(|c| self.g.weight(&c));
        let Some(rank) = rank.map(|t| t.dims.len()) else { return Ok(vec![]) };
        let Some(qs) = quant::quant_slots(n, slot, rank) else { return Ok(vec![]) };
        let mut sites = Vec::new();
        for (what, pname) in [("scale", &qs.scale), ("zero point", &qs.zero_point)] {
            let Some(pname) = pname else { continue };
            let Some(pid) = self.g.constant_source(pname) else {
                return Err(format!("weight {what} '{pname}' of '{}' is computed at run time", qs.node));
            };
            let Some(pt) = self.g.weight(&pid) else { continue };
            if pt.numel().unwrap_or(1) <= 1 || qs.axis != axis {
                continue; // per tensor, or per axis along an axis that keeps its length
            }
            if pt.dims.len() != 1 || pt.dims[0] as usize != atoms.len() {
                return Err(format!(
                    "weight {what} '{pname}' of '{}' has shape {:?}, not one entry per channel ({})",
                    qs.node,
                    pt.dims,
                    atoms.len()
                ));
            }
            if self.use_count(pname) != 1 || self.g.inputs.iter().any(|i| &i.name == pname) {
                return Err(format!(
                    "weight {what} '{pname}' of '{}' is shared by {} readers; slicing it would change the others",
                    qs.node,
                    self.use_count(pname)
                ));
            }
            sites.push(Site::Param { node: id, weight: pid, axis: 0, atoms: atoms.to_vec(), role: SliceRole::Quant });
        }
        Ok(sites)
    }

    /// `QLinearConv` (x 0, x_scale 1, x_zp 2, w 3, w_scale 4, w_zp 5, y_scale 6, y_zp 7, int32 bias 8) and
    /// `ConvInteger` (x 0, w 1, x_zp 2, w_zp 3; int32 output).
    pub(super) fn qconv(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let integer = n.op_type == "ConvInteger";
        let groups = n.attr_int("group").unwrap_or(1).max(1) as usize;
        let Some((info, u)) = self.weight_at(id, weight_slot(n)) else {
            return self.block_tensor(&x, format!("'{name}' has a run-time weight"));
        };
        let (wid, oa, ra, conflict) = (info.id.clone(), u.out_axis, u.red_axis, info.conflict.clone());
        let Some(t) = self.g.weight(&wid) else { return };
        let (rank, m) = (t.dims.len(), t.shape()[oa]);
        let pads_zero = n.attr_ints("pads").is_none_or(|p| p.iter().all(|&v| v == 0));
        let auto_ok = match n.attr("auto_pad") {
            Some(AttrValue::String(s)) => s == b"NOTSET" || s == b"VALID",
            _ => true,
        };
        if let Some(c) = conflict {
            self.block_tensor(&x, c);
        }
        if groups > 1 {
            self.block_tensor(&x, format!("'{name}' is a grouped quantized Conv (not sliced)"));
        } else if self.layout(&x).is_some_and(|l| l.back + 2 != rank) {
            self.block_tensor(&x, "Conv input channel axis does not match");
        } else {
            match self.input_zero(id, &x, 2) {
                Ok(z) => self.consume(
                    id,
                    &x,
                    Some((wid.clone(), oa, ra)),
                    1,
                    SinkKind::Conv { exact: pads_zero && auto_ok },
                    z,
                ),
                Err(e) => self.block_tensor(&x, e),
            }
        }
        let bias = if integer { Ok(None) } else { self.int_bias(id, 8, m) };
        self.produce(id, &out, (wid, oa, groups), bias, 1.0, rank - 2, Some(rank));
        if groups > 1 {
            self.block_tensor(&out, format!("'{name}' is a grouped quantized Conv (not sliced)"));
        }
        if !integer {
            let r = self.requant(id, 1, 4, Some(6), 1.0);
            self.requantize(id, &out, r);
        }
    }

    /// `QLinearMatMul` (a 0, a_scale 1, a_zp 2, b 3, b_scale 4, b_zp 5, y_scale 6, y_zp 7) and `MatMulInteger`
    /// (a 0, b 1, a_zp 2, b_zp 3; int32 output).
    pub(super) fn qmatmul(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let slot = weight_slot(n);
        let (a, b, out, name) = (n.inputs[0].clone(), n.inputs[slot].clone(), n.outputs[0].clone(), n.display_name());
        let integer = n.op_type == "MatMulInteger";
        self.block_tensor(&b, format!("'{name}' reads it as its right-hand matrix"));
        let w = self.weight_at(id, slot).map(|(i, u)| (i.id.clone(), u.out_axis, u.red_axis));
        if self.layout(&a).is_some_and(|l| l.back != 0) {
            self.block_tensor(&a, format!("'{name}' does not reduce over its channel axis"));
        } else {
            match self.input_zero(id, &a, 2) {
                Ok(z) => self.consume(id, &a, w.clone(), 1, SinkKind::MatMul, z),
                Err(e) => self.block_tensor(&a, e),
            }
        }
        let Some((wid, oa, _)) = w else { return };
        let rb = self.g.weight(&wid).map(|t| t.dims.len());
        let rank = match (self.rank_of(&a), rb) {
            (Some(x), Some(y)) => Some(x.max(y)),
            _ => None,
        };
        self.produce(id, &out, (wid, oa, 1), Ok(None), 1.0, 0, rank);
        if !integer {
            let r = self.requant(id, 1, 4, Some(6), 1.0);
            self.requantize(id, &out, r);
        }
    }

    /// `com.microsoft.QGemm` (A 0, a_scale 1, a_zp 2, B 3, b_scale 4, b_zp 5, int32 C 6, y_scale 7, y_zp 8;
    /// float output without y_scale).
    pub(super) fn qgemm(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (a, b, out, name) = (n.inputs[0].clone(), n.inputs[3].clone(), n.outputs[0].clone(), n.display_name());
        let ta = n.attr_int("transA").unwrap_or(0) != 0;
        let alpha = n.attr_float("alpha").unwrap_or(1.0) as f64;
        self.block_tensor(&b, format!("'{name}' reads it as its B matrix"));
        if let Some(c) = n.inputs.get(6).filter(|s| !s.is_empty()).cloned() {
            self.block_tensor(&c, format!("'{name}' reads it as its C bias"));
        }
        let w = self.weight_at(id, 3).map(|(i, u)| (i.id.clone(), u.out_axis, u.red_axis));
        if self.layout(&a).is_some_and(|l| ta || l.back != 0) {
            self.block_tensor(&a, format!("'{name}' reads it transposed"));
        } else {
            match self.input_zero(id, &a, 2) {
                Ok(z) => self.consume(id, &a, w.clone(), 1, SinkKind::Gemm, z),
                Err(e) => self.block_tensor(&a, e),
            }
        }
        let Some((wid, oa, _)) = w else { return };
        let Some(nn) = self.g.weight(&wid).map(|t| t.shape()[oa]) else { return };
        let bias = self.int_bias(id, 6, nn);
        self.produce(id, &out, (wid, oa, 1), bias, 1.0, 0, Some(2));
        let r = self.requant(id, 1, 4, Some(7), alpha);
        self.requantize(id, &out, r);
    }

    /// `DynamicQuantizeLinear`: element-wise, the layout passes to its quantized output; a channel that is
    /// exactly 0 stays at the (run-time) zero point, any other constant becomes unknown (its scale is the
    /// batch's range). Constants of the output are dequantized values: 0 or unknown.
    pub(super) fn dynamic_quantize(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out) = (n.inputs[0].clone(), n.outputs[0].clone());
        let Some(xl) = self.layout(&x) else { return };
        let c = self.consts_of(&x).iter().map(|k| k.filter(|v| *v == 0.0)).collect();
        self.set(&out, xl, c);
    }
}
