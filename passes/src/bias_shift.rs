//! Where a per-output-channel shift of an op's output goes (shared by `bias-correct` and `ls-correct`):
//!
//! - **Conv**, **ConvTranspose**: its bias input (changed in place, or created as `<weight>.bias_correction`).
//! - **Gemm**: C, the shift divided by `beta` (created when absent; `beta=0` is refused).
//! - **MatMul**: the constant of a following `Add` when the MatMul output feeds only that Add and the
//!   constant broadcasts along the last axis (torch exports MatMul+Add), else a new `Add` node after the
//!   MatMul (its output keeps the old name).
//! - **MatMulInteger** (dynamic quantization): after the `Cast → Mul` that rescales the integer result.
//! - **QDQ** biases `DequantizeLinear(int32 q, scale)` read only by the op: `q` changes, rounded to the
//!   bias grid.
//! - **QOperator**: `QLinearConv` input 8 / `QGemm` C (int32, scale = input scale × weight scale per output
//!   channel; created when absent; QGemm with `alpha ≠ 1` is refused), rounded to that grid.
//!   `QLinearMatMul` has no bias: the shift goes after the per-tensor `DequantizeLinear` that alone reads
//!   its output (into the following Add's constant, or a new Add), in float; otherwise refused.
//!
//! A Conv / Gemm bias can also be scaled per channel first (`ls-correct` scales a channel's weights by
//! `a` and its bias term with them). A bias shared with another op, computed at run time, or not shaped
//! per channel is refused with the reason; new biases are created for f32 weights only.

use sparsify_ir::{DType, Graph, Node, Tensor, WeightUse};

/// The op's output change of a change `shift` of its weight product (per output channel): Gemm scales
/// the product by `alpha`; the other ops output the product itself.
pub fn product_to_output(g: &Graph, u: &WeightUse, shift: &[f64]) -> Vec<f64> {
    let alpha = if u.op == "Gemm" { g.node(u.node).attr_float("alpha").unwrap_or(1.0) as f64 } else { 1.0 };
    shift.iter().map(|s| s * alpha).collect()
}

/// Per output channel c of the op that reads the weight `weight` through `u`: its own bias term (Conv
/// bias, Gemm `beta·C`) becomes `bias_scale[c]·term + shift[c]` (`bias_scale` None = 1), `shift` in the
/// units of the op's output. A MatMul has no bias term of its own: the shift goes into the constant of
/// the `Add` that follows it, or a new `Add` (and `bias_scale` is not used). Returns where it went and
/// the largest |shift|. Nothing is written when an error is returned.
pub fn shift_output(
    g: &mut Graph,
    u: &WeightUse,
    weight: &str,
    shift: &[f64],
    bias_scale: Option<&[f64]>,
) -> Result<(String, f64), String> {
    let size = shift.iter().fold(0f64, |a, b| a.max(b.abs()));
    if bias_scale.is_some_and(|s| s.len() != shift.len()) {
        return Err("bias scale and shift differ in length".into());
    }
    let node_id = u.node;
    let node = g.node(node_id).clone();
    let place = match u.op.as_str() {
        "Conv" | "ConvTranspose" => add_to_bias_input(g, node_id, &node, 2, (bias_scale, shift), weight)?,
        "Gemm" => {
            let beta = node.attr_float("beta").unwrap_or(1.0) as f64;
            if beta == 0.0 {
                return Err("Gemm with beta=0 ignores its bias input".into());
            }
            let scaled: Vec<f64> = shift.iter().map(|s| s / beta).collect();
            add_to_bias_input(g, node_id, &node, 2, (bias_scale, &scaled), weight)?
        }
        "MatMul" => add_after_matmul(g, node_id, &node, shift, weight)?,
        "QLinearConv" => add_to_integer_bias(g, node_id, &node, (8, 4), (bias_scale, shift), weight)?,
        "QGemm" => {
            let alpha = node.attr_float("alpha").unwrap_or(1.0);
            if alpha != 1.0 {
                return Err(format!("QGemm with alpha={alpha}: the scale of its int32 C is not documented"));
            }
            add_to_integer_bias(g, node_id, &node, (6, 4), (bias_scale, shift), weight)?
        }
        "QLinearMatMul" => {
            // No bias input: the shift goes after the DequantizeLinear that reads its output, in float.
            let dq = dequantize_of(g, &node)?;
            let dq_node = g.node(dq).clone();
            add_after_matmul(g, dq, &dq_node, shift, weight)?
        }
        "MatMulInteger" => {
            // Dynamic quantization: the float result is `Mul(Cast(MatMulInteger), scale)`; the shift
            // goes after that Mul, as after a float MatMul.
            let mul = rescale_of_integer_op(g, &node)?;
            let mul_node = g.node(mul).clone();
            add_after_matmul(g, mul, &mul_node, shift, weight)?
        }
        op => return Err(format!("{op} has no bias to correct")),
    };
    Ok((place, size))
}

