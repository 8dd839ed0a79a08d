//! The analysis walk and its helpers. Producers/consumers are in `producers.rs`, element-wise ops in
//! `ops.rs`, layout remapping (Concat/Split/Slice/Flatten/Reshape/Transpose/Shape) in `remap.rs`.

use super::shapes::{self, Shape};
use super::{consts, Analysis, Layout, Site, SliceRole};
use sparsify_ir::{AttrValue, Graph, NodeId, Tensor, WeightId, WeightInfo, WeightUse};
use std::collections::BTreeMap;

pub(crate) struct Builder<'g> {
    pub g: &'g Graph,
    pub a: Analysis,
    pub shapes: BTreeMap<String, Shape>,
    weights: BTreeMap<(NodeId, usize), (usize, usize)>,
    infos: Vec<WeightInfo>,
    uses: BTreeMap<String, usize>,
}

/// Whether each index along `axis` holds only zeros.
pub(crate) fn zero_slices(t: &Tensor, axis: usize) -> Vec<bool> {
    zero_slices_of(t, &t.zero_flags(), axis)
}

/// [`zero_slices`] from given zero flags (a quantized weight's `q == zp`, `Graph::weight_zero_flags`).
pub(crate) fn zero_slices_of(t: &Tensor, flags: &[bool], axis: usize) -> Vec<bool> {
    let dims = t.shape();
    let (d, inner) = (dims.get(axis).copied().unwrap_or(1), dims.iter().skip(axis + 1).product::<usize>().max(1));
    let mut z = vec![true; d];
    for (i, f) in flags.iter().enumerate() {
        if !f {
            z[(i / inner) % d] = false;
        }
    }
    z
}

/// A per-channel constant parameter: its source, the axis holding the channels and its values
/// (dequantized when a `DequantizeLinear` reads it).
pub(crate) struct Param {
    pub id: WeightId,
    pub axis: usize,
    pub vals: Vec<f64>,
    /// The op input it was read through.
    pub input: String,
}

/// A standard `DequantizeLinear`.
pub(crate) fn is_dq(n: &sparsify_ir::Node) -> bool {
    n.op_type == "DequantizeLinear" && n.is_onnx()
}

