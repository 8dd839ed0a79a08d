//! Channel-permutation search for N:M sparsity (Pool & Yu, 2021, "channel swap" variant).
//!
//! Input: `C` columns (one per reduction channel), each holding that channel's scores over every row
//! (every output channel × kernel position of every weight that shares the permutation). With the
//! columns in some order, N:M keeps, in each row and each group of `m` consecutive columns, the `n`
//! largest scores; the objective is the total kept. The search starts from the identity and applies
//! first-improvement swaps of two columns in different groups, sweeping the pairs `(a, b)`, `a < b`, in
//! a fixed order until a sweep finds no gain or the evaluation budget runs out. No randomness: the
//! result is a function of the scores and the budget only.
//!
//! Evaluating a swap is O(rows): for every position `p` and row `r` we cache what its group keeps once
//! `p` is removed (`loss[p]` summed over rows, and `floor[p][r]`, the smallest kept value of the
//! remaining `m-1`); putting value `v` into that hole then adds `max(0, v - floor)`.

/// The result of [`search`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// `perm[p]` = the original channel placed at position `p`.
    pub perm: Vec<usize>,
    /// Score kept with the identity order.
    pub plain: f64,
    /// Score kept with `perm`.
    pub permuted: f64,
    pub swaps: usize,
    /// Row evaluations spent (the budget unit).
    pub spent: u64,
    /// False when the budget ran out before a sweep without gain.
    pub converged: bool,
}

struct State<'a> {
    n: usize,
    m: usize,
    rows: usize,
    /// Column values by position (`vals[p]` = column `perm[p]`).
    vals: Vec<&'a [f32]>,
    /// Per position: Σ_rows (kept without p) − (kept with p); ≤ 0.
    loss: Vec<f64>,
    /// Per position and row: the smallest value kept by the group once p is removed.
    floor: Vec<Vec<f32>>,
    /// Per group: Σ_rows kept.
    kept: Vec<f64>,
}

impl State<'_> {
    fn refresh_group(&mut self, g: usize) {
        let (n, m) = (self.n, self.m);
        let mut buf = vec![0f32; m];
        let mut total = 0f64;
        let mut losses = vec![0f64; m];
        for r in 0..self.rows {
            for (k, slot) in buf.iter_mut().enumerate() {
                *slot = self.vals[g * m + k][r];
            }
            let mut sorted = buf.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let top: f64 = sorted[..n].iter().map(|&v| v as f64).sum();
            let (sn, sn1) = (sorted[n - 1], sorted[n]);
            total += top;
            for (k, (&v, acc)) in buf.iter().zip(losses.iter_mut()).enumerate() {
                // Removing v: if it was kept (v ≥ s_n), the (n+1)-th takes its place and becomes the floor.
                let (loss, floor) = if v >= sn { ((sn1 as f64) - (v as f64), sn1) } else { (0.0, sn) };
                *acc += loss;
                self.floor[g * m + k][r] = floor;
            }
        }
        self.loss[g * m..(g + 1) * m].copy_from_slice(&losses);
        self.kept[g] = total;
    }

    fn gain(&self, a: usize, b: usize) -> f64 {
        let (va, vb, fa, fb) = (self.vals[a], self.vals[b], &self.floor[a], &self.floor[b]);
        let mut acc = 0f64;
        for r in 0..self.rows {
            // In f64: differences of f32 values are exact there, so a swap whose true gain is 0 (two
            // kept values trading places) does not show a rounding "gain" and the search cannot cycle.
            acc += (vb[r] as f64 - fa[r] as f64).max(0.0) + (va[r] as f64 - fb[r] as f64).max(0.0);
        }
        self.loss[a] + self.loss[b] + acc
    }
}

