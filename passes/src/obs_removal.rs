//! Structured optimal-brain-surgeon removal of whole input rows of one layer (ZipLM / OBC structured):
//! the layer computes y = Wᵀ x with W [n inputs, d outputs] (one row per input feature; a Conv's
//! im2col columns are its inputs, a channel is a block of Πkernel of them), and H = Σ x xᵀ (any positive
//! scale) over the calibration rows.
//!
//! Removing the block B of rows with the others refit optimally costs
//! ΔE = tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B) (the increase of Σ‖y − ŷ‖² up to H's scale), and the refit of the
//! remaining rows is W ← W − H⁻¹[:, B] (H⁻¹_BB)⁻¹ W_B, after which H⁻¹ is downdated to the inverse of
//! H restricted to the rows left, H⁻¹ ← H⁻¹ − H⁻¹[:, B] (H⁻¹_BB)⁻¹ H⁻¹[B, :]. Applied block after
//! block, the result equals the least-squares refit of the rows left given the blocks removed (in any
//! order): the tests check it against a direct solve.
//!
//! The downdates of H⁻¹ are kept pending ([`LAZY`] at a time) and applied in one matrix product; the
//! diagonal and the columns a removal needs are read through the pending ones, so a removal costs
//! O(n·(d + LAZY)) plus its share of the batched product. The tests check the batched path as well.
//!
//! H is damped by λ = `damp` × mean(diag H) (raised ×10 up to [`MAX_RETRIES`] times while H + λI is not
//! numerically positive definite). An optional *intercept* row (a constant-1 input whose row is the
//! layer's bias shift) is never removed, so the refit also moves the bias: the caller builds H with
//! that row ([`augment`]) from the input sums.

use crate::obs::{upper_chol_of_inverse, MAX_RETRIES};

/// Rank-1 downdates of H⁻¹ kept pending before one matrix product applies them.
pub const LAZY: usize = 32;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// One layer's removal state.
#[derive(Debug, Clone)]
pub struct RowRemoval {
    n: usize,
    d: usize,
    /// W [n, d], row-major (plain slices: the greedy reads every row at every step).
    w: Vec<f64>,
    /// (H + λI)⁻¹ restricted to the rows alive, up to the pending downdates: the current inverse is
    /// `hinv − Σ_k u_k v_kᵀ` on the rows alive (zero elsewhere). Downdates are applied lazily, [`LAZY`]
    /// at a time in one matrix product: each removal touches only its own columns and the diagonal.
    hinv: Mat<f64>,
    pend_u: Vec<Vec<f64>>,
    pend_v: Vec<Vec<f64>>,
    /// The current diagonal of H⁻¹.
    diag: Vec<f64>,
    alive: Vec<bool>,
    /// Damping fraction finally used.
    pub damp: f64,
}

/// H with an intercept input appended: [[G, s], [sᵀ, rows]] for the Gram G = Σ x xᵀ and the sums
/// s = Σ x over `rows` calibration rows (k = s.len()).
pub fn augment(g: &[f64], s: &[f64], rows: f64) -> Vec<f64> {
    let k = s.len();
    let n = k + 1;
    let mut h = vec![0.0; n * n];
    for i in 0..k {
        h[i * n..i * n + k].copy_from_slice(&g[i * k..(i + 1) * k]);
        h[i * n + k] = s[i];
        h[k * n + i] = s[i];
    }
    h[k * n + k] = rows;
    h
}

/// tr(Wᵀ H W): the layer's output energy Σ‖y‖² on the calibration rows (H's scale).
pub fn output_energy(w: &[f64], n: usize, d: usize, h: &[f64]) -> f64 {
    let wm = MatRef::from_row_major_slice(w, n, d);
    let hm = MatRef::from_row_major_slice(h, n, n);
    let mut hw = Mat::<f64>::zeros(n, d);
    matmul(hw.as_mut(), Accum::Replace, hm, wm, 1.0, Par::Seq);
    let mut t = 0.0;
    for i in 0..n {
        for j in 0..d {
            t += w[i * d + j] * hw[(i, j)];
        }
    }
    t
}