/// The `Mul` that turns an integer op's result into floats: `op → Cast → Mul`, each read only by the next.
fn rescale_of_integer_op(g: &Graph, node: &Node) -> Result<sparsify_ir::NodeId, String> {
    let only_reader = |t: &str, op: &str| -> Option<sparsify_ir::NodeId> {
        match g.consumers(t).as_slice() {
            [(n, _)] if g.node(*n).op_type == op && !g.is_output(t) && !g.used_in_subgraphs(t) => Some(*n),
            _ => None,
        }
    };
    let y = node.outputs.first().ok_or("integer op without output")?;
    let cast =
        only_reader(y, "Cast").ok_or_else(|| format!("'{}' is not followed by Cast → Mul", node.display_name()))?;
    let c = g.node(cast).outputs.first().cloned().unwrap_or_default();
    only_reader(&c, "Mul").ok_or_else(|| format!("'{}' is not followed by Cast → Mul", node.display_name()))
}

/// The per-tensor `DequantizeLinear` that alone reads a quantized op's output.
fn dequantize_of(g: &Graph, node: &Node) -> Result<sparsify_ir::NodeId, String> {
    let name = node.display_name();
    let y = node.outputs.first().ok_or("quantized op without output")?;
    let dq = match g.consumers(y).as_slice() {
        [(n, 0)] if g.node(*n).op_type == "DequantizeLinear" && g.node(*n).is_onnx() && !g.is_output(y) => *n,
        _ => {
            return Err(format!(
                "'{name}' has no bias input and its output is not read by one DequantizeLinear alone (no exact \
                 float place for the shift)"
            ))
        }
    };
    let per_tensor = g.node(dq).inputs.get(1).and_then(|s| g.constant_source(s)).and_then(|id| g.weight(&id));
    if per_tensor.is_none_or(|t| t.numel() != Ok(1)) {
        return Err(format!("the DequantizeLinear after '{name}' is not per tensor"));
    }
    Ok(dq)
}

/// The int32 bias of a QOperator op (`QLinearConv` input 8, `QGemm` C at 6; scale = input scale (input 1)
/// × weight scale (`scale_slot`), per output channel): `q ← round(bias_scale·q + shift / scale)`, or a new
/// int32 bias `round(shift / scale)` when the op has none. Exact up to half a step of the bias grid.
fn add_to_integer_bias(
    g: &mut Graph,
    id: sparsify_ir::NodeId,
    node: &Node,
    (slot, scale_slot): (usize, usize),
    (bias_scale, shift): (Option<&[f64]>, &[f64]),
    weight: &str,
) -> Result<String, String> {
    let name = node.display_name();
    let floats = |i: usize| -> Result<Vec<f32>, String> {
        let s = node.inputs.get(i).filter(|s| !s.is_empty()).ok_or_else(|| format!("'{name}' has no input {i}"))?;
        let t = g
            .constant_source(s)
            .and_then(|c| g.weight(&c))
            .ok_or_else(|| format!("scale '{s}' of '{name}' is computed at run time"))?;
        Ok(t.to_f32().map_err(|e| e.to_string())?.iter().copied().collect())
    };
    let (xs, ws) = (floats(1)?, floats(scale_slot)?);
    if xs.len() != 1 || (ws.len() != 1 && ws.len() != shift.len()) {
        return Err(format!("'{name}' has scales of {} / {} elements", xs.len(), ws.len()));
    }
    // The bias grid as the quantizer computes it: x_scale·w_scale in f32.
    let step = |c: usize| f64::from(xs[0] * if ws.len() == 1 { ws[0] } else { ws[c] });
    let round = |v: f64| v.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
    match node.inputs.get(slot).filter(|s| !s.is_empty()) {
        Some(b) => {
            let cid = private_constant(g, b).ok_or_else(|| format!("int32 bias '{b}' is shared or computed"))?;
            let t = g.weight(&cid).ok_or_else(|| format!("'{b}' vanished"))?;
            if t.dtype != DType::I32 || t.dims.len() != 1 || t.shape()[0] != shift.len() {
                return Err(format!("bias '{b}' is {} {:?}, not int32 [{}]", t.dtype.name(), t.dims, shift.len()));
            }
            let vals = sparsify_ir::quant::read_ints(t).map_err(|e| e.to_string())?;
            let out: Vec<u8> = vals
                .iter()
                .enumerate()
                .flat_map(|(c, &v)| {
                    round(f64::from(v) * bias_scale.map_or(1.0, |a| a[c]) + shift[c] / step(c)).to_le_bytes()
                })
                .collect();
            let t = g.weight_mut(&cid).ok_or_else(|| format!("'{b}' vanished"))?;
            t.set_bytes(out.into()).map_err(|e| e.to_string())?;
            Ok(format!("added to quantized bias '{b}' (int32, scale input × weight scale, rounded)"))
        }
        None => {
            let bname = fresh_name(g, &format!("{weight}.bias_correction"));
            let out: Vec<u8> = (0..shift.len()).flat_map(|c| round(shift[c] / step(c)).to_le_bytes()).collect();
            let t = Tensor::new(bname.clone(), DType::I32, vec![shift.len() as i64], out.into())
                .map_err(|e| e.to_string())?;
            g.initializers.push(t);
            let n = g.node_mut(id);
            while n.inputs.len() <= slot {
                n.inputs.push(String::new());
            }
            n.inputs[slot] = bname.clone();
            g.relink();
            Ok(format!("new quantized bias input '{bname}' (int32, scale input × weight scale)"))
        }
    }
}

