//! The score analysis: one non-negative importance value per weight element, same shape as the weight.
//! Written by the `score` pass, read by `mask`, `nm-legalize` and `block-sparsify`. When absent, those
//! passes fall back to magnitude (|w|) and say so in their notes.
//!
//! Scores that are a function of the weight alone (`l1` = |w|, `l2` = w²) are not stored: the analysis
//! records the recipe ([`WeightScores::derived`]) and readers compute them from the weight's current
//! bytes, in its own dtype, one weight at a time ([`ScoreSrc`]). Pruning zeroes the weight, so a derived
//! score of a pruned element is 0 without any update — exactly what the stored arrays get explicitly.
//! Wanda scores, |w_ij|·‖X_j‖₂, are derived the same way from the weight and one norm per input feature
//! ([`WeightScores::wanda`]): the analysis holds a vector per weight, not a score per element, so a
//! large model's scores never sit in memory at once. A pruned element's Wanda score is |0|·‖X_j‖ = 0,
//! as a stored array would be updated. Only scores that are not element-wise functions of the weight
//! (RIA's row and column sums, scores set directly) are held as arrays ([`WeightScores::scores`]).

use crate::score_math::{stride, FeatureMap, Method};
use crate::select::{f32_key, Candidates};
use ndarray::ArrayD;
use rayon::prelude::*;
use sparsify_ir::{Elems, Graph, Tensor, TensorError, WeightId};
use sparsify_pm::{Analysis, Effects};
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct WeightScores {
    /// "l1", "l2" or "wanda".
    pub method: String,
    /// Materialised scores (Wanda, or scores set directly), standard layout.
    pub scores: BTreeMap<WeightId, ArrayD<f32>>,
    /// Weights scored by a function of their current values: `L1` (|w|) or `L2` (w²), computed on read.
    pub derived: BTreeMap<WeightId, Method>,
    /// Weights scored by Wanda: the element → feature map and one activation norm per feature
    /// (`‖X_j‖₂`, f64); the score of element `i` is `(|w_i| as f64 · norms[feature(i)]) as f32`.
    pub wanda: BTreeMap<WeightId, FeatureNorms>,
}

/// The per-feature activation norms of one Wanda-scored weight.
#[derive(Debug, Clone)]
pub struct FeatureNorms {
    pub map: FeatureMap,
    pub norms: Vec<f64>,
}

impl Analysis for WeightScores {
    const INVALIDATED_BY: Effects = Effects(Effects::WEIGHT_VALUES.0 | Effects::WEIGHT_SHAPES.0 | Effects::TOPOLOGY.0);
}

impl WeightScores {
    /// Whether the analysis has scores for `id` (stored or derived).
    pub fn contains(&self, id: &WeightId) -> bool {
        self.scores.contains_key(id) || self.derived.contains_key(id) || self.wanda.contains_key(id)
    }

    /// Number of scored weights.
    pub fn len(&self) -> usize {
        self.scores.len() + self.derived.len() + self.wanda.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The scores of `id` as an array (derived ones computed now from the weight in `g`).
    pub fn get(&self, g: &Graph, id: &WeightId) -> Option<ArrayD<f32>> {
        if let Some(a) = self.scores.get(id) {
            return Some(a.clone());
        }
        let t = weight_view(g, id).ok()?;
        let src = ScoreSrc::of(Some(self), &t, id)?;
        let mut v = vec![0f32; t.numel().ok()?];
        src.for_each(&t, |i, s, _| v[i] = s).ok()?;
        ArrayD::from_shape_vec(t.shape(), v).ok()
    }

    /// Turn a derived Wanda entry into a stored array (for passes that move elements around, such as a
    /// permutation of the reduction axis, after which the per-feature norms would no longer line up).
    pub fn materialize(&mut self, g: &Graph, id: &WeightId) {
        if self.wanda.contains_key(id) {
            if let Some(a) = self.get(g, id) {
                self.wanda.remove(id);
                self.scores.insert(id.clone(), a);
            }
        }
    }
}

/// Where Wanda's feature index of a flat element index comes from (see `FeatureMap::feature_of_each`).
#[derive(Debug, Clone, Copy)]
pub struct FeatureIndex {
    red_stride: usize,
    red_dim: usize,
    /// (output stride, output dim, output channels per group) for grouped convolutions.
    groups: Option<(usize, usize, usize)>,
}

impl FeatureIndex {
    fn new(map: &FeatureMap, shape: &[usize]) -> Option<FeatureIndex> {
        let rank = shape.len();
        if map.out_axis >= rank || map.red_axis >= rank || map.out_axis == map.red_axis {
            return None;
        }
        let g = map.conv_groups.max(1);
        let out_dim = shape[map.out_axis];
        let groups = (g > 1).then(|| (stride(shape, map.out_axis), out_dim, (out_dim / g).max(1)));
        Some(FeatureIndex { red_stride: stride(shape, map.red_axis), red_dim: shape[map.red_axis], groups })
    }