impl RowRemoval {
    /// Start from W [n, d] (row-major) and H [n, n]. Fails when H + λI stays singular after every
    /// damping increase, or on a shape mismatch.
    pub fn new(w: Vec<f64>, n: usize, d: usize, h: &[f64], damp: f64) -> Result<RowRemoval, String> {
        if w.len() != n * d || h.len() != n * n {
            return Err(format!(
                "shape mismatch: W has {} values for [{n}, {d}], H {} for [{n}, {n}]",
                w.len(),
                h.len()
            ));
        }
        if w.iter().chain(h).any(|v| !v.is_finite()) {
            return Err("non-finite weight or Gram value".into());
        }
        let mean = if n == 0 { 0.0 } else { (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64 };
        let scale = if mean > 0.0 { mean } else { 1.0 };
        let mut frac = damp;
        for attempt in 0..=MAX_RETRIES {
            if attempt > 0 {
                frac = (frac * 10.0).max(0.01);
            }
            let Some(u) = upper_chol_of_inverse(h, n, frac * scale) else { continue };
            // H⁻¹ = Uᵀ U
            let um = MatRef::from_row_major_slice(&u, n, n);
            let mut inv = Mat::<f64>::zeros(n, n);
            // A fixed parallel degree: the work split (hence the rounding) is the same on every machine.
            let par = if n >= 256 { Par::rayon(4) } else { Par::Seq };
            matmul(inv.as_mut(), Accum::Replace, um.transpose(), um, 1.0, par);
            if (0..n).all(|i| (0..n).all(|j| inv[(i, j)].is_finite())) {
                let diag = (0..n).map(|i| inv[(i, i)]).collect();
                return Ok(RowRemoval {
                    n,
                    d,
                    w,
                    hinv: inv,
                    pend_u: Vec::new(),
                    pend_v: Vec::new(),
                    diag,
                    alive: vec![true; n],
                    damp: frac,
                });
            }
        }
        Err(format!("the Gram matrix is not positive definite even with damping {frac}"))
    }

    /// The current W [n, d], row-major.
    pub fn weights(&self) -> Vec<f64> {
        self.w.clone()
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn is_alive(&self, row: usize) -> bool {
        self.alive[row]
    }

    /// The current H⁻¹ entry (i, j) of two rows alive.
    fn entry(&self, i: usize, j: usize) -> f64 {
        if i == j {
            return self.diag[i];
        }
        self.hinv[(i, j)] - self.pend_u.iter().zip(&self.pend_v).map(|(u, v)| u[i] * v[j]).sum::<f64>()
    }

    /// The current column j of H⁻¹ (zero on removed rows).
    fn column(&self, j: usize) -> Vec<f64> {
        let mut c: Vec<f64> = (0..self.n).map(|i| self.hinv[(i, j)]).collect();
        for (u, v) in self.pend_u.iter().zip(&self.pend_v) {
            let vj = v[j];
            if vj != 0.0 {
                c.iter_mut().zip(u).for_each(|(a, b)| *a -= b * vj);
            }
        }
        for (i, a) in c.iter_mut().enumerate() {
            if !self.alive[i] {
                *a = 0.0;
            } else if i == j {
                *a = self.diag[j];
            }
        }
        c
    }

    /// Apply the pending downdates to `hinv` in one product and zero the removed rows / columns.
    fn flush(&mut self) {
        let (n, p) = (self.n, self.pend_u.len());
        if p == 0 {
            return;
        }
        let u = Mat::from_fn(n, p, |i, k| self.pend_u[k][i]);
        let v = Mat::from_fn(p, n, |k, j| self.pend_v[k][j]);
        matmul(self.hinv.as_mut(), Accum::Add, u.as_ref(), v.as_ref(), -1.0, Par::Seq);
        self.pend_u.clear();
        self.pend_v.clear();
        for i in (0..n).filter(|&i| !self.alive[i]) {
            for j in 0..n {
                self.hinv[(i, j)] = 0.0;
                self.hinv[(j, i)] = 0.0;
            }
        }
        for i in 0..n {
            if self.alive[i] {
                self.hinv[(i, i)] = self.diag[i];
            }
        }
    }

    /// The lower Cholesky factor of H⁻¹_BB ([b, b], row-major), or None when it is not positive definite.
    fn factor(&self, block: &[usize]) -> Option<Vec<f64>> {
        let b = block.len();
        let mut a: Vec<f64> = Vec::with_capacity(b * b);
        for &i in block {
            a.extend(block.iter().map(|&j| self.entry(i, j)));
        }
        for j in 0..b {
            let s = a[j * b + j] - (0..j).map(|k| a[j * b + k] * a[j * b + k]).sum::<f64>();
            if s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return None;
            }
            let l = s.sqrt();
            a[j * b + j] = l;
            for i in j + 1..b {
                let t = a[i * b + j] - (0..j).map(|k| a[i * b + k] * a[j * b + k]).sum::<f64>();
                a[i * b + j] = t / l;
            }
        }
        Some(a)
    }

    /// (H⁻¹_BB)⁻¹ W_B, [b, d], or None when H⁻¹_BB is not positive definite.
    fn solve_block(&self, block: &[usize]) -> Option<Vec<f64>> {
        let l = self.factor(block)?;
        let d = self.d;
        let mut x: Vec<f64> = block.iter().flat_map(|&i| self.w[i * d..(i + 1) * d].iter().copied()).collect();
        chol_solve(&l, block.len(), &mut x, d);
        Some(x)
    }

    /// ΔE of removing `block` now: tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B); 0 for an empty or already removed block.
    pub fn cost(&self, block: &[usize]) -> f64 {
        if let [j] = block {
            // One row (MatMul / Gemm input): ‖W_j‖² / H⁻¹_jj.
            let h = self.diag[*j];
            if !self.alive[*j] || h.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return 0.0;
            }
            return self.w[j * self.d..(j + 1) * self.d].iter().map(|v| v * v).sum::<f64>() / h;
        }
        let block: Vec<usize> = block.iter().copied().filter(|&i| self.alive[i]).collect();
        if block.is_empty() {
            return 0.0;
        }
        let Some(x) = self.solve_block(&block) else { return 0.0 };
        let d = self.d;
        block
            .iter()
            .enumerate()
            .map(|(bi, &i)| {
                self.w[i * d..(i + 1) * d].iter().zip(&x[bi * d..(bi + 1) * d]).map(|(a, b)| a * b).sum::<f64>()
            })
            .sum()
    }