/// A constant that only `reader` reads, directly, and that is not a graph output.
fn private_constant(g: &Graph, name: &str) -> Option<sparsify_ir::WeightId> {
    let id = g.constant_source(name)?;
    let alone = g.consumers(name).len() == 1 && !g.is_output(name) && !g.used_in_subgraphs(name);
    alone.then_some(id)
}

/// `v ← scale·v + shift` per channel of a per-channel constant (shape [n] or [1, ..., n], or [..., n] with
/// every row changed alike); `scale` None = 1.
fn add_to_constant(
    g: &mut Graph,
    id: &sparsify_ir::WeightId,
    (scale, shift): (Option<&[f64]>, &[f64]),
) -> Result<(), String> {
    let t = g.weight_mut(id).ok_or("bias vanished")?;
    let dims = t.shape();
    if dims.last().copied() != Some(shift.len()) && !(dims.len() == 1 && dims[0] == shift.len()) {
        return Err(format!("bias '{}' has shape {dims:?}, not per output channel ({})", id.name(), shift.len()));
    }
    if !t.dtype.is_prunable_float() {
        return Err(format!("bias '{}' is not a float tensor", id.name()));
    }
    let mut v = t.to_f64().map_err(|e| e.to_string())?;
    let n = shift.len();
    for (i, x) in v.iter_mut().enumerate() {
        *x = *x * scale.map_or(1.0, |s| s[i % n]) + shift[i % n];
    }
    t.write_f64(&v).map_err(|e| e.to_string())
}

fn fresh_name(g: &Graph, base: &str) -> String {
    let taken = |n: &str| {
        g.initializer(n).is_some()
            || g.inputs.iter().any(|i| i.name == n)
            || g.nodes().any(|(_, x)| x.outputs.iter().any(|o| o == n))
    };
    let mut name = base.to_string();
    let mut k = 1;
    while taken(&name) {
        name = format!("{base}.{k}");
        k += 1;
    }
    name
}

fn new_bias(g: &mut Graph, weight: &str, shift: &[f64]) -> Result<String, String> {
    let wdt = g
        .weight(&sparsify_ir::WeightId::Init(weight.to_string()))
        .or_else(|| g.weight(&sparsify_ir::WeightId::Const(weight.to_string())))
        .map(|t| t.dtype);
    if wdt.is_some_and(|d| d != DType::F32) {
        return Err("creating a bias for a non-f32 weight is not supported".into());
    }
    let name = fresh_name(g, &format!("{weight}.bias_correction"));
    let vals: Vec<f32> = shift.iter().map(|&v| v as f32).collect();
    let t = Tensor::from_f32(name.clone(), vec![shift.len() as i64], &vals).map_err(|e| e.to_string())?;
    g.initializers.push(t);
    Ok(name)
}

