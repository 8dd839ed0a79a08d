//! Calibration statistics shared by the activation-aware passes: which statistic of which activation a
//! weight's consumer needs, the accumulators the calibrator runs over each activation batch, and the
//! answers turned into per-feature vectors.
//!
//! - Input **means** (bias correction): [`mean_request`] plans a `FeatureSum` for MatMul / Gemm inputs
//!   (features along the last axis, or axis 0 for Gemm `transA=1`; every other axis is a row, so a 3-D
//!   transformer activation is averaged over batch and sequence) and a `ConvPatchSum` for Conv inputs
//!   (the mean im2col patch per group, zero padding counted, columns in the weight's `[C/g, k...]`
//!   order). [`InputMean::from_stat`] turns the answer into means. QOperator ops (`QLinearConv`,
//!   `QLinearMatMul`, `QGemm`): [`quantized_mean_request`] asks for the mean of the op's integer input,
//!   which [`InputDequant::apply`] dequantizes, `(mean(q) − zp)·scale` (exact: affine).
//! - Accumulators the facade's calibrator calls on each batch: [`feature_sums`], [`conv_patch_sums`],
//!   [`channel_pair_sums`] (the paired dense/current output sums of `ls-correct`; Gram matrices live in
//!   `sgpt_gram`, squared norms in the facade).
//! - [`output_shift`]: the expected change of each output channel of an op when its weight goes from
//!   `before` to `after`, E\[x\]·(W_before − W_after), from those means.
//!
//! Used by `bias-correct` and `ls-correct`; issues 12/15 build on the same requests (means, Grams).

use crate::sgpt_gram::{patch_offsets, ConvGeometry};
use sparsify_ir::{AttrValue, Graph, NodeId, WeightUse};
use sparsify_pm::{CalibRequest, CalibStat, FeatureAxis, PairStat};
use std::collections::BTreeSet;

/// Σ x over every row of an activation whose features lie along `axis` of `shape` (C order), and the
/// number of rows.
pub fn feature_sums(vals: &[f64], shape: &[usize], axis: usize) -> Result<(Vec<f64>, u64), String> {
    if axis >= shape.len() {
        return Err(format!("feature axis {axis} out of range for shape {shape:?}"));
    }
    let f = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut sums = vec![0f64; f];
    if f == 0 || inner == 0 {
        return Ok((sums, 0));
    }
    for (blk, chunk) in vals.chunks(inner).enumerate() {
        sums[blk % f] += chunk.iter().sum::<f64>();
    }
    Ok((sums, (vals.len() / f) as u64))
}

/// Paired per-channel sums of one batch of an activation in the current model (`cur`, ỹ) and the
/// reference model (`reference`, y), both of `shape` (C order), channels along `axis`, every other axis
/// a position: Σỹ, Σy, Σỹ², Σỹy and the positions counted (the statistics of `ls-correct`).
pub fn channel_pair_sums(cur: &[f64], reference: &[f64], shape: &[usize], axis: usize) -> Result<PairStat, String> {
    if axis >= shape.len() {
        return Err(format!("channel axis {axis} out of range for shape {shape:?}"));
    }
    let n: usize = shape.iter().product();
    if cur.len() != n || reference.len() != n {
        return Err(format!(
            "values ({} current, {} reference) do not match the shape {shape:?}",
            cur.len(),
            reference.len()
        ));
    }
    let c = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut st = PairStat::zeros(c);
    if c == 0 || inner == 0 {
        return Ok(st);
    }
    for (blk, (a, b)) in cur.chunks(inner).zip(reference.chunks(inner)).enumerate() {
        let ch = blk % c;
        for (&x, &y) in a.iter().zip(b) {
            st.sum_cur[ch] += x;
            st.sum_ref[ch] += y;
            st.sq_cur[ch] += x * x;
            st.cross[ch] += x * y;
        }
    }
    st.rows = (n / c) as u64;
    Ok(st)
}

