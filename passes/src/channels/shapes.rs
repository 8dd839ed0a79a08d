//! Static shape facts the channel analysis needs: a light shape inference (known dims only, symbolic
//! dims stay `None`), integer constants, and a symbolic evaluator for `Reshape` shape tensors built from
//! `Shape` → `Gather`/`Slice` → `Concat` chains.

use sparsify_ir::{DType, Dim, Graph, Node, Tensor, WeightId};
use std::collections::BTreeMap;

/// Known dims of a tensor (`None` = symbolic or unknown).
pub(crate) type Shape = Vec<Option<i64>>;

/// Integer values of an i64/i32 tensor.
pub(crate) fn tensor_ints(t: &Tensor) -> Option<Vec<i64>> {
    let b = t.bytes();
    match t.dtype {
        DType::I64 => Some(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
        DType::I32 => Some(b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect()),
        _ => None,
    }
}

/// Integer values of a constant (initializer or `Constant` node) by tensor name.
pub(crate) fn const_ints(g: &Graph, name: &str) -> Option<Vec<i64>> {
    g.constant_source(name).and_then(|id| g.weight(&id)).and_then(tensor_ints)
}

/// Integer list from an input slot (opset ≥ 13 style) or else an attribute (older opsets).
pub(crate) fn ints_input_or_attr(g: &Graph, n: &Node, slot: usize, attr: &str) -> Option<Vec<i64>> {
    match n.inputs.get(slot).filter(|s| !s.is_empty()) {
        Some(name) => const_ints(g, name),
        None => n.attr_ints(attr).map(|v| v.to_vec()),
    }
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let a = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Infer known dims for every tensor it can, in topological order. Seeds: graph inputs, constants and
/// `value_info`.
pub(crate) fn infer(g: &Graph) -> BTreeMap<String, Shape> {
    let mut s: BTreeMap<String, Shape> = BTreeMap::new();
    let dims = |v: &[Dim]| -> Shape {
        v.iter().map(|d| if let Dim::Value(x) = d { (*x > 0).then_some(*x) } else { None }).collect()
    };
    for vi in g.inputs.iter().chain(&g.value_info).chain(&g.outputs) {
        if let Some(sh) = &vi.shape {
            s.insert(vi.name.clone(), dims(sh));
        }
    }
    for t in &g.initializers {
        s.insert(t.name.clone(), t.dims.iter().map(|&d| Some(d)).collect());
    }
    let order = g.topo_order().unwrap_or_default();
    for id in order {
        let n = g.node(id);
        if let Some(t) = n.constant_tensor() {
            if let Some(o) = n.outputs.first() {
                s.insert(o.clone(), t.dims.iter().map(|&d| Some(d)).collect());
            }
            continue;
        }
        let mut ins: Vec<Option<Shape>> = n.inputs.iter().map(|i| s.get(i).cloned()).collect();
        if n.op_type == "DynamicQuantizeLinear" && n.is_onnx() {
            // Per-tensor scale and zero point (outputs 1, 2) are scalars.
            for o in n.outputs.iter().skip(1).filter(|o| !o.is_empty()) {
                s.entry(o.clone()).or_default();
            }
        }
        // Quantized ops have the shape of their float op: data at 0, weight at 3 (QLinear*, QGemm) or 1.
        let float = match n.op_type.as_str() {
            "QLinearConv" | "ConvInteger" => Some("Conv"),
            "QLinearMatMul" | "MatMulInteger" => Some("MatMul"),
            "QGemm" if n.domain.as_deref() == Some("com.microsoft") => Some("Gemm"),
            _ => None,
        };
        let out = match float {
            Some(op) => {
                let w = ins.get(super::qops::weight_slot(n)).cloned().flatten();
                ins.truncate(1);
                ins.push(w);
                let mut f = n.clone();
                f.op_type = op.to_string();
                f.domain = None;
                infer_node(g, &f, &ins)
            }
            None => infer_node(g, n, &ins),
        };
        if let (Some(o), Some(sh)) = (n.outputs.first(), out) {
            s.entry(o.clone()).or_insert(sh);
        }
    }
    s
}

fn window(len: Option<i64>, k: i64, stride: i64, dil: i64, pb: i64, pe: i64, ceil: bool) -> Option<i64> {
    let span = len? + pb + pe - dil * (k - 1) - 1;
    if span < 0 || stride <= 0 {
        return None;
    }
    Some(if ceil { (span + stride - 1) / stride + 1 } else { span / stride + 1 })
}

fn spatial(n: &Node, x: &Shape, kernel: &[i64], out_c: Option<i64>) -> Option<Shape> {
    let sp = x.len().checked_sub(2)?;
    if kernel.len() != sp {
        return None;
    }
    let auto = match n.attr("auto_pad") {
        Some(sparsify_ir::AttrValue::String(v)) => String::from_utf8_lossy(v).to_string(),
        _ => "NOTSET".into(),
    };
    let strides = n.attr_ints("strides").map(|v| v.to_vec()).unwrap_or(vec![1; sp]);
    let dil = n.attr_ints("dilations").map(|v| v.to_vec()).unwrap_or(vec![1; sp]);
    let pads = n.attr_ints("pads").map(|v| v.to_vec()).unwrap_or(vec![0; 2 * sp]);
    let ceil = n.attr_int("ceil_mode").unwrap_or(0) != 0;
    let mut out = vec![x[0], out_c.or(x[1])];
    for i in 0..sp {
        let d = match auto.as_str() {
            "NOTSET" => window(x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + sp], ceil),
            "VALID" => window(x[2 + i], kernel[i], strides[i], dil[i], 0, 0, false),
            _ => x[2 + i].map(|h| (h + strides[i] - 1) / strides[i]),
        };
        out.push(d);
    }
    Some(out)
}

fn broadcast(shapes: &[&Shape]) -> Shape {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..r)
        .map(|i| {
            let mut d: Option<i64> = Some(1);
            for s in shapes {
                let k = (i + s.len()).checked_sub(r);
                let v = match k {
                    Some(k) => s[k],
                    None => Some(1),
                };
                d = match (d, v) {
                    (Some(1), v) | (v, Some(1)) => v,
                    (Some(a), Some(b)) if a == b => Some(a),
                    (Some(a), None) | (None, Some(a)) if a != 1 => Some(a),
                    _ => None,
                };
            }
            d
        })
        .collect()
}

