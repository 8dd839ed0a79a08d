//! Recognition of multi-head attention exported as projections → Reshape[.., H, dh] → Transpose →
//! QKᵀ → (scale, mask) → Softmax → ·V → Transpose → Reshape[.., H·dh] → MatMul (output projection O).
//!
//! The walk starts at every MatMul with a constant 2-D weight whose activation comes from a Reshape, and
//! follows the tensors back, tracking where the head axis and the head-dim axis sit through every
//! Transpose; it accepts the separate Q/K/V projections of BERT-style exports and one fused qkv
//! projection followed by a 3-way `Split` (GPT-style exports). Any other op on the way, a head count that
//! differs between query and key/value (grouped-query attention), a score operand carrying a per-head
//! axis (relative-position or ALiBi biases), a tensor read elsewhere, or a shared weight makes the block
//! unrecognised, with the reason.

use crate::channels::shapes::{const_ints, infer, Shape};
use sparsify_ir::{Graph, NodeId, WeightId};
use std::collections::BTreeMap;

/// One projection (MatMul with a constant [in, out] weight, optionally followed by `Add` of a constant
/// bias of length out).
#[derive(Debug, Clone)]
pub(crate) struct Proj {
    pub weight: WeightId,
    pub bias: Option<WeightId>,
    /// Output columns.
    pub cols: usize,
}

/// Where Q, K and V come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Three projections: query, key, value.
    Separate([Proj; 3]),
    /// One projection split along its last axis; `offsets` are the first column of the query, key and
    /// value segments; `sizes` the Split sizes (all outputs) and where they live.
    Fused { proj: Proj, split: NodeId, offsets: [usize; 3], sizes: SplitSizes },
}

/// The `split` sizes of a fused qkv `Split`.
#[derive(Debug, Clone)]
pub(crate) enum SplitSizes {
    /// Equal parts (no sizes given): nothing to edit.
    Equal,
    /// A constant input (opset ≥ 13).
    Input(Vec<i64>),
    /// The `split` attribute (older opsets).
    Attr(Vec<i64>),
}

/// An integer inside a shape constant to rewrite: slot 1 of a `Reshape` (a whole shape constant) or an
/// input of the `Concat` that builds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IntSite {
    /// The node whose input holds the constant (the Reshape or the Concat).
    pub node: NodeId,
    /// Which input of that node.
    pub input: usize,
    /// Position inside the constant.
    pub index: usize,
    /// The current value (`-1` = inferred by the runtime: nothing to edit).
    pub value: i64,
}

/// One recognised attention block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// The output projection's node name.
    pub name: String,
    pub heads: usize,
    pub dh: usize,
    pub source: Source,
    /// The head count in each head-split Reshape (query, key, value; possibly the same constant).
    pub split_sites: Vec<IntSite>,
    /// H·dh in the merge Reshape.
    pub merge_site: IntSite,
    /// The output projection O, stored [H·dh, D].
    pub o_weight: WeightId,
    /// O's bias (a constant `Add` of length D right after it), which the repair also updates.
    pub o_bias: Option<WeightId>,
    /// The merged context (O's input): the Gram of the head removal is taken here.
    pub merged: String,
    /// Every tensor whose shape carries the head count (their `value_info` is dropped on removal).
    pub region: Vec<String>,
}

/// Recognised blocks, and (subject, reason) for attention-like structures left alone.
pub(crate) fn find_blocks(g: &Graph) -> (Vec<Block>, Vec<(String, String)>) {
    let mut blocks = Vec::new();
    let mut notes = Vec::new();
    let shapes = infer(g);
    for (id, n) in g.nodes() {
        if !n.is_onnx() {
            let op = n.op_type.as_str();
            if op.contains("Attention") || op.contains("Rotary") {
                notes.push((
                    n.display_name(),
                    format!("fused attention op {} is not supported: left unchanged", n.kind()),
                ));
            }
            continue;
        }
        if n.op_type != "MatMul" || n.inputs.len() != 2 {
            continue;
        }
        let Some(wid) = g.constant_source(&n.inputs[1]) else { continue };
        let Some(w) = g.weight(&wid) else { continue };
        if w.dims.len() != 2 {
            continue;
        }
        let Some(r) = g.producer_of(&n.inputs[0]) else { continue };
        if g.node(r).op_type != "Reshape" {
            continue;
        }
        // Only structures that reach a product of two activations (the context MatMul) are attention.
        let Some(ctx) = back_to_ctx(g, &g.node(r).inputs[0]) else { continue };
        match recognise(g, &shapes, id, wid, ctx) {
            Ok(b) => blocks.push(b),
            Err(why) => notes.push((n.display_name(), format!("attention not recognised: {why}; left unchanged"))),
        }
    }
    (blocks, notes)
}