/// Σ p over the im2col patches of one Conv input batch (`shape` = [N, C, spatial...]), one vector per
/// group of length C/g · Πkernel (channel-major, as the weight's `[C/g, k...]` flattening); also the
/// number of patches (N × output positions).
pub fn conv_patch_sums(vals: &[f64], shape: &[usize], geo: &ConvGeometry) -> Result<(Vec<Vec<f64>>, u64), String> {
    let out = geo.check(shape)?;
    let (batch, channels) = (shape[0], shape[1]);
    let cg = channels / geo.groups;
    let kpos: usize = geo.kernel.iter().product();
    let spatial: usize = shape[2..].iter().product();
    let npos: usize = out.iter().product();
    // For each kernel position q, the flat input positions read by the output positions (padding skipped).
    let offset = patch_offsets(shape, geo, &out);
    let reads: Vec<Vec<usize>> = (0..kpos).map(|q| (0..npos).filter_map(|p| offset[p * kpos + q]).collect()).collect();
    let mut sums = vec![vec![0f64; cg * kpos]; geo.groups];
    for b in 0..batch {
        for c in 0..channels {
            let plane = &vals[(b * channels + c) * spatial..][..spatial];
            let (g, cl) = (c / cg, c % cg);
            for (q, read) in reads.iter().enumerate() {
                sums[g][cl * kpos + q] += read.iter().map(|&i| plane[i]).sum::<f64>();
            }
        }
    }
    Ok((sums, (batch * npos) as u64))
}

/// The Conv geometry of a node (its weight has `kernel` spatial dims and `groups` groups); `auto_pad`
/// SAME_* is refused (the padding depends on the input size).
pub fn conv_geometry(g: &Graph, u: &WeightUse, kernel: &[usize]) -> Result<ConvGeometry, String> {
    let node = g.node(u.node);
    let r = kernel.len();
    let ints = |name: &str, default: usize, len: usize| -> Vec<usize> {
        node.attr_ints(name).map(|v| v.iter().map(|&x| x.max(0) as usize).collect()).unwrap_or(vec![default; len])
    };
    let pads = match node.attr("auto_pad") {
        Some(AttrValue::String(s)) if s.as_slice() == b"VALID" => vec![0; 2 * r],
        Some(AttrValue::String(s)) if !s.is_empty() && s.as_slice() != b"NOTSET" => {
            return Err(format!("Conv '{}' uses auto_pad={}", u.node_name, String::from_utf8_lossy(s)))
        }
        _ => ints("pads", 0, 2 * r),
    };
    Ok(ConvGeometry {
        kernel: kernel.to_vec(),
        strides: ints("strides", 1, r),
        pads,
        dilations: ints("dilations", 1, r),
        groups: u.groups.max(1),
    })
}

/// The calibration request giving the input mean of the op that reads a weight (`shape` = the weight's
/// own shape), or why there is none.
pub fn mean_request(g: &Graph, u: &WeightUse, shape: &[usize]) -> Result<CalibRequest, String> {
    let node = g.node(u.node);
    let (input, axis) = match (u.op.as_str(), u.slot) {
        ("Conv", 1) => (0, None),
        ("Gemm", 1) => {
            (0, Some(if node.attr_int("transA").unwrap_or(0) != 0 { FeatureAxis::Index(0) } else { FeatureAxis::Last }))
        }
        ("MatMul", 1) | ("MatMulInteger", 1) => (0, Some(FeatureAxis::Last)),
        (op, slot) => return Err(format!("{op} reading the weight as input {slot} has no per-channel bias")),
    };
    let tensor = node.inputs.get(input).filter(|s| !s.is_empty()).ok_or("the op has no data input")?.clone();
    // Dynamic quantization: the mean of the float activation the integer input was quantized from.
    let tensor =
        if u.op == "MatMulInteger" { crate::score::float_activation(g, &tensor, &u.node_name)? } else { tensor };
    request_for(g, u, shape, tensor, axis)
}

/// How a QOperator op (`QLinearConv`, `QLinearMatMul`, `com.microsoft.QGemm`) dequantizes its data input:
/// `x = (q − zero_point)·scale`, per tensor (inputs 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputDequant {
    pub scale: f64,
    pub zero_point: f64,
}

impl InputDequant {
    /// The mean of the dequantized input from the mean of its integer values (exact: the map is affine).
    pub fn apply(&self, m: InputMean) -> InputMean {
        let d = |v: &[f64]| v.iter().map(|q| (q - self.zero_point) * self.scale).collect();
        match m {
            InputMean::Features(v) => InputMean::Features(d(&v)),
            InputMean::Patches(p) => InputMean::Patches(p.iter().map(|v| d(v)).collect()),
        }
    }
}

