//! Exact-count selection: which elements of a comparison group to prune, with one deterministic order.
//!
//! The pruning order is: lowest score first; among equal scores the **higher index is pruned first**
//! (so the lower index is kept, design notes §5). Scores are compared with `f32::total_cmp`, so the order
//! is total and the result never depends on the algorithm. Already-zero weights can be put ahead of
//! everything (they count as pruned) with [`prune_flags`].
//!
//! The fast path is a radix select: every score maps to an order-preserving unsigned key
//! ([`Score::key`]); histogram passes over 16-bit (or 8-bit for small groups) digits narrow down the key
//! of the k-th element, and one last pass over the boundary key finds the index from which ties are
//! pruned. The result is a [`Cut`] (a threshold key and a tie index): O(n) time, no per-element index
//! vectors, no comparison closures. [`reference`] keeps the plain sort-based definition the fast path
//! is tested against (bit for bit, property tests below).

use rayon::prelude::*;
use std::cmp::Ordering;

/// A score type with a total order (`f32` / `f64` through `total_cmp`) and an order-preserving key.
pub trait Score: Copy {
    /// Bits of [`Score::key`] that may be set.
    const KEY_BITS: u32;
    fn total(&self, other: &Self) -> Ordering;
    /// `a.key().cmp(&b.key()) == a.total(&b)`.
    fn key(&self) -> u64;
}

impl Score for f32 {
    const KEY_BITS: u32 = 32;
    fn total(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
    fn key(&self) -> u64 {
        f32_key(*self) as u64
    }
}

impl Score for f64 {
    const KEY_BITS: u32 = 64;
    fn total(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
    fn key(&self) -> u64 {
        let b = self.to_bits();
        b ^ ((((b as i64) >> 63) as u64) | (1 << 63))
    }
}

/// The `total_cmp` order of `f32` as an unsigned key (negative values: all bits flipped; others: sign set).
#[inline(always)]
pub fn f32_key(x: f32) -> u32 {
    let b = x.to_bits();
    b ^ ((((b as i32) >> 31) as u32) | 0x8000_0000)
}

/// The pruning order of two elements `(score, index)`: `Less` means `a` is pruned before `b`.
pub fn prune_order<T: Score>(a: (T, usize), b: (T, usize)) -> Ordering {
    a.0.total(&b.0).then(b.1.cmp(&a.1))
}

/// The result of an exact-count selection over candidates with keys: candidate `i` with key `x` is
/// selected (pruned) iff `x < key`, or `x == key` and `i >= from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub key: u64,
    pub from: usize,
}

impl Cut {
    /// Everything is selected.
    pub const ALL: Cut = Cut { key: u64::MAX, from: 0 };

