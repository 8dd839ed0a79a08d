//! N:M group arithmetic along one axis of a tensor in standard (C) layout, and the eligibility rule
//! shared by `nm-legalize`, `check` and channel permutation (design notes §6).
//!
//! A tensor of shape `[.., d_axis, ..]` is viewed as `[outer, d_axis, inner]`; the element at
//! `(o, a, i)` has flat index `(o·d_axis + a)·inner + i`. A *group* is `m` consecutive positions along
//! the axis for one `(o, i)`: flat indices `base + (g·m + k)·inner`, `k = 0..m`. For Conv weights
//! `[M, C/g, kH, kW]` with the axis 1 this is "every m input channels of each output channel and kernel
//! position", TensorRT's rule.

use crate::select::f32_key;
use rayon::prelude::*;
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
    let keys: Vec<u64> =
        scores.iter().zip(nonzero).map(|(&s, &nz)| (u64::from(nz) << 32) | u64::from(f32_key(s))).collect();
    nm_keep_keys(&keys, view, n, m)
}

/// [`nm_keep`] over precomputed keys (higher key ranks higher; see `scores::selection_keys`): in every
/// group the `n` elements of highest key stay, ties keeping the lower position. Branch-free rank count
/// per group (m² comparisons), groups visited block by block so that the `m` rows of a group along the
/// axis are read contiguously across `inner`.
pub fn nm_keep_keys(keys: &[u64], view: AxisView, n: usize, m: usize) -> Vec<bool> {
    nm_keep_by(keys.len(), |i| keys[i], view, n, m)
}

/// [`nm_keep_keys`] with the key of element `i` given by `key(i)` (`len` elements).
pub fn nm_keep_by(len: usize, key: impl Fn(usize) -> u64 + Sync, view: AxisView, n: usize, m: usize) -> Vec<bool> {
    debug_assert!(m > 0 && view.len.is_multiple_of(m));
    let mut keep = vec![false; len];
    let inner = view.inner;
    let block = m * inner;
    if block == 0 {
        return keep;
    }
    // A block = the m rows of one group along the axis, across `inner`: contiguous, independent.
    keep.par_chunks_mut(block).enumerate().for_each(|(blk, kb)| {
        let key = |k: usize, i: usize| key(blk * block + k * inner + i);
        // Common group sizes get fixed-size arrays (unrolled rank counts); the result is the same.
        match m {
            2 => keep_block::<2>(kb, inner, n, key),
            4 => keep_block::<4>(kb, inner, n, key),
            8 => keep_block::<8>(kb, inner, n, key),
            16 => keep_block::<16>(kb, inner, n, key),
            _ => {
                let mut g = vec![0u64; m];
                for i in 0..inner {
                    for (k, slot) in g.iter_mut().enumerate() {
                        *slot = key(k, i);
                    }
                    for (a, r) in ranks(&g).enumerate() {
                        kb[a * inner + i] = r < n;
                    }
                }
            }
        }
    });
    keep
}

/// [`nm_keep_by`] and, in the same visit of each group, the weight's [`nm_retained_vals`] total over the
/// values `val(i)` (scores with zeros as 0.0) — equal bit for bit when `val` orders like `key` up to ties
/// between equal values: per group the `n` values of lowest rank added in rank order in f64, group sums
/// added per block, block totals in block order. Group sizes other than 2, 4, 8 and 16 take the two
/// separate passes.
pub fn nm_keep_retained_by(
    len: usize,
    key: impl Fn(usize) -> u64 + Sync,
    val: impl Fn(usize) -> f32 + Sync,
    view: AxisView,
    n: usize,
    m: usize,
) -> (Vec<bool>, f64) {
    let inner = view.inner;
    if m * inner == 0 || ![2, 4, 8, 16].contains(&m) {
        let keep = nm_keep_by(len, &key, view, n, m);
        let vals: Vec<f32> = (0..len).map(&val).collect();
        return (keep, nm_retained_vals(&vals, view, n, m));
    }
    let mut keep = vec![false; len];
    let parts: Vec<f64> = keep
        .par_chunks_mut(m * inner)
        .enumerate()
        .map(|(blk, kb)| {
            let block = m * inner;
            let key = |k: usize, i: usize| key(blk * block + k * inner + i);
            let val = |k: usize, i: usize| val(blk * block + k * inner + i);
            // Blocks are whole: the axis length is a multiple of m (eligibility).
            match m {
                2 => keep_retained_block::<2>(kb, inner, n, key, val),
                4 => keep_retained_block::<4>(kb, inner, n, key, val),
                8 => keep_retained_block::<8>(kb, inner, n, key, val),
                _ => keep_retained_block::<16>(kb, inner, n, key, val),
            }
        })
        .collect();
    (keep, parts.iter().sum())
}

