//! Quantized weights: their quantization parameters, dequantized values, and pruning to the zero point.
//!
//! Purpose: let every weight pass work on integer weights (int8/uint8, int16/uint16, int4/uint4) read
//! through `DequantizeLinear` (per tensor or per axis) or by a quantized op (`MatMulInteger`,
//! `ConvInteger`, `QLinearMatMul`, `QLinearConv`, `com.microsoft.QGemm` / `MatMulIntegerToFloat` /
//! `DynamicQuantizeMatMul`) exactly as on the float weight the model computes with, `(q − zp)·scale`.
//!
//! - **A zero is the zero point.** [`Graph::zero_weight_where`] writes the zero point of each pruned
//!   element's channel, so its dequantized value is exactly 0.0, and leaves every kept byte identical
//!   (for 4-bit types, the other nibble of a byte too).
//! - Sparsity, nnz and N:M checks count dequantized zeros (`q == zp`), [`Graph::weight_zero_flags`].
//! - Scores read [`Graph::weight_values`], the dequantized `f32` values, so magnitude / Wanda / RIA / N:M
//!   decisions equal those on the dequantized float weight.
//! - [`Graph::write_weight_f64`] requantizes new values with the existing scales and zero points,
//!   rounding half away from zero and clamping to the type's range (SparseGPT).
//!
//! Preconditions: the integer weight is read only by ops that dequantize it (listed above; `Shape` is
//! also allowed). All readers must agree on scale, zero point and axis; otherwise, and for a zero point or
//! scale of the wrong length or dtype, a blocked `DequantizeLinear` (`block_size`), or a non-finite or
//! non-positive scale, the functions return an error naming the weight and the tensor at fault. Integer
//! ops (`MatMulInteger`, `ConvInteger`) carry no weight scale: it is taken from the `Cast → Mul` that
//! onnxruntime's dynamic quantizer places after them when present (the constant factor of the scale
//! product), and is 1 otherwise (decisions within a weight are unchanged by a per-tensor scale).
//!
//! Float weights go through unchanged (`Tensor::to_f32`, `Tensor::zero_where`). Reading is pure; zeroing
//! is idempotent (zeroing an element already at its zero point changes nothing).

use crate::{DType, Graph, Node, Tensor, TensorError, WeightId};
use bytes::Bytes;
use ndarray::{ArrayD, IxDyn};

/// Errors about a quantized weight; each names the weight and, where one is at fault, the tensor.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QuantError {
    #[error("weight '{weight}': {what}")]
    Invalid { weight: String, what: String },
    #[error(
        "weight '{weight}' has dtype {dtype} and no DequantizeLinear or quantized op reads it, so its zero point \
         is unknown"
    )]
    NotDequantized { weight: String, dtype: String },
    #[error("weight '{weight}' has dtype {dtype}, which the passes cannot compute on")]
    Unsupported { weight: String, dtype: String },
    #[error("weight '{0}' not found")]
    NotFound(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl From<QuantError> for TensorError {
    fn from(e: QuantError) -> TensorError {
        match e {
            QuantError::Tensor(t) => t,
            QuantError::Invalid { weight, what } => TensorError::Invalid { name: weight, what },
            other => {
                let name = match &other {
                    QuantError::NotDequantized { weight, .. }
                    | QuantError::Unsupported { weight, .. }
                    | QuantError::NotFound(weight) => weight.clone(),
                    _ => String::new(),
                };
                TensorError::Invalid { name, what: other.to_string() }
            }
        }
    }
}

/// Where a consumer takes a quantized weight's parameters from (input names; "" = absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantSlots {
    /// The scale tensor, when the op has one (integer ops have none).
    pub scale: Option<String>,
    /// The zero-point tensor, when given (absent means 0).
    pub zero_point: Option<String>,
    /// The per-axis axis in the weight's layout (used when scale / zero point have more than one element).
    pub axis: usize,
    /// The reading node.
    pub node: String,
}

/// Resolved quantization parameters of one weight.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams {
    /// Element type of the quantized values.
    pub dtype: DType,
    /// One scale (per tensor) or one per channel along `axis`.
    pub scale: Vec<f32>,
    /// One zero point or one per channel along `axis` (all 0 when the op has none).
    pub zero_point: Vec<i32>,
    /// Channel axis when per-axis, `None` when per tensor.
    pub axis: Option<usize>,
    pub scale_tensor: Option<String>,
    pub zero_point_tensor: Option<String>,
    /// The node the parameters were read from.
    pub node: String,
}