/// A bias `b = DequantizeLinear(q, scale[, zp])` (int32 `q`, per tensor or per output channel), read only by
/// the op: `q ← round(bias_scale·q + shift / scale)` per channel, so the correction is exact up to half a
/// step of the bias grid (scale = input scale × weight scale). Errors name the tensor when the pattern
/// differs.
fn add_to_quantized_bias(
    g: &mut Graph,
    dq: sparsify_ir::NodeId,
    b: &str,
    (bias_scale, shift): (Option<&[f64]>, &[f64]),
) -> Result<String, String> {
    let node = g.node(dq).clone();
    let q = node.inputs.first().cloned().unwrap_or_default();
    let private = g.consumers(b).len() == 1 && !g.is_output(b) && g.consumers(&q).len() == 1;
    let qid = g
        .constant_source(&q)
        .filter(|_| private)
        .ok_or_else(|| format!("quantized bias '{b}' (DequantizeLinear of '{q}') is shared or computed at run time"))?;
    let scale_name = node.inputs.get(1).cloned().unwrap_or_default();
    let scale: Vec<f64> = g
        .constant_source(&scale_name)
        .and_then(|id| g.weight(&id))
        .and_then(|t| t.to_f64().ok())
        .map(|a| a.iter().copied().collect())
        .ok_or_else(|| format!("scale '{scale_name}' of quantized bias '{b}' is not a float constant"))?;
    let t = g.weight(&qid).ok_or_else(|| format!("'{q}' vanished"))?;
    if t.dtype != DType::I32 || t.dims.len() != 1 || t.shape()[0] != shift.len() {
        return Err(format!("quantized bias '{q}' is {} {:?}, not int32 [{}]", t.dtype.name(), t.dims, shift.len()));
    }
    if scale.len() != 1 && scale.len() != shift.len() {
        return Err(format!("scale '{scale_name}' of quantized bias '{b}' has {} elements", scale.len()));
    }
    let vals = sparsify_ir::quant::read_ints(t).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(vals.len() * 4);
    for (c, &v) in vals.iter().enumerate() {
        let s = if scale.len() == 1 { scale[0] } else { scale[c] };
        let scaled = f64::from(v) * bias_scale.map_or(1.0, |a| a[c]);
        let nv = (scaled + shift[c] / s).round().clamp(f64::from(i32::MIN), f64::from(i32::MAX));
        out.extend_from_slice(&(nv as i32).to_le_bytes());
    }
    let t = g.weight_mut(&qid).ok_or_else(|| format!("'{q}' vanished"))?;
    t.set_bytes(out.into()).map_err(|e| e.to_string())?;
    Ok(format!("added to quantized bias '{q}' (rounded to its scale)"))
}

/// Conv input 2 / Gemm C: scale and shift the existing constant, or create it (= the shift).
fn add_to_bias_input(
    g: &mut Graph,
    id: sparsify_ir::NodeId,
    node: &Node,
    slot: usize,
    (scale, shift): (Option<&[f64]>, &[f64]),
    weight: &str,
) -> Result<String, String> {
    match node.inputs.get(slot).filter(|s| !s.is_empty()) {
        Some(b) => {
            // QDQ graphs: the bias is an int32 constant behind DequantizeLinear.
            if let Some(p) = g.producer_of(b).filter(|&p| g.node(p).op_type == "DequantizeLinear") {
                return add_to_quantized_bias(g, p, b, (scale, shift));
            }
            let cid = private_constant(g, b).ok_or_else(|| format!("bias '{b}' is shared or computed at run time"))?;
            add_to_constant(g, &cid, (scale, shift))?;
            Ok(format!("added to bias '{b}'"))
        }
        None => {
            let name = new_bias(g, weight, shift)?;
            let n = g.node_mut(id);
            while n.inputs.len() < slot {
                n.inputs.push(String::new());
            }
            n.inputs.truncate(slot);
            n.inputs.push(name.clone());
            g.relink();
            Ok(format!("new bias input '{name}'"))
        }
    }
}

/// MatMul: into the constant of the single following Add, or a new Add.
fn add_after_matmul(
    g: &mut Graph,
    id: sparsify_ir::NodeId,
    node: &Node,
    shift: &[f64],
    weight: &str,
) -> Result<String, String> {
    let y = node.outputs.first().ok_or("MatMul without output")?.clone();
    let readers = g.consumers(&y);
    if let [(add, slot)] = readers.as_slice() {
        let a = g.node(*add);
        if a.op_type == "Add" && a.is_onnx() && a.inputs.len() == 2 && !g.is_output(&y) && !g.used_in_subgraphs(&y) {
            let other = a.inputs[1 - slot].clone();
            if let Some(cid) = private_constant(g, &other) {
                let dims = g.weight(&cid).map(|t| t.shape()).unwrap_or_default();
                let per_channel = dims.last() == Some(&shift.len()) && dims[..dims.len() - 1].iter().all(|&d| d == 1);
                if per_channel {
                    add_to_constant(g, &cid, (None, shift))?;
                    return Ok(format!("added to the following Add's constant '{other}'"));
                }
            }
        }
    }
    let bias = new_bias(g, weight, shift)?;
    let pre = fresh_name(g, &format!("{y}.pre_bias_correction"));
    g.node_mut(id).outputs[0] = pre.clone();
    let add_name = fresh_name(g, &format!("{}.bias_correction", node.display_name()));
    g.insert_after(id, Node::new("Add", &add_name, &[&pre, &bias], &[&y]));
    Ok(format!("new Add '{add_name}' with '{bias}'"))
}
