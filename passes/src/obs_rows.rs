//! Optimal-brain-surgeon removal of whole blocks of input rows of a linear layer (ZipLM / OBC
//! structured): for W stored [K, N] (rows = inputs) with input Gram H = XᵀX, removing the rows B costs
//! ΔE_B = tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B) in output squared error, and the optimal update of the kept rows is
//! W ← W − H⁻¹[:, B] (H⁻¹_BB)⁻¹ W_B; H⁻¹ is then downdated to the kept rows by the Schur complement
//! H⁻¹ ← H⁻¹ − H⁻¹[:, B] (H⁻¹_BB)⁻¹ H⁻¹[B, :]. Everything in f64; the dense inverse and the small
//! block solves use faer's Cholesky.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Par};

/// (A)⁻¹ of a symmetric positive definite n×n row-major matrix; `None` when not positive definite.
pub fn spd_inverse(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut m = Mat::from_fn(n, n, |i, j| a[i * n + j]);
    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, Par::Seq, Default::default()));
    let stack = MemStack::new(&mut buf);
    cholesky_in_place(m.as_mut(), Default::default(), Par::Seq, stack, Default::default()).ok()?;
    let mut linv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(linv.as_mut(), m.as_ref(), Par::Seq);
    // A⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) = Σ_k L⁻¹[k, i] L⁻¹[k, j], k ≥ max(i, j).
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let mut s = 0.0;
            for k in j..n {
                s += linv[(k, i)] * linv[(k, j)];
            }
            if !s.is_finite() {
                return None;
            }
            out[i * n + j] = s;
            out[j * n + i] = s;
        }
    }
    Some(out)
}

/// The state of a greedy row-block removal.
pub struct RowBlockObs {
    /// W [k, n] row-major, updated in place.
    pub w: Vec<f64>,
    pub k: usize,
    pub n: usize,
    /// (H + λI)⁻¹ restricted to the kept rows (removed rows and columns are zero).
    hinv: Vec<f64>,
    removed: Vec<bool>,
}

impl RowBlockObs {
    /// `h`: the k×k Gram Σ x xᵀ; λ = `damp` × mean diagonal (a tiny floor when the diagonal is zero).
    pub fn new(w: Vec<f64>, k: usize, n: usize, h: &[f64], damp: f64) -> Option<RowBlockObs> {
        let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k.max(1) as f64;
        let lambda = (damp * mean).max(1e-12);
        let mut a = h.to_vec();
        for i in 0..k {
            a[i * k + i] += lambda;
        }
        let hinv = spd_inverse(&a, k)?;
        Some(RowBlockObs { w, k, n, hinv, removed: vec![false; k] })
    }

    /// (H⁻¹_BB)⁻¹ for the rows `b`.
    fn block_inv(&self, b: &[usize]) -> Option<Vec<f64>> {
        let m = b.len();
        let mut s = vec![0.0; m * m];
        for (i, &bi) in b.iter().enumerate() {
            for (j, &bj) in b.iter().enumerate() {
                s[i * m + j] = self.hinv[bi * self.k + bj];
            }
        }
        spd_inverse(&s, m)
    }

    /// ΔE of removing the rows `b` now: tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B).
    pub fn cost(&self, b: &[usize]) -> Option<f64> {
        let m = b.len();
        let sinv = self.block_inv(b)?;
        let mut e = 0.0;
        for c in 0..self.n {
            for i in 0..m {
                let wi = self.w[b[i] * self.n + c];
                for j in 0..m {
                    e += wi * sinv[i * m + j] * self.w[b[j] * self.n + c];
                }
            }
        }
        Some(e)
    }

    /// Remove the rows `b`: update the kept rows, zero the removed ones, downdate H⁻¹.
    pub fn remove(&mut self, b: &[usize]) -> Option<()> {
        let (k, n, m) = (self.k, self.n, b.len());
        let sinv = self.block_inv(b)?;
        // G = (H⁻¹_BB)⁻¹ W_B  [m, n];  P = (H⁻¹_BB)⁻¹ H⁻¹[B, :]  [m, k].
        let mut gw = vec![0.0; m * n];
        let mut ph = vec![0.0; m * k];
        for i in 0..m {
            for j in 0..m {
                let s = sinv[i * m + j];
                for c in 0..n {
                    gw[i * n + c] += s * self.w[b[j] * n + c];
                }
                for c in 0..k {
                    ph[i * k + c] += s * self.hinv[b[j] * k + c];
                }
            }
        }
        let col: Vec<Vec<f64>> = b.iter().map(|&bi| (0..k).map(|r| self.hinv[r * k + bi]).collect()).collect();
        let removed = self.removed.clone();
        for (r, _) in removed.iter().enumerate().filter(|(_, &gone)| !gone) {
            for i in 0..m {
                let hr = col[i][r];
                if hr == 0.0 {
                    continue;
                }
                for c in 0..n {
                    self.w[r * n + c] -= hr * gw[i * n + c];
                }
                for c in 0..k {
                    self.hinv[r * k + c] -= hr * ph[i * k + c];
                }
            }
        }
        for &bi in b {
            self.removed[bi] = true;
            for c in 0..n {
                self.w[bi * n + c] = 0.0;
            }
            for c in 0..k {
                self.hinv[bi * k + c] = 0.0;
                self.hinv[c * k + bi] = 0.0;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// The OBS update of a row block equals the least-squares refit of the kept rows (no damping in the
    /// comparison beyond the tiny λ), and the predicted cost equals the measured error increase.
    #[test]
    fn block_removal_is_the_least_squares_refit() {
        let (rows, k, n) = (200, 6, 3);
        let mut s = 7u64;
        let x: Vec<f64> = (0..rows * k).map(|_| lcg(&mut s)).collect();
        let w: Vec<f64> = (0..k * n).map(|_| lcg(&mut s)).collect();
        let mut h = vec![0.0; k * k];
        for r in 0..rows {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += x[r * k + i] * x[r * k + j];
                }
            }
        }
        let err = |w2: &[f64]| -> f64 {
            let mut e = 0.0;
            for r in 0..rows {
                for c in 0..n {
                    let d: f64 = (0..k).map(|i| x[r * k + i] * (w[i * n + c] - w2[i * n + c])).sum();
                    e += d * d;
                }
            }
            e
        };
        let mut obs = RowBlockObs::new(w.clone(), k, n, &h, 1e-12).unwrap();
        let b = [1usize, 4];
        let cost = obs.cost(&b).unwrap();
        obs.remove(&b).unwrap();
        assert!(b.iter().all(|&r| (0..n).all(|c| obs.w[r * n + c] == 0.0)));
        let measured = err(&obs.w);
        assert!((measured - cost).abs() <= 1e-6 * cost.max(1.0), "{measured} vs {cost}");
        // Perturbing any kept row increases the error (optimality).
        let mut w2 = obs.w.clone();
        w2[0] += 1e-3;
        assert!(err(&w2) > measured);
    }
}