/// Operators whose output has the shape of their first input, besides the element-wise unary ones
/// ([`super::consts::UNARY`]).
pub(crate) const SAME_SHAPE_EXTRA: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "BatchNormalization",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
];

fn infer_node(g: &Graph, n: &Node, ins: &[Option<Shape>]) -> Option<Shape> {
    let x = ins.first().cloned().flatten();
    let op = n.op_type.as_str();
    if !n.is_onnx() {
        return None;
    }
    match op {
        _ if super::consts::UNARY.contains(&op) || SAME_SHAPE_EXTRA.contains(&op) => x,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu" | "Where" => {
            let all: Option<Vec<Shape>> = ins.iter().cloned().collect();
            all.map(|v| broadcast(&v.iter().collect::<Vec<_>>()))
        }
        "Conv" => {
            let w = ins.get(1).cloned().flatten()?;
            let k: Option<Vec<i64>> = w[2..].iter().copied().collect();
            let k = n.attr_ints("kernel_shape").map(|v| v.to_vec()).or(k)?;
            spatial(n, &x?, &k, w[0])
        }
        "MaxPool" | "AveragePool" | "LpPool" => spatial(n, &x?, n.attr_ints("kernel_shape")?, None),
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
            let x = x?;
            Some(x.iter().enumerate().map(|(i, &d)| if i < 2 { d } else { Some(1) }).collect())
        }
        "Flatten" => {
            let x = x?;
            let a = norm_axis(n.attr_int("axis").unwrap_or(1), x.len() + 1)?;
            let p = |v: &[Option<i64>]| v.iter().try_fold(1i64, |acc, d| d.map(|d| acc * d));
            Some(vec![p(&x[..a]), p(&x[a..])])
        }
        "Gemm" => {
            let (a, b) = (x?, ins.get(1).cloned().flatten()?);
            let m = if n.attr_int("transA").unwrap_or(0) != 0 { a.get(1)? } else { a.first()? };
            let nn = if n.attr_int("transB").unwrap_or(0) != 0 { b.first()? } else { b.get(1)? };
            Some(vec![*m, *nn])
        }
        "MatMul" => {
            let (a, b) = (x?, ins.get(1).cloned().flatten()?);
            if a.len() < 2 || b.len() < 2 {
                return None;
            }
            let mut out = broadcast(&[&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec()]);
            out.push(a[a.len() - 2]);
            out.push(b[b.len() - 1]);
            Some(out)
        }
        "Transpose" => {
            let x = x?;
            let perm: Vec<usize> = match n.attr_ints("perm") {
                Some(p) => p.iter().map(|&v| v as usize).collect(),
                None => (0..x.len()).rev().collect(),
            };
            perm.iter().map(|&p| x.get(p).copied()).collect()
        }
        "Reshape" => {
            let x = x?;
            let target = const_ints(g, n.inputs.get(1)?)?;
            let allowzero = n.attr_int("allowzero").unwrap_or(0) != 0;
            let mut out: Shape = target
                .iter()
                .enumerate()
                .map(|(i, &t)| match t {
                    0 if !allowzero => x.get(i).copied().flatten(),
                    -1 => None,
                    t => Some(t),
                })
                .collect();
            if let Some(pos) = target.iter().position(|&t| t == -1) {
                let total = x.iter().try_fold(1i64, |a, d| d.map(|d| a * d));
                let rest =
                    out.iter().enumerate().filter(|(i, _)| *i != pos).try_fold(1i64, |a, (_, d)| d.map(|d| a * d));
                if let (Some(t), Some(r)) = (total, rest) {
                    out[pos] = (r > 0).then(|| t / r);
                }
            }
            Some(out)
        }
        "Squeeze" | "Unsqueeze" => {
            let mut x = x?;
            let axes = ints_input_or_attr(g, n, 1, "axes")?;
            if op == "Squeeze" {
                let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, x.len())).collect::<Option<_>>()?;
                Some(x.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| *d).collect())
            } else {
                let r = x.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<Option<_>>()?;
                ax.sort();
                for a in ax {
                    x.insert(a.min(x.len()), Some(1));
                }
                Some(x)
            }
        }
        "Concat" => {
            let all: Vec<Shape> = ins.iter().cloned().collect::<Option<_>>()?;
            let r = all.first()?.len();
            let a = norm_axis(n.attr_int("axis")?, r)?;
            let mut out = all[0].clone();
            out[a] = all.iter().try_fold(0i64, |acc, s| s.get(a).copied().flatten().map(|d| acc + d));
            Some(out)
        }
        _ => None,
    }
}