impl QuantParams {
    /// `(min, max)` of the quantized type.
    pub fn range(&self) -> (i32, i32) {
        qrange(self.dtype).unwrap_or((i32::MIN, i32::MAX))
    }

    /// Channel index of each flat element (all 0 per tensor).
    fn channels(&self, shape: &[usize]) -> impl Iterator<Item = usize> {
        let (inner, n) = match self.axis {
            Some(a) => (shape[a + 1..].iter().product::<usize>().max(1), shape[a].max(1)),
            None => (1, 1),
        };
        let total: usize = shape.iter().product();
        (0..total).map(move |i| (i / inner) % n)
    }

    fn pick<T: Copy>(v: &[T], c: usize) -> T {
        if v.len() == 1 {
            v[0]
        } else {
            v[c]
        }
    }
}

/// Integer weight element types and their value range.
fn qrange(d: DType) -> Option<(i32, i32)> {
    Some(match d {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        DType::Other(21) => (0, 15), // UINT4
        DType::Other(22) => (-8, 7), // INT4
        _ => return None,
    })
}

/// Whether weights of this dtype are quantized integers the passes can prune.
pub fn is_quantized_dtype(d: DType) -> bool {
    qrange(d).is_some()
}

/// The float op a quantized weight op computes ("Conv" for `QLinearConv`); other ops unchanged. Scopes
/// (`ops=Conv|Gemm|MatMul`) and the report use it so a quantized model is selected like its float model.
pub fn float_op(op: &str) -> &str {
    match op {
        "ConvInteger" | "QLinearConv" => "Conv",
        "MatMulInteger" | "QLinearMatMul" | "MatMulIntegerToFloat" | "DynamicQuantizeMatMul" => "MatMul",
        "QGemm" => "Gemm",
        o => o,
    }
}

/// Integer values of a tensor (int8/uint8/int16/uint16/int32/int4/uint4), little-endian, 4-bit types low
/// nibble first.
pub fn read_ints(t: &Tensor) -> Result<Vec<i32>, TensorError> {
    let b = &t.bytes()[..];
    let n = t.numel()?;
    Ok(match t.dtype {
        DType::I8 => b.iter().map(|&x| x as i8 as i32).collect(),
        DType::U8 => b.iter().map(|&x| x as i32).collect(),
        DType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i32).collect(),
        DType::U16 => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i32).collect(),
        DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::Other(21) => (0..n).map(|i| ((b[i / 2] >> (4 * (i % 2))) & 0xf) as i32).collect(),
        DType::Other(22) => (0..n).map(|i| (((b[i / 2] >> (4 * (i % 2))) & 0xf) as i32 ^ 8) - 8).collect(),
        d => return Err(TensorError::Unsupported { name: t.name.clone(), dtype: d.name() }),
    })
}

/// Set element `i` of quantized bytes `out` (dtype `d`) to `v` (already in range).
fn put(out: &mut [u8], d: DType, i: usize, v: i32) {
    match d {
        DType::I8 | DType::U8 => out[i] = v as u8,
        DType::I16 | DType::U16 => out[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_le_bytes()),
        _ => {
            let sh = 4 * (i % 2);
            out[i / 2] = (out[i / 2] & !(0xf << sh)) | (((v as u8) & 0xf) << sh);
        }
    }
}

/// The parameter slots of a node reading a weight at input `slot`, if the node dequantizes it.
/// `rank` is the weight's rank (per-column axes of MatMul-like ops are its last axis).
pub fn quant_slots(node: &Node, slot: usize, rank: usize) -> Option<QuantSlots> {
    let input = |i: usize| node.inputs.get(i).filter(|s| !s.is_empty()).cloned();
    let last = rank.saturating_sub(1);
    let ms = node.domain.as_deref() == Some("com.microsoft");
    let (scale, zp, axis) = match (node.op_type.as_str(), slot, ms || node.is_onnx()) {
        ("DequantizeLinear", 0, true) if node.is_onnx() => {
            let a = node.attr_int("axis").unwrap_or(1);
            let a = if a < 0 { a + rank as i64 } else { a };
            (input(1), input(2), a.max(0) as usize)
        }
        ("MatMulInteger", 1, _) if node.is_onnx() => (None, input(3), last),
        ("ConvInteger", 1, _) if node.is_onnx() => (None, input(3), 0),
        ("QLinearMatMul", 3, _) if node.is_onnx() => (input(4), input(5), last),
        ("QLinearConv", 3, _) if node.is_onnx() => (input(4), input(5), 0),
        ("QGemm", 3, _) if ms => {
            let tb = node.attr_int("transB").unwrap_or(0) != 0;
            (input(4), input(5), if tb { 0 } else { 1 })
        }
        ("MatMulIntegerToFloat", 1, _) if ms => (input(3), input(5), last),
        ("DynamicQuantizeMatMul", 1, _) if ms => (input(2), input(3), last),
        _ => return None,
    };
    Some(QuantSlots { scale, zero_point: zp, axis, node: node.display_name() })
}

