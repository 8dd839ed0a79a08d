//! N:M group arithmetic along one axis of a tensor in standard (C) layout, and the eligibility rule
//! shared by `nm-legalize`, `check` and channel permutation (design notes §6).
//!
//! A tensor of shape `[.., d_axis, ..]` is viewed as `[outer, d_axis, inner]`; the element at
//! `(o, a, i)` has flat index `(o·d_axis + a)·inner + i`. A *group* is `m` consecutive positions along
//! the axis for one `(o, i)`: flat indices `base + (g·m + k)·inner`, `k = 0..m`. For Conv weights
//! `[M, C/g, kH, kW]` with the axis 1 this is "every m input channels of each output channel and kernel
//! position", TensorRT's rule.

use sparsify_ir::{DType, Tensor, WeightInfo};

/// The `[outer, axis, inner]` view of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisView {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

impl AxisView {
    pub fn new(shape: &[usize], axis: usize) -> AxisView {
        AxisView { outer: shape[..axis].iter().product(), len: shape[axis], inner: shape[axis + 1..].iter().product() }
    }

    /// Number of lines along the axis (`outer · inner`).
    pub fn lines(&self) -> usize {
        self.outer * self.inner
    }

    /// Flat index of the first element of line `l` (0 ≤ l < lines), and the stride along the axis.
    pub fn line(&self, l: usize) -> (usize, usize) {
        let (o, i) = (l / self.inner, l % self.inner);
        (o * self.len * self.inner + i, self.inner)
    }

    /// Calls `f(flat indices of the group)` for every group of `m` along the axis, line by line.
    /// Requires `len % m == 0`.
    pub fn for_each_group(&self, m: usize, mut f: impl FnMut(&[usize])) {
        debug_assert!(m > 0 && self.len.is_multiple_of(m));
        let mut idx = vec![0usize; m];
        for l in 0..self.lines() {
            let (base, stride) = self.line(l);
            for g in 0..self.len / m {
                for (k, slot) in idx.iter_mut().enumerate() {
                    *slot = base + (g * m + k) * stride;
                }
                f(&idx);
            }
        }
    }

    pub fn groups(&self, m: usize) -> usize {
        self.lines() * (self.len / m)
    }
}

/// Keep flags for N:M: in every group, the `n` elements ranking highest, where every non-zero element
/// ranks above every zero one (zeros count as pruned, which makes the rule idempotent), then by score,
/// and among equal scores the lower index ranks higher.
pub fn nm_keep(scores: &[f32], nonzero: &[bool], view: AxisView, n: usize, m: usize) -> Vec<bool> {
    let mut keep = vec![false; scores.len()];
    let mut order: Vec<usize> = Vec::with_capacity(m);
    view.for_each_group(m, |g| {
        order.clear();
        order.extend(0..m);
        order.sort_by(|&a, &b| {
            let (ia, ib) = (g[a], g[b]);
            nonzero[ib].cmp(&nonzero[ia]).then(scores[ib].total_cmp(&scores[ia])).then(a.cmp(&b))
        });
        for &k in &order[..n] {
            keep[g[k]] = true;
        }
    });
    keep
}

/// Groups holding more than `n` non-zeros, and the group count.
pub fn nm_violations(nonzero: &[bool], view: AxisView, n: usize, m: usize) -> (usize, usize) {
    let mut bad = 0;
    view.for_each_group(m, |g| {
        if g.iter().filter(|&&i| nonzero[i]).count() > n {
            bad += 1;
        }
    });
    (bad, view.groups(m))
}

/// Σ over groups of the `n` largest scores, zero elements scoring 0: the score N:M keeps.
pub fn nm_retained(scores: &[f32], nonzero: &[bool], view: AxisView, n: usize, m: usize) -> f64 {
    let mut total = 0.0f64;
    let mut vals: Vec<f32> = Vec::with_capacity(m);
    view.for_each_group(m, |g| {
        vals.clear();
        vals.extend(g.iter().map(|&i| if nonzero[i] { scores[i] } else { 0.0 }));
        vals.sort_by(|a, b| b.total_cmp(a));
        total += vals[..n].iter().map(|&v| v as f64).sum::<f64>();
    });
    total
}

