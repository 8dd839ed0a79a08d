//! Constants met by a channel-permutation region ([`super::permute_region`]): resolving an operand to
//! its constant through Identity / Cast / Reshape / Unsqueeze (with the shape it has where it is used),
//! and proving a constant is read only along the route being rewritten.

use sparsify_ir::{DType, Graph, NodeId, WeightId};

/// A constant operand: its source, the shape it has where it is used, and whether it was reshaped.
pub struct ConstOperand {
    pub id: WeightId,
    pub shape: Vec<usize>,
    pub src_shape: Vec<usize>,
    pub chain: bool,
}

/// Follow `name` through Identity / Cast / Reshape / Unsqueeze (constant shapes) to a constant.
/// `Ok(None)` for runtime values. A constant that would need permuting must be read only here: every
/// tensor on the way has exactly one consumer.
pub fn resolve_const(g: &Graph, name: &str) -> Result<Option<ConstOperand>, String> {
    let mut chain: Vec<NodeId> = Vec::new();
    let mut cur = name.to_string();
    let src = loop {
        if let Some(src) = g.constant_source(&cur) {
            break src;
        }
        let Some(p) = g.producer_of(&cur) else { return Ok(None) };
        let n = g.node(p);
        if !n.is_onnx() || !matches!(n.op_type.as_str(), "Identity" | "Cast" | "Reshape" | "Unsqueeze") {
            return Ok(None);
        }
        chain.push(p);
        cur = n.inputs[0].clone();
        if chain.len() > 16 {
            return Ok(None);
        }
    };
    let t = g.weight(&src).ok_or_else(|| format!("constant '{}' not found", src.name()))?;
    let src_shape = t.shape();
    let mut shape = src_shape.clone();
    for &p in chain.iter().rev() {
        let n = g.node(p);
        let what = format!("{} '{}'", n.op_type, n.display_name());
        match n.op_type.as_str() {
            "Reshape" => {
                let spec = int_input(g, n.inputs.get(1)).ok_or_else(|| format!("{what}: shape is not constant"))?;
                shape = reshape(&shape, &spec).ok_or_else(|| format!("{what}: cannot apply shape {spec:?}"))?;
            }
            "Unsqueeze" => {
                let axes = match n.attr_ints("axes") {
                    Some(a) => a.to_vec(),
                    None => int_input(g, n.inputs.get(1)).ok_or_else(|| format!("{what}: axes are not constant"))?,
                };
                let r = (shape.len() + axes.len()) as i64;
                let mut axes: Vec<usize> = axes.iter().map(|&a| if a < 0 { a + r } else { a } as usize).collect();
                axes.sort();
                for a in axes {
                    if a > shape.len() {
                        return Err(format!("{what}: axis {a} out of range"));
                    }
                    shape.insert(a, 1);
                }
            }
            _ => {}
        }
    }
    Ok(Some(ConstOperand { id: src, shape, src_shape, chain: !chain.is_empty() }))
}

/// Fails unless every tensor from `name` back to its constant has exactly one consumer.
pub fn exclusive_chain(g: &Graph, name: &str) -> Result<(), String> {
    let mut cur = name.to_string();
    for _ in 0..64 {
        if g.consumers(&cur).len() != 1 || g.is_output(&cur) {
            return Err(format!("constant '{cur}' is read by more than one node"));
        }
        if g.constant_source(&cur).is_some() {
            if g.inputs.iter().any(|i| i.name == cur) {
                return Err(format!("initializer '{cur}' is also a graph input (may be overridden)"));
            }
            return Ok(());
        }
        let Some(p) = g.producer_of(&cur) else { return Err(format!("'{cur}' is not constant")) };
        cur = g.node(p).inputs.first().cloned().unwrap_or_default();
    }
    Err(format!("'{name}': route too long"))
}

/// A weight's route must be exclusive and free of DequantizeLinear (its scales would need permuting).
pub fn exclusive_route(g: &Graph, name: &str) -> Result<(), String> {
    let mut cur = name.to_string();
    while g.constant_source(&cur).is_none() {
        let Some(p) = g.producer_of(&cur) else { break };
        let n = g.node(p);
        if !matches!(n.op_type.as_str(), "Identity" | "Cast" | "Transpose") {
            return Err(format!("weight route passes {} '{}'", n.op_type, n.display_name()));
        }
        cur = n.inputs[0].clone();
    }
    exclusive_chain(g, name)
}

fn int_input(g: &Graph, name: Option<&String>) -> Option<Vec<i64>> {
    let id = g.constant_source(name?)?;
    let t = g.weight(&id)?;
    match t.dtype {
        DType::I64 => Some(t.bytes().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
        DType::I32 => {
            Some(t.bytes().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
        }
        _ => None,
    }
}

fn reshape(shape: &[usize], spec: &[i64]) -> Option<Vec<usize>> {
    let total: usize = shape.iter().product();
    let mut out: Vec<usize> = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 => out.push(*shape.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(d as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}