/// [`keep_block`] that also returns the block's retained total (see [`retained_block`]).
#[inline(always)]
fn keep_retained_block<const M: usize>(
    kb: &mut [bool],
    inner: usize,
    n: usize,
    key: impl Fn(usize, usize) -> u64,
    val: impl Fn(usize, usize) -> f32,
) -> f64 {
    let mut total = 0.0f64;
    for i in 0..inner {
        let g: [u64; M] = std::array::from_fn(|k| key(k, i));
        let mut top = [0f32; M];
        for (a, r) in ranks(&g).enumerate() {
            kb[a * inner + i] = r < n;
            top[r] = val(a, i);
        }
        total += top[..n].iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

/// The rank of each key of a group (0 = kept first): higher keys first, equal keys in position order.
/// Branch-free (m² comparisons); the ranks are a permutation of `0..m`.
#[inline(always)]
fn ranks<T: PartialOrd + Copy>(g: &[T]) -> impl Iterator<Item = usize> + '_ {
    g.iter().enumerate().map(move |(a, &ka)| {
        g.iter().enumerate().map(|(b, &kb)| usize::from((kb > ka) | ((kb == ka) & (b < a)))).sum::<usize>()
    })
}

/// [`nm_keep_by`] for one block with a group size known at compile time.
#[inline(always)]
fn keep_block<const M: usize>(kb: &mut [bool], inner: usize, n: usize, key: impl Fn(usize, usize) -> u64) {
    for i in 0..inner {
        let g: [u64; M] = std::array::from_fn(|k| key(k, i));
        for (a, r) in ranks(&g).enumerate() {
            kb[a * inner + i] = r < n;
        }
    }
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
    let vals: Vec<f32> = scores.iter().zip(nonzero).map(|(&s, &nz)| if nz { s } else { 0.0 }).collect();
    nm_retained_vals(&vals, view, n, m)
}

/// [`nm_retained`] over values with zeros already applied. Per group, the `n` largest (`total_cmp`) are
/// summed in descending order in f64 — the same additions, in the same order, as sorting each group;
/// group sums are added up per block (the `m` rows of one group along the axis, across the inner
/// dimensions) and the block totals in block order.
pub fn nm_retained_vals(vals: &[f32], view: AxisView, n: usize, m: usize) -> f64 {
    let inner = view.inner;
    let block = m * inner;
    if block == 0 {
        return 0.0;
    }
    // Per block of groups (the m rows of one group along the axis), summed in order; blocks in parallel,
    // their totals added in block order (deterministic whatever the thread count).
    let parts: Vec<f64> = vals
        .par_chunks(block)
        .filter(|c| c.len() == block)
        .map(|vb| match m {
            2 => retained_block::<2>(vb, inner, n),
            4 => retained_block::<4>(vb, inner, n),
            8 => retained_block::<8>(vb, inner, n),
            16 => retained_block::<16>(vb, inner, n),
            _ => {
                let (mut total, mut top) = (0.0f64, vec![0f32; m]);
                for i in 0..inner {
                    let gv: Vec<f32> = (0..m).map(|k| vb[k * inner + i]).collect();
                    let g: Vec<u32> = gv.iter().map(|&v| f32_key(v)).collect();
                    ranks(&g).zip(&gv).for_each(|(r, &v)| top[r] = v);
                    total += top[..n].iter().map(|&v| v as f64).sum::<f64>();
                }
                total
            }
        })
        .collect();
    parts.iter().sum()
}

/// The retained total of one block with a group size known at compile time: per group, the `n`
/// values of lowest rank added in rank order.
#[inline(always)]
fn retained_block<const M: usize>(vb: &[f32], inner: usize, n: usize) -> f64 {
    let mut total = 0.0f64;
    for i in 0..inner {
        let gv: [f32; M] = std::array::from_fn(|k| vb[k * inner + i]);
        let g: [u32; M] = std::array::from_fn(|k| f32_key(gv[k]));
        let mut top = [0f32; M];
        ranks(&g).zip(&gv).for_each(|(r, &v)| top[r] = v);
        total += top[..n].iter().map(|&v| v as f64).sum::<f64>();
    }
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

    /// The plain definition: sort each group's positions by (non-zero, score) descending, lower index first.
    fn reference_keep(scores: &[f32], nonzero: &[bool], view: AxisView, n: usize, m: usize) -> Vec<bool> {
        let mut keep = vec![false; scores.len()];
        view.for_each_group(m, |g| {
            let mut order: Vec<usize> = (0..m).collect();
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

    proptest::proptest! {
        #[test]
        fn fast_keep_matches_reference(
            shape in proptest::sample::select(vec![(2usize, 8usize, 3usize), (1, 4, 1), (3, 12, 2), (1, 16, 5)]),
            vals in proptest::collection::vec((0u8..5, proptest::bool::weighted(0.8)), 16 * 5 * 3),
            // m in {2, 4, 8, 16} take the fixed-size kernels, 3 and 6 the general one.
            nm in proptest::sample::select(vec![(1usize, 2usize), (2, 4), (1, 4), (3, 4), (2, 8), (5, 16), (1, 3), (2, 6)]),
        ) {
            let (outer, len, inner) = shape;
            let (n, m) = nm;
            proptest::prop_assume!(len % m == 0);
            let total = outer * len * inner;
            let scores: Vec<f32> = vals[..total].iter().map(|v| v.0 as f32 * 0.5).collect();
            let nz: Vec<bool> = vals[..total].iter().map(|v| v.1).collect();
            let view = AxisView { outer, len, inner };
            proptest::prop_assert_eq!(nm_keep(&scores, &nz, view, n, m), reference_keep(&scores, &nz, view, n, m));
        }
    }

    #[test]
    fn retained_matches_sorting_groups() {
        let view = AxisView { outer: 3, len: 48, inner: 5 };
        let vals: Vec<f32> = (0..720).map(|i| ((i * 37) % 11) as f32 * 0.1 + (i % 3) as f32 * 1e-3).collect();
        // Fixed-size kernels (m = 2, 4, 8, 16) and the general one (3, 6).
        for (n, m) in [(2, 4), (1, 2), (4, 8), (5, 16), (1, 3), (4, 6)] {
            let mut want = 0.0f64;
            view.for_each_group(m, |g| {
                let mut v: Vec<f32> = g.iter().map(|&i| vals[i]).collect();
                v.sort_by(|a, b| b.total_cmp(a));
                want += v[..n].iter().map(|&x| x as f64).sum::<f64>();
            });
            assert_eq!(nm_retained_vals(&vals, view, n, m).to_bits(), want.to_bits(), "{n}:{m}");
        }
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