    #[inline(always)]
    pub fn takes(&self, i: usize, x: u64) -> bool {
        // Non-short-circuit operators: no branch in the zeroing loops that call this per element.
        (x < self.key) | ((x == self.key) & (i >= self.from))
    }
}

/// A set of candidates the radix select can visit: `(index, key)` in increasing index order.
pub trait Candidates {
    /// Number of index positions (an upper bound of the candidate count; picks the digit width).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Call `f(index, key)` for every candidate, indices increasing.
    fn scan(&self, f: impl FnMut(usize, u64));
    /// Add to `hist[(key >> shift) & mask]` for every candidate whose `key >> hi == prefix` (all when
    /// `filter` is `None`, `filter = Some((hi, prefix))`). Override to parallelise.
    fn histogram(&self, hist: &mut [usize], shift: u32, mask: u64, filter: Option<(u32, u64)>) {
        match filter {
            None => self.scan(|_, x| hist[((x >> shift) & mask) as usize] += 1),
            Some((hi, prefix)) => self.scan(|_, x| {
                if x >> hi == prefix {
                    hist[((x >> shift) & mask) as usize] += 1;
                }
            }),
        }
    }
    /// For the band select ([`select_cut`] on large sets): about `m` keys drawn from positions spread
    /// over the whole index range, or `None` when the set cannot be sampled without a full pass (then
    /// only the radix select runs).
    fn sample(&self, _m: usize) -> Option<Vec<u64>> {
        None
    }
    /// One pass: (candidates with key < `lo`, candidates with key > `hi`, the keys of the others, in
    /// any order). Override to parallelise.
    fn band(&self, lo: u64, hi: u64) -> (usize, usize, Vec<u64>) {
        let (mut below, mut above, mut mid) = (0, 0, Vec::new());
        self.scan(|_, x| {
            below += usize::from(x < lo);
            above += usize::from(x > hi);
            if (lo..=hi).contains(&x) {
                mid.push(x);
            }
        });
        (below, above, mid)
    }
}

/// Sample positions for [`Candidates::sample`] over `n` indices: `m` strata of equal width, one
/// position in each, placed by a fixed hash of the stratum (so a stride never lines up with a row
/// length). Deterministic.
pub fn sample_positions(n: usize, m: usize) -> impl Iterator<Item = usize> {
    let m = m.min(n).max(1);
    (0..m).map(move |j| {
        let (a, b) = (j * n / m, (j + 1) * n / m);
        let h = (j as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        a + (h as usize) % (b - a).max(1)
    })
}

/// [`Candidates::band`] over a slice of items with a key function, in parallel chunks. Keys in the
/// band are gathered without a branch (written at the end of a block buffer whose length advances only
/// for them): the band holds a few percent of the keys, too many for a well-predicted branch.
pub fn band_of<T: Sync, K: Copy + Ord + Default + Into<u64> + Send + Sync>(
    items: &[T],
    lo: K,
    hi: K,
    key: impl Fn(&T) -> K + Sync,
) -> (usize, usize, Vec<u64>) {
    const PAR: usize = 1 << 18;
    const BLOCK: usize = 1 << 12;
    let parts: Vec<(usize, usize, Vec<K>)> = items
        .par_chunks(PAR)
        .map(|chunk| {
            let (mut below, mut above, mut mid) = (0usize, 0usize, Vec::new());
            let (mut keys, mut buf) = ([K::default(); BLOCK], [K::default(); BLOCK]);
            for blk in chunk.chunks(BLOCK) {
                // Keys and counts first (no data-dependent store in that loop), then the gather alone.
                let keys = &mut keys[..blk.len()];
                let (mut lt, mut gt, mut len) = (0u32, 0u32, 0usize);
                for (k, it) in keys.iter_mut().zip(blk) {
                    let x = key(it);
                    *k = x;
                    lt += u32::from(x < lo);
                    gt += u32::from(x > hi);
                }
                for &x in keys.iter() {
                    buf[len] = x;
                    len += usize::from(!((x < lo) | (x > hi)));
                }
                below += lt as usize;
                above += gt as usize;
                mid.extend_from_slice(&buf[..len]);
            }
            (below, above, mid)
        })
        .collect();
    let mut out = (0, 0, Vec::with_capacity(parts.iter().map(|p| p.2.len()).sum()));
    for (b, a, m) in parts {
        out.0 += b;
        out.1 += a;
        out.2.extend(m.into_iter().map(Into::into));
    }
    out
}

/// Candidates over a key slice (every element), histograms computed in parallel chunks.
pub struct KeySlice<'a>(pub &'a [u64]);

impl Candidates for KeySlice<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn scan(&self, mut f: impl FnMut(usize, u64)) {
        self.0.iter().enumerate().for_each(|(i, &k)| f(i, k));
    }
    fn sample(&self, m: usize) -> Option<Vec<u64>> {
        Some(sample_positions(self.0.len(), m).map(|i| self.0[i]).collect())
    }
    fn band(&self, lo: u64, hi: u64) -> (usize, usize, Vec<u64>) {
        band_of(self.0, lo, hi, |&k| k)
    }
    fn histogram(&self, hist: &mut [usize], shift: u32, mask: u64, filter: Option<(u32, u64)>) {
        const PAR: usize = 1 << 20;
        if self.0.len() < 2 * PAR {
            return KeySliceSeq(self.0).histogram(hist, shift, mask, filter);
        }
        let partial = self
            .0
            .par_chunks(PAR)
            .fold(
                || vec![0usize; hist.len()],
                |mut h, c| {
                    KeySliceSeq(c).histogram(&mut h, shift, mask, filter);
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

/// The sequential histogram over a key slice.
struct KeySliceSeq<'a>(&'a [u64]);

impl Candidates for KeySliceSeq<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn scan(&self, mut f: impl FnMut(usize, u64)) {
        self.0.iter().enumerate().for_each(|(i, &k)| f(i, k));
    }
}

/// The `k` candidates pruned first (lowest key; among equal keys the highest index) as a [`Cut`], or
/// `None` when `k == 0`. Keys use at most `bits` bits.
pub fn select_cut(c: &impl Candidates, k: usize, bits: u32) -> Option<Cut> {
    if k == 0 {
        return None;
    }
    if c.len() >= BAND_MIN {
        if let Some(cut) = band_cut(c, k) {
            return Some(cut);
        }
    }
    radix_cut(c, k, bits)
}

/// Sets at least this large try the band select first.
const BAND_MIN: usize = 1 << 20;
/// Keys sampled to place the band.
const BAND_SAMPLE: usize = 1 << 14;

/// The band select: the same [`Cut`] as [`radix_cut`] in one pass instead of two or three, or `None`
/// (then the radix select runs) when the set cannot be sampled or the k-th key falls outside the band.
/// A sample of the keys estimates the k-th key's place; the band [lo, hi] covers about ±5 standard
/// deviations of that estimate; one pass counts the keys below and above it and collects the ones in
/// it (about 1% of the set), among which the k-th key and the tie rule are resolved exactly.
pub fn band_cut(c: &impl Candidates, k: usize) -> Option<Cut> {
    let mut sample = c.sample(BAND_SAMPLE)?;
    let m = sample.len();
    if m < 2 {
        return None;
    }
    let n = c.len() as f64;
    let q = (k as f64 / n).clamp(0.0, 1.0);
    let spread = 5.0 * (m as f64 * q * (1.0 - q)).sqrt() + 8.0;
    let at = q * m as f64;
    let lo_rank = (at - spread).floor().max(0.0) as usize;
    let hi_rank = ((at + spread).ceil() as usize).min(m - 1);
    let lo = if lo_rank == 0 { 0 } else { *sample.select_nth_unstable(lo_rank).1 };
    let hi = if hi_rank == m - 1 { u64::MAX } else { *sample.select_nth_unstable(hi_rank).1 };
    let (below, above, mid) = c.band(lo, hi);
    if k >= below + above + mid.len() {
        return Some(Cut::ALL);
    }
    // The k-th key must be in the band (and not below it: its exact value would be unknown).
    if k <= below || k > below + mid.len() {
        return None;
    }
    let r = k - below;
    let mut mid = mid;
    let key = *mid.select_nth_unstable(r - 1).1;
    let less = mid.iter().filter(|&&x| x < key).count();
    let ties = mid.iter().filter(|&&x| x == key).count();
    // Ties at the boundary key: prune the (r - less) highest indices, i.e. skip the first ones.
    let skip = ties - (r - less);
    if skip == 0 {
        // Every tie is pruned: no scan needed to find where they start.
        return Some(Cut { key, from: 0 });
    }
    Some(Cut { key, from: tie_start(c, key, skip) })
}

/// The index of the candidate with key `key` that has `skip` others with that key before it.
fn tie_start(c: &impl Candidates, key: u64, skip: usize) -> usize {
    let (mut seen, mut from) = (0usize, usize::MAX);
    c.scan(|i, x| {
        if x == key {
            if seen == skip && from == usize::MAX {
                from = i;
            }
            seen += 1;
        }
    });
    from
}

/// The radix select behind [`select_cut`] (always exact; histogram passes over 16- or 8-bit digits).
pub fn radix_cut(c: &impl Candidates, k: usize, bits: u32) -> Option<Cut> {
    if k == 0 {
        return None;
    }
    let digit = if c.len() >= 1 << 16 { 16 } else { 8 };
    let mut hist = vec![0usize; 1 << digit];
    let (mut prefix, mut fixed, mut shift, mut k) = (0u64, false, bits, k);
    while shift > 0 {
        let d = digit.min(shift);
        shift -= d;
        let mask = (1u64 << d) - 1;
        hist[..1 << d].fill(0);
        if fixed {
            c.histogram(&mut hist[..1 << d], shift, mask, Some((shift + d, prefix)));
        } else {
            c.histogram(&mut hist[..1 << d], shift, mask, None);
            if k >= hist[..1 << d].iter().sum::<usize>() {
                return Some(Cut::ALL);
            }
        }
        let mut cum = 0usize;
        let mut b = 0usize;
        while cum + hist[b] < k {
            cum += hist[b];
            b += 1;
        }
        k -= cum;
        prefix = (prefix << d) | b as u64;
        fixed = true;
        if shift == 0 {
            // Ties at the boundary key: prune the k highest indices, i.e. skip the first (ties - k).
            let skip = hist[b] - k;
            if skip == 0 {
                // Every tie is pruned: no scan needed to find where they start.
                return Some(Cut { key: prefix, from: 0 });
            }
            return Some(Cut { key: prefix, from: tie_start(c, prefix, skip) });
        }
    }
    unreachable!("bits > 0")
}

/// Candidates from a score slice, optionally only the elements whose `zero` flag equals `want`.
struct SliceKeys<'a, T: Score> {
    scores: &'a [T],
    filter: Option<(&'a [bool], bool)>,
}

impl<T: Score> Candidates for SliceKeys<'_, T> {
    fn len(&self) -> usize {
        self.scores.len()
    }
    fn scan(&self, mut f: impl FnMut(usize, u64)) {
        match self.filter {
            None => self.scores.iter().enumerate().for_each(|(i, s)| f(i, s.key())),
            Some((z, want)) => {
                for (i, s) in self.scores.iter().enumerate() {
                    if z[i] == want {
                        f(i, s.key())
                    }
                }
            }
        }
    }
}

/// Exact-count selection with already-zero elements first: given how many elements are zero, which
/// sub-problem decides the rest. `zero_cut` applies to zero elements, `nonzero_cut` to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroFirst {
    pub zero_cut: Option<Cut>,
    pub nonzero_cut: Option<Cut>,
}