/// Through Transposes to a MatMul of two activations.
fn back_to_ctx(g: &Graph, t: &str) -> Option<NodeId> {
    let mut cur = t.to_string();
    for _ in 0..8 {
        let p = g.producer_of(&cur)?;
        let n = g.node(p);
        match n.op_type.as_str() {
            "Transpose" => cur = n.inputs[0].clone(),
            "MatMul" if n.inputs.iter().all(|i| g.constant_source(i).is_none()) => return Some(p),
            _ => return None,
        }
    }
    None
}

type R<T> = Result<T, String>;

/// The consumers of `t` other than `Shape` nodes whose sizes are read only on the leading `keep_axes`
/// axes (batch, sequence). A graph output or an unclear `Shape` use is an error.
fn uses(g: &Graph, t: &str, keep_axes: usize) -> R<Vec<NodeId>> {
    if g.is_output(t) || g.used_in_subgraphs(t) {
        return Err(format!("'{t}' is a graph output or read by a subgraph"));
    }
    let mut out = Vec::new();
    for (c, _) in g.consumers(t) {
        let n = g.node(c);
        if n.op_type == "Shape" && n.attrs.is_empty() {
            for (s, slot) in g.consumers(&n.outputs[0]) {
                let sn = g.node(s);
                let idx = (sn.op_type == "Gather" && slot == 0)
                    .then(|| sn.inputs.get(1).and_then(|i| const_ints(g, i)))
                    .flatten();
                match idx.as_deref() {
                    Some([i]) if (0..keep_axes as i64).contains(i) => {}
                    _ => return Err(format!("the shape of '{t}' is read by '{}'", sn.display_name())),
                }
            }
            continue;
        }
        out.push(c);
    }
    Ok(out)
}

/// `t` must be read by exactly one node besides understood `Shape` uses.
fn only_use(g: &Graph, t: &str, keep_axes: usize) -> R<NodeId> {
    let u = uses(g, t, keep_axes)?;
    match u.as_slice() {
        [one] => Ok(*one),
        _ => Err(format!("'{t}' is read by {} nodes", u.len())),
    }
}

fn perm_of(g: &Graph, id: NodeId) -> R<Vec<usize>> {
    let n = g.node(id);
    match n.attr_ints("perm") {
        Some(p) if p.len() == 4 => Ok(p.iter().map(|&x| x as usize).collect()),
        _ => Err(format!("'{}': Transpose without a rank-4 perm", n.display_name())),
    }
}

fn is_scalar_const(g: &Graph, t: &str) -> bool {
    g.constant_source(t).and_then(|id| g.weight(&id)).is_some_and(|w| w.numel().is_ok_and(|n| n == 1))
}