    #[inline(always)]
    fn of(&self, f: usize) -> usize {
        let j = (f / self.red_stride) % self.red_dim;
        match self.groups {
            None => j,
            Some((so, od, per)) => ((f / so) % od / per) * self.red_dim + j,
        }
    }
}

/// Where one weight's scores come from, read element by element.
#[derive(Debug, Clone, Copy)]
pub enum ScoreSrc<'a> {
    /// A stored score array (flat, standard layout).
    Array(&'a [f32]),
    /// |w| (`squared = false`) or w² of the weight's current values, computed in f32 from its own dtype
    /// (f64 weights rounded to f32 first, as `Tensor::to_f32` does).
    Magnitude { squared: bool },
    /// Wanda: `(|w| as f64 · norms[feature]) as f32`, exactly as `score_math::wanda` computes it.
    Wanda { norms: &'a [f64], index: FeatureIndex },
}

impl<'a> ScoreSrc<'a> {
    /// The source for `id`: stored array, derived recipe, or `None` when the analysis lacks the weight
    /// (or the stored array's shape disagrees with the weight).
    pub fn of(scores: Option<&'a WeightScores>, t: &Tensor, id: &WeightId) -> Option<ScoreSrc<'a>> {
        let s = scores?;
        if let Some(a) = s.scores.get(id) {
            return (a.shape() == t.shape().as_slice()).then_some(()).and(a.as_slice().map(ScoreSrc::Array));
        }
        if let Some(w) = s.wanda.get(id) {
            let index = FeatureIndex::new(&w.map, &t.shape())?;
            return (w.norms.len() == w.map.features(&t.shape())).then_some(ScoreSrc::Wanda { norms: &w.norms, index });
        }
        s.derived.get(id).map(|m| ScoreSrc::Magnitude { squared: *m == Method::L2 })
    }

    /// Visit `(i, score, weight is zero)` for every element of `t` (same length as the source).
    #[inline]
    pub fn for_each(&self, t: &Tensor, mut f: impl FnMut(usize, f32, bool)) -> Result<(), TensorError> {
        let e = elems(t)?;
        match *self {
            ScoreSrc::Array(a) => e.for_each_f32(|i, _, z| f(i, a[i], z)),
            ScoreSrc::Magnitude { squared: false } => e.for_each_f32(|i, x, z| f(i, x.abs(), z)),
            ScoreSrc::Magnitude { squared: true } => e.for_each_f32(|i, x, z| f(i, x * x, z)),
            ScoreSrc::Wanda { norms, index } => {
                e.for_each_f32(|i, x, z| f(i, ((x.abs() as f64) * norms[index.of(i)]) as f32, z))
            }
        }
        Ok(())
    }
}

impl ScoreSrc<'_> {
    /// [`ScoreSrc::for_each`] over elements `start..start + len` of `e` (indices passed relative to `start`).
    #[inline]
    fn for_each_in(&self, e: Elems<'_>, start: usize, len: usize, mut f: impl FnMut(usize, f32, bool)) {
        let e = e.slice(start, start + len);
        match *self {
            ScoreSrc::Array(a) => {
                let a = &a[start..start + len];
                e.for_each_f32(|i, _, z| f(i, a[i], z))
            }
            ScoreSrc::Magnitude { squared: false } => e.for_each_f32(|i, x, z| f(i, x.abs(), z)),
            ScoreSrc::Magnitude { squared: true } => e.for_each_f32(|i, x, z| f(i, x * x, z)),
            ScoreSrc::Wanda { norms, index } => {
                e.for_each_f32(|i, x, z| f(i, ((x.abs() as f64) * norms[index.of(start + i)]) as f32, z))
            }
        }
    }
}

fn elems(t: &Tensor) -> Result<Elems<'_>, TensorError> {
    t.elems().ok_or_else(|| TensorError::Unsupported { name: t.name.clone(), dtype: t.dtype.name() })
}

/// |w| or w² of every element, flat, computed from the weight's own dtype.
pub fn magnitude_vec(t: &Tensor, squared: bool) -> Result<Vec<f32>, TensorError> {
    let mut v = vec![0f32; t.numel()?];
    ScoreSrc::Magnitude { squared }.for_each(t, |i, s, _| v[i] = s)?;
    Ok(v)
}

/// Selection keys of one weight, one `u64` per element, ordered as the pruning order wants: every
/// already-zero element below every non-zero one, then by score (`total_cmp`). Returns the keys and the
/// number of key bits used (32 when every score is non-negative, which lets a radix select finish in two
/// 16-bit passes; 33 otherwise), and the zero count.
pub fn selection_keys(src: ScoreSrc<'_>, t: &Tensor) -> Result<(Vec<u64>, u32, usize), TensorError> {
    let e = elems(t)?;
    let mut keys = vec![0u64; e.len()];
    // Chunks in parallel: each returns (any score with the sign bit set, zero count).
    let (negative, zeros) = keys
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, ks)| {
            let (mut neg, mut zeros) = (false, 0usize);
            src.for_each_in(e, c * CHUNK, ks.len(), |j, s, z| {
                let b = s.to_bits();
                neg |= b >> 31 != 0;
                zeros += usize::from(z);
                ks[j] = (u64::from(!z) << 31) | u64::from(b);
            });
            (neg, zeros)
        })
        .reduce(|| (false, 0), |a, b| (a.0 | b.0, a.1 + b.1));
    if !negative {
        return Ok((keys, 32, zeros));
    }
    // Some score has its sign bit set (a negative score or -0): use the full total-order key.
    keys.par_chunks_mut(CHUNK).enumerate().for_each(|(c, ks)| {
        src.for_each_in(e, c * CHUNK, ks.len(), |j, s, z| ks[j] = (u64::from(!z) << 32) | u64::from(f32_key(s)))
    });
    Ok((keys, 33, zeros))
}