impl ZeroFirst {
    /// Prune `k` of a group with `zeros` already-zero elements: zeros go first, then the rest by key.
    /// `zeros_sel(k)` / `nonzero_sel(k)` run the selection on the respective candidate set.
    pub fn decide(
        k: usize,
        zeros: usize,
        zeros_sel: impl FnOnce(usize) -> Option<Cut>,
        nonzero_sel: impl FnOnce(usize) -> Option<Cut>,
    ) -> ZeroFirst {
        if k <= zeros {
            ZeroFirst { zero_cut: zeros_sel(k), nonzero_cut: None }
        } else {
            ZeroFirst { zero_cut: Some(Cut::ALL), nonzero_cut: nonzero_sel(k - zeros) }
        }
    }

    #[inline(always)]
    pub fn prunes(&self, i: usize, zero: bool, key: u64) -> bool {
        let c = if zero { &self.zero_cut } else { &self.nonzero_cut };
        c.is_some_and(|c| c.takes(i, key))
    }
}

/// Indices of the `k` elements pruned first (lowest scores; ties: higher index first), sorted ascending.
/// `k` larger than the slice selects everything.
pub fn lowest_k<T: Score>(scores: &[T], k: usize) -> Vec<usize> {
    match select_cut(&SliceKeys { scores, filter: None }, k, T::KEY_BITS) {
        None => Vec::new(),
        Some(c) => (0..scores.len()).filter(|&i| c.takes(i, scores[i].key())).collect(),
    }
}

