//! Producers and consumers: Conv (plain, grouped, depthwise), Gemm, MatMul, and BatchNormalization. The
//! quantized operators (`qops.rs`) reuse [`Builder::produce`] / [`Builder::consume`].

use super::graph::{zero_slices_of, Builder, Param};
use super::qops::{is_quantized_op, weight_slot};
use super::{Layout, Sink, SinkKind, Site, SliceRole};
use sparsify_ir::{AttrValue, NodeId, WeightId};

/// Why a producer weight cannot be sliced because it is quantized (non-float) and neither read through a
/// `DequantizeLinear` nor by a quantized operator (whose scales and zero points the rewrite slices along),
/// naming it.
fn quantized_refusal(
    b: &Builder<'_>,
    id: NodeId,
    input: &str,
    wid: &WeightId,
    t: &sparsify_ir::Tensor,
) -> Option<String> {
    if is_quantized_op(b.g.node(id)) {
        // Its zero points decide which channels are dead: they must resolve.
        return b.g.weight_quant(wid).err().map(|e| e.to_string());
    }
    (!t.dtype.is_prunable_float() && b.dq_on_route(input).is_none()).then(|| {
        format!(
            "'{}' is a quantized weight ({}) read neither through DequantizeLinear nor by a quantized operator; \
             its scales and zero points are unknown",
            wid.name(),
            t.dtype.name()
        )
    })
}

