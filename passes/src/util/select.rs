//! Exact-count selection: which elements of a comparison group to prune, with one deterministic order.
//!
//! The pruning order is: lowest score first; among equal scores the **higher index is pruned first**
//! (so the lower index is kept, design notes §5). Scores are compared with `f32::total_cmp`, so the order
//! is total and the result never depends on the sort algorithm. Already-zero weights can be put ahead of
//! everything (they count as pruned) with [`prune_flags`].

use std::cmp::Ordering;

/// A score type with a total order (`f32` / `f64` through `total_cmp`).
pub trait Score: Copy {
    fn total(&self, other: &Self) -> Ordering;
}

impl Score for f32 {
    fn total(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Score for f64 {
    fn total(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// The pruning order of two elements `(score, index)`: `Less` means `a` is pruned before `b`.
pub fn prune_order<T: Score>(a: (T, usize), b: (T, usize)) -> Ordering {
    a.0.total(&b.0).then(b.1.cmp(&a.1))
}

/// Indices of the `k` elements pruned first (lowest scores; ties: higher index first), sorted ascending.
/// `k` larger than the slice selects everything.
pub fn lowest_k<T: Score>(scores: &[T], k: usize) -> Vec<usize> {
    select_first(scores.len(), k, |i, j| prune_order((scores[i], i), (scores[j], j)))
}

/// Indices of the `k` elements kept first (highest scores; ties: lower index first), sorted ascending.
/// The complement of [`lowest_k`] with `len - k`.
pub fn highest_k<T: Score>(scores: &[T], k: usize) -> Vec<usize> {
    select_first(scores.len(), k, |i, j| prune_order((scores[j], j), (scores[i], i)))
}

/// Keep flags for one group: exactly `k` elements are pruned (`false`), taken in pruning order, with every
/// element flagged in `already_zero` ahead of all others (a weight that is zero counts as pruned). When
/// more than `k` elements are already zero, the surplus is flagged kept; zeroing keeps them zero anyway.
pub fn prune_flags<T: Score>(scores: &[T], already_zero: &[bool], k: usize) -> Vec<bool> {
    debug_assert_eq!(scores.len(), already_zero.len());
    let order = |i: usize, j: usize| {
        already_zero[j].cmp(&already_zero[i]).then_with(|| prune_order((scores[i], i), (scores[j], j)))
    };
    let mut keep = vec![true; scores.len()];
    for i in select_first(scores.len(), k, order) {
        keep[i] = false;
    }
    keep
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

/// The `k` first indices of `0..n` under the total order `cmp`, sorted ascending.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