impl<'g> Builder<'g> {
    pub fn new(g: &'g Graph) -> Builder<'g> {
        let infos = g.find_weights();
        let mut weights = BTreeMap::new();
        for (i, w) in infos.iter().enumerate() {
            for (j, u) in w.uses.iter().enumerate() {
                weights.insert((u.node, u.slot), (i, j));
            }
        }
        let mut uses: BTreeMap<String, usize> = BTreeMap::new();
        for (_, n) in g.nodes() {
            for i in n.inputs.iter().filter(|i| !i.is_empty()) {
                *uses.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &g.outputs {
            *uses.entry(o.name.clone()).or_default() += 1;
        }
        Builder { g, a: Analysis::default(), shapes: shapes::infer(g), weights, infos, uses }
    }

    pub fn run(mut self) -> Analysis {
        let Some(order) = self.g.topo_order() else { return self.a };
        let subgraphs = self.g.nodes().any(|(_, n)| n.attrs.iter().any(|a| matches!(a.value, AttrValue::Opaque)));
        for id in order {
            self.visit(id);
            for o in self.g.node(id).outputs.clone() {
                if self.g.is_output(&o) {
                    self.block_tensor(&o, format!("reaches graph output '{o}'"));
                }
            }
        }
        if subgraphs {
            let all: Vec<usize> = (0..self.a.atoms).collect();
            self.a.block(&all, "the graph has subgraph attributes (If/Loop/Scan) whose reads the analysis cannot see");
        }
        self.a
    }

    fn visit(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let op = n.op_type.as_str();
        let has_region = n.inputs.iter().any(|i| self.a.layouts.contains_key(i));
        if op == "QGemm" && n.domain.as_deref() == Some("com.microsoft") {
            return self.qgemm(id);
        }
        if !n.is_onnx() {
            self.block_inputs(id, format!("'{}' ({}) is not understood", n.display_name(), n.kind()));
            return;
        }
        match op {
            "Conv" => self.conv(id),
            "Gemm" => self.gemm(id),
            "MatMul" => self.matmul(id),
            "QLinearConv" | "ConvInteger" => self.qconv(id),
            "QLinearMatMul" | "MatMulInteger" => self.qmatmul(id),
            _ if !has_region => {}
            "DynamicQuantizeLinear" => self.dynamic_quantize(id),
            "BatchNormalization" => self.batchnorm(id),
            "QuantizeLinear" | "DequantizeLinear" => self.qdq(id),
            _ if consts::UNARY.contains(&op) => self.unary(id),
            _ if consts::NARY.contains(&op) => self.nary(id),
            _ if consts::POOL.contains(&op) => self.pool(id),
            "Concat" => self.concat(id),
            "Split" => self.split(id),
            "Slice" => self.slice(id),
            "Flatten" | "Reshape" => self.flatten(id),
            "Transpose" | "Squeeze" | "Unsqueeze" => self.move_axis(id),
            "Shape" => self.shape_read(id),
            "LayerNormalization"
            | "GroupNormalization"
            | "InstanceNormalization"
            | "Softmax"
            | "LogSoftmax"
            | "LpNormalization"
            | "MeanVarianceNormalization" => self.block_inputs(
                id,
                format!("normalization '{}' ({op}) would change if a channel went", n.display_name()),
            ),
            _ => self
                .block_inputs(id, format!("'{}' ({op}) is not understood by the channel analysis", n.display_name())),
        }
    }

    // ---- helpers -------------------------------------------------------------------------------

    pub fn layout(&self, name: &str) -> Option<Layout> {
        self.a.layouts.get(name).cloned()
    }

    pub fn consts_of(&self, name: &str) -> Vec<Option<f64>> {
        self.a.consts.get(name).cloned().unwrap_or_default()
    }

    pub fn set(&mut self, name: &str, layout: Layout, consts: Vec<Option<f64>>) {
        debug_assert_eq!(layout.atoms.len(), consts.len());
        self.a.layouts.insert(name.to_string(), layout);
        self.a.consts.insert(name.to_string(), consts);
    }

    pub fn block_tensor(&mut self, name: &str, reason: impl Into<String>) {
        if let Some(l) = self.a.layouts.get(name) {
            let atoms = l.atoms.clone();
            self.a.block(&atoms, reason);
        }
    }

    pub fn block_inputs(&mut self, id: NodeId, reason: impl Into<String>) {
        let r = reason.into();
        for i in self.g.node(id).inputs.clone() {
            self.block_tensor(&i, r.clone());
        }
    }

    pub fn rank_of(&self, name: &str) -> Option<usize> {
        self.a.layouts.get(name).and_then(|l| l.rank).or_else(|| self.shapes.get(name).map(|s| s.len()))
    }

    pub fn use_count(&self, name: &str) -> usize {
        self.uses.get(name).copied().unwrap_or(0)
    }

    pub(super) fn weight_at(&self, id: NodeId, slot: usize) -> Option<(&WeightInfo, &WeightUse)> {
        let &(i, j) = self.weights.get(&(id, slot))?;
        Some((&self.infos[i], &self.infos[i].uses[j]))
    }

    /// Check that the constant behind op input `name` is read by this op alone (through its route) and
    /// can be resized: returns the intermediate value names, or why not.
    pub fn exclusive(&self, name: &str) -> Result<Vec<String>, String> {
        let mut cur = name.to_string();
        let mut mids = Vec::new();
        for _ in 0..64 {
            if self.use_count(&cur) != 1 {
                return Err(format!("'{cur}' is shared by {} readers", self.use_count(&cur)));
            }
            if let Some(id) = self.g.constant_source(&cur) {
                if self.g.inputs.iter().any(|i| i.name == id.name()) {
                    return Err(format!("'{cur}' is also a graph input"));
                }
                return Ok(mids);
            }
            let Some(p) = self.g.producer_of(&cur) else { return Err(format!("'{cur}' is not a constant")) };
            let n = self.g.node(p);
            if !matches!(n.op_type.as_str(), "Identity" | "Cast" | "Transpose") && !is_dq(n) {
                return Err(format!("'{cur}' comes through {} (per-channel parameters would need slicing)", n.op_type));
            }
            mids.push(cur.clone());
            cur = n.inputs.first().cloned().unwrap_or_default();
        }
        Err(format!("'{name}': route too long"))
    }

    /// A constant with `len` entries on exactly one axis (others 1), read only by this op.
    pub fn param(&mut self, name: &str, len: usize) -> Result<Param, String> {
        let mids = self.exclusive(name)?;
        let id =
            self.g.constant_source(&self.route_source(name)).ok_or_else(|| format!("'{name}' is not a constant"))?;
        let t = self.g.weight(&id).ok_or_else(|| format!("'{name}' not found"))?;
        let vals: Vec<f64> = match self.dq_on_route(name) {
            Some(dq) => self.dequantized(dq, t)?,
            None => t.to_f64().map_err(|e| e.to_string())?.iter().copied().collect(),
        };
        let dims = t.shape();
        let axis = match dims.iter().position(|&d| d == len) {
            Some(a) if dims.iter().product::<usize>() == len => a,
            _ if len == 1 && dims.iter().product::<usize>() == 1 => 0,
            _ => return Err(format!("'{name}' has shape {dims:?}, not one entry per channel ({len})")),
        };
        self.a.intermediates.extend(mids);
        Ok(Param { id, axis: axis.min(dims.len().saturating_sub(1)), vals, input: name.to_string() })
    }

    /// The `DequantizeLinear` on the route from op input `name` back to its constant, if any.
    pub fn dq_on_route(&self, name: &str) -> Option<NodeId> {
        let mut cur = name.to_string();
        for _ in 0..64 {
            if self.g.constant_source(&cur).is_some() {
                return None;
            }
            let p = self.g.producer_of(&cur)?;
            let n = self.g.node(p);
            if is_dq(n) {
                return Some(p);
            }
            if !matches!(n.op_type.as_str(), "Identity" | "Cast" | "Transpose") {
                return None;
            }
            cur = n.inputs.first().cloned().unwrap_or_default();
        }
        None
    }

    /// A constant input of a node (scale / zero point) as (value name, source, tensor).
    fn dq_param(&self, dq: NodeId, slot: usize) -> Option<(String, WeightId, &Tensor)> {
        let name = self.g.node(dq).inputs.get(slot).filter(|s| !s.is_empty())?.clone();
        let id = self.g.constant_source(&name)?;
        let t = self.g.weight(&id)?;
        Some((name, id, t))
    }

    /// The axis `dq` dequantizes along, in the layout of its (stored) input; 0 for 1-D tensors.
    fn dq_axis(&self, dq: NodeId, rank: usize) -> usize {
        let a = self.g.node(dq).attr_int("axis").unwrap_or(1);
        let a = if a < 0 { a + rank as i64 } else { a };
        if rank <= 1 {
            0
        } else {
            a.max(0) as usize
        }
    }

    /// `(q − zp)·scale` of a constant read by `DequantizeLinear` `dq` (any integer dtype, int32 biases
    /// too), computed in `f32` as the op does.
    pub fn dequantized(&self, dq: NodeId, t: &Tensor) -> Result<Vec<f64>, String> {
        let dn = self.g.node(dq).display_name();
        let q = sparsify_ir::quant::read_ints(t).map_err(|e| e.to_string())?;
        let (_, _, st) = self.dq_param(dq, 1).ok_or_else(|| format!("scale of '{dn}' is not a constant"))?;
        let s: Vec<f32> = st.to_f32().map_err(|e| e.to_string())?.iter().copied().collect();
        let zp = match self.dq_param(dq, 2) {
            Some((_, _, zt)) => sparsify_ir::quant::read_ints(zt).map_err(|e| e.to_string())?,
            None => vec![0],
        };
        let dims = t.shape();
        let axis = self.dq_axis(dq, dims.len());
        let (n, inner) = (dims.get(axis).copied().unwrap_or(1).max(1), dims.iter().skip(axis + 1).product::<usize>());
        let pick = |v: usize, c: usize| if v == 1 { 0 } else { c };
        if s.is_empty() || zp.is_empty() || (s.len() != 1 && s.len() != n) || (zp.len() != 1 && zp.len() != n) {
            return Err(format!("'{dn}' has scale / zero point lengths {} / {}, not 1 or {n}", s.len(), zp.len()));
        }
        Ok(q.iter()
            .enumerate()
            .map(|(i, &q)| {
                let c = (i / inner.max(1)) % n;
                f64::from((q - zp[pick(zp.len(), c)]) as f32 * s[pick(s.len(), c)])
            })
            .collect())
    }

    /// Extra sites for slicing the constant behind op input `input` along `axis` (its stored layout)
    /// when a `DequantizeLinear` reads it: its scale and zero point when they are per axis along
    /// `axis` (per tensor, or per axis along another axis: nothing to slice). Errors name the tensor
    /// when that cannot be done (shared scale / zero point, blocked quantization, a route between the
    /// constant and the `DequantizeLinear`).
    pub fn quant_sites(&self, input: &str, node: NodeId, axis: usize, atoms: &[usize]) -> Result<Vec<Site>, String> {
        let Some(dq) = self.dq_on_route(input) else { return Ok(vec![]) };
        let n = self.g.node(dq);
        let dn = n.display_name();
        let src = n.inputs.first().cloned().unwrap_or_default();
        let Some(wid) = self.g.constant_source(&src) else {
            return Err(format!("'{dn}' dequantizes '{src}', which is not a constant"));
        };
        let Some(t) = self.g.weight(&wid) else { return Err(format!("'{src}' not found")) };
        if n.attr_int("block_size").unwrap_or(0) != 0 {
            return Err(format!("'{}' uses blocked quantization (block_size) in '{dn}'", wid.name()));
        }
        let rank = t.dims.len();
        let dq_axis = self.dq_axis(dq, rank);
        let mut sites = Vec::new();
        for (slot, what) in [(1, "scale"), (2, "zero point")] {
            let Some((pname, pid, pt)) = self.dq_param(dq, slot) else {
                if n.inputs.get(slot).is_some_and(|s| !s.is_empty()) {
                    return Err(format!("{what} of '{}' is computed at run time", wid.name()));
                }
                continue;
            };
            if pt.numel().unwrap_or(1) <= 1 || dq_axis != axis {
                continue; // per tensor, or per axis along an axis that keeps its length
            }
            if pt.dims.len() != 1 || pt.dims[0] as usize != atoms.len() {
                return Err(format!(
                    "{what} '{pname}' of quantized '{}' has shape {:?}, not one entry per channel ({})",
                    wid.name(),
                    pt.dims,
                    atoms.len()
                ));
            }
            if self.use_count(&pname) != 1 || self.g.inputs.iter().any(|i| i.name == pname) {
                return Err(format!(
                    "{what} '{pname}' of quantized '{}' is shared by {} readers; slicing it would change the others",
                    wid.name(),
                    self.use_count(&pname)
                ));
            }
            sites.push(Site::Param { node, weight: pid, axis: 0, atoms: atoms.to_vec(), role: SliceRole::Quant });
        }
        Ok(sites)
    }

    fn route_source(&self, name: &str) -> String {
        let mut cur = name.to_string();
        for _ in 0..64 {
            if self.g.constant_source(&cur).is_some() {
                break;
            }
            match self.g.producer_of(&cur) {
                Some(p)
                    if matches!(self.g.node(p).op_type.as_str(), "Identity" | "Cast" | "Transpose")
                        || is_dq(self.g.node(p)) =>
                {
                    cur = self.g.node(p).inputs[0].clone()
                }
                _ => break,
            }
        }
        cur
    }
}