/// A shape constant's integer at `index`, found directly in Reshape slot 1 or in a constant input of
/// the `Concat` that builds it (`rank` entries in all).
fn shape_site(g: &Graph, reshape: NodeId, index: usize, rank: usize) -> R<IntSite> {
    let n = g.node(reshape);
    let shape = n.inputs.get(1).ok_or("Reshape without a shape")?;
    if let Some(v) = const_ints(g, shape) {
        if v.len() != rank {
            return Err(format!("'{}': shape of {} entries, expected {rank}", n.display_name(), v.len()));
        }
        return Ok(IntSite { node: reshape, input: 1, index, value: v[index] });
    }
    let c = g.producer_of(shape).ok_or_else(|| format!("shape '{shape}' is neither constant nor computed"))?;
    let cn = g.node(c);
    if cn.op_type != "Concat" || cn.attr_int("axis").unwrap_or(0) != 0 {
        return Err(format!("shape '{shape}' is not a constant or a Concat of constants"));
    }
    // Walk the Concat inputs from the end: trailing constants cover the trailing positions.
    let mut pos = rank;
    for (j, inp) in cn.inputs.iter().enumerate().rev() {
        let Some(v) = const_ints(g, inp) else { break };
        let start = pos.checked_sub(v.len()).ok_or("Concat longer than the shape")?;
        if (start..pos).contains(&index) {
            return Ok(IntSite { node: c, input: j, index: index - start, value: v[index - start] });
        }
        pos = start;
    }
    Err(format!("shape entry {index} of '{}' is not a constant", n.display_name()))
}

/// Walk back from an input of an attention product to its head-split Reshape. `head`/`dh`: where the
/// head and head-dim axes must be at `t`. Returns the Reshape node and the tensors passed.
fn back_to_split(g: &Graph, t: &str, mut head: usize, mut dh: usize, what: &str) -> R<(NodeId, Vec<String>)> {
    let mut cur = t.to_string();
    let mut seen = vec![cur.clone()];
    for _ in 0..16 {
        let p = g.producer_of(&cur).ok_or_else(|| format!("{what} path: '{cur}' has no producer"))?;
        let n = g.node(p);
        match n.op_type.as_str() {
            "Transpose" => {
                let perm = perm_of(g, p)?;
                head = perm[head];
                dh = perm[dh];
            }
            "Mul" | "Div" if n.inputs.len() == 2 && is_scalar_const(g, &n.inputs[1]) => {}
            "Mul" if n.inputs.len() == 2 && is_scalar_const(g, &n.inputs[0]) => {
                cur = n.inputs[1].clone();
                seen.push(cur.clone());
                only_use(g, &cur, 0)?;
                continue;
            }
            "Reshape" => {
                if (head, dh) != (2, 3) {
                    return Err(format!("{what} path: the head axes do not come from the last two Reshape axes"));
                }
                seen.push(n.inputs[0].clone());
                return Ok((p, seen));
            }
            op => {
                return Err(format!(
                    "{what} path: unsupported op {op} ('{}') between the head split and the attention product \
                     (rotary embedding or another per-position transform?)",
                    n.display_name()
                ))
            }
        }
        cur = n.inputs[0].clone();
        only_use(g, &cur, 0)?;
        seen.push(cur.clone());
    }
    Err(format!("{what} path too long"))
}

/// A projection ending at `t` (MatMul with constant weight, optional constant bias Add).
fn proj_at(g: &Graph, t: &str) -> R<Proj> {
    let p = g.producer_of(t).ok_or_else(|| format!("'{t}' has no producer"))?;
    let n = g.node(p);
    let (mm, bias) = match n.op_type.as_str() {
        "Add" if n.inputs.len() == 2 => {
            let (b, other) = match (g.constant_source(&n.inputs[0]), g.constant_source(&n.inputs[1])) {
                (Some(b), None) => (b, &n.inputs[1]),
                (None, Some(b)) => (b, &n.inputs[0]),
                _ => return Err(format!("'{}': not a bias Add", n.display_name())),
            };
            only_use(g, other, 2)?;
            let m = g.producer_of(other).ok_or("bias Add of a graph input")?;
            (m, Some(b))
        }
        "MatMul" => (p, None),
        op => return Err(format!("projection expected before the head split, found {op} ('{}')", n.display_name())),
    };
    let mn = g.node(mm);
    if mn.op_type != "MatMul" {
        return Err(format!("'{}' is not a MatMul", mn.display_name()));
    }
    let weight =
        g.constant_source(&mn.inputs[1]).ok_or_else(|| format!("'{}': weight not constant", mn.display_name()))?;
    let w = g.weight(&weight).ok_or("weight not found")?;
    if w.dims.len() != 2 || !w.dtype.is_prunable_float() {
        return Err(format!("'{}': weight is not a 2-D float matrix", weight.name()));
    }
    if g.consumers(weight.name()).len() != 1 {
        return Err(format!("weight '{}' is shared", weight.name()));
    }
    let cols = w.dims[1] as usize;
    if let Some(b) = &bias {
        let bt = g.weight(b).ok_or("bias not found")?;
        if bt.dims != [cols as i64] || !bt.dtype.is_prunable_float() {
            return Err(format!("bias '{}' is not a vector of {cols}", b.name()));
        }
        if g.consumers(b.name()).len() != 1 {
            return Err(format!("bias '{}' is shared", b.name()));
        }
    }
    Ok(Proj { weight, bias, cols })
}

