//! The SparseGPT layer solver (Frantar & Alistarh, 2023; reference `IST-DASLab/sparsegpt`): prune a
//! weight matrix W [rows = outputs, cols = reduction] against its input Hessian H = (2/n)·Σ x xᵀ and
//! reconstruct the kept weights with optimal-brain-surgeon updates.
//!
//! Steps, as the reference: dead inputs (H_ii = 0) get H_ii = 1 and W[:, i] = 0; λ = damp · mean(diag H)
//! is added to the diagonal; U = the upper Cholesky factor of H⁻¹ (computed as J·chol(J H J)⁻¹·J with J
//! the reversal, one factorisation and one triangular inverse in faer); then a sweep over column blocks
//! with per-column OBS updates inside the block and one lazy matrix product for the columns after it.
//!
//! Mask selection:
//! - unstructured: per block over all rows by saliency w²/U_jj² (the reference's "adaptive mask"), but
//!   with an exact count: the block whose elements are [a, b) in the caller's element order prunes
//!   floor(s·b) − floor(s·a) weights ([`Pattern::Unstructured::offset`] places the matrix in a larger
//!   tensor), so a tensor ends with exactly floor(s·n) pruned weights. Ties in saliency prune the
//!   higher index first (the lower index is kept).
//! - N:M (N kept of every M consecutive columns): per row at the first column of each group, prune the
//!   M−N lowest saliencies (ties as above). Blocks are widened to a multiple of M.
//!
//! If the Cholesky factorisation fails, meets a pivot below [`PIVOT_RTOL`] × the largest diagonal entry
//! (numerically singular), or yields non-finite values, the damping is multiplied by 10 (at least 1% of
//! the mean diagonal) and the factorisation retried, up to [`MAX_RETRIES`] times. Rows are solved in
//! parallel in fixed chunks of [`ROW_CHUNK`] rows, each with the same sequential arithmetic: the result
//! does not depend on the thread count.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Rows per parallel work item.
pub const ROW_CHUNK: usize = 16;
/// Damping increases tried after the first factorisation fails.
pub const MAX_RETRIES: usize = 6;
/// Smallest accepted Cholesky pivot L_ii², relative to the largest diagonal entry of H + λI.
pub const PIVOT_RTOL: f64 = 1e-12;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// Prune floor(s·(offset+end)) − floor(s·(offset+start)) weights of every element range, elements
    /// ordered row-major within a block and block after block.
    Unstructured { sparsity: f64, offset: u64 },
    /// Keep `n` of every `m` consecutive columns, per row.
    NM { n: usize, m: usize },
}