/// The axis N:M groups run along for a weight, or why the weight is not eligible.
/// Eligible: no axis conflict, dtype f32/f16/bf16, not depthwise (Conv or ConvTranspose with one input
/// channel per group), reduction dim per group (ConvTranspose: C_in / groups) a multiple of
/// `m`; `strict` also requires output % 8 == 0 and reduction (per group) % 16 == 0 (apex ASP).
pub fn nm_eligibility(info: &WeightInfo, t: &Tensor, m: usize, strict: bool) -> Result<usize, String> {
    if m == 0 {
        return Err("m must be at least 1".into());
    }
    if let Some(c) = &info.conflict {
        return Err(format!("axis conflict: {c}"));
    }
    match t.dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::I8 | DType::U8 => {}
        DType::F64 => return Err("dtype f64: sparse tensor cores take only f32/f16/bf16 weights".into()),
        d => return Err(format!("dtype {} is not a type sparse tensor cores accept (f32/f16/bf16/int8)", d.name())),
    }
    let shape = t.shape();
    let (out, red, g) = (info.out_axis(), info.red_axis(), info.groups().max(1));
    if red >= shape.len() || out >= shape.len() {
        return Err(format!("axes (out {out}, reduction {red}) do not fit shape {:?}", t.dims));
    }
    // Conv weights hold C/g along the reduction axis already; ConvTranspose holds all C (groups of C/g).
    let per_group = match info.op() {
        "ConvTranspose" if !shape[red].is_multiple_of(g) => {
            return Err(format!("reduction axis {red} has {} channels, not divisible by {g} groups", shape[red]))
        }
        "ConvTranspose" => shape[red] / g,
        _ => shape[red],
    };
    if per_group == 1 && g > 1 {
        return Err("depthwise conv (one input channel per group): nothing to group along the reduction axis".into());
    }
    if per_group % m != 0 {
        let pg = if g > 1 { " per group" } else { "" };
        return Err(format!("reduction axis {red} has {per_group} channels{pg}, not a multiple of m={m}"));
    }
    if strict {
        if !shape[out].is_multiple_of(8) {
            return Err(format!("strict: output axis {out} has {} channels, not a multiple of 8", shape[out]));
        }
        if per_group % 16 != 0 {
            return Err(format!(
                "strict: reduction axis {red} has {per_group} channels per group, not a multiple of 16"
            ));
        }
    }
    Ok(red)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_axis_stride() {
        // shape [2, 4, 3], axis 1: lines (o, i), groups of 4 along the middle axis
        let v = AxisView::new(&[2, 4, 3], 1);
        let mut seen = Vec::new();
        v.for_each_group(4, |g| seen.push(g.to_vec()));
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], vec![0, 3, 6, 9]);
        assert_eq!(seen[1], vec![1, 4, 7, 10]);
        assert_eq!(seen[3], vec![12, 15, 18, 21]);
    }

    #[test]
    fn keep_prefers_nonzero_then_score_then_lower_index() {
        let v = AxisView::new(&[1, 4], 1);
        let keep = nm_keep(&[1.0, 1.0, 1.0, 0.5], &[true; 4], v, 2, 4);
        assert_eq!(keep, vec![true, true, false, false]);
        // a zero element with a high (stale) score ranks below non-zeros
        let keep = nm_keep(&[9.0, 0.0, 0.0, 1.0], &[false, true, true, true], v, 2, 4);
        assert_eq!(keep, vec![false, true, false, true]);
    }

    #[test]
    fn violations_and_retained() {
        let v = AxisView::new(&[2, 4], 1);
        let nz = [true, true, true, false, true, false, false, true];
        assert_eq!(nm_violations(&nz, v, 2, 4), (1, 2));
        let s = [4.0, 3.0, 2.0, 9.0, 1.0, 5.0, 0.0, 2.0];
        assert_eq!(nm_retained(&s, &nz, v, 2, 4), 7.0 + 3.0);
    }
}
