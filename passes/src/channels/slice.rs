//! Applying a removal plan: new, smaller tensors (bytes gathered in their own dtype, so kept values stay
//! bit-identical), the depthwise `group` attribute, shape constants, Split sizes, Slice bounds and
//! `value_info`.

use super::plan::Plan;
use super::{Analysis, IntTarget, Site};
use sparsify_ir::{AttrValue, DType, Dim, Graph, Tensor, TensorError, WeightId};
use std::collections::BTreeSet;

/// A new tensor with the indices `keep` along `axis` (bytes copied, any fixed-size dtype).
pub(crate) fn take(t: &Tensor, axis: usize, keep: &[usize]) -> Result<Tensor, TensorError> {
    let esize =
        t.dtype.size().ok_or_else(|| TensorError::Unsupported { name: t.name.clone(), dtype: t.dtype.name() })?;
    let dims = t.shape();
    let d = dims[axis];
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product::<usize>() * esize;
    let src = t.bytes();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let at = (o * d + k) * inner;
            out.extend_from_slice(&src[at..at + inner]);
        }
    }
    let mut nd = t.dims.clone();
    nd[axis] = keep.len() as i64;
    rebuilt(t, nd, out)
}

/// Grouped Conv columns: rows of group k keep the columns `keep[k]` along `col_axis` (equal counts).
pub(crate) fn take_grouped(
    t: &Tensor,
    row_axis: usize,
    col_axis: usize,
    keep: &[Vec<usize>],
) -> Result<Tensor, TensorError> {
    let esize =
        t.dtype.size().ok_or_else(|| TensorError::Unsupported { name: t.name.clone(), dtype: t.dtype.name() })?;
    let dims = t.shape();
    let per_group = dims[row_axis] / keep.len().max(1);
    let mut nd: Vec<usize> = dims.clone();
    nd[col_axis] = keep[0].len();
    let strides: Vec<usize> = (0..dims.len()).map(|i| dims[i + 1..].iter().product()).collect();
    let total: usize = nd.iter().product();
    let src = t.bytes();
    let mut out = Vec::with_capacity(total * esize);
    let mut idx = vec![0usize; nd.len()];
    for _ in 0..total {
        let g = idx[row_axis] / per_group.max(1);
        let mut flat = 0;
        for (i, &x) in idx.iter().enumerate() {
            flat += strides[i] * if i == col_axis { keep[g][x] } else { x };
        }
        out.extend_from_slice(&src[flat * esize..(flat + 1) * esize]);
        for i in (0..nd.len()).rev() {
            idx[i] += 1;
            if idx[i] < nd[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    rebuilt(t, nd.iter().map(|&d| d as i64).collect(), out)
}

fn rebuilt(t: &Tensor, dims: Vec<i64>, bytes: Vec<u8>) -> Result<Tensor, TensorError> {
    let mut n = Tensor::new(t.name.clone(), t.dtype, dims, bytes.into())?;
    n.storage = t.storage.clone();
    n.opaque = t.opaque.clone();
    n.modified = true;
    Ok(n)
}

/// A float tensor of the given dtype from f64 values.
pub(crate) fn float_tensor(name: &str, dtype: DType, dims: Vec<i64>, vals: &[f64]) -> Result<Tensor, TensorError> {
    let size = dtype
        .size()
        .filter(|_| dtype.is_prunable_float())
        .ok_or(TensorError::Unsupported { name: name.into(), dtype: dtype.name() })?;
    let mut t = Tensor::new(name, dtype, dims, vec![0u8; vals.len() * size].into())?;
    t.write_f64(
        &ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&t.shape()), vals.to_vec())
            .map_err(|e| TensorError::Invalid { name: name.into(), what: e.to_string() })?,
    )?;
    Ok(t)
}

pub(crate) fn replace(g: &mut Graph, id: &WeightId, new: Tensor) -> Result<(), TensorError> {
    let t =
        g.weight_mut(id).ok_or_else(|| TensorError::Invalid { name: id.name().into(), what: "not found".into() })?;
    *t = new;
    Ok(())
}

fn set_int(g: &mut Graph, target: &IntTarget, index: usize, value: i64) -> Result<(), TensorError> {
    match target {
        IntTarget::Const(id) => {
            let t = g
                .weight_mut(id)
                .ok_or_else(|| TensorError::Invalid { name: id.name().into(), what: "not found".into() })?;
            let mut b = t.bytes().to_vec();
            match t.dtype {
                DType::I64 => b[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes()),
                DType::I32 => b[index * 4..index * 4 + 4].copy_from_slice(&(value as i32).to_le_bytes()),
                d => return Err(TensorError::Unsupported { name: t.name.clone(), dtype: d.name() }),
            }
            t.set_bytes(b.into())
        }
        IntTarget::Attr(node, attr) => {
            let n = g.node_mut(*node);
            let mut v = n.attr_ints(attr).map(|v| v.to_vec()).unwrap_or_default();
            if let Some(x) = v.get_mut(index) {
                *x = value;
            }
            n.set_attr(attr, AttrValue::Ints(v));
            Ok(())
        }
    }
}

/// Indices whose atom survives.
pub(crate) fn kept(a: &Analysis, plan: &Plan, atoms: &[usize]) -> Vec<usize> {
    (0..atoms.len()).filter(|&i| !plan.remove.contains(&a.find(atoms[i]))).collect()
}

/// Slice every site; returns the `value_info` names dropped because their shape could not be updated.
pub(crate) fn apply(g: &mut Graph, a: &Analysis, plan: &Plan, sites: &[Site]) -> Result<Vec<String>, TensorError> {
    for site in sites {
        match site {
            Site::Rows { weight, axis, atoms, .. } | Site::Param { weight, axis, atoms, .. } => {
                let keep = kept(a, plan, atoms);
                if keep.len() < atoms.len() {
                    let t = g
                        .weight(weight)
                        .ok_or_else(|| TensorError::Invalid { name: weight.name().into(), what: "not found".into() })?;
                    let new = take(t, *axis, &keep)?;
                    replace(g, weight, new)?;
                }
            }
            Site::Cols { node, weight, axis, atoms, groups } => {
                let keep = kept(a, plan, atoms);
                if keep.len() == atoms.len() {
                    continue;
                }
                let t = g
                    .weight(weight)
                    .ok_or_else(|| TensorError::Invalid { name: weight.name().into(), what: "not found".into() })?;
                let new = if *groups > 1 {
                    let per = atoms.len() / groups;
                    let by_group: Vec<Vec<usize>> = (0..*groups)
                        .map(|k| keep.iter().filter(|&&p| p / per == k).map(|&p| p % per).collect())
                        .collect();
                    let row_axis = if *axis == 0 { 1 } else { 0 };
                    let _ = node;
                    take_grouped(t, row_axis, *axis, &by_group)?
                } else {
                    take(t, *axis, &keep)?
                };
                replace(g, weight, new)?;
            }
            Site::GroupAttr { node, atoms } => {
                let keep = kept(a, plan, atoms);
                if keep.len() < atoms.len() {
                    g.node_mut(*node).set_attr("group", AttrValue::Int(keep.len() as i64));
                }
            }
            Site::Int { target, index, atoms } => {
                let keep = kept(a, plan, atoms);
                if keep.len() < atoms.len() {
                    set_int(g, target, *index, keep.len() as i64)?;
                }
            }
        }
    }
    // value_info: update the channel dim of every changed tensor, drop what cannot be updated
    let mut dropped = Vec::new();
    let mut drop: BTreeSet<String> = BTreeSet::new();
    let any = !plan.remove.is_empty();
    for vi in &mut g.value_info {
        if let Some(l) = a.layouts.get(&vi.name) {
            let k = kept(a, plan, &l.atoms).len();
            if k == l.atoms.len() {
                continue;
            }
            match vi.shape.as_mut() {
                Some(s) if Some(s.len()) == l.rank || l.rank.is_none() && s.len() > l.back => {
                    let f = s.len() - 1 - l.back;
                    s[f] = Dim::Value(k as i64);
                }
                None => {}
                Some(_) => {
                    drop.insert(vi.name.clone());
                }
            }
        } else if any && a.intermediates.contains(&vi.name) {
            drop.insert(vi.name.clone());
        }
    }
    g.value_info.retain(|v| {
        let d = drop.contains(&v.name);
        if d {
            dropped.push(v.name.clone());
        }
        !d
    });
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_grouped_keep_bits() {
        let vals: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let t = Tensor::from_f32("w", vec![4, 3, 2], &vals).unwrap();
        let s = take(&t, 1, &[0, 2]).unwrap();
        assert_eq!(s.dims, vec![4, 2, 2]);
        assert_eq!(s.to_f32().unwrap().as_slice().unwrap()[..4], [0.0, 1.0, 4.0, 5.0]);
        // two groups of two rows; group 0 keeps column 1, group 1 keeps column 2
        let gt = take_grouped(&t, 0, 1, &[vec![1], vec![2]]).unwrap();
        assert_eq!(gt.dims, vec![4, 1, 2]);
        assert_eq!(gt.to_f32().unwrap().as_slice().unwrap(), &[2.0, 3.0, 8.0, 9.0, 16.0, 17.0, 22.0, 23.0]);
    }
}