/// [`mean_request`] for the QOperator ops, whose data input is an integer tensor: the mean of that tensor
/// (the op's own input, quantization error included) and how to dequantize it. A padded `QLinearConv` pads
/// with the input zero point, the patch sums with integer 0: only a zero point of 0 is exact there.
pub fn quantized_mean_request(
    g: &Graph,
    u: &WeightUse,
    shape: &[usize],
) -> Result<(CalibRequest, InputDequant), String> {
    let node = g.node(u.node);
    let name = node.display_name();
    let axis = match (u.op.as_str(), u.slot) {
        ("QLinearConv", 3) => None,
        ("QLinearMatMul", 3) => Some(FeatureAxis::Last),
        ("QGemm", 3) => {
            Some(if node.attr_int("transA").unwrap_or(0) != 0 { FeatureAxis::Index(0) } else { FeatureAxis::Last })
        }
        (op, slot) => return Err(format!("{op} reading the weight as input {slot} is not a QOperator weight")),
    };
    let input = |i: usize| -> Result<Option<Vec<f64>>, String> {
        let Some(s) = node.inputs.get(i).filter(|s| !s.is_empty()) else { return Ok(None) };
        let t = g
            .constant_source(s)
            .and_then(|id| g.weight(&id))
            .ok_or_else(|| format!("'{s}' of '{name}' is computed at run time"))?;
        let v: Vec<f64> = if t.dtype.is_prunable_float() {
            t.to_f64().map_err(|e| e.to_string())?.iter().copied().collect()
        } else {
            sparsify_ir::quant::read_ints(t).map_err(|e| e.to_string())?.into_iter().map(f64::from).collect()
        };
        match v.as_slice() {
            [x] => Ok(Some(vec![*x])),
            _ => Err(format!("'{s}' of '{name}' is not per tensor")),
        }
    };
    let scale = input(1)?.ok_or_else(|| format!("'{name}' has no input scale"))?[0];
    let zero_point = input(2)?.map_or(0.0, |v| v[0]);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!("input scale of '{name}' is {scale}"));
    }
    let padded = node.attr_ints("pads").is_some_and(|p| p.iter().any(|&x| x != 0))
        || matches!(node.attr("auto_pad"), Some(AttrValue::String(s)) if s.starts_with(b"SAME"));
    if axis.is_none() && padded && zero_point != 0.0 {
        return Err(format!(
            "padded '{name}' with input zero point {zero_point}: the patch mean would count its padding as 0, not \
             the zero point"
        ));
    }
    let tensor = node.inputs.first().filter(|s| !s.is_empty()).ok_or("the op has no data input")?.clone();
    Ok((request_for(g, u, shape, tensor, axis)?, InputDequant { scale, zero_point }))
}

/// The `FeatureSum` (features on `axis`) or, without an axis, the Conv `ConvPatchSum` of `tensor`.
fn request_for(
    g: &Graph,
    u: &WeightUse,
    shape: &[usize],
    tensor: String,
    axis: Option<FeatureAxis>,
) -> Result<CalibRequest, String> {
    if g.constant_source(&tensor).is_some() {
        return Err(format!("the data input '{tensor}' of '{}' is a constant", u.node_name));
    }
    Ok(match axis {
        Some(axis) => CalibRequest::FeatureSum { tensor, axis },
        None => {
            if shape.len() < 3 || (u.out_axis, u.red_axis) != (0, 1) {
                return Err("Conv weight not in [M, C/g, k...] layout".into());
            }
            let geo = conv_geometry(g, u, &shape[2..])?;
            CalibRequest::ConvPatchSum {
                tensor,
                kernel: geo.kernel,
                strides: geo.strides,
                pads: geo.pads,
                dilations: geo.dilations,
                groups: geo.groups,
            }
        }
    })
}

/// Input means of one op: per feature (MatMul / Gemm) or per group and patch column (Conv).
#[derive(Debug, Clone, PartialEq)]
pub enum InputMean {
    Features(Vec<f64>),
    Patches(Vec<Vec<f64>>),
}

impl InputMean {
    /// Means from a `FeatureSum` / `GroupSums` answer.
    pub fn from_stat(stat: &CalibStat) -> Result<InputMean, String> {
        let div = |v: &[f64], rows: u64| v.iter().map(|s| s / rows as f64).collect::<Vec<f64>>();
        let m = match stat {
            CalibStat::FeatureSum { rows: 0, .. } | CalibStat::GroupSums { rows: 0, .. } => {
                return Err("no calibration rows reached the activation".into())
            }
            CalibStat::FeatureSum { sums, rows } => InputMean::Features(div(sums, *rows)),
            CalibStat::GroupSums { sums, rows } => InputMean::Patches(sums.iter().map(|s| div(s, *rows)).collect()),
            _ => return Err("the calibrator answered another statistic".into()),
        };
        let finite = match &m {
            InputMean::Features(v) => v.iter().all(|x| x.is_finite()),
            InputMean::Patches(v) => v.iter().flatten().all(|x| x.is_finite()),
        };
        if !finite {
            return Err("the activation mean is not finite".into());
        }
        Ok(m)
    }
}