fn recognise(g: &Graph, shapes: &BTreeMap<String, Shape>, o: NodeId, o_weight: WeightId, ctx: NodeId) -> R<Block> {
    let on = g.node(o);
    let merged = on.inputs[0].clone();
    let merge = g.producer_of(&merged).ok_or("no merge Reshape")?;
    only_use(g, &merged, 2)?;
    if g.consumers(o_weight.name()).len() != 1 {
        return Err(format!("output projection weight '{}' is shared", o_weight.name()));
    }
    let ow = g.weight(&o_weight).ok_or("O weight not found")?;
    if !ow.dtype.is_prunable_float() {
        return Err("output projection weight is not float".into());
    }
    let k = ow.dims[0] as usize;
    let mut region = vec![merged.clone()];
    // Merge path: merge Reshape input (head axis 2, dh 3) back to the context product (head 1, dh 3).
    let (mut head, mut dh) = (2usize, 3usize);
    let mut cur = g.node(merge).inputs[0].clone();
    loop {
        only_use(g, &cur, 2)?;
        region.push(cur.clone());
        let p = g.producer_of(&cur).ok_or("merge path broken")?;
        if p == ctx {
            break;
        }
        let perm = perm_of(g, p)?;
        head = perm[head];
        dh = perm[dh];
        cur = g.node(p).inputs[0].clone();
    }
    if (head, dh) != (1, 3) {
        return Err("the merge Reshape does not join the head and head-dim axes of the context".into());
    }
    let cn = g.node(ctx);
    let (probs, vt) = (cn.inputs[0].clone(), cn.inputs[1].clone());
    let (v_reshape, v_seen) = back_to_split(g, &vt, 1, 3, "value")?;
    region.extend(v_seen);
    // Scores: from the probabilities back to the QKᵀ product through elementwise ops and Softmax.
    let mut side: Vec<String> = Vec::new();
    let mut cur = probs;
    let mut softmax = false;
    let qk = loop {
        only_use(g, &cur, 0)?;
        region.push(cur.clone());
        let p = g.producer_of(&cur).ok_or("scores path broken")?;
        let n = g.node(p);
        match n.op_type.as_str() {
            "MatMul" => break p,
            "Softmax" => {
                let ax = n.attr_int("axis").unwrap_or(-1);
                if ax != -1 && ax != 3 {
                    return Err(format!("'{}': Softmax over axis {ax}, not the key axis", n.display_name()));
                }
                softmax = true;
                cur = n.inputs[0].clone();
            }
            "Cast" | "Dropout" | "Identity" => cur = n.inputs[0].clone(),
            "Add" | "Sub" | "Mul" | "Div" | "Where" => {
                // The operand that leads to the QKᵀ product is the one not reachable as a side input:
                // pick the input produced through the attention chain (a non-constant whose ancestry reaches
                // a MatMul of two activations before any graph input).
                let main = n
                    .inputs
                    .iter()
                    .position(|i| leads_to_qk(g, i))
                    .ok_or_else(|| format!("'{}': no operand leads to the scores product", n.display_name()))?;
                for (j, i) in n.inputs.iter().enumerate() {
                    if j != main {
                        side.push(i.clone());
                    }
                }
                cur = n.inputs[main].clone();
            }
            op => return Err(format!("unsupported op {op} ('{}') in the attention scores", n.display_name())),
        }
    };
    if !softmax {
        return Err("no Softmax between the scores and the context product".into());
    }
    let qn = g.node(qk);
    let (q_reshape, q_seen) = back_to_split(g, &qn.inputs[0], 1, 3, "query")?;
    let (k_reshape, k_seen) = back_to_split(g, &qn.inputs[1], 1, 2, "key")?;
    region.extend(q_seen);
    region.extend(k_seen);
    let sites: Vec<IntSite> =
        [q_reshape, k_reshape, v_reshape].iter().map(|&r| shape_site(g, r, 2, 4)).collect::<R<_>>()?;
    let dhs: Vec<IntSite> =
        [q_reshape, k_reshape, v_reshape].iter().map(|&r| shape_site(g, r, 3, 4)).collect::<R<_>>()?;
    let dhv = dhs[0].value;
    if dhv <= 0 || dhs.iter().any(|s| s.value != dhv) {
        return Err("head dims are not one positive constant for query, key and value".into());
    }
    let dhv = dhv as usize;
    if !k.is_multiple_of(dhv) {
        return Err(format!("output projection input {k} is not a multiple of the head dim {dhv}"));
    }
    let heads = k / dhv;
    for (s, what) in sites.iter().zip(["query", "key", "value"]) {
        if s.value != -1 && s.value != heads as i64 {
            return Err(format!(
                "{what} has {} heads, the output projection {heads} (grouped-query attention is not supported)",
                s.value
            ));
        }
    }
    let merge_site = shape_site(g, merge, 2, 3)?;
    if merge_site.value != -1 && merge_site.value != k as i64 {
        return Err(format!("merge Reshape width {} differs from the output projection's {k}", merge_site.value));
    }
    // Score side operands must not carry a head axis (axis 1 of the rank-4 scores).
    for s in &side {
        if let Some(why) = per_head_operand(g, shapes, s, heads) {
            return Err(why);
        }
    }
    // Sources of Q, K, V.
    let srcs: Vec<String> = [q_reshape, k_reshape, v_reshape].iter().map(|&r| g.node(r).inputs[0].clone()).collect();
    for s in &srcs {
        region.push(s.clone());
    }
    let split_of = |t: &str| -> Option<(NodeId, usize)> {
        let p = g.producer_of(t)?;
        let n = g.node(p);
        (n.op_type == "Split").then(|| (p, n.outputs.iter().position(|o| o == t).unwrap_or(0)))
    };
    let source = match (split_of(&srcs[0]), split_of(&srcs[1]), split_of(&srcs[2])) {
        (None, None, None) => {
            let mut ps = Vec::new();
            for (s, what) in srcs.iter().zip(["query", "key", "value"]) {
                only_use(g, s, 2).map_err(|e| format!("{what}: {e}"))?;
                let p = proj_at(g, s).map_err(|e| format!("{what}: {e}"))?;
                if p.cols != k {
                    return Err(format!("{what} projection has {} columns, expected {k}", p.cols));
                }
                ps.push(p);
            }
            if ps[0].weight == ps[1].weight || ps[1].weight == ps[2].weight || ps[0].weight == ps[2].weight {
                return Err("query, key and value share a projection without a Split".into());
            }
            let [a, b, c]: [Proj; 3] = ps.try_into().map_err(|_| "internal: three projections")?;
            Source::Separate([a, b, c])
        }
        (Some((s0, i0)), Some((s1, i1)), Some((s2, i2))) if s0 == s1 && s1 == s2 => {
            let sn = g.node(s0);
            if sn.outputs.len() != 3 || [i0, i1, i2].iter().collect::<std::collections::BTreeSet<_>>().len() != 3 {
                return Err(format!("'{}': not a 3-way Split into query, key and value", sn.display_name()));
            }
            for s in &srcs {
                only_use(g, s, 2)?;
            }
            let ax = sn.attr_int("axis").unwrap_or(0);
            if ax != -1 && ax != 2 {
                return Err(format!("'{}': Split along axis {ax}, not the feature axis", sn.display_name()));
            }
            let fused = sn.inputs[0].clone();
            only_use(g, &fused, 2)?;
            region.push(fused.clone());
            let proj = proj_at(g, &fused)?;
            let sizes = match sn.inputs.get(1).filter(|s| !s.is_empty()) {
                Some(t) => SplitSizes::Input(const_ints(g, t).ok_or("Split sizes are not constant")?),
                None => match sn.attr_ints("split") {
                    Some(v) => SplitSizes::Attr(v.to_vec()),
                    None => SplitSizes::Equal,
                },
            };
            let sz: Vec<usize> = match &sizes {
                SplitSizes::Equal => vec![proj.cols / 3; 3],
                SplitSizes::Input(v) | SplitSizes::Attr(v) => v.iter().map(|&x| x.max(0) as usize).collect(),
            };
            if sz.len() != 3 || sz.iter().any(|&x| x != k) || proj.cols != 3 * k {
                return Err(format!("'{}': Split sizes {sz:?} are not three parts of {k}", sn.display_name()));
            }
            let off = |i: usize| sz[..i].iter().sum::<usize>();
            Source::Fused { proj, split: s0, offsets: [off(i0), off(i1), off(i2)], sizes }
        }
        _ => return Err("query, key and value come from different kinds of sources".into()),
    };
    region.sort();
    region.dedup();
    let o_bias = o_bias_of(g, o, ow.dims[1]);
    Ok(Block {
        name: on.display_name(),
        heads,
        dh: dhv,
        source,
        split_sites: sites,
        merge_site,
        o_weight,
        o_bias,
        merged,
        region,
    })
}