/// Indices of the `k` elements kept first (highest scores; ties: lower index first), sorted ascending.
/// The complement of [`lowest_k`] with `len - k`.
pub fn highest_k<T: Score>(scores: &[T], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    match select_cut(&SliceKeys { scores, filter: None }, scores.len() - k, T::KEY_BITS) {
        None => (0..scores.len()).collect(),
        Some(c) => (0..scores.len()).filter(|&i| !c.takes(i, scores[i].key())).collect(),
    }
}

/// Keep flags for one group: exactly `k` elements are pruned (`false`), taken in pruning order, with every
/// element flagged in `already_zero` ahead of all others (a weight that is zero counts as pruned). When
/// more than `k` elements are already zero, the surplus is flagged kept; zeroing keeps them zero anyway.
pub fn prune_flags<T: Score>(scores: &[T], already_zero: &[bool], k: usize) -> Vec<bool> {
    debug_assert_eq!(scores.len(), already_zero.len());
    let zeros = already_zero.iter().filter(|z| **z).count();
    let k = k.min(scores.len());
    let sel = ZeroFirst::decide(
        k,
        zeros,
        |k| select_cut(&SliceKeys { scores, filter: Some((already_zero, true)) }, k, T::KEY_BITS),
        |k| select_cut(&SliceKeys { scores, filter: Some((already_zero, false)) }, k, T::KEY_BITS),
    );
    scores.iter().zip(already_zero).enumerate().map(|(i, (s, &z))| !sel.prunes(i, z, s.key())).collect()
}