/// E\[x\]·(W_before − W_after) per output channel of the op (`out_axis` / `red_axis` in the weight's own
/// layout, values in C order). MatMul / Gemm weights must be 2-D; Conv weights `[M, C/g, k...]`.
pub fn output_shift(
    shape: &[usize],
    out_axis: usize,
    red_axis: usize,
    before: &[f64],
    after: &[f64],
    mean: &InputMean,
) -> Result<Vec<f64>, String> {
    let diff: Vec<f64> = before.iter().zip(after).map(|(b, a)| b - a).collect();
    if before.len() != after.len() {
        return Err("dense and pruned weights differ in size".into());
    }
    expected_output(shape, out_axis, red_axis, &diff, mean)
}

/// E_before\[x\]·W_before − E_after\[x\]·W_after per output channel: the change of the op's expected
/// pre-bias output between two models whose inputs have different means (sequential correction).
pub fn output_shift_between(
    shape: &[usize],
    (out_axis, red_axis): (usize, usize),
    (before, mean_before): (&[f64], &InputMean),
    (after, mean_after): (&[f64], &InputMean),
) -> Result<Vec<f64>, String> {
    let a = expected_output(shape, out_axis, red_axis, before, mean_before)?;
    let b = expected_output(shape, out_axis, red_axis, after, mean_after)?;
    Ok(a.iter().zip(&b).map(|(x, y)| x - y).collect())
}

/// E\[x\]·W per output channel (pre-bias expected output) of a weight `w` in its own layout.
pub fn expected_output(
    shape: &[usize],
    out_axis: usize,
    red_axis: usize,
    w: &[f64],
    mean: &InputMean,
) -> Result<Vec<f64>, String> {
    let before = w;
    if before.len() != shape.iter().product::<usize>() {
        return Err("weight values do not match the shape".into());
    }
    match mean {
        InputMean::Features(m) => {
            if shape.len() != 2 || out_axis == red_axis || out_axis > 1 || red_axis > 1 {
                return Err(format!("{}-D MatMul/Gemm weight (only 2-D weights are corrected)", shape.len()));
            }
            if m.len() != shape[red_axis] {
                return Err(format!("the input has {} features, the weight reduces over {}", m.len(), shape[red_axis]));
            }
            let mut d = vec![0f64; shape[out_axis]];
            for (f, w) in before.iter().enumerate() {
                if *w != 0.0 {
                    let (i, j) = (f / shape[1], f % shape[1]);
                    let (o, k) = if out_axis == 0 { (i, j) } else { (j, i) };
                    d[o] += m[k] * w;
                }
            }
            Ok(d)
        }
        InputMean::Patches(groups) => {
            let rows = shape[0];
            let row_len: usize = shape[1..].iter().product();
            let g = groups.len().max(1);
            if !rows.is_multiple_of(g) || groups.iter().any(|p| p.len() != row_len) {
                return Err(format!("Conv patch means do not match the weight shape {shape:?}"));
            }
            let per = rows / g;
            Ok((0..rows)
                .map(|o| {
                    let p = &groups[o / per];
                    p.iter().zip(&before[o * row_len..][..row_len]).map(|(m, w)| m * w).sum()
                })
                .collect())
        }
    }
}

/// Sequential stages over ops: each stage holds the ops (indices into `ops`, in order) whose input
/// does not depend on an op of a later stage — every op's input is computed by ops already done.
/// `ops[i]` = (the op's node, its input tensor).
pub fn stages(g: &Graph, ops: &[(NodeId, String)]) -> Vec<Vec<usize>> {
    let producers = g.producers();
    let ancestors: Vec<BTreeSet<NodeId>> = ops
        .iter()
        .map(|(_, input)| {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<NodeId> = producers.get(input.as_str()).copied().into_iter().collect();
            while let Some(n) = stack.pop() {
                if seen.insert(n) {
                    stack.extend(g.node(n).inputs.iter().filter_map(|i| producers.get(i.as_str()).copied()));
                }
            }
            seen
        })
        .collect();
    ready_stages(ops.len(), |i, j| ancestors[i].contains(&ops[j].0))
}