/// True when `t` is computed from a MatMul of two activations through at most a few elementwise ops.
fn leads_to_qk(g: &Graph, t: &str) -> bool {
    let mut cur = t.to_string();
    for _ in 0..6 {
        let Some(p) = g.producer_of(&cur) else { return false };
        let n = g.node(p);
        match n.op_type.as_str() {
            "MatMul" => {
                return n.inputs.iter().all(|i| g.constant_source(i).is_none()) && back_to_ctx(g, &cur).is_some()
            }
            "Mul" | "Div" | "Cast" | "Identity" => cur = n.inputs[0].clone(),
            _ => return false,
        }
    }
    false
}

/// A reason when a score operand may carry a per-head axis.
fn per_head_operand(g: &Graph, shapes: &BTreeMap<String, Shape>, t: &str, heads: usize) -> Option<String> {
    if let Some(s) = shapes.get(t) {
        if s.len() < 3 {
            return None;
        }
        match s[s.len() - 3] {
            Some(1) => return None,
            Some(d) => return Some(format!("score operand '{t}' has {d} entries on the head axis")),
            None => {}
        }
    }
    // Unknown shape: refuse when any float constant in its ancestry has a dim equal to the head count
    // (a relative-position table, ALiBi slopes).
    let mut stack = vec![t.to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(c) = stack.pop() {
        if !seen.insert(c.clone()) || seen.len() > 256 {
            continue;
        }
        if let Some(id) = g.constant_source(&c) {
            if let Some(w) = g.weight(&id) {
                if w.dtype.is_prunable_float() && w.dims.contains(&(heads as i64)) {
                    return Some(format!(
                        "score operand '{t}' is computed from '{}', which has a dim of {heads} (per-head bias?)",
                        c
                    ));
                }
            }
            continue;
        }
        if let Some(p) = g.producer_of(&c) {
            stack.extend(g.node(p).inputs.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    None
}

/// The constant bias of length `n` added right after the output projection `o`, when only that `Add`
/// reads O's output and nothing else reads the bias.
fn o_bias_of(g: &Graph, o: NodeId, n: i64) -> Option<WeightId> {
    let out = g.node(o).outputs.first()?;
    let cons = g.consumers(out);
    let [(a, _)] = cons.as_slice() else { return None };
    let an = g.node(*a);
    if an.op_type != "Add" || an.inputs.len() != 2 || g.is_output(out) {
        return None;
    }
    let other = an.inputs.iter().find(|i| *i != out)?;
    let id = g.constant_source(other)?;
    let t = g.weight(&id)?;
    (t.dims == [n] && t.dtype.is_prunable_float() && g.consumers(other).len() == 1).then_some(id)
}