/// What a solve did.
#[derive(Debug, Clone, PartialEq)]
pub struct Solved {
    /// Damping fraction finally used (≥ the one asked for).
    pub damp: f64,
    /// Inputs with H_ii = 0 (their weights are zeroed).
    pub dead: usize,
    /// Σ (w − q)² / U_jj² / 2: the reference's reconstruction-loss estimate.
    pub loss: f64,
    /// Weights set to zero by the mask (dead columns included when selected).
    pub pruned: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObsError {
    #[error("the Hessian is not positive definite even with damping {0}")]
    NotPositiveDefinite(f64),
    #[error("{0}")]
    Shape(String),
}

/// Prune and reconstruct `w` (row-major rows × cols) in place against the cols × cols Hessian `h`
/// (row-major, symmetric; any positive scale).
pub fn sparsegpt(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    mut h: Vec<f64>,
    pattern: Pattern,
    blocksize: usize,
    damp: f64,
) -> Result<Solved, ObsError> {
    if w.len() != rows * cols || h.len() != cols * cols {
        return Err(ObsError::Shape(format!(
            "W has {} values for {rows}×{cols}, H has {} for {cols}×{cols}",
            w.len(),
            h.len()
        )));
    }
    if let Pattern::NM { n, m } = pattern {
        if m == 0 || n >= m || !cols.is_multiple_of(m) {
            return Err(ObsError::Shape(format!("{cols} columns cannot form {n}:{m} groups")));
        }
    }
    if rows == 0 || cols == 0 {
        return Ok(Solved { damp, dead: 0, loss: 0.0, pruned: 0 });
    }
    let mut dead = 0;
    for i in 0..cols {
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            dead += 1;
            for r in 0..rows {
                w[r * cols + i] = 0.0;
            }
        }
    }
    let mean_diag = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols.max(1) as f64;
    let mut damp_used = damp;
    let mut u = None;
    for attempt in 0..=MAX_RETRIES {
        if attempt > 0 {
            damp_used = (damp_used * 10.0).max(0.01);
        }
        if let Some(f) = upper_chol_of_inverse(&h, cols, damp_used * mean_diag) {
            u = Some(f);
            break;
        }
    }
    let u = u.ok_or(ObsError::NotPositiveDefinite(damp_used))?;
    let block = match pattern {
        Pattern::NM { m, .. } => blocksize.max(1).div_ceil(m) * m,
        Pattern::Unstructured { .. } => blocksize.max(1),
    };
    let mut loss = 0.0;
    let mut pruned = 0;
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let wb = i2 - i1;
        // Unstructured: choose this block's mask over all rows at once (saliency at block start).
        let mask: Option<Vec<bool>> = match pattern {
            Pattern::Unstructured { sparsity, offset } => {
                let start = offset + (rows * i1) as u64;
                let end = start + (rows * wb) as u64;
                let count = (floor_mul(sparsity, end) - floor_mul(sparsity, start)) as usize;
                Some(block_mask(w, rows, cols, &u, i1, i2, count))
            }
            Pattern::NM { .. } => None,
        };
        let results: Vec<(f64, usize)> = w
            .par_chunks_mut(ROW_CHUNK * cols)
            .enumerate()
            .map(|(ci, chunk)| {
                let r0 = ci * ROW_CHUNK;
                let nr = chunk.len() / cols;
                let mut err = vec![0.0; nr * wb];
                let mut loss = 0.0;
                let mut pruned = 0;
                for lr in 0..nr {
                    let row = &mut chunk[lr * cols..(lr + 1) * cols];
                    let e = &mut err[lr * wb..(lr + 1) * wb];
                    let m_row = mask.as_ref().map(|m| &m[(r0 + lr) * wb..(r0 + lr + 1) * wb]);
                    let (l, p) = sweep_row(row, e, &u, cols, i1, i2, pattern, m_row);
                    loss += l;
                    pruned += p;
                }
                if i2 < cols {
                    // W[:, i2:] -= Err · U[i1:i2, i2:]
                    let dst = MatMut::from_row_major_slice_mut(chunk, nr, cols);
                    let dst = dst.submatrix_mut(0, i2, nr, cols - i2);
                    let e = MatRef::from_row_major_slice(&err, nr, wb);
                    let ub = MatRef::from_row_major_slice(&u, cols, cols).submatrix(i1, i2, wb, cols - i2);
                    matmul(dst, Accum::Add, e, ub, -1.0, Par::Seq);
                }
                (loss, pruned)
            })
            .collect();
        for (l, p) in results {
            loss += l;
            pruned += p;
        }
        i1 = i2;
    }
    Ok(Solved { damp: damp_used, dead, loss, pruned })
}

/// floor(s · x), the cumulative pruning target at element x.
pub fn floor_mul(s: f64, x: u64) -> u64 {
    (s * x as f64).floor().max(0.0) as u64
}

/// The `count` lowest-saliency elements of W[:, i1..i2] (row-major over rows × block), ties pruning the
/// higher index first.
fn block_mask(w: &[f64], rows: usize, cols: usize, u: &[f64], i1: usize, i2: usize, count: usize) -> Vec<bool> {
    let wb = i2 - i1;
    let sal: Vec<f64> = (0..rows * wb)
        .map(|e| {
            let (r, j) = (e / wb, i1 + e % wb);
            let d = u[j * cols + j];
            w[r * cols + j] * w[r * cols + j] / (d * d)
        })
        .collect();
    let mut idx: Vec<u32> = (0..(rows * wb) as u32).collect();
    let cmp = |a: &u32, b: &u32| sal[*a as usize].total_cmp(&sal[*b as usize]).then(b.cmp(a));
    let count = count.min(idx.len());
    if count > 0 && count < idx.len() {
        idx.select_nth_unstable_by(count - 1, cmp);
    }
    let mut mask = vec![false; rows * wb];
    for &i in &idx[..count] {
        mask[i as usize] = true;
    }
    mask
}