impl Builder<'_> {
    /// A producer output: fresh atoms, rows site, optional bias, constants of zero rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn produce(
        &mut self,
        id: NodeId,
        out: &str,
        w: (WeightId, usize, usize),
        bias: Result<Option<Param>, String>,
        scale: f64,
        back: usize,
        rank: Option<usize>,
    ) {
        let (wid, axis, groups) = w;
        let Some(t) = self.g.weight(&wid) else { return };
        // Quantized weights: dead channels are those at their zero points; QDQ weights are sliced with
        // their per-axis scales and zero points (and a quantized bias with its own).
        let flags = self.g.weight_zero_flags(&wid).unwrap_or_else(|_| t.zero_flags());
        let zero = zero_slices_of(t, &flags, axis);
        let atoms = self.a.fresh(zero.len());
        let input = self.g.node(id).inputs[weight_slot(self.g.node(id))].clone();
        let mut ok = self.exclusive(&input).map(|m| self.a.intermediates.extend(m));
        let bias = match bias {
            Ok(b) => b,
            Err(e) => {
                ok = Err(e);
                None
            }
        };
        let mut quant = Vec::new();
        if ok.is_ok() {
            let mut q = self.quant_sites(&input, id, axis, &atoms).and_then(|mut s| {
                s.extend(self.qop_param_sites(id, axis, &atoms)?);
                Ok(s)
            });
            if let (Ok(_), Some(b)) = (&q, bias.as_ref().filter(|b| b.vals.len() == atoms.len() && atoms.len() > 1)) {
                match self.quant_sites(&b.input, id, b.axis, &atoms) {
                    Ok(s) => q.iter_mut().for_each(|v| v.extend(s.clone())),
                    Err(e) => q = Err(e),
                }
            }
            match q {
                Ok(s) => quant = s,
                Err(e) => ok = Err(e),
            }
        }
        if let Some(why) = quantized_refusal(self, id, &input, &wid, t) {
            ok = Err(why);
        }
        let consts: Vec<Option<f64>> = (0..zero.len())
            .map(|c| {
                zero[c].then(|| bias.as_ref().map_or(0.0, |b| scale * b.vals.get(c).copied().unwrap_or(b.vals[0])))
            })
            .collect();
        for (c, &z) in zero.iter().enumerate() {
            if z {
                self.a.zero.insert(atoms[c]);
            }
        }
        match ok {
            Ok(()) => {
                self.a.sites.push(Site::Rows { node: id, weight: wid, axis, atoms: atoms.clone(), groups });
                if let Some(b) = bias.filter(|b| b.vals.len() == atoms.len() && atoms.len() > 1) {
                    self.a.sites.push(Site::Param {
                        node: id,
                        weight: b.id,
                        axis: b.axis,
                        atoms: atoms.clone(),
                        role: SliceRole::Bias,
                    });
                }
                self.a.sites.extend(quant);
            }
            Err(e) => self.a.block(&atoms, format!("weight of '{}': {e}", self.g.node(id).display_name())),
        }
        self.a.producers.push((id, out.to_string()));
        self.set(out, Layout { atoms, back, rank }, consts);
    }

    /// A consumer reading layout `x` through weight columns. `zero` is the value of `x` that contributes
    /// nothing (0, or the input zero point of a quantized operator).
    pub(super) fn consume(
        &mut self,
        id: NodeId,
        x: &str,
        u: Option<(WeightId, usize, usize)>,
        groups: usize,
        kind: SinkKind,
        zero: f64,
    ) {
        let Some(l) = self.layout(x) else { return };
        let name = self.g.node(id).display_name();
        let Some((wid, out_axis, red_axis)) = u else {
            return self.block_tensor(x, format!("'{name}' multiplies it by a run-time tensor"));
        };
        let slot = weight_slot(self.g.node(id));
        let input = self.g.node(id).inputs[slot].clone();
        let red = self.g.weight(&wid).map(|t| t.shape()[red_axis] * groups);
        if red != Some(l.atoms.len()) {
            return self
                .block_tensor(x, format!("'{name}' reduces over {red:?} features, the tensor has {}", l.atoms.len()));
        }
        let ok = self.exclusive(&input).and_then(|m| {
            let mut q = self.quant_sites(&input, id, red_axis, &l.atoms)?;
            q.extend(self.qop_param_sites(id, red_axis, &l.atoms)?);
            if groups > 1 && !q.is_empty() {
                return Err("a grouped Conv weight quantized along its input channels".to_string());
            }
            Ok((m, q))
        });
        match ok {
            Ok((m, q)) => {
                self.a.intermediates.extend(m);
                self.a.sites.extend(q);
                self.a.sites.push(Site::Cols {
                    node: id,
                    weight: wid.clone(),
                    axis: red_axis,
                    atoms: l.atoms.clone(),
                    groups,
                });
                let cast_to = self.weight_at(id, slot).and_then(|(_, u)| u.cast_to);
                self.a.sinks.push(Sink {
                    node: id,
                    input: x.to_string(),
                    weight: wid,
                    red_axis,
                    out_axis,
                    groups,
                    kind,
                    cast_to,
                    zero,
                });
            }
            Err(e) => self.block_tensor(x, format!("weight of '{name}': {e}")),
        }
    }

    // ---- operators -----------------------------------------------------------------------------

    pub(super) fn conv(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out) = (n.inputs[0].clone(), n.outputs[0].clone());
        let groups = n.attr_int("group").unwrap_or(1).max(1) as usize;
        let Some((info, u)) = self.weight_at(id, 1) else {
            return self.block_tensor(&x, format!("Conv '{}' has a run-time weight", n.display_name()));
        };
        let (wid, oa, ra, conflict) = (info.id.clone(), u.out_axis, u.red_axis, info.conflict.clone());
        let Some(t) = self.g.weight(&wid) else { return };
        let dims = t.shape();
        let rank = dims.len();
        let m = dims[oa];
        let pads_zero = n.attr_ints("pads").is_none_or(|p| p.iter().all(|&v| v == 0));
        let auto_ok = match n.attr("auto_pad") {
            Some(AttrValue::String(s)) => s == b"NOTSET" || s == b"VALID",
            _ => true,
        };
        let bias_name = n.inputs.get(2).filter(|s| !s.is_empty()).cloned();
        let bias = match &bias_name {
            Some(b) => self.param(b, m).map(Some),
            None => Ok(None),
        };
        let xl = self.layout(&x);
        let depthwise =
            groups > 1 && dims[ra] == 1 && m == groups && xl.as_ref().is_some_and(|l| l.atoms.len() == groups);
        if let (true, Some(xl)) = (depthwise, xl.clone()) {
            return self.depthwise(id, xl, (wid, oa), bias, pads_zero && auto_ok);
        }
        if let Some(c) = conflict {
            self.block_tensor(&x, c);
        }
        if groups > 1 && (oa, ra) != (0, 1) {
            self.block_tensor(&x, "grouped Conv weight is not in [M, C/g, ...] layout");
        }
        if xl.is_some_and(|l| l.back + 2 != rank) {
            self.block_tensor(&x, "Conv input channel axis does not match");
        } else {
            self.consume(
                id,
                &x,
                Some((wid.clone(), oa, ra)),
                groups,
                SinkKind::Conv { exact: pads_zero && auto_ok },
                0.0,
            );
        }
        self.produce(id, &out, (wid, oa, groups), bias, 1.0, rank - 2, Some(rank));
    }

    fn depthwise(
        &mut self,
        id: NodeId,
        xl: Layout,
        w: (WeightId, usize),
        bias: Result<Option<Param>, String>,
        exact: bool,
    ) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let (wid, oa) = w;
        let Some(t) = self.g.weight(&wid) else { return };
        let flags = self.g.weight_zero_flags(&wid).unwrap_or_else(|_| t.zero_flags());
        let zero = zero_slices_of(t, &flags, oa);
        let sums: Vec<f64> = match self.g.weight_values_f64(&wid) {
            Ok(v) => (0..zero.len()).map(|c| v.index_axis(ndarray::Axis(oa), c).sum()).collect(),
            Err(_) => vec![f64::NAN; zero.len()],
        };
        let input = n.inputs[1].clone();
        let ok = self.exclusive(&input).and_then(|m| bias.as_ref().map(|_| m).map_err(|e| e.clone()));
        let ok = ok.and_then(|m| {
            let mut q = self.quant_sites(&input, id, oa, &xl.atoms)?;
            if let Some(b) = bias.as_ref().ok().and_then(|b| b.as_ref()).filter(|b| b.vals.len() > 1) {
                q.extend(self.quant_sites(&b.input, id, b.axis, &xl.atoms)?);
            }
            Ok((m, q))
        });
        let ok = match quantized_refusal(self, id, &input, &wid, t) {
            Some(why) => Err(why),
            None => ok,
        };
        let b = bias.ok().flatten();
        let bv = |c: usize| b.as_ref().map_or(0.0, |b| b.vals[c]);
        let xc = self.consts_of(&x);
        let consts: Vec<Option<f64>> = (0..zero.len())
            .map(|c| match xc[c] {
                _ if zero[c] => Some(bv(c)),
                Some(0.0) => Some(bv(c)),
                Some(k) if exact => Some(k * sums[c] + bv(c)).filter(|v| v.is_finite()),
                _ => None,
            })
            .collect();
        for (c, &z) in zero.iter().enumerate() {
            if z {
                self.a.zero.insert(xl.atoms[c]);
            }
        }
        match ok {
            Ok((m, q)) => {
                self.a.intermediates.extend(m);
                self.a.sites.extend(q);
                self.a.sites.push(Site::Rows { node: id, weight: wid, axis: oa, atoms: xl.atoms.clone(), groups: 1 });
                if let Some(b) = b.filter(|b| b.vals.len() > 1) {
                    self.a.sites.push(Site::Param {
                        node: id,
                        weight: b.id,
                        axis: b.axis,
                        atoms: xl.atoms.clone(),
                        role: SliceRole::Bias,
                    });
                }
                self.a.sites.push(Site::GroupAttr { node: id, atoms: xl.atoms.clone() });
            }
            Err(e) => self.a.block(&xl.atoms, format!("depthwise '{name}': {e}")),
        }
        self.set(&out, xl, consts);
    }

    pub(super) fn gemm(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (ta, name) = (n.attr_int("transA").unwrap_or(0) != 0, n.display_name());
        let (alpha, beta) = (n.attr_float("alpha").unwrap_or(1.0) as f64, n.attr_float("beta").unwrap_or(1.0) as f64);
        let (a, b, out) = (n.inputs[0].clone(), n.inputs[1].clone(), n.outputs[0].clone());
        let c = n.inputs.get(2).filter(|s| !s.is_empty()).cloned();
        self.block_tensor(&b, format!("'{name}' reads it as its B matrix"));
        if let Some(c) = &c {
            self.block_tensor(c, format!("'{name}' reads it as its C bias"));
        }
        let w = self.weight_at(id, 1).map(|(i, u)| (i.id.clone(), u.out_axis, u.red_axis));
        if self.layout(&a).is_some_and(|l| ta || l.back != 0) {
            self.block_tensor(&a, format!("'{name}' reads it transposed"));
        } else {
            self.consume(id, &a, w.clone(), 1, SinkKind::Gemm, 0.0);
        }
        let Some((wid, oa, _)) = w else { return };
        let Some(nn) = self.g.weight(&wid).map(|t| t.shape()[oa]) else { return };
        let bias = match &c {
            None => Ok(None),
            Some(c) if self.g.constant_source(c).is_none() && self.dq_on_route(c).is_none() => {
                Err(format!("C '{c}' is computed at run time"))
            }
            Some(c) => self.param(c, nn).or_else(|e| self.param(c, 1).map_err(|_| e)).map(Some),
        };
        self.produce(id, &out, (wid, oa, 1), bias, beta, 0, Some(2));
        let _ = alpha;
    }

    pub(super) fn matmul(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (a, b, out, name) = (n.inputs[0].clone(), n.inputs[1].clone(), n.outputs[0].clone(), n.display_name());
        self.block_tensor(&b, format!("'{name}' reads it as its right-hand matrix"));
        let w = self.weight_at(id, 1).map(|(i, u)| (i.id.clone(), u.out_axis, u.red_axis));
        if self.layout(&a).is_some_and(|l| l.back != 0) {
            self.block_tensor(&a, format!("'{name}' does not reduce over its channel axis"));
        } else {
            self.consume(id, &a, w.clone(), 1, SinkKind::MatMul, 0.0);
        }
        let Some((wid, oa, _)) = w else { return };
        let rb = self.g.weight(&wid).map(|t| t.dims.len());
        let rank = match (self.rank_of(&a), rb) {
            (Some(x), Some(y)) => Some(x.max(y)),
            _ => None,
        };
        self.produce(id, &out, (wid, oa, 1), Ok(None), 1.0, 0, rank);
    }

    pub(super) fn batchnorm(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let Some(xl) = self.layout(&x) else { return };
        if xl.front() != Some(1) {
            return self.block_tensor(&x, format!("'{name}': BatchNormalization needs the channel axis at 1"));
        }
        if n.outputs.iter().skip(1).any(|o| !o.is_empty()) || n.inputs.len() < 5 {
            return self.block_tensor(&x, format!("'{name}': training-mode BatchNormalization"));
        }
        let eps = n.attr_float("epsilon").unwrap_or(1e-5) as f64;
        let c = xl.atoms.len();
        let mut ps = Vec::new();
        for i in 1..5 {
            let pname = self.g.node(id).inputs[i].clone();
            match self.param(&pname, c) {
                Ok(p) => ps.push(p),
                Err(e) => {
                    self.block_tensor(&x, format!("'{name}': {e}"));
                    return self.set(&out, xl.clone(), vec![None; c]);
                }
            }
        }
        let xc = self.consts_of(&x);
        let consts = (0..c)
            .map(|i| {
                let k = xc[i]?;
                let v = ps[0].vals[i] * (k - ps[2].vals[i]) / (ps[3].vals[i] + eps).sqrt() + ps[1].vals[i];
                v.is_finite().then_some(v)
            })
            .collect();
        if c > 1 {
            for (i, p) in ps.into_iter().enumerate() {
                self.a.sites.push(Site::Param {
                    node: id,
                    weight: p.id,
                    axis: p.axis,
                    atoms: xl.atoms.clone(),
                    role: SliceRole::Norm(i as u8),
                });
            }
        }
        self.set(&out, xl, consts);
    }
}