/// A weight's values as a float tensor the score readers can walk: the tensor itself for float weights,
/// a dequantized f32 copy, `(q − zp)·scale`, for quantized ones (zero exactly where `q = zp`, so
/// magnitude, Wanda and the zero-first rule see the weight the model computes with).
pub fn weight_view<'g>(g: &'g Graph, id: &WeightId) -> Result<Cow<'g, Tensor>, TensorError> {
    let t =
        g.weight(id).ok_or_else(|| TensorError::Invalid { name: id.name().to_string(), what: "not found".into() })?;
    if g.weight_quant(id)?.is_none() {
        return Ok(Cow::Borrowed(t));
    }
    let (vals, _) = g.weight_values(id)?.as_standard_layout().into_owned().into_raw_vec_and_offset();
    Ok(Cow::Owned(Tensor::from_f32(t.name.clone(), t.dims.clone(), &vals)?))
}

/// Selection keys of a magnitude-scored f32 weight, computed from its bytes when asked (no key vector):
/// the same keys as [`selection_keys`] gives (already-zero elements first, then |w| or w²), 32 bits.
#[derive(Debug, Clone)]
pub struct MagKeys {
    bytes: bytes::Bytes,
    squared: bool,
}

impl MagKeys {
    /// The fast keys for `src` over `t`, when `src` is a magnitude score and `t` holds f32.
    pub fn of(src: &ScoreSrc<'_>, t: &Tensor) -> Option<MagKeys> {
        match (src, t.dtype) {
            (ScoreSrc::Magnitude { squared }, sparsify_ir::DType::F32) => {
                Some(MagKeys { bytes: t.bytes().clone(), squared: *squared })
            }
            _ => None,
        }
    }

    /// The score of element `i`: |w| or w² (as `ScoreSrc::Magnitude` computes it).
    #[inline(always)]
    pub fn score(&self, i: usize) -> f32 {
        let x = f32::from_bits(self.bits(i));
        if self.squared {
            x * x
        } else {
            x.abs()
        }
    }

    /// Whether the keys are of w² (else |w|).
    pub fn squared(&self) -> bool {
        self.squared
    }

    /// The key of an element with bits `b` (what [`MagKeys::key`] reads from the weight), for keys of
    /// w² when `squared`; every key fits in 32 bits. Loops call it with a constant `squared` so that
    /// the choice is made once, outside them.
    #[inline(always)]
    pub fn key32(b: u32, squared: bool) -> u32 {
        let x = f32::from_bits(b);
        let s = if squared { x * x } else { x.abs() };
        (u32::from(b << 1 != 0) << 31) | s.to_bits()
    }

    #[inline(always)]
    fn key_of(b: u32, squared: bool) -> u64 {
        u64::from(MagKeys::key32(b, squared))
    }

    /// The key of element `i`.
    #[inline(always)]
    pub fn key(&self, i: usize) -> u64 {
        MagKeys::key_of(self.bits(i), self.squared)
    }

    /// The bits of element `i`.
    #[inline(always)]
    fn bits(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    }

    fn words(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
    }
}