/// One element of a symbolically evaluated 1-D integer tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sym {
    /// A literal, with the constant element it was read from (for rewriting).
    Lit(i64, Option<(WeightId, usize)>),
    /// Dimension `axis` of tensor `name`, read through `Shape`.
    DimOf(String, usize),
}

/// Evaluate a small integer tensor (a Reshape target) symbolically. `rank_of` gives tensor ranks.
pub(crate) fn eval_sym(
    g: &Graph,
    name: &str,
    rank_of: &dyn Fn(&str) -> Option<usize>,
    depth: usize,
) -> Option<Vec<Sym>> {
    if depth > 32 {
        return None;
    }
    if let Some(id) = g.constant_source(name) {
        let vals = tensor_ints(g.weight(&id)?)?;
        return Some(vals.into_iter().enumerate().map(|(i, v)| Sym::Lit(v, Some((id.clone(), i)))).collect());
    }
    let n = g.node(g.producer_of(name)?);
    if !n.is_onnx() {
        return None;
    }
    let rec = |i: usize| eval_sym(g, n.inputs.get(i)?, rank_of, depth + 1);
    match n.op_type.as_str() {
        "Shape" => {
            let x = n.inputs.first()?;
            let r = rank_of(x)? as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
            let (s, e) = (clamp(n.attr_int("start").unwrap_or(0)), clamp(n.attr_int("end").unwrap_or(r)));
            Some((s..e).map(|a| Sym::DimOf(x.clone(), a as usize)).collect())
        }
        "Cast" | "Identity" | "Squeeze" | "Unsqueeze" => rec(0),
        "Concat" => {
            let mut out = Vec::new();
            for i in 0..n.inputs.len() {
                out.extend(rec(i)?);
            }
            Some(out)
        }
        "Gather" => {
            let data = rec(0)?;
            if n.attr_int("axis").unwrap_or(0) != 0 {
                return None;
            }
            let idx = const_ints(g, n.inputs.get(1)?)?;
            let len = data.len() as i64;
            idx.iter().map(|&i| data.get((if i < 0 { i + len } else { i }) as usize).cloned()).collect()
        }
        "Slice" => {
            let data = rec(0)?;
            let len = data.len() as i64;
            let starts = ints_input_or_attr(g, n, 1, "starts")?;
            let ends = ints_input_or_attr(g, n, 2, "ends")?;
            let axes = ints_input_or_attr(g, n, 3, "axes").unwrap_or(vec![0]);
            let steps = if n.inputs.len() > 4 { const_ints(g, &n.inputs[4])? } else { vec![1] };
            if starts.len() != 1 || ends.len() != 1 || !matches!(axes[..], [0] | [-1]) || steps != [1] {
                return None;
            }
            let c = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
            let (s, e) = (c(starts[0]), c(ends[0]));
            Some(if s < e { data[s..e].to_vec() } else { Vec::new() })
        }
        _ => None,
    }
}
