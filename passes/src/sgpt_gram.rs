//! Input Gram matrices (Σ x xᵀ) for SparseGPT's layer Hessians, accumulated batch by batch.
//!
//! The calibrator (in the facade) calls these on each activation it sees: [`GramAcc::add_features`] for
//! MatMul / Gemm inputs (features along one axis, every other axis a row) and [`add_conv_patches`] for
//! Conv inputs (im2col patches per group, column order = the weight's `[C/g, k1, k2, ...]` flattening).
//! The products run in faer (lower triangle only, symmetrised at the end) with a fixed parallel degree,
//! so the result does not depend on the machine's thread count. Memory: the k×k accumulators plus one
//! patch chunk of at most [`CHUNK_ROWS`] rows.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// Rows (patches) per im2col chunk.
pub const CHUNK_ROWS: usize = 4096;

/// Fixed parallel degree of the Gram products: the work split (hence every rounding) is the same on
/// every machine.
const GRAM_PAR: usize = 4;

/// Accumulator of Σ x xᵀ over rows x ∈ ℝᵏ.
#[derive(Debug, Clone)]
pub struct GramAcc {
    k: usize,
    lower: Mat<f64>,
    rows: u64,
}

impl GramAcc {
    pub fn new(k: usize) -> GramAcc {
        GramAcc { k, lower: Mat::zeros(k, k), rows: 0 }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Add another accumulator's rows (same `k`).
    pub fn absorb(&mut self, other: GramAcc) {
        assert_eq!(self.k, other.k, "GramAcc::absorb: feature counts");
        self.lower += &other.lower;
        self.rows += other.rows;
    }

    /// Add the rows of a row-major `rows × k` matrix.
    pub fn add_rows(&mut self, x: &[f64], rows: usize) {
        assert_eq!(x.len(), rows * self.k, "GramAcc::add_rows: slice length");
        if rows == 0 || self.k == 0 {
            self.rows += rows as u64;
            return;
        }
        let xm = MatRef::from_row_major_slice(x, rows, self.k);
        let work = rows as f64 * (self.k * self.k) as f64;
        let par = if work > 4e6 { Par::rayon(GRAM_PAR) } else { Par::Seq };
        matmul(
            self.lower.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            xm.transpose(),
            BlockStructure::Rectangular,
            xm,
            BlockStructure::Rectangular,
            1.0,
            par,
        );
        self.rows += rows as u64;
    }

    /// Add every row of an activation whose features lie along `axis` of `shape` (C order).
    pub fn add_features(&mut self, vals: &[f64], shape: &[usize], axis: usize) -> Result<(), String> {
        if axis >= shape.len() {
            return Err(format!("feature axis {axis} out of range for shape {shape:?}"));
        }
        if shape[axis] != self.k {
            return Err(format!("activation has {} features along axis {axis}, expected {}", shape[axis], self.k));
        }
        let k = self.k;
        let inner: usize = shape[axis + 1..].iter().product();
        let rows = vals.len().checked_div(k).unwrap_or(0);
        if inner == 1 {
            // Features are the fastest axis: the data already is a rows × k matrix; stream it in chunks.
            for chunk in vals.chunks(CHUNK_ROWS * k.max(1)) {
                self.add_rows(chunk, chunk.len() / k.max(1));
            }
            return Ok(());
        }
        // Move the feature axis last, chunk by chunk of rows (outer, inner) pairs.
        let outer: usize = shape[..axis].iter().product();
        let mut buf = Vec::with_capacity(CHUNK_ROWS.min(rows) * k);
        let mut n = 0;
        for o in 0..outer {
            for i in 0..inner {
                let base = o * k * inner + i;
                buf.extend((0..k).map(|f| vals[base + f * inner]));
                n += 1;
                if n == CHUNK_ROWS {
                    self.add_rows(&buf, n);
                    buf.clear();
                    n = 0;
                }
            }
        }
        self.add_rows(&buf, n);
        Ok(())
    }

    /// The full symmetric matrix, row-major, and the number of rows added.
    pub fn finish(self) -> (Vec<f64>, u64) {
        let k = self.k;
        let mut h = vec![0.0; k * k];
        for j in 0..k {
            for i in j..k {
                let v = self.lower[(i, j)];
                h[i * k + j] = v;
                h[j * k + i] = v;
            }
        }
        (h, self.rows)
    }
}

/// Convolution geometry for im2col (spatial rank r = `kernel.len()`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGeometry {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// [begin..., end...], one pair per spatial axis.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub groups: usize,
}

