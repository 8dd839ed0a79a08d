//! RIA, relative importance and activations (Zhang et al., ICLR 2024), used by `score{method=ria}`:
//!
//! S_ij = (|W_ij| / Σ_row |W| + |W_ij| / Σ_col |W|) · ‖X_j‖₂^a
//!
//! in the op's [output, reduction] view. The **row** of an element is its output channel (every element
//! with the same index on the weight's output axis: for a Conv all input channels and kernel positions
//! of that filter). Its **column** is every element that reads the same input — the same input feature
//! j (for a grouped Conv, channel j of the element's group, so the column runs over that group's
//! filters only) at the same position on every other axis (kernel position; a batched MatMul's leading
//! axes) — across output channels. ‖X_j‖₂ is Wanda's activation norm (`score_math::wanda`); a zero row
//! or column sum (all its weights zero) contributes 0.

use crate::score_math::{channel_of_each, check_norms, stride, FeatureMap};
use ndarray::ArrayD;

/// RIA scores of `w` given the consumer's feature norms ‖X_j‖₂ (not squared) and the exponent `a`.
pub fn ria(w: &ArrayD<f32>, map: &FeatureMap, norms: &[f64], a: f64) -> Result<ArrayD<f32>, String> {
    let shape = w.shape().to_vec();
    check_norms(map, &shape, norms)?;
    let want = map.features(&shape);
    let feat = map.feature_of_each(&shape)?;
    let out = channel_of_each(&shape, map.out_axis);
    // Index of each element among the axes other than output and reduction.
    let others: Vec<usize> = (0..shape.len()).filter(|&x| x != map.out_axis && x != map.red_axis).collect();
    let n_other: usize = others.iter().map(|&x| shape[x]).product();
    let w = w.as_standard_layout();
    let vals: Vec<f64> = w.iter().map(|x| x.abs() as f64).collect();
    let column = |f: usize| {
        let mut o = 0usize;
        for &x in &others {
            o = o * shape[x] + (f / stride(&shape, x)) % shape[x];
        }
        feat[f] * n_other + o
    };
    let mut row_sum = vec![0f64; shape[map.out_axis]];
    let mut col_sum = vec![0f64; want * n_other.max(1)];
    let cols: Vec<usize> = (0..vals.len()).map(column).collect();
    for (f, v) in vals.iter().enumerate() {
        row_sum[out[f]] += v;
        col_sum[cols[f]] += v;
    }
    let rel = |v: f64, s: f64| if s > 0.0 { v / s } else { 0.0 };
    let powed: Vec<f64> = norms.iter().map(|n| n.powf(a)).collect();
    let scores: Vec<f32> = vals
        .iter()
        .enumerate()
        .map(|(f, &v)| ((rel(v, row_sum[out[f]]) + rel(v, col_sum[cols[f]])) * powed[feat[f]]) as f32)
        .collect();
    ArrayD::from_shape_vec(shape, scores).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn matmul_rows_are_output_columns() {
        // MatMul W [K=2, N=2]: output channel n is the column W[:, n], input feature k the row W[k, :].
        let map = FeatureMap { out_axis: 1, red_axis: 0, conv_groups: 1 };
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 3.0, -1.0, 0.0]).unwrap();
        let s = ria(&w, &map, &[4.0, 9.0], 0.5).unwrap();
        // (0,0): 1/(1+1) + 1/(1+3) = 0.75, ·2. (0,1): 3/3 + 3/4 = 1.75, ·2. (1,0): 1/2 + 1/1 = 1.5, ·3.
        assert_eq!(s.as_slice().unwrap(), &[1.5, 3.5, 4.5, 0.0]);
    }

    #[test]
    fn grouped_conv_columns_stay_in_their_group() {
        // Conv [M=2, C/g=1, 1, 1], groups 2 (depthwise): each column holds one element → term 1.
        let map = FeatureMap { out_axis: 0, red_axis: 1, conv_groups: 2 };
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1]), vec![2.0f32, -5.0]).unwrap();
        let s = ria(&w, &map, &[1.0, 4.0], 1.0).unwrap();
        assert_eq!(s.as_slice().unwrap(), &[2.0, 8.0]);
    }
}