impl Candidates for MagKeys {
    fn len(&self) -> usize {
        self.bytes.len() / 4
    }
    fn scan(&self, mut f: impl FnMut(usize, u64)) {
        let sq = self.squared;
        self.words().enumerate().for_each(|(i, b)| f(i, MagKeys::key_of(b, sq)));
    }
    fn sample(&self, m: usize) -> Option<Vec<u64>> {
        Some(crate::select::sample_positions(self.len(), m).map(|i| self.key(i)).collect())
    }
    fn band(&self, lo: u64, hi: u64) -> (usize, usize, Vec<u64>) {
        // Read in place whatever the bytes' alignment (inline tensors sit anywhere in the file).
        let (words, _) = self.bytes.as_chunks::<4>();
        // Keys use 32 bits: a band starting above them is empty, one ending above them is open.
        let Ok(lo) = u32::try_from(lo) else { return (words.len(), 0, Vec::new()) };
        let hi = u32::try_from(hi).unwrap_or(u32::MAX);
        match self.squared {
            true => crate::select::band_of(words, lo, hi, |w| MagKeys::key32(u32::from_le_bytes(*w), true)),
            false => crate::select::band_of(words, lo, hi, |w| MagKeys::key32(u32::from_le_bytes(*w), false)),
        }
    }
    fn histogram(&self, hist: &mut [usize], shift: u32, mask: u64, filter: Option<(u32, u64)>) {
        const PAR: usize = 1 << 18;
        let sq = self.squared;
        // One histogram per rayon fold (a few per thread), not one per chunk.
        let partial = self
            .bytes
            .par_chunks(4 * PAR)
            .fold(
                || vec![0usize; hist.len()],
                |mut h, c| {
                    let words =
                        c.chunks_exact(4).map(|w| MagKeys::key_of(u32::from_le_bytes(w.try_into().unwrap()), sq));
                    match filter {
                        None => words.for_each(|x| h[((x >> shift) & mask) as usize] += 1),
                        Some((hi, prefix)) => {
                            words.filter(|x| x >> hi == prefix).for_each(|x| h[((x >> shift) & mask) as usize] += 1)
                        }
                    }
                    h
                },
            )
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            });
        if let Some(p) = partial {
            hist.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
        }
    }
}

/// Elements per parallel work item.
const CHUNK: usize = 1 << 18;