    /// Remove `block`: refit the rows left, downdate H⁻¹, zero the block's rows.
    pub fn remove(&mut self, block: &[usize]) {
        let block: Vec<usize> = block.iter().copied().filter(|&i| self.alive[i]).collect();
        if block.is_empty() {
            return;
        }
        let (n, b) = (self.n, block.len());
        if let (Some(l), Some(x)) = (self.factor(&block), self.solve_block(&block)) {
            // C = H⁻¹[:, B], [n, b] column-major as b columns.
            let cols: Vec<Vec<f64>> = block.iter().map(|&j| self.column(j)).collect();
            let cm = Mat::from_fn(n, b, |i, k| cols[k][i]);
            // W -= C X
            let xm = MatRef::from_row_major_slice(&x, b, self.d);
            let wm = MatMut::from_row_major_slice_mut(&mut self.w, n, self.d);
            matmul(wm, Accum::Add, cm.as_ref(), xm, -1.0, Par::Seq);
            // H⁻¹ -= C K with K = (H⁻¹_BB)⁻¹ Cᵀ, [b, n]: b pending rank-1 downdates.
            let mut k: Vec<f64> = (0..b).flat_map(|bi| cols[bi].iter().copied()).collect();
            chol_solve(&l, b, &mut k, n);
            for (bi, col) in cols.into_iter().enumerate() {
                let krow = k[bi * n..(bi + 1) * n].to_vec();
                for i in 0..n {
                    self.diag[i] -= col[i] * krow[i];
                }
                self.pend_u.push(col);
                self.pend_v.push(krow);
            }
        }
        for &i in &block {
            self.alive[i] = false;
            self.diag[i] = 0.0;
            self.w[i * self.d..(i + 1) * self.d].iter_mut().for_each(|v| *v = 0.0);
        }
        if self.pend_u.len() >= LAZY {
            self.flush();
        }
    }
}