/// OBS sweep of one row over columns i1..i2; `err` receives (w − q)/U_jj per column. `mask` (true =
/// prune) is given for unstructured patterns; N:M chooses it here. Returns (loss, pruned).
#[allow(clippy::too_many_arguments)]
fn sweep_row(
    row: &mut [f64],
    err: &mut [f64],
    u: &[f64],
    cols: usize,
    i1: usize,
    i2: usize,
    pattern: Pattern,
    mask: Option<&[bool]>,
) -> (f64, usize) {
    let mut loss = 0.0;
    let mut pruned = 0;
    let mut nm_mask = [false; 64];
    let mut nm_big: Vec<bool> = Vec::new();
    for j in i1..i2 {
        let d = u[j * cols + j];
        let prune = match (pattern, mask) {
            (_, Some(m)) => m[j - i1],
            (Pattern::NM { n, m }, None) => {
                let g = (j - i1) % m;
                let flags: &mut [bool] = if m <= 64 {
                    &mut nm_mask[..m]
                } else {
                    nm_big.resize(m, false);
                    &mut nm_big[..]
                };
                if g == 0 {
                    let sal = |t: usize| {
                        let dj = u[(j + t) * cols + j + t];
                        row[j + t] * row[j + t] / (dj * dj)
                    };
                    let mut order: Vec<usize> = (0..m).collect();
                    order.sort_by(|&a, &b| sal(a).total_cmp(&sal(b)).then(b.cmp(&a)));
                    flags.iter_mut().for_each(|f| *f = false);
                    for &t in &order[..m - n] {
                        flags[t] = true;
                    }
                }
                flags[g]
            }
            (Pattern::Unstructured { .. }, None) => false,
        };
        let wv = row[j];
        let q = if prune { 0.0 } else { wv };
        let e = (wv - q) / d;
        if prune {
            loss += (wv - q) * (wv - q) / (d * d) / 2.0;
            pruned += 1;
        }
        if e != 0.0 {
            let urow = &u[j * cols..(j + 1) * cols];
            for jj in j + 1..i2 {
                row[jj] -= e * urow[jj];
            }
        }
        row[j] = q;
        err[j - i1] = e;
    }
    (loss, pruned)
}