/// Scores for one weight: from the analysis when present, else |w|. Errors on NaN/Inf weights.
pub fn scores_or_magnitude(
    g: &Graph,
    scores: Option<&WeightScores>,
    id: &WeightId,
) -> Result<ArrayD<f32>, TensorError> {
    if let Some(s) = scores.and_then(|s| s.scores.get(id)) {
        return Ok(s.clone());
    }
    if let Some(a) = scores.filter(|s| s.wanda.contains_key(id)).and_then(|s| s.get(g, id)) {
        return Ok(a);
    }
    let t = weight_view(g, id)?;
    let squared = scores.and_then(|s| s.derived.get(id)).is_some_and(|m| *m == Method::L2);
    if !scores.is_some_and(|s| s.derived.contains_key(id)) {
        t.check_finite()?;
    }
    let v = magnitude_vec(&t, squared)?;
    ArrayD::from_shape_vec(t.shape(), v).map_err(|e| TensorError::Invalid { name: t.name.clone(), what: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_keys_equal_the_key_vector() {
        // Zeros of both signs, denormals, ties, large and negative values.
        let mut vals = vec![0.0f32, -0.0, 1e-45, -1e-45, 3.5, -3.5, 3.5, f32::MAX, -f32::MAX, 1e-20, -2.0];
        vals.extend((0..5000).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3));
        let t = Tensor::from_f32("w", vec![vals.len() as i64], &vals).unwrap();
        for squared in [false, true] {
            let src = ScoreSrc::Magnitude { squared };
            let mk = MagKeys::of(&src, &t).unwrap();
            let (keys, bits, _) = selection_keys(src, &t).unwrap();
            assert_eq!(bits, 32);
            let fast: Vec<u64> = (0..vals.len()).map(|i| mk.key(i)).collect();
            assert_eq!(fast, keys, "squared: {squared}");
            let mut scanned = Vec::new();
            mk.scan(|_, x| scanned.push(x));
            assert_eq!(scanned, keys);
            for k in [0, 1, 2, 7, 2500, vals.len()] {
                use crate::select::{band_cut, radix_cut, select_cut, KeySlice};
                assert_eq!(select_cut(&mk, k, 32), select_cut(&KeySlice(&keys), k, 32), "k = {k}");
                // The band select over the weight's bytes: the radix select's cut, whenever it decides.
                if let Some(b) = band_cut(&mk, k) {
                    assert_eq!(Some(b), radix_cut(&KeySlice(&keys), k, 32), "band, k = {k}");
                }
                let (mut a, mut b) =
                    (mk.band(1 << 31, (1 << 31) + (1 << 30)), KeySlice(&keys).band(1 << 31, (1 << 31) + (1 << 30)));
                a.2.sort_unstable();
                b.2.sort_unstable();
                assert_eq!(a, b, "band counts and keys");
            }
        }
    }

    /// Zeroing through the 32-bit key kernel (`Tensor::zero_f32_by_key`, both sides of the tie index)
    /// prunes exactly what the cut takes, over a tensor large enough for several parallel tasks.
    #[test]
    fn key_kernel_zeroes_what_the_cut_takes() {
        let n = 300_000usize;
        let vals: Vec<f32> = (0..n).map(|i| ((i * 7919 % 257) as f32 - 128.0) * 0.5).collect();
        let t = Tensor::from_f32("w", vec![n as i64], &vals).unwrap();
        for squared in [false, true] {
            let mk = MagKeys::of(&ScoreSrc::Magnitude { squared }, &t).unwrap();
            for k in [1, 1000, n / 2, n - 1, n] {
                let cut = crate::select::select_cut(&mk, k, 32).unwrap();
                let (below, from) = u32::try_from(cut.key).map_or((u32::MAX, 0), |x| (x, cut.from));
                let mut fast = t.clone();
                let changed = fast.zero_f32_by_key(|b| MagKeys::key32(b, squared), below, from).unwrap();
                let mut plain = t.clone();
                let want = plain.zero_by(|i| cut.takes(i, mk.key(i))).unwrap();
                assert_eq!((changed, fast.bytes()), (want, plain.bytes()), "squared {squared}, k {k}");
                assert_eq!(fast.zero_count(), (0..n).filter(|&i| cut.takes(i, mk.key(i)) || vals[i] == 0.0).count());
            }
        }
    }

    #[test]
    fn derived_wanda_equals_the_array_formula_bit_for_bit() {
        use crate::score_math::wanda;
        // A grouped Conv weight [O=4, C/g=3, 2, 2] with 2 groups (6 features), and a MatMul [K=5, N=3].
        let cases: [(Vec<usize>, FeatureMap); 2] = [
            (vec![4, 3, 2, 2], FeatureMap { out_axis: 0, red_axis: 1, conv_groups: 2 }),
            (vec![5, 3], FeatureMap { out_axis: 1, red_axis: 0, conv_groups: 1 }),
        ];
        for (shape, map) in cases {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0).collect();
            let t = Tensor::from_f32("w", shape.iter().map(|&d| d as i64).collect(), &vals).unwrap();
            let norms: Vec<f64> = (0..map.features(&shape)).map(|j| 0.1 + (j as f64).sqrt() * 1.7).collect();
            let want = wanda(&t.to_f32().unwrap(), &map, &norms).unwrap();
            let id = WeightId::Init("w".into());
            let mut s = WeightScores::default();
            s.wanda.insert(id.clone(), FeatureNorms { map, norms });
            let mut g = Graph::new();
            g.initializers.push(t);
            let got = s.get(&g, &id).unwrap();
            let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "shape {shape:?}");
            // The parallel key path reads the same scores.
            let (keys, _, _) =
                selection_keys(ScoreSrc::of(Some(&s), &g.initializers[0], &id).unwrap(), &g.initializers[0]).unwrap();
            let arr = want.as_slice().unwrap();
            let (ref_keys, _, _) = selection_keys(ScoreSrc::Array(arr), &g.initializers[0]).unwrap();
            assert_eq!(keys, ref_keys);
        }
    }

    #[test]
    fn keys_put_zeros_first_then_scores() {
        let t = Tensor::from_f32("w", vec![4], &[0.0, -3.0, 1.0, -0.0]).unwrap();
        let (k, bits, zeros) = selection_keys(ScoreSrc::Magnitude { squared: false }, &t).unwrap();
        assert_eq!((bits, zeros), (32, 2));
        assert!(k[0] < k[2] && k[3] < k[2] && k[2] < k[1]);
        let neg = [5.0f32, -1.0, 0.0, 2.0];
        let (k, bits, _) = selection_keys(ScoreSrc::Array(&neg), &t).unwrap();
        assert_eq!(bits, 33);
        // zero weights (0, 3) first whatever their score; then the non-zero ones: -1 (index 1) below 0.
        assert!(k[0] < k[1] && k[3] < k[1] && k[1] < k[2]);
    }
}