/// Solve L Lᵀ X = R in place for R [b, cols] (row-major), L lower [b, b].
fn chol_solve(l: &[f64], b: usize, r: &mut [f64], cols: usize) {
    for c in 0..cols {
        for i in 0..b {
            let t = r[i * cols + c] - (0..i).map(|k| l[i * b + k] * r[k * cols + c]).sum::<f64>();
            r[i * cols + c] = t / l[i * b + i];
        }
        for i in (0..b).rev() {
            let t = r[i * cols + c] - (i + 1..b).map(|k| l[k * b + i] * r[k * cols + c]).sum::<f64>();
            r[i * cols + c] = t / l[i * b + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Solve the normal equations (H_KK) W_K' = H_K· W directly (Gaussian elimination with partial
    /// pivoting): the least-squares refit of the kept rows K, given everything else removed.
    fn brute_force(w: &[f64], n: usize, d: usize, h: &[f64], keep: &[usize]) -> Vec<f64> {
        let k = keep.len();
        // A = H_KK, R = H_K,all W
        let mut a: Vec<f64> = keep.iter().flat_map(|&i| keep.iter().map(move |&j| h[i * n + j])).collect();
        let mut r: Vec<f64> = keep
            .iter()
            .flat_map(|&i| (0..d).map(move |c| (0..n).map(|m| h[i * n + m] * w[m * d + c]).sum::<f64>()))
            .collect();
        for col in 0..k {
            let p = (col..k).max_by(|&x, &y| a[x * k + col].abs().total_cmp(&a[y * k + col].abs())).unwrap();
            for j in 0..k {
                a.swap(col * k + j, p * k + j);
            }
            for j in 0..d {
                r.swap(col * d + j, p * d + j);
            }
            for row in 0..k {
                if row != col {
                    let f = a[row * k + col] / a[col * k + col];
                    for j in 0..k {
                        a[row * k + j] -= f * a[col * k + j];
                    }
                    for j in 0..d {
                        r[row * d + j] -= f * r[col * d + j];
                    }
                }
            }
        }
        let mut out = vec![0.0; n * d];
        for (ki, &i) in keep.iter().enumerate() {
            for c in 0..d {
                out[i * d + c] = r[ki * d + c] / a[ki * k + ki];
            }
        }
        out
    }

    fn problem(n: usize, d: usize, rows: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut s = seed;
        let x: Vec<f64> = (0..rows * n).map(|_| lcg(&mut s)).collect();
        let w: Vec<f64> = (0..n * d).map(|_| lcg(&mut s)).collect();
        let mut h = vec![0.0; n * n];
        for r in 0..rows {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += x[r * n + i] * x[r * n + j];
                }
            }
        }
        (w, h)
    }

    #[test]
    fn sequential_removal_equals_the_least_squares_refit() {
        // Blocks of 1 (MatMul rows) and of 3 (a Conv channel's kernel columns), undamped.
        let cases: Vec<(usize, usize, Vec<Vec<usize>>)> = vec![
            (8, 5, vec![vec![2], vec![5], vec![0]]),
            (12, 4, vec![vec![3, 4, 5], vec![9, 10, 11]]),
            // More removals than LAZY pending downdates: the batched flush is exercised too.
            (48, 3, (0..40).map(|i| vec![(i * 7) % 48]).collect()),
            (50, 2, (0..20).map(|i| vec![2 * i + 1, 2 * i + 2]).collect()),
        ];
        for (n, d, blocks) in cases {
            let (w, h) = problem(n, d, 2 * n + 10, 7 + n as u64);
            let mut r = RowRemoval::new(w.clone(), n, d, &h, 0.0).unwrap();
            for b in &blocks {
                r.remove(b);
            }
            let gone: Vec<usize> = blocks.iter().flatten().copied().collect();
            let keep: Vec<usize> = (0..n).filter(|i| !gone.contains(i)).collect();
            let want = brute_force(&w, n, d, &h, &keep);
            for (a, b) in r.weights().iter().zip(&want) {
                assert!((a - b).abs() < 1e-9, "{a} vs {b}");
            }
            // ΔE sums to the refit's error increase: Σ (W − W')ᵀ H (W − W').
            let mut r2 = RowRemoval::new(w.clone(), n, d, &h, 0.0).unwrap();
            let mut total = 0.0;
            for b in &blocks {
                total += r2.cost(b);
                r2.remove(b);
            }
            let diff: Vec<f64> = w.iter().zip(&want).map(|(a, b)| a - b).collect();
            let e = output_energy(&diff, n, d, &h);
            assert!((total - e).abs() < 1e-8 * e.max(1.0), "{total} vs {e}");
        }
    }

    #[test]
    fn greedy_choice_is_the_cheapest_exact_refit() {
        // The first greedy pick is the row whose removal (with refit) costs least: check against every
        // row's brute-force refit error.
        let (n, d) = (7, 3);
        let (w, h) = problem(n, d, 30, 99);
        let r = RowRemoval::new(w.clone(), n, d, &h, 0.0).unwrap();
        for j in 0..n {
            let keep: Vec<usize> = (0..n).filter(|&i| i != j).collect();
            let fit = brute_force(&w, n, d, &h, &keep);
            let diff: Vec<f64> = w.iter().zip(&fit).map(|(a, b)| a - b).collect();
            let e = output_energy(&diff, n, d, &h);
            assert!((r.cost(&[j]) - e).abs() < 1e-9 * e.max(1.0), "row {j}: {} vs {e}", r.cost(&[j]));
        }
    }

    #[test]
    fn intercept_row_moves_the_bias() {
        // x has a large constant part: removing a row with its mean contribution must shift the bias.
        let (n, d, rows) = (4, 2, 50);
        let mut s = 3u64;
        let x: Vec<f64> = (0..rows * n).map(|_| 2.0 + 0.1 * lcg(&mut s)).collect();
        let mut g = vec![0.0; n * n];
        let mut sums = vec![0.0; n];
        for r in 0..rows {
            for i in 0..n {
                sums[i] += x[r * n + i];
                for j in 0..n {
                    g[i * n + j] += x[r * n + i] * x[r * n + j];
                }
            }
        }
        let h = augment(&g, &sums, rows as f64);
        let mut w: Vec<f64> = (0..n * d).map(|_| lcg(&mut s)).collect();
        w.extend([0.0; 2]);
        let mut r = RowRemoval::new(w.clone(), n + 1, d, &h, 0.0).unwrap();
        r.remove(&[1]);
        let want = brute_force(&w, n + 1, d, &h, &[0, 2, 3, 4]);
        for (a, b) in r.weights().iter().zip(&want) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
        assert!(r.weights()[n * d..].iter().any(|v| v.abs() > 1e-3));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(RowRemoval::new(vec![0.0; 3], 2, 2, &[0.0; 4], 0.01).is_err());
        assert!(RowRemoval::new(vec![f64::NAN; 4], 2, 2, &[1.0, 0.0, 0.0, 1.0], 0.01).is_err());
    }
}