/// U upper-triangular with Uᵀ U = (H + λI)⁻¹, row-major; `None` when H + λI is not (numerically)
/// positive definite.
pub fn upper_chol_of_inverse(h: &[f64], n: usize, lambda: f64) -> Option<Vec<f64>> {
    // A = J (H + λI) J = L Lᵀ  ⇒  (H + λI)⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and J L⁻¹ J is upper triangular.
    let mut a = Mat::from_fn(n, n, |i, j| {
        let v = h[(n - 1 - i) * n + (n - 1 - j)];
        if i == j {
            v + lambda
        } else {
            v
        }
    });
    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, Par::Seq, Default::default()));
    let stack = MemStack::new(&mut buf);
    let max_diag = (0..n).map(|i| a[(i, i)]).fold(0.0f64, f64::max);
    cholesky_in_place(a.as_mut(), Default::default(), Par::Seq, stack, Default::default()).ok()?;
    // A pivot L_ii² is a Schur complement: one that vanishes next to the largest diagonal entry means H
    // is numerically singular, and its inverse would be garbage.
    if (0..n).any(|i| {
        let p = a[(i, i)] * a[(i, i)];
        p.is_nan() || p <= PIVOT_RTOL * max_diag
    }) {
        return None;
    }
    let mut linv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(linv.as_mut(), a.as_ref(), Par::Seq);
    drop(a);
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let v = linv[(n - 1 - i, n - 1 - j)];
            if !v.is_finite() {
                return None;
            }
            u[i * n + j] = v;
        }
        if u[i * n + i] <= 0.0 {
            return None;
        }
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    fn gram(x: &[f64], rows: usize, k: usize) -> Vec<f64> {
        let mut h = vec![0.0; k * k];
        for r in 0..rows {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += x[r * k + i] * x[r * k + j];
                }
            }
        }
        h
    }

    #[test]
    fn upper_factor_inverts_h() {
        let mut s = 1;
        let (n, rows) = (7, 20);
        let x: Vec<f64> = (0..rows * n).map(|_| lcg(&mut s)).collect();
        let h = gram(&x, rows, n);
        let u = upper_chol_of_inverse(&h, n, 0.0).unwrap();
        // (Uᵀ U) H = I
        for i in 0..n {
            for j in 0..n {
                let mut v = 0.0;
                for k in 0..n {
                    let uu: f64 = (0..n).map(|t| u[t * n + i] * u[t * n + k]).sum();
                    v += uu * h[k * n + j];
                }
                assert!((v - f64::from(u8::from(i == j))).abs() < 1e-9, "{i},{j}: {v}");
            }
        }
    }

    #[test]
    fn not_positive_definite_is_none() {
        let h = vec![1.0, 2.0, 2.0, 1.0];
        assert!(upper_chol_of_inverse(&h, 2, 0.0).is_none());
    }

    #[test]
    fn exact_counts_and_lower_error_than_magnitude() {
        let mut s = 7;
        let (rows, cols, n) = (9, 24, 200);
        // Correlated inputs: x = base + noise, so reconstruction matters.
        let x: Vec<f64> = (0..n * cols).map(|e| lcg(&mut s) + 0.8 * ((e / cols) as f64 * 0.37).sin()).collect();
        let h = gram(&x, n, cols);
        let w0: Vec<f64> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let out_err = |w: &[f64]| -> f64 {
            let mut e = 0.0;
            for t in 0..n {
                for r in 0..rows {
                    let d: f64 = (0..cols).map(|c| (w[r * cols + c] - w0[r * cols + c]) * x[t * cols + c]).sum();
                    e += d * d;
                }
            }
            e
        };
        let mut w = w0.clone();
        let solved =
            sparsegpt(&mut w, rows, cols, h.clone(), Pattern::Unstructured { sparsity: 0.5, offset: 0 }, 5, 0.01)
                .unwrap();
        assert_eq!(w.iter().filter(|v| **v == 0.0).count(), rows * cols / 2);
        assert_eq!(solved.pruned, rows * cols / 2);
        // magnitude at the same count
        let mut mag = w0.clone();
        let mut order: Vec<usize> = (0..mag.len()).collect();
        order.sort_by(|&a, &b| mag[a].abs().total_cmp(&mag[b].abs()));
        for &i in &order[..rows * cols / 2] {
            mag[i] = 0.0;
        }
        assert!(out_err(&w) < out_err(&mag), "{} vs {}", out_err(&w), out_err(&mag));

        let mut w = w0.clone();
        sparsegpt(&mut w, rows, cols, h.clone(), Pattern::NM { n: 2, m: 4 }, 6, 0.01).unwrap();
        for r in 0..rows {
            for g in 0..cols / 4 {
                let nz = (0..4).filter(|t| w[r * cols + g * 4 + t] != 0.0).count();
                assert_eq!(nz, 2, "row {r} group {g}");
            }
        }
    }

    #[test]
    fn singular_and_dead_inputs_stay_finite() {
        let (rows, cols) = (3, 8);
        let mut s = 3;
        // feature 1 duplicates feature 0, feature 5 is always zero.
        let mut x: Vec<f64> = (0..50 * cols).map(|_| lcg(&mut s)).collect();
        for r in 0..50 {
            x[r * cols + 1] = x[r * cols];
            x[r * cols + 5] = 0.0;
        }
        let h = gram(&x, 50, cols);
        let mut w: Vec<f64> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
        let solved =
            sparsegpt(&mut w, rows, cols, h.clone(), Pattern::Unstructured { sparsity: 0.25, offset: 0 }, 128, 0.0)
                .unwrap();
        assert_eq!(solved.dead, 1);
        assert!(solved.damp > 0.0, "damping 0 must have been raised for the singular H");
        assert!(w.iter().all(|v| v.is_finite()));
        assert!((0..rows).all(|r| w[r * cols + 5] == 0.0));
    }
}