impl ConvGeometry {
    /// The geometry a `CalibRequest::ConvGram` asks for (`None` for other request kinds).
    pub fn of_request(req: &sparsify_pm::CalibRequest) -> Option<ConvGeometry> {
        match req {
            sparsify_pm::CalibRequest::ConvGram { kernel, strides, pads, dilations, groups, .. } => {
                Some(ConvGeometry {
                    kernel: kernel.clone(),
                    strides: strides.clone(),
                    pads: pads.clone(),
                    dilations: dilations.clone(),
                    groups: *groups,
                })
            }
            _ => None,
        }
    }

    /// Columns of one group's patch for `channels` input channels.
    pub fn patch_len(&self, channels: usize) -> usize {
        channels / self.groups.max(1) * self.kernel.iter().product::<usize>()
    }

    pub(crate) fn check(&self, shape: &[usize]) -> Result<Vec<usize>, String> {
        let r = self.kernel.len();
        if shape.len() != r + 2 {
            return Err(format!("Conv input has shape {shape:?}, expected rank {} (N, C and {r} spatial)", r + 2));
        }
        if self.strides.len() != r || self.dilations.len() != r || self.pads.len() != 2 * r {
            return Err(format!("Conv attributes do not match the kernel rank {r}: {self:?}"));
        }
        if self.groups == 0 || !shape[1].is_multiple_of(self.groups) {
            return Err(format!("{} input channels are not divisible into {} groups", shape[1], self.groups));
        }
        if self.strides.contains(&0) || self.dilations.contains(&0) {
            return Err("Conv strides and dilations must be positive".into());
        }
        let mut out = Vec::with_capacity(r);
        for a in 0..r {
            let span = self.dilations[a] * (self.kernel[a].max(1) - 1) + 1;
            let padded = shape[2 + a] + self.pads[a] + self.pads[r + a];
            if padded < span {
                return Err(format!("spatial axis {a} ({}) is smaller than the dilated kernel ({span})", shape[2 + a]));
            }
            out.push((padded - span) / self.strides[a] + 1);
        }
        Ok(out)
    }
}

/// Add the im2col patches of one Conv input batch (`shape` = [N, C, spatial...], C order) to one
/// accumulator per group (`accs.len() == groups`, each of size C/g · Πkernel).
pub fn add_conv_patches(accs: &mut [GramAcc], vals: &[f64], shape: &[usize], geo: &ConvGeometry) -> Result<(), String> {
    let out = geo.check(shape)?;
    let (batch, channels) = (shape[0], shape[1]);
    let cg = channels / geo.groups;
    let kpos: usize = geo.kernel.iter().product();
    let k = cg * kpos;
    if accs.len() != geo.groups || accs.iter().any(|a| a.k() != k) {
        return Err(format!("expected {} accumulators of size {k}", geo.groups));
    }
    let spatial: usize = shape[2..].iter().product();
    let npos: usize = out.iter().product();
    let offset = patch_offsets(shape, geo, &out);
    let mut buf = Vec::with_capacity(CHUNK_ROWS.min(batch * npos) * k);
    for (g, acc) in accs.iter_mut().enumerate() {
        let mut n = 0;
        for b in 0..batch {
            for p in 0..npos {
                for c in 0..cg {
                    let plane = &vals[(b * channels + g * cg + c) * spatial..][..spatial];
                    buf.extend(offset[p * kpos..(p + 1) * kpos].iter().map(|o| o.map_or(0.0, |i| plane[i])));
                }
                n += 1;
                if n == CHUNK_ROWS {
                    acc.add_rows(&buf, n);
                    buf.clear();
                    n = 0;
                }
            }
        }
        acc.add_rows(&buf, n);
        buf.clear();
    }
    Ok(())
}