/// [`prune_flags`] applied per comparison group: `group[i]` (in `0..groups`) is element `i`'s group, and
/// each group of `n` elements loses exactly `prune_count(s, n)` (already-zero ones first). Within a group
/// the tie-breaking index is the element's position in flat order.
pub fn prune_flags_grouped<T: Score>(
    scores: &[T],
    already_zero: &[bool],
    group: &[usize],
    groups: usize,
    s: f64,
) -> Vec<bool> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups];
    for (i, &g) in group.iter().enumerate() {
        members[g].push(i);
    }
    let mut keep = vec![true; scores.len()];
    for m in members.iter().filter(|m| !m.is_empty()) {
        let sc: Vec<T> = m.iter().map(|&i| scores[i]).collect();
        let z: Vec<bool> = m.iter().map(|&i| already_zero[i]).collect();
        for (pos, k) in prune_flags(&sc, &z, prune_count(s, m.len())).into_iter().enumerate() {
            keep[m[pos]] = k;
        }
    }
    keep
}

/// Number of elements to prune from a group of `n` at sparsity `s`: `floor(s·n)`, robust to the binary
/// representation of `s` (0.7·10 is 7, not 6).
pub fn prune_count(s: f64, n: usize) -> usize {
    let x = s * n as f64;
    let r = x.round();
    let k = if (x - r).abs() <= 1e-9 * x.abs().max(1.0) { r } else { x.floor() };
    (k.max(0.0) as usize).min(n)
}

/// The plain definition the fast path must match: sort-based selection with comparison closures.
#[cfg(test)]
pub mod reference {
    use super::*;

    pub fn prune_flags<T: Score>(scores: &[T], already_zero: &[bool], k: usize) -> Vec<bool> {
        let order = |i: usize, j: usize| {
            already_zero[j].cmp(&already_zero[i]).then_with(|| prune_order((scores[i], i), (scores[j], j)))
        };
        let mut keep = vec![true; scores.len()];
        for i in select_first(scores.len(), k, order) {
            keep[i] = false;
        }
        keep
    }

    pub fn lowest_k<T: Score>(scores: &[T], k: usize) -> Vec<usize> {
        select_first(scores.len(), k, |i, j| prune_order((scores[i], i), (scores[j], j)))
    }