/// Group `n` items into sequential stages: a stage holds every pending item (in order) that depends on
/// no other pending item (`depends(i, j)`: item i must wait for item j). A cycle cannot stall it: when
/// nothing is ready, the first pending item goes alone. Shared by bias correction and SparseGPT's
/// sequential mode.
pub fn ready_stages(n: usize, depends: impl Fn(usize, usize) -> bool) -> Vec<Vec<usize>> {
    let mut done = vec![false; n];
    let mut out = Vec::new();
    while done.iter().any(|d| !d) {
        let pending: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        let mut ready: Vec<usize> =
            pending.iter().copied().filter(|&i| pending.iter().all(|&j| j == i || !depends(i, j))).collect();
        if ready.is_empty() {
            ready.push(pending[0]);
        }
        for &i in &ready {
            done[i] = true;
        }
        out.push(ready);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_along_any_axis() {
        // [2, 3, 2], features on axis 1.
        let v: Vec<f64> = (0..12).map(|x| x as f64).collect();
        let (s, rows) = feature_sums(&v, &[2, 3, 2], 1).unwrap();
        assert_eq!(rows, 4);
        assert_eq!(s, vec![0.0 + 1.0 + 6.0 + 7.0, 2.0 + 3.0 + 8.0 + 9.0, 4.0 + 5.0 + 10.0 + 11.0]);
        let (s, rows) = feature_sums(&v, &[2, 3, 2], 2).unwrap();
        assert_eq!((s, rows), (vec![30.0, 36.0], 6));
    }

    #[test]
    fn pair_sums_per_channel() {
        // [2, 3, 2], channels on axis 1: channel c holds positions (b, c, k).
        let cur: Vec<f64> = (0..12).map(|x| x as f64).collect();
        let refv: Vec<f64> = (0..12).map(|x| 2.0 * x as f64 + 1.0).collect();
        let st = channel_pair_sums(&cur, &refv, &[2, 3, 2], 1).unwrap();
        assert_eq!(st.rows, 4);
        assert_eq!(st.sum_cur, vec![0.0 + 1.0 + 6.0 + 7.0, 2.0 + 3.0 + 8.0 + 9.0, 4.0 + 5.0 + 10.0 + 11.0]);
        assert_eq!(st.sum_ref[0], 1.0 + 3.0 + 13.0 + 15.0);
        assert_eq!(st.sq_cur[1], 4.0 + 9.0 + 64.0 + 81.0);
        assert_eq!(st.cross[2], 4.0 * 9.0 + 5.0 * 11.0 + 10.0 * 21.0 + 11.0 * 23.0);
        assert!(channel_pair_sums(&cur, &refv[..11], &[2, 3, 2], 1).is_err());
        assert!(channel_pair_sums(&cur, &refv, &[2, 3, 2], 3).is_err());
    }

    #[test]
    fn patch_sums_match_a_direct_im2col() {
        // N=1, C=2, 3×3, kernel 2×2, pad 1 at the start of each axis, groups 1.
        let vals: Vec<f64> = (0..18).map(|v| (v as f64 * 0.7).cos()).collect();
        let geo = ConvGeometry {
            kernel: vec![2, 2],
            strides: vec![1, 1],
            pads: vec![1, 1, 0, 0],
            dilations: vec![1, 1],
            groups: 1,
        };
        let (s, rows) = conv_patch_sums(&vals, &[1, 2, 3, 3], &geo).unwrap();
        assert_eq!(rows, 9);
        let mut want = vec![0.0; 8];
        for oy in 0..3isize {
            for ox in 0..3isize {
                for c in 0..2 {
                    for ky in 0..2isize {
                        for kx in 0..2isize {
                            let (y, x) = (oy + ky - 1, ox + kx - 1);
                            if (0..3).contains(&y) && (0..3).contains(&x) {
                                want[c * 4 + (ky * 2 + kx) as usize] += vals[c * 9 + (y * 3 + x) as usize];
                            }
                        }
                    }
                }
            }
        }
        for (a, b) in s[0].iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{s:?} vs {want:?}");
        }
    }

    #[test]
    fn shift_per_output_channel() {
        // MatMul W [K=2, N=3] (out axis 1): column n shifts by Σ_k mean_k (before − after)[k, n].
        let before = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let after = [0.0, 2.0, 3.0, 4.0, 0.0, 0.0];
        let m = InputMean::Features(vec![10.0, 100.0]);
        assert_eq!(output_shift(&[2, 3], 1, 0, &before, &after, &m).unwrap(), vec![10.0, 500.0, 600.0]);
        // Gemm transB=1 W [N=3, K=2] (out axis 0).
        assert_eq!(output_shift(&[3, 2], 0, 1, &before, &after, &m).unwrap(), vec![10.0, 0.0, 650.0]);
        // Conv [M=2, C/g=1, 1, 1] with two groups: each output reads its own group's mean.
        let m = InputMean::Patches(vec![vec![2.0], vec![3.0]]);
        assert_eq!(output_shift(&[2, 1, 1, 1], 0, 1, &[1.0, 1.0], &[0.0, 1.0], &m).unwrap(), vec![2.0, 0.0]);
    }
}