/// Odometer increment of a multi-index (row-major, last axis fastest).
/// The im2col read table of a Conv input `shape` = [N, C, spatial...] with output spatial dims `out`:
/// `offset[p * kpos + q]` is the flat spatial input index read by output position p at kernel position
/// q, or None in the padding.
pub fn patch_offsets(shape: &[usize], geo: &ConvGeometry, out: &[usize]) -> Vec<Option<usize>> {
    let r = geo.kernel.len();
    let kpos: usize = geo.kernel.iter().product();
    let npos: usize = out.iter().product();
    // offset[p * kpos + q]: flat spatial input index read by output position p at kernel position q, or
    // None in the padding.
    let mut offset: Vec<Option<usize>> = Vec::with_capacity(npos * kpos);
    let mut opos = vec![0usize; r];
    for _ in 0..npos {
        let mut kp = vec![0usize; r];
        for _ in 0..kpos {
            let mut flat = 0usize;
            let mut inside = true;
            for a in 0..r {
                let i = (opos[a] * geo.strides[a] + kp[a] * geo.dilations[a]) as isize - geo.pads[a] as isize;
                if i < 0 || i as usize >= shape[2 + a] {
                    inside = false;
                    break;
                }
                flat = flat * shape[2 + a] + i as usize;
            }
            offset.push(inside.then_some(flat));
            increment(&mut kp, &geo.kernel);
        }
        increment(&mut opos, out);
    }
    offset
}

fn increment(idx: &mut [usize], dims: &[usize]) {
    for a in (0..idx.len()).rev() {
        idx[a] += 1;
        if idx[a] < dims[a] {
            return;
        }
        idx[a] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(rows: &[Vec<f64>]) -> Vec<f64> {
        let k = rows[0].len();
        let mut h = vec![0.0; k * k];
        for x in rows {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += x[i] * x[j];
                }
            }
        }
        h
    }

    #[test]
    fn features_along_any_axis() {
        // shape [2, 3, 2]: features along axis 1 → rows (o, i) pairs.
        let vals: Vec<f64> = (0..12).map(|v| v as f64 * 0.5 - 2.0).collect();
        let mut acc = GramAcc::new(3);
        acc.add_features(&vals, &[2, 3, 2], 1).unwrap();
        let (h, rows) = acc.finish();
        let mut xs = Vec::new();
        for o in 0..2 {
            for i in 0..2 {
                xs.push((0..3).map(|f| vals[o * 6 + f * 2 + i]).collect::<Vec<_>>());
            }
        }
        assert_eq!(rows, 4);
        let want = naive(&xs);
        for (a, b) in h.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{h:?} vs {want:?}");
        }
    }

    #[test]
    fn conv_patches_match_a_direct_im2col() {
        // N=1, C=4, 3×3 input, groups 2, kernel 2×2, stride 1, pad 1 (begin) 0 (end), dilation 1.
        let shape = [1, 4, 3, 3];
        let vals: Vec<f64> = (0..36).map(|v| (v as f64).sin()).collect();
        let geo = ConvGeometry {
            kernel: vec![2, 2],
            strides: vec![1, 1],
            pads: vec![1, 1, 0, 0],
            dilations: vec![1, 1],
            groups: 2,
        };
        let mut accs = vec![GramAcc::new(8), GramAcc::new(8)];
        add_conv_patches(&mut accs, &vals, &shape, &geo).unwrap();
        // output 3×3 positions (padded 4×4, kernel 2 → 3).
        for (g, acc) in accs.into_iter().enumerate() {
            let (h, rows) = acc.finish();
            assert_eq!(rows, 9);
            let mut xs = Vec::new();
            for oy in 0..3 {
                for ox in 0..3 {
                    let mut p = Vec::new();
                    for c in 0..2 {
                        for ky in 0..2 {
                            for kx in 0..2 {
                                let (y, x) = (oy as isize + ky - 1, ox as isize + kx - 1);
                                let v = if y < 0 || x < 0 || y > 2 || x > 2 {
                                    0.0
                                } else {
                                    vals[(g * 2 + c) * 9 + y as usize * 3 + x as usize]
                                };
                                p.push(v);
                            }
                        }
                    }
                    xs.push(p);
                }
            }
            let want = naive(&xs);
            for (a, b) in h.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let geo = ConvGeometry {
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            groups: 3,
        };
        let mut accs = vec![GramAcc::new(9); 3];
        assert!(add_conv_patches(&mut accs, &[0.0; 32], &[1, 2, 4, 4], &geo).is_err());
    }
}
