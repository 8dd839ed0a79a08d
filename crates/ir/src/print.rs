//! Deterministic text dump of a graph, the format of the snapshot tests.
//!
//! Weights are summarised (dtype, shape, density, non-zero count and a hash of the non-zero bitmap), never
//! dumped in full, except tensors of at most 8 elements which print inline. Attributes are sorted by key;
//! node order is the file's; nothing depends on hash-map iteration, paths, versions or time.

use crate::{AttrValue, Dim, Graph, Model, Tensor, ValueInfo};
use std::fmt::Write;

/// Dump a whole model: opsets, then the main graph.
pub fn dump_model(m: &Model) -> String {
    let mut s = String::new();
    let opsets: Vec<String> = m
        .opset_import
        .iter()
        .map(|o| format!("{}={}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
        .collect();
    let _ = writeln!(s, "model ir_version={} opsets=[{}]", m.ir_version.unwrap_or(0), opsets.join(", "));
    s.push_str(&dump_graph(&m.graph));
    s
}

pub fn dump_graph(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "graph {:?} {{", g.name.as_deref().unwrap_or(""));
    for i in &g.inputs {
        if g.initializer(&i.name).is_none() {
            let _ = writeln!(s, "  input  %{}: {}", i.name, value_type(i));
        }
    }
    for t in &g.initializers {
        let _ = writeln!(s, "  init   @{}: {}", t.name, tensor_summary(t));
    }
    for (_, n) in g.nodes() {
        let outs: Vec<String> = n.outputs.iter().map(|o| format!("%{o}")).collect();
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|i| {
                if i.is_empty() {
                    "_".to_string()
                } else if g.initializer(i).is_some() {
                    format!("@{i}")
                } else {
                    format!("%{i}")
                }
            })
            .collect();
        let mut attrs: Vec<(&str, String)> = n.attrs.iter().map(|a| (a.name.as_str(), attr_text(&a.value))).collect();
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        let attrs: Vec<String> = attrs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            s,
            "  {} = {} {:?} ({})",
            outs.join(", "),
            n.kind(),
            n.name.as_deref().unwrap_or(""),
            ins.join(", ")
        );
        if !attrs.is_empty() {
            let _ = write!(s, " {{{}}}", attrs.join(", "));
        }
        s.push('\n');
    }
    for o in &g.outputs {
        let _ = writeln!(s, "  output %{}: {}", o.name, value_type(o));
    }
    s.push_str("}\n");
    s
}

fn value_type(v: &ValueInfo) -> String {
    let elem = v.elem_type.map(|c| crate::DType::from_code(c).name()).unwrap_or_else(|| "?".into());
    match &v.shape {
        None => format!("{elem}[..]"),
        Some(dims) => {
            let d: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    Dim::Value(v) => v.to_string(),
                    Dim::Param(p) => p.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect();
            format!("{elem}[{}]", d.join(","))
        }
    }
}

/// `f32[8,3,3,3] density=0.500 nnz=108/216 mask=#3fa9c1e2`, or inline values for tiny tensors.
pub fn tensor_summary(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
    let mut s = format!("{}[{}]", t.dtype.name(), dims.join(","));
    let n = t.numel().unwrap_or(0);
    if n <= 8 {
        if let Some(vals) = small_values(t) {
            let _ = write!(s, " = [{}]", vals.join(", "));
            return s;
        }
    }
    if t.dtype.is_prunable_float() && n > 0 {
        let nnz = t.nnz();
        let _ = write!(s, " density={:.3} nnz={nnz}/{n} mask=#{:08x}", nnz as f64 / n as f64, t.mask_hash() as u32);
    }
    s
}

fn small_values(t: &Tensor) -> Option<Vec<String>> {
    if t.dtype.is_prunable_float() {
        return t.to_f64().ok().map(|a| a.iter().map(|v| format!("{v}")).collect());
    }
    let b = t.bytes();
    Some(match t.dtype {
        crate::DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()).to_string()).collect(),
        crate::DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()).to_string()).collect(),
        crate::DType::U8 | crate::DType::Bool => b.iter().map(|x| x.to_string()).collect(),
        crate::DType::I8 => b.iter().map(|&x| (x as i8).to_string()).collect(),
        crate::DType::String => t.strings.iter().map(|x| format!("{:?}", String::from_utf8_lossy(x))).collect(),
        _ => return None,
    })
}

fn attr_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        AttrValue::Tensor(t) => tensor_summary(t),
        AttrValue::Floats(v) => format!("{v:?}"),
        AttrValue::Ints(v) => format!("{v:?}"),
        AttrValue::Strings(v) => {
            let v: Vec<String> = v.iter().map(|s| format!("{:?}", String::from_utf8_lossy(s))).collect();
            format!("[{}]", v.join(", "))
        }
        AttrValue::Opaque => "<opaque>".into(),
    }
}
