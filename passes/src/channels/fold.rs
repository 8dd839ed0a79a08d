//! Folding the constant output of a removed channel into its consumers' biases (exact for Gemm, MatMul
//! and unpadded Conv): Conv `b[m] += Σ_{kh,kw} W[m, c, kh, kw]·v`, Gemm `C[n] += α·B[c, n]·v / β`, MatMul
//! `bias[n] += B[c, n]·v` (into the Add that follows it, or a new one). Runs before any slicing.

use super::plan::Plan;
use super::slice::{float_tensor, replace};
use super::{Analysis, SinkKind, Site, SliceRole};
use ndarray::{ArrayD, Axis};
use sparsify_ir::{Graph, Node, NodeId, TensorError, WeightId};

fn not_found(n: &str) -> TensorError {
    TensorError::Invalid { name: n.into(), what: "not found".into() }
}

/// A fresh tensor / value name.
fn unique(g: &Graph, base: &str) -> String {
    let taken =
        |s: &str| g.initializer(s).is_some() || g.producer_of(s).is_some() || g.inputs.iter().any(|i| i.name == s);
    let mut name = base.to_string();
    let mut k = 1;
    while taken(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    name
}

/// The producer atoms of a node's output (its Rows site), so a created bias can be sliced with them.
fn rows_atoms(sites: &[Site], node: NodeId) -> Option<Vec<usize>> {
    sites.iter().find_map(|s| match s {
        Site::Rows { node: n, atoms, groups, .. } if *n == node && *groups >= 1 => Some(atoms.clone()),
        _ => None,
    })
}

/// Add `delta` (one value per output channel) to a bias tensor of `numel == delta.len()` (or replace a
/// scalar bias by a per-channel one). Returns whether the tensor was replaced by a new shape.
fn add_into(g: &mut Graph, id: &WeightId, delta: &[f64], scale: f64) -> Result<bool, TensorError> {
    let t = g.weight(id).ok_or_else(|| not_found(id.name()))?;
    let old = t.to_f64()?;
    if old.len() == delta.len() {
        let new = ArrayD::from_shape_vec(old.raw_dim(), old.iter().zip(delta).map(|(o, d)| o + d * scale).collect())
            .expect("same length");
        g.weight_mut(id).ok_or_else(|| not_found(id.name()))?.write_f64(&new)?;
        return Ok(false);
    }
    let base = old.iter().next().copied().unwrap_or(0.0);
    let vals: Vec<f64> = delta.iter().map(|d| base + d * scale).collect();
    let mut new = float_tensor(&t.name, t.dtype, vec![delta.len() as i64], &vals)?;
    new.storage = t.storage.clone();
    new.opaque = t.opaque.clone();
    replace(g, id, new)?;
    Ok(true)
}

/// Fold every removed non-zero constant into its sink. Returns extra Param sites for created biases and
/// the number of folds.
pub(crate) fn fold(g: &mut Graph, a: &Analysis, plan: &Plan) -> Result<(Vec<Site>, usize), TensorError> {
    let mut extra = Vec::new();
    let mut folds = 0;
    for s in &a.sinks {
        let (l, cs) = (&a.layouts[&s.input], &a.consts[&s.input]);
        let hits: Vec<(usize, f64)> = (0..l.atoms.len())
            .filter(|&q| plan.remove.contains(&a.find(l.atoms[q])))
            .filter_map(|q| cs[q].filter(|&v| v != s.zero).map(|v| (q, v)))
            .collect();
        if hits.is_empty() {
            continue;
        }
        folds += hits.len();
        let w = g.weight(&s.weight).ok_or_else(|| not_found(s.weight.name()))?;
        let wv = w.to_f64()?;
        // A bias this fold creates has the op's activation dtype: the weight's, or what a Cast on its
        // route turns it into (an f16 weight cast to f32 gets an f32 bias).
        let dtype = s.cast_to.unwrap_or(w.dtype);
        let m = wv.shape()[s.out_axis];
        let mut delta = vec![0.0; m];
        let per_in = l.atoms.len() / s.groups.max(1);
        let per_out = m / s.groups.max(1);
        for &(q, v) in &hits {
            let (grp, local) = (q / per_in.max(1), q % per_in.max(1));
            let cols = wv.index_axis(Axis(s.red_axis), if s.groups > 1 { local } else { q });
            let oa = if s.out_axis > s.red_axis { s.out_axis - 1 } else { s.out_axis };
            let range = if s.groups > 1 { grp * per_out..(grp + 1) * per_out } else { 0..m };
            for o in range {
                delta[o] += v * cols.index_axis(Axis(oa), o).sum();
            }
        }
        let node = g.node(s.node).clone();
        let name = node.display_name();
        let mut created: Option<WeightId> = None;
        match s.kind {
            SinkKind::Conv { .. } | SinkKind::Gemm => {
                let (alpha, beta) = match s.kind {
                    SinkKind::Gemm => {
                        (node.attr_float("alpha").unwrap_or(1.0) as f64, node.attr_float("beta").unwrap_or(1.0) as f64)
                    }
                    _ => (1.0, 1.0),
                };
                match node.inputs.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => {
                        let id = g.constant_source(b).ok_or_else(|| not_found(b))?;
                        if add_into(g, &id, &delta, alpha / beta)? {
                            created = Some(id);
                        }
                    }
                    None => {
                        let bname = unique(g, &format!("{name}.dce_bias"));
                        let vals: Vec<f64> = delta.iter().map(|d| d * alpha).collect();
                        g.initializers.push(float_tensor(&bname, dtype, vec![m as i64], &vals)?);
                        let n = g.node_mut(s.node);
                        n.inputs.resize(3, String::new());
                        n.inputs[2] = bname.clone();
                        if s.kind == SinkKind::Gemm {
                            n.set_attr("beta", sparsify_ir::AttrValue::Float(1.0));
                        }
                        g.relink();
                        created = Some(WeightId::Init(bname));
                    }
                }
            }
            SinkKind::MatMul => {
                let out = node.outputs[0].clone();
                let users = g.consumers(&out);
                let add_bias = match users.as_slice() {
                    [(u, slot)] if g.node(*u).op_type == "Add" && !g.is_output(&out) => {
                        let other = g.node(*u).inputs[1 - (*slot).min(1)].clone();
                        let ok = g.constant_source(&other).filter(|_| g.consumers(&other).len() == 1);
                        ok.filter(|id| {
                            g.weight(id).is_some_and(|t| t.dims.last() == Some(&(m as i64)) && t.numel() == Ok(m))
                        })
                    }
                    _ => None,
                };
                match add_bias {
                    Some(id) => {
                        add_into(g, &id, &delta, 1.0)?;
                    }
                    None => {
                        let bname = unique(g, &format!("{name}.dce_bias"));
                        let mid = unique(g, &format!("{out}.dce_matmul"));
                        g.initializers.push(float_tensor(&bname, dtype, vec![m as i64], &delta)?);
                        g.node_mut(s.node).outputs[0] = mid.clone();
                        let add = Node::new("Add", &format!("{name}.dce_bias_add"), &[&mid, &bname], &[&out]);
                        g.insert_after(s.node, add);
                        created = Some(WeightId::Init(bname));
                    }
                }
            }
        }
        if let (Some(id), Some(atoms)) = (created, rows_atoms(&a.sites, s.node)) {
            extra.push(Site::Param { node: s.node, weight: id, axis: 0, atoms, role: SliceRole::Bias });
        }
    }
    Ok((extra, folds))
}