impl Graph {
    /// The constant tensor behind a value name, if any.
    fn const_tensor(&self, name: &str) -> Option<&Tensor> {
        self.constant_source(name).and_then(|id| self.weight(&id))
    }

    /// For `MatMulInteger` / `ConvInteger`: the constant weight-scale factor after `Cast → Mul`, if the
    /// graph has onnxruntime's dynamic-quantization pattern (`Mul(a_scale, w_scale)` or a constant).
    fn integer_op_scale(&self, node: &Node) -> Option<String> {
        let mut cur = node.outputs.first()?.clone();
        for _ in 0..2 {
            let cons = self.consumers(&cur);
            let [(c, slot)] = cons.as_slice() else { return None };
            let n = self.node(*c);
            match n.op_type.as_str() {
                "Cast" => cur = n.outputs.first()?.clone(),
                "Mul" => {
                    let other = n.inputs.get(1 - slot.min(&1))?;
                    if self.constant_source(other).is_some() {
                        return Some(other.clone());
                    }
                    let p = self.node(self.producer_of(other)?);
                    if p.op_type != "Mul" {
                        return None;
                    }
                    return p.inputs.iter().find(|i| self.constant_source(i).is_some()).cloned();
                }
                _ => return None,
            }
        }
        None
    }

    /// Quantization parameters of a weight: `Ok(None)` for float weights; an error naming the weight (and
    /// the tensor at fault) when an integer weight's parameters are missing, inconsistent or malformed.
    pub fn weight_quant(&self, id: &WeightId) -> Result<Option<QuantParams>, QuantError> {
        let wname = id.name().to_string();
        let t = self.weight(id).ok_or_else(|| QuantError::NotFound(wname.clone()))?;
        if t.dtype.is_prunable_float() {
            return Ok(None);
        }
        if !is_quantized_dtype(t.dtype) {
            return Err(QuantError::Unsupported { weight: wname, dtype: t.dtype.name() });
        }
        let invalid = |what: String| QuantError::Invalid { weight: wname.clone(), what };
        let shape = t.shape();
        let mut found: Option<QuantParams> = None;
        for (nid, slot) in self.consumers(&wname) {
            let node = self.node(nid);
            if node.op_type == "Shape" {
                continue;
            }
            let Some(slots) = quant_slots(node, slot, shape.len()) else {
                return Err(invalid(format!(
                    "also read by '{}' ({} input {slot}), which does not dequantize it",
                    node.display_name(),
                    node.op_type
                )));
            };
            if node.attr_int("block_size").unwrap_or(0) != 0 {
                return Err(invalid(format!("'{}' uses blocked quantization (block_size), not supported", slots.node)));
            }
            let scale_name = slots.scale.clone().or_else(|| match node.op_type.as_str() {
                "MatMulInteger" | "ConvInteger" => self.integer_op_scale(node),
                _ => None,
            });
            let scale = match &scale_name {
                Some(s) => {
                    let st = self
                        .const_tensor(s)
                        .ok_or_else(|| invalid(format!("scale '{s}' of '{}' is not a constant", slots.node)))?;
                    if !st.dtype.is_prunable_float() {
                        return Err(invalid(format!("scale '{s}' has dtype {}", st.dtype.name())));
                    }
                    let v: Vec<f32> = st.to_f32()?.iter().copied().collect();
                    if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                        return Err(invalid(format!("scale '{s}' holds {bad}, not a finite positive number")));
                    }
                    v
                }
                None => vec![1.0],
            };
            let zero_point = match &slots.zero_point {
                Some(z) => {
                    let zt = self
                        .const_tensor(z)
                        .ok_or_else(|| invalid(format!("zero point '{z}' of '{}' is not a constant", slots.node)))?;
                    if zt.dtype != t.dtype {
                        return Err(invalid(format!(
                            "zero point '{z}' has dtype {}, the weight {}",
                            zt.dtype.name(),
                            t.dtype.name()
                        )));
                    }
                    read_ints(zt)?
                }
                None => vec![0],
            };
            let per_axis = scale.len() > 1 || zero_point.len() > 1;
            let axis = if per_axis {
                let a = slots.axis;
                let n = *shape.get(a).ok_or_else(|| {
                    invalid(format!("'{}' quantizes along axis {a} of a rank-{} weight", slots.node, shape.len()))
                })?;
                for (what, name, len) in
                    [("scale", &scale_name, scale.len()), ("zero point", &slots.zero_point, zero_point.len())]
                {
                    if len != 1 && len != n {
                        return Err(invalid(format!(
                            "{what} '{}' of '{}' has {len} elements, but axis {a} has {n} channels",
                            name.as_deref().unwrap_or("?"),
                            slots.node
                        )));
                    }
                }
                Some(a)
            } else {
                None
            };
            let p = QuantParams {
                dtype: t.dtype,
                scale,
                zero_point,
                axis,
                scale_tensor: scale_name,
                zero_point_tensor: slots.zero_point.clone(),
                node: slots.node,
            };
            match &found {
                None => found = Some(p),
                Some(f) if (&f.scale, &f.zero_point, f.axis) == (&p.scale, &p.zero_point, p.axis) => {}
                Some(f) => {
                    return Err(invalid(format!(
                        "'{}' and '{}' dequantize it with different scales, zero points or axes",
                        f.node, p.node
                    )))
                }
            }
        }
        found.map(Some).ok_or(QuantError::NotDequantized { weight: wname, dtype: t.dtype.name() })
    }

    /// Why a weight cannot be pruned, or `Ok` for float weights and quantized weights with known
    /// parameters.
    pub fn weight_prunable(&self, id: &WeightId) -> Result<(), String> {
        self.weight_quant(id).map(|_| ()).map_err(|e| e.to_string())
    }

    /// The weight's values as the model computes with them: float weights as `f32`, quantized weights
    /// dequantized, `(q − zp)·scale`. Errors on non-finite values, naming the tensor.
    pub fn weight_values(&self, id: &WeightId) -> Result<ArrayD<f32>, TensorError> {
        let t = self.weight(id).ok_or_else(|| QuantError::NotFound(id.name().into()))?;
        match self.weight_quant(id)? {
            None => {
                t.check_finite()?;
                t.to_f32()
            }
            Some(p) => {
                let shape = t.shape();
                let q = read_ints(t)?;
                let v: Vec<f32> = q
                    .iter()
                    .zip(p.channels(&shape))
                    .map(|(&q, c)| (q - QuantParams::pick(&p.zero_point, c)) as f32 * QuantParams::pick(&p.scale, c))
                    .collect();
                ArrayD::from_shape_vec(IxDyn(&shape), v)
                    .map_err(|e| TensorError::Invalid { name: t.name.clone(), what: e.to_string() })
            }
        }
    }

    /// [`Graph::weight_values`] as `f64` (exact for float weights).
    pub fn weight_values_f64(&self, id: &WeightId) -> Result<ArrayD<f64>, TensorError> {
        let t = self.weight(id).ok_or_else(|| QuantError::NotFound(id.name().into()))?;
        if t.dtype.is_prunable_float() {
            t.check_finite()?;
            return t.to_f64();
        }
        Ok(self.weight_values(id)?.mapv(f64::from))
    }

    /// For each element, whether its (dequantized) value is exactly zero: `q == zp` for quantized weights.
    pub fn weight_zero_flags(&self, id: &WeightId) -> Result<Vec<bool>, TensorError> {
        let t = self.weight(id).ok_or_else(|| QuantError::NotFound(id.name().into()))?;
        match self.weight_quant(id)? {
            None => Ok(t.zero_flags()),
            Some(p) => {
                let q = read_ints(t)?;
                Ok(q.iter()
                    .zip(p.channels(&t.shape()))
                    .map(|(&q, c)| q == QuantParams::pick(&p.zero_point, c))
                    .collect())
            }
        }
    }

    /// (elements, dequantized zeros) of a weight; float weights are counted in place (no flag vector).
    fn weight_zero_count(&self, id: &WeightId) -> Result<(usize, usize), TensorError> {
        let t = self.weight(id).ok_or_else(|| QuantError::NotFound(id.name().into()))?;
        if self.weight_quant(id)?.is_none() && t.dtype.is_prunable_float() {
            return Ok((t.numel()?, t.zero_count()));
        }
        let z = self.weight_zero_flags(id)?;
        Ok((z.len(), z.iter().filter(|x| **x).count()))
    }

    /// Count of (dequantized) non-zero elements.
    pub fn weight_nnz(&self, id: &WeightId) -> Result<usize, TensorError> {
        let (n, z) = self.weight_zero_count(id)?;
        Ok(n - z)
    }

    /// Fraction of (dequantized) zeros, 0 for empty tensors.
    pub fn weight_sparsity(&self, id: &WeightId) -> Result<f64, TensorError> {
        let (n, z) = self.weight_zero_count(id)?;
        Ok(if n == 0 { 0.0 } else { z as f64 / n as f64 })
    }

    /// Zero every element whose `keep` flag is false: +0 for float weights, the element's zero point for
    /// quantized ones. Kept elements (bytes) stay identical. Returns how many elements changed.
    pub fn zero_weight_where(&mut self, id: &WeightId, keep: &[bool]) -> Result<usize, TensorError> {
        let p = self.weight_quant(id)?;
        let t = self.weight_mut(id).ok_or_else(|| QuantError::NotFound(id.name().into()))?;
        let Some(p) = p else { return t.zero_where(keep) };
        if keep.len() != t.numel()? {
            return Err(TensorError::Invalid {
                name: t.name.clone(),
                what: format!("mask has {} entries", keep.len()),
            });
        }
        let q = read_ints(t)?;
        let mut out = t.bytes().to_vec();
        let mut changed = 0;
        for ((i, &qv), c) in q.iter().enumerate().zip(p.channels(&t.shape())) {
            let zp = QuantParams::pick(&p.zero_point, c);
            if !keep[i] && qv != zp {
                put(&mut out, p.dtype, i, zp);
                changed += 1;
            }
        }
        if changed > 0 {
            t.set_bytes(Bytes::from(out))?;
        }
        Ok(changed)
    }

    /// Write new (dequantized-domain) values: float weights in their dtype, quantized weights requantized
    /// with their scales and zero points, `clamp(round(v / scale) + zp)`. Returns how many elements were
    /// clamped to the type's range (0 for float weights).
    pub fn write_weight_f64(&mut self, id: &WeightId, values: &ArrayD<f64>) -> Result<usize, TensorError> {
        let p = self.weight_quant(id)?;
        let t = self.weight_mut(id).ok_or_else(|| QuantError::NotFound(id.name().into()))?;
        let Some(p) = p else {
            t.write_f64(values)?;
            return Ok(0);
        };
        let shape = t.shape();
        if values.shape() != shape.as_slice() {
            return Err(TensorError::Invalid {
                name: t.name.clone(),
                what: format!("new values have shape {:?}", values.shape()),
            });
        }
        let (lo, hi) = p.range();
        let mut out = t.bytes().to_vec();
        let mut clamped = 0;
        for ((i, &v), c) in values.iter().enumerate().zip(p.channels(&shape)) {
            if !v.is_finite() {
                return Err(TensorError::NonFinite { name: t.name.clone(), index: i, value: v });
            }
            let zp = QuantParams::pick(&p.zero_point, c);
            let r = (v / f64::from(QuantParams::pick(&p.scale, c))).round() + f64::from(zp);
            let q = r.clamp(f64::from(lo), f64::from(hi));
            clamped += usize::from(q != r);
            put(&mut out, p.dtype, i, q as i32);
        }
        if out[..] != t.bytes()[..] {
            t.set_bytes(Bytes::from(out))?;
        }
        Ok(clamped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attr, AttrValue};

    fn int_tensor(name: &str, dtype: DType, dims: Vec<i64>, vals: &[i32]) -> Tensor {
        let mut b = Vec::new();
        let n: usize = dims.iter().product::<i64>() as usize;
        let bytes = match dtype {
            DType::Other(21) | DType::Other(22) => n.div_ceil(2),
            d => n * d.size().unwrap(),
        };
        b.resize(bytes, 0);
        for (i, &v) in vals.iter().enumerate() {
            put(&mut b, dtype, i, v);
        }
        Tensor::new(name, dtype, dims, Bytes::from(b)).unwrap()
    }

    /// w [2,3] uint8, DequantizeLinear(axis=0) with per-row scale and zero point.
    fn graph(zp: &[i32], scale: &[f32], dtype: DType) -> Graph {
        let mut g = Graph::new();
        g.initializers.push(int_tensor("w", dtype, vec![2, 3], &[130, 128, 120, 5, 7, 9]));
        g.initializers.push(Tensor::from_f32("s", vec![scale.len() as i64], scale).unwrap());
        g.initializers.push(int_tensor("z", dtype, vec![zp.len() as i64], zp));
        let mut n = Node::new("DequantizeLinear", "dq", &["w", "s", "z"], &["wd"]);
        n.attrs.push(Attr { name: "axis".into(), value: AttrValue::Int(0), opaque: Vec::new() });
        g.push_node(n);
        g
    }

    #[test]
    fn dequantize_and_zero_per_axis() {
        let mut g = graph(&[128, 7], &[0.5, 2.0], DType::U8);
        let id = WeightId::Init("w".into());
        let v = g.weight_values(&id).unwrap();
        assert_eq!(v.as_slice().unwrap(), &[1.0, 0.0, -4.0, -4.0, 0.0, 4.0]);
        assert_eq!(g.weight_zero_flags(&id).unwrap(), vec![false, true, false, false, true, false]);
        let before = g.initializer("w").unwrap().bytes().clone();
        let n = g.zero_weight_where(&id, &[false, false, true, true, true, false]).unwrap();
        assert_eq!(n, 2, "the element already at its zero point does not count");
        let after = g.initializer("w").unwrap().bytes().clone();
        assert_eq!(&after[..], &[128, 128, before[2], before[3], before[4], 7]);
        assert_eq!(g.weight_sparsity(&id).unwrap(), 4.0 / 6.0);
        // idempotent
        assert_eq!(g.zero_weight_where(&id, &[false, false, true, true, true, false]).unwrap(), 0);
    }

    #[test]
    fn wrong_zero_point_length_names_the_tensor() {
        let g = graph(&[1, 2, 3], &[0.5, 2.0], DType::U8);
        let e = g.weight_values(&WeightId::Init("w".into())).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("zero point 'z'") && e.contains("3 elements"), "{e}");
    }

    #[test]
    fn bad_scale_is_an_error() {
        let g = graph(&[1, 2], &[0.5, f32::NAN], DType::U8);
        let e = g.weight_values(&WeightId::Init("w".into())).unwrap_err().to_string();
        assert!(e.contains("scale 's'"), "{e}");
    }

    #[test]
    fn int4_nibbles_stay_put() {
        let mut g = Graph::new();
        g.initializers.push(int_tensor("w", DType::Other(22), vec![2, 3], &[-8, 7, 1, -1, 0, 3]));
        g.initializers.push(Tensor::from_f32("s", vec![], &[0.25]).unwrap());
        g.initializers.push(int_tensor("z", DType::Other(22), vec![], &[1]));
        g.push_node(Node::new("DequantizeLinear", "dq", &["w", "s", "z"], &["wd"]));
        let id = WeightId::Init("w".into());
        assert_eq!(g.weight_values(&id).unwrap().as_slice().unwrap(), &[-2.25, 1.5, 0.0, -0.5, -0.25, 0.5]);
        g.zero_weight_where(&id, &[true, false, true, true, true, true]).unwrap();
        assert_eq!(read_ints(g.initializer("w").unwrap()).unwrap(), vec![-8, 1, 1, -1, 0, 3]);
    }

    #[test]
    fn requantize_clamps_and_counts() {
        let mut g = graph(&[128, 7], &[0.5, 2.0], DType::U8);
        let id = WeightId::Init("w".into());
        let vals = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 0.0, 1000.0, -4.0, 0.0, 4.0]).unwrap();
        assert_eq!(g.write_weight_f64(&id, &vals).unwrap(), 1);
        assert_eq!(&g.initializer("w").unwrap().bytes()[..], &[130, 128, 255, 5, 7, 9]);
    }

    #[test]
    fn quantized_ops_are_weight_routes_with_their_parameters() {
        let mut g = Graph::new();
        g.initializers.push(int_tensor("cw", DType::U8, vec![2, 4, 1, 1], &[1, 2, 3, 4, 5, 6, 7, 8]));
        g.initializers.push(int_tensor("czp", DType::U8, vec![2], &[2, 6]));
        g.initializers.push(int_tensor("mw", DType::I8, vec![4, 3], &[1, -1, 2, 0, 3, 3, 4, 4, -4, 5, 0, 1]));
        g.initializers.push(Tensor::from_f32("ms", vec![3], &[0.5, 1.0, 2.0]).unwrap());
        g.initializers.push(int_tensor("mzp", DType::I8, vec![3], &[0, 3, 0]));
        g.initializers.push(int_tensor("dw", DType::I8, vec![4, 2], &[1, 2, 3, 4, 5, 6, 7, 8]));
        g.initializers.push(Tensor::from_f32("ds", vec![], &[0.25]).unwrap());
        g.push_node(Node::new("ConvInteger", "ci", &["x", "cw", "", "czp"], &["y0"]));
        let mut n = Node::new("MatMulIntegerToFloat", "mif", &["a", "mw", "as", "ms", "", "mzp"], &["y1"]);
        n.domain = Some("com.microsoft".into());
        g.push_node(n);
        let mut n = Node::new("DynamicQuantizeMatMul", "dqm", &["f", "dw", "ds"], &["y2"]);
        n.domain = Some("com.microsoft".into());
        g.push_node(n);
        let ws = g.find_weights();
        let got: Vec<(&str, &str, usize, usize, usize)> =
            ws.iter().map(|w| (w.id.name(), w.op(), w.uses[0].slot, w.out_axis(), w.red_axis())).collect();
        assert_eq!(
            got,
            vec![
                ("cw", "ConvInteger", 1, 0, 1),
                ("mw", "MatMulIntegerToFloat", 1, 1, 0),
                ("dw", "DynamicQuantizeMatMul", 1, 1, 0)
            ]
        );
        let cw = g.weight_quant(&WeightId::Init("cw".into())).unwrap().unwrap();
        assert_eq!((cw.zero_point.clone(), cw.axis, cw.scale.clone()), (vec![2, 6], Some(0), vec![1.0]));
        let mw = WeightId::Init("mw".into());
        let p = g.weight_quant(&mw).unwrap().unwrap();
        assert_eq!((p.axis, p.zero_point.clone()), (Some(1), vec![0, 3, 0]));
        assert_eq!(g.weight_values(&mw).unwrap().as_slice().unwrap()[..3].to_vec(), vec![0.5, -4.0, 4.0]);
        assert_eq!(
            g.weight_zero_flags(&WeightId::Init("cw".into())).unwrap()[..],
            [false, true, false, false, false, true, false, false]
        );
        let dw = g.weight_quant(&WeightId::Init("dw".into())).unwrap().unwrap();
        assert_eq!((dw.axis, dw.scale.clone(), dw.zero_point.clone()), (None, vec![0.25], vec![0]));
    }

    #[test]
    fn readers_that_disagree_are_an_error() {
        let mut g = graph(&[128, 7], &[0.5, 2.0], DType::U8);
        g.initializers.push(Tensor::from_f32("s2", vec![], &[1.0]).unwrap());
        g.push_node(Node::new("DequantizeLinear", "dq2", &["w", "s2"], &["wd2"]));
        let e = g.weight_prunable(&WeightId::Init("w".into())).unwrap_err();
        assert!(e.contains("'dq' and 'dq2'"), "{e}");
        let mut g = graph(&[128, 7], &[0.5, 2.0], DType::U8);
        g.push_node(Node::new("Relu", "r", &["w"], &["wr"]));
        let e = g.weight_prunable(&WeightId::Init("w".into())).unwrap_err();
        assert!(e.contains("'r' (Relu input 0), which does not dequantize it"), "{e}");
    }

    #[test]
    fn int_weight_without_dequantize_is_not_prunable() {
        let mut g = Graph::new();
        g.initializers.push(int_tensor("w", DType::I8, vec![2, 2], &[1, 2, 3, 4]));
        let e = g.weight_prunable(&WeightId::Init("w".into())).unwrap_err();
        assert!(e.contains("zero point is unknown"), "{e}");
    }
}