/// Search a permutation of `cols.len()` channels (a multiple of `m`, every column of equal length)
/// that keeps more score under N:M. `budget` bounds the row evaluations.
pub fn search(cols: &[Vec<f32>], n: usize, m: usize, budget: u64) -> SearchResult {
    let c = cols.len();
    let rows = cols.first().map_or(0, |v| v.len());
    let identity: Vec<usize> = (0..c).collect();
    if c == 0 || rows == 0 || n == 0 || n >= m || !c.is_multiple_of(m) || c / m < 2 {
        let plain = kept_total(cols, &identity, n, m);
        return SearchResult { perm: identity, plain, permuted: plain, swaps: 0, spent: 0, converged: true };
    }
    let groups = c / m;
    let mut perm = identity;
    let mut st = State {
        n,
        m,
        rows,
        vals: cols.iter().map(|v| v.as_slice()).collect(),
        loss: vec![0.0; c],
        floor: vec![vec![0.0; rows]; c],
        kept: vec![0.0; groups],
    };
    for g in 0..groups {
        st.refresh_group(g);
    }
    let plain: f64 = st.kept.iter().sum();
    // Nothing to gain when N:M already keeps every score (e.g. an already legal weight).
    let total: f64 = cols.iter().flat_map(|c| c.iter()).map(|&v| v as f64).sum();
    if plain >= total * (1.0 - 1e-12) {
        return SearchResult { perm, plain, permuted: plain, swaps: 0, spent: 0, converged: true };
    }
    let (mut swaps, mut spent, mut converged) = (0usize, 0u64, false);
    'sweeps: loop {
        let mut improved = false;
        for a in 0..c {
            for b in (a + 1)..c {
                let (ga, gb) = (a / m, b / m);
                if ga == gb {
                    continue;
                }
                if spent + rows as u64 > budget {
                    break 'sweeps;
                }
                spent += rows as u64;
                let gain = st.gain(a, b);
                let scale = st.kept[ga] + st.kept[gb];
                if gain > 1e-9 * scale && gain > 0.0 {
                    st.vals.swap(a, b);
                    perm.swap(a, b);
                    st.refresh_group(ga);
                    st.refresh_group(gb);
                    spent += 2 * (m * rows) as u64;
                    swaps += 1;
                    improved = true;
                }
            }
        }
        if !improved {
            converged = true;
            break;
        }
    }
    let permuted = kept_total(cols, &perm, n, m);
    SearchResult { perm, plain, permuted, swaps, spent, converged }
}

/// Score kept under N:M with the columns in order `perm`.
#[allow(clippy::needless_range_loop)] // r indexes every column of the group
pub fn kept_total(cols: &[Vec<f32>], perm: &[usize], n: usize, m: usize) -> f64 {
    let rows = cols.first().map_or(0, |v| v.len());
    let mut total = 0f64;
    let mut buf = vec![0f32; m];
    for g in 0..perm.len() / m.max(1) {
        for r in 0..rows {
            for (slot, &p) in buf.iter_mut().zip(&perm[g * m..(g + 1) * m]) {
                *slot = cols[p][r];
            }
            buf.sort_by(|a, b| b.total_cmp(a));
            total += buf[..n].iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_obvious_swap() {
        // Two rows, 8 channels: the big values sit together in group 0, so 2:4 loses two of them.
        let big = [10.0f32, 10.0, 10.0, 10.0, 1.0, 1.0, 1.0, 1.0];
        let cols: Vec<Vec<f32>> = big.iter().map(|&v| vec![v, v]).collect();
        let r = search(&cols, 2, 4, 1_000_000);
        assert_eq!(r.plain, 2.0 * (20.0 + 2.0));
        assert_eq!(r.permuted, 2.0 * (20.0 + 20.0));
        assert!(r.swaps >= 1);
        let mut sorted = r.perm.clone();
        sorted.sort();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn gain_formula_matches_recomputation() {
        // Pseudo-random but fixed values; every single swap's predicted gain equals the recomputed one.
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 100.0
        };
        let cols: Vec<Vec<f32>> = (0..12).map(|_| (0..5).map(|_| next()).collect()).collect();
        for (n, m) in [(2, 4), (1, 3), (2, 6)] {
            let mut st = State {
                n,
                m,
                rows: 5,
                vals: cols.iter().map(|v| v.as_slice()).collect(),
                loss: vec![0.0; 12],
                floor: vec![vec![0.0; 5]; 12],
                kept: vec![0.0; 12 / m],
            };
            for g in 0..12 / m {
                st.refresh_group(g);
            }
            let base = kept_total(&cols, &(0..12).collect::<Vec<_>>(), n, m);
            for a in 0..12 {
                for b in a + 1..12 {
                    if a / m == b / m {
                        continue;
                    }
                    let mut p: Vec<usize> = (0..12).collect();
                    p.swap(a, b);
                    let want = kept_total(&cols, &p, n, m) - base;
                    assert!((st.gain(a, b) - want).abs() < 1e-4, "n={n} m={m} a={a} b={b}");
                }
            }
        }
    }

    #[test]
    fn budget_bounds_the_work_and_is_deterministic() {
        let cols: Vec<Vec<f32>> = (0..16).map(|c| (0..4).map(|r| ((c * 7 + r * 3) % 11) as f32).collect()).collect();
        let a = search(&cols, 2, 4, 40);
        assert!(a.spent <= 40 + 2 * 4 * 4);
        assert_eq!(a, search(&cols, 2, 4, 40));
        let full = search(&cols, 2, 4, u64::MAX);
        assert!(full.permuted >= full.plain);
    }
}