    fn select_first(n: usize, k: usize, cmp: impl Fn(usize, usize) -> Ordering) -> Vec<usize> {
        let k = k.min(n);
        if k == 0 {
            return Vec::new();
        }
        let mut idx: Vec<usize> = (0..n).collect();
        if k < n {
            idx.select_nth_unstable_by(k - 1, |&a, &b| cmp(a, b));
            idx.truncate(k);
        }
        idx.sort_unstable();
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ties_prune_the_higher_index_first() {
        assert_eq!(lowest_k(&[1.0, 1.0, 1.0, 1.0], 2), vec![2, 3]);
        assert_eq!(highest_k(&[1.0, 1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(lowest_k(&[3.0, 0.5, 2.0, 0.5], 1), vec![3]);
        assert_eq!(lowest_k(&[3.0, 0.5, 2.0, 0.5], 3), vec![1, 2, 3]);
        assert_eq!(lowest_k(&[1.0], 5), vec![0]);
        assert!(lowest_k::<f32>(&[], 2).is_empty());
        assert_eq!(lowest_k(&[2.0f64, 1.0], 1), vec![1]);
    }

    #[test]
    fn zeros_go_first_even_against_zero_scores() {
        // index 0 is already zero; index 3 scores 0 but is non-zero: the zero one is "pruned" first.
        let keep = prune_flags(&[0.0, 2.0, 1.0, 0.0], &[true, false, false, false], 1);
        assert_eq!(keep, vec![false, true, true, true]);
        // more zeros than k: one zero is taken (the higher index), the other stays zero anyway.
        let keep = prune_flags(&[0.0, 0.0, 1.0, 2.0], &[true, true, false, false], 1);
        assert_eq!(keep, vec![true, false, true, true]);
    }

    #[test]
    fn grouped_counts_are_exact_per_group() {
        let scores = [5.0, 1.0, 2.0, 0.5, 3.0, 4.0, 0.1];
        let group = [0, 1, 0, 1, 0, 1, 1];
        let keep = prune_flags_grouped(&scores, &[false; 7], &group, 2, 0.5);
        // group 0 = {5, 2, 3}: floor(1.5) = 1 pruned (2.0); group 1 = {1, 0.5, 4, 0.1}: 2 pruned (0.5, 0.1).
        assert_eq!(keep, vec![true, true, false, false, true, true, false]);
    }

    #[test]
    fn prune_count_is_floor_with_decimal_inputs() {
        assert_eq!(prune_count(0.7, 10), 7);
        assert_eq!(prune_count(0.5, 9), 4);
        assert_eq!(prune_count(0.29, 100), 29);
        assert_eq!(prune_count(1.0, 3), 3);
        assert_eq!(prune_count(0.0, 3), 0);
        assert_eq!(prune_count(0.333, 3), 0);
    }

    #[test]
    fn keys_follow_total_cmp() {
        let v = [f32::NEG_INFINITY, -2.0, -0.0, 0.0, f32::MIN_POSITIVE, 1.0, f32::INFINITY, f32::NAN];
        for a in v {
            for b in v {
                assert_eq!(a.key().cmp(&b.key()), a.total_cmp(&b), "{a} {b}");
                assert_eq!((a as f64).key().cmp(&(b as f64).key()), (a as f64).total_cmp(&(b as f64)));
            }
        }
    }

    #[test]
    fn large_group_uses_sixteen_bit_digits_and_matches() {
        // 70 000 elements with many ties (values on a coarse grid) and some zeros.
        let n = 70_000usize;
        let s: Vec<f32> = (0..n).map(|i| ((i * 7919) % 613) as f32 * 0.25).collect();
        let z: Vec<bool> = (0..n).map(|i| i % 17 == 0).collect();
        for k in [0, 1, 4_000, 35_000, 69_999, 70_000] {
            assert_eq!(prune_flags(&s, &z, k), reference::prune_flags(&s, &z, k), "k={k}");
        }
    }

    /// Scores drawn from a small set so ties are frequent, including -0.0 / 0.0 and negatives.
    fn score() -> impl Strategy<Value = f32> {
        prop_oneof![
            (0u8..6).prop_map(|v| v as f32 * 0.5),
            Just(-0.0f32),
            Just(-1.5f32),
            any::<f32>().prop_filter("finite", |v| v.is_finite()),
        ]
    }

    /// The band select gives the radix select's cut (key and tie index) on large sets of several
    /// shapes, and decides by itself (no fallback) on the smooth ones.
    #[test]
    fn band_select_equals_radix_select() {
        let n = 1 << 20;
        let smooth: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 34).collect();
        let grid: Vec<u64> = (0..n as u64).map(|i| (i * 7919) % 613).collect();
        let skewed: Vec<u64> = (0..n as u64).map(|i| if i % 100 == 0 { i } else { 5 }).collect();
        let same = vec![42u64; n];
        for (name, keys, must_decide) in
            [("smooth", &smooth, true), ("grid", &grid, false), ("skewed", &skewed, false), ("same", &same, false)]
        {
            for k in [1, 2, 1000, n / 3, n / 2, n - 1, n, n + 5] {
                let band = band_cut(&KeySlice(keys), k);
                if must_decide && k < n {
                    assert!(band.is_some(), "{name}: k {k} fell back");
                }
                if let Some(b) = band {
                    assert_eq!(Some(b), radix_cut(&KeySlice(keys), k, 64), "{name}: k {k}");
                }
                assert_eq!(select_cut(&KeySlice(keys), k, 64), radix_cut(&KeySlice(keys), k, 64), "{name}: k {k}");
            }
        }
    }

    proptest! {
        /// Small sets with many ties: whenever the band select decides, it is the radix select's cut.
        #[test]
        fn band_matches_radix(keys in proptest::collection::vec(0u64..40, 2..3000), frac in 0.0f64..=1.0) {
            let k = prune_count(frac, keys.len()).max(1);
            if let Some(b) = band_cut(&KeySlice(&keys), k) {
                prop_assert_eq!(Some(b), radix_cut(&KeySlice(&keys), k, 64));
            }
        }

        #[test]
        fn fast_matches_reference(
            v in proptest::collection::vec((score(), any::<bool>()), 0..300),
            frac in 0.0f64..=1.0,
        ) {
            let s: Vec<f32> = v.iter().map(|p| p.0).collect();
            let z: Vec<bool> = v.iter().map(|p| p.1).collect();
            let k = prune_count(frac, s.len());
            prop_assert_eq!(prune_flags(&s, &z, k), reference::prune_flags(&s, &z, k));
            prop_assert_eq!(lowest_k(&s, k), reference::lowest_k(&s, k));
            let d: Vec<f64> = s.iter().map(|&x| x as f64 * 1.25).collect();
            prop_assert_eq!(prune_flags(&d, &z, k), reference::prune_flags(&d, &z, k));
        }
    }
}
