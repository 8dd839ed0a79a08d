//! Tensors: element bytes in their original dtype and layout, with conversion to and from `ndarray`.
//!
//! Values are kept as little-endian bytes exactly as read (possibly backed by a mapped file), so a tensor
//! no pass touches is written back byte for byte. Passes read values as `f32`/`f64` arrays and either
//! zero elements in place ([`Tensor::zero_where`], which leaves every kept element bit-identical) or write
//! new values back in the original dtype ([`Tensor::write_f64`]).

use crate::DType;
use bytes::Bytes;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::sync::OnceLock;

mod zeroing;

/// How the tensor was stored in the file; the exporter writes it back the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `raw_data`.
    Raw,
    /// A typed repeated field (`float_data`, `int32_data`, ...).
    Typed,
    /// External data at `location`, relative to the model's folder.
    External { location: String },
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("tensor '{name}': {what}")]
    Invalid { name: String, what: String },
    #[error("tensor '{name}' has dtype {dtype}, which the passes cannot compute on")]
    Unsupported { name: String, dtype: String },
    #[error("tensor '{name}' holds a non-finite value ({value}) at flat index {index}")]
    NonFinite { name: String, index: usize, value: f64 },
}

/// A tensor: an initializer or the value of a `Constant` node.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<i64>,
    data: Bytes,
    /// Elements of a string tensor (empty otherwise).
    pub strings: Vec<Vec<u8>>,
    pub storage: Storage,
    /// Set when a pass rewrote the values.
    pub modified: bool,
    /// Fields the IR does not interpret (doc string, segment, metadata), owned by the exporter.
    pub opaque: Vec<u8>,
    /// Zero elements of a float tensor, counted once (with the dtype they were counted for): reports
    /// read a rewritten weight's sparsity without reading its bytes back from where they were stored.
    zeros: OnceLock<(DType, usize)>,
    /// Whether every element is finite, once known (with the dtype it was checked for): the zero count
    /// learns it in the same read, so the finiteness check of a scored weight costs nothing after it.
    finite: OnceLock<(DType, bool)>,
}

impl Tensor {
    /// A tensor over little-endian element bytes; checks the byte length against the shape.
    pub fn new(name: impl Into<String>, dtype: DType, dims: Vec<i64>, data: Bytes) -> Result<Tensor, TensorError> {
        let t = Tensor {
            name: name.into(),
            dtype,
            dims,
            data,
            strings: Vec::new(),
            storage: Storage::Raw,
            modified: false,
            opaque: Vec::new(),
            zeros: OnceLock::new(),
            finite: OnceLock::new(),
        };
        t.check_len()?;
        Ok(t)
    }

    /// A float32 tensor from values (used by tests and builders).
    pub fn from_f32(name: impl Into<String>, dims: Vec<i64>, values: &[f32]) -> Result<Tensor, TensorError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new(name, DType::F32, dims, Bytes::from(bytes))
    }

    fn invalid(&self, what: impl Into<String>) -> TensorError {
        TensorError::Invalid { name: self.name.clone(), what: what.into() }
    }

    /// Number of elements, or an error for negative dims or overflow. Zero dims do not hide huge ones: the
    /// product of the non-zero dims must fit too, so every partial product of the shape (strides, views)
    /// fits in `usize`.
    pub fn numel(&self) -> Result<usize, TensorError> {
        let mut n: usize = 1;
        let mut nonzero: usize = 1;
        for &d in &self.dims {
            let d = usize::try_from(d).map_err(|_| self.invalid(format!("negative dimension {d}")))?;
            n = n.saturating_mul(d);
            nonzero = nonzero
                .checked_mul(d.max(1))
                .filter(|&p| p <= isize::MAX as usize)
                .ok_or_else(|| self.invalid(format!("shape {:?} overflows the address space", self.dims)))?;
        }
        Ok(n)
    }

    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|&d| d.max(0) as usize).collect()
    }

    /// The expected byte length, when the dtype has a fixed element size.
    pub fn expected_len(&self) -> Result<Option<usize>, TensorError> {
        let n = self.numel()?;
        Ok(match self.dtype {
            DType::String => None,
            // int4 / uint4 / float4: two elements a byte.
            DType::Other(21) | DType::Other(22) | DType::Other(25) | DType::Other(26) => Some(n.div_ceil(2)),
            d => match d.size() {
                Some(s) => Some(n.checked_mul(s).ok_or_else(|| {
                    self.invalid(format!("shape {:?} of {} overflows the address space", self.dims, d.name()))
                })?),
                None => None,
            },
        })
    }

    fn check_len(&self) -> Result<(), TensorError> {
        if let Some(want) = self.expected_len()? {
            if want != self.data.len() {
                return Err(self.invalid(format!(
                    "holds {} bytes of data but its shape {:?} of {} needs {want}",
                    self.data.len(),
                    self.dims,
                    self.dtype.name()
                )));
            }
        }
        Ok(())
    }

    /// The element bytes (little-endian).
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// Replace the element bytes, checking the length; marks the tensor modified.
    pub fn set_bytes(&mut self, data: Bytes) -> Result<(), TensorError> {
        let old = std::mem::replace(&mut self.data, data);
        if let Err(e) = self.check_len() {
            self.data = old;
            return Err(e);
        }
        self.modified = true;
        self.zeros = OnceLock::new();
        self.finite = OnceLock::new();
        Ok(())
    }

    /// Hold the same values in other storage (a spill area's copy of these bytes): values, dtype,
    /// shape, the `modified` flag and the cached zero count stay as they are. Errors when the length
    /// differs; debug builds also check that the bytes are equal.
    pub fn set_storage(&mut self, data: Bytes) -> Result<(), TensorError> {
        if data.len() != self.data.len() {
            return Err(self.invalid(format!("new storage holds {} bytes, not {}", data.len(), self.data.len())));
        }
        debug_assert!(data[..] == self.data[..], "set_storage must not change values");
        self.data = data;
        Ok(())
    }

    /// Values as `f64` (exact for every prunable float dtype).
    pub fn to_f64(&self) -> Result<ArrayD<f64>, TensorError> {
        let b = &self.data[..];
        let v: Vec<f64> = match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            DType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            d => return Err(TensorError::Unsupported { name: self.name.clone(), dtype: d.name() }),
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape()), v).map_err(|e| self.invalid(e.to_string()))
    }

    /// Values as `f32` (exact except for f64 tensors).
    pub fn to_f32(&self) -> Result<ArrayD<f32>, TensorError> {
        if self.dtype == DType::F32 {
            let v: Vec<f32> = self.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            return ArrayD::from_shape_vec(IxDyn(&self.shape()), v).map_err(|e| self.invalid(e.to_string()));
        }
        Ok(self.to_f64()?.mapv(|x| x as f32))
    }

    /// Error naming the tensor if any value is NaN or infinite. Reads the bytes in place (no copy).
    pub fn check_finite(&self) -> Result<(), TensorError> {
        if self.finite.get() == Some(&(self.dtype, true)) {
            return Ok(());
        }
        // Exponent bits all set = Inf or NaN, tested on the raw bits of each dtype.
        let b = &self.data[..];
        let first = match self.dtype {
            DType::F32 => Some(first_where(b, 4, |c| !u32::from_le_bytes(c.try_into().unwrap()) & 0x7f80_0000 == 0)),
            DType::F16 => Some(first_where(b, 2, |c| !u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0)),
            DType::BF16 => Some(first_where(b, 2, |c| !u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0)),
            DType::F64 => {
                Some(first_where(b, 8, |c| !u64::from_le_bytes(c.try_into().unwrap()) & (0x7ff0u64 << 48) == 0))
            }
            _ => None,
        };
        let bad = match (first, self.elems()) {
            (Some(pos), Some(e)) => pos.map(|i| (i, e.f64_at(i))),
            _ => {
                let vals = self.to_f64()?;
                vals.iter().enumerate().find(|(_, v)| !v.is_finite()).map(|(i, v)| (i, *v))
            }
        };
        let _ = self.finite.set((self.dtype, bad.is_none()));
        match bad {
            Some((index, value)) => Err(TensorError::NonFinite { name: self.name.clone(), index, value }),
            None => Ok(()),
        }
    }

    /// The elements of a float tensor (f32/f16/bf16/f64) read in place, or `None` for other dtypes.
    pub fn elems(&self) -> Option<Elems<'_>> {
        let b = &self.data[..];
        Some(match self.dtype {
            DType::F32 => Elems::F32(b),
            DType::F16 => Elems::F16(b),
            DType::BF16 => Elems::BF16(b),
            DType::F64 => Elems::F64(b),
            _ => return None,
        })
    }

    /// Write new values in the tensor's own dtype (rounding to it); the shape must match.
    pub fn write_f64(&mut self, values: &ArrayD<f64>) -> Result<(), TensorError> {
        if values.shape() != self.shape().as_slice() {
            return Err(self.invalid(format!("new values have shape {:?}", values.shape())));
        }
        let mut out = Vec::with_capacity(self.data.len());
        for &x in values.iter() {
            match self.dtype {
                DType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
                DType::F64 => out.extend_from_slice(&x.to_le_bytes()),
                DType::F16 => out.extend_from_slice(&f16::from_f64(x).to_le_bytes()),
                DType::BF16 => out.extend_from_slice(&bf16::from_f64(x).to_le_bytes()),
                d => return Err(TensorError::Unsupported { name: self.name.clone(), dtype: d.name() }),
            }
        }
        self.set_bytes(Bytes::from(out))
    }

    /// For each element, whether it is exactly zero (either sign). Non-float dtypes compare bytes to 0.
    pub fn zero_flags(&self) -> Vec<bool> {
        let b = &self.data[..];
        match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) << 1 == 0).collect(),
            DType::F64 => b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) << 1 == 0).collect(),
            DType::F16 | DType::BF16 => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) << 1 == 0).collect(),
            d => match d.size() {
                Some(s) if s > 0 => b.chunks_exact(s).map(|c| c.iter().all(|&x| x == 0)).collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Count of exactly-zero elements (either sign; non-float dtypes compare bytes to 0), without copies.
    pub fn zero_count(&self) -> usize {
        use rayon::prelude::*;
        let b = &self.data[..];
        if !self.dtype.is_prunable_float() {
            return self.zero_flags().iter().filter(|z| **z).count();
        }
        if let Some(&(_, z)) = self.zeros.get().filter(|(d, _)| *d == self.dtype) {
            return z;
        }
        // Large float tensors: chunks in parallel (the chunk length is a multiple of every size). The
        // same read counts the non-finite elements.
        let (z, bad) = if b.len() >= 2 * PAR_BYTES {
            b.par_chunks(PAR_BYTES).map(|c| float_scan(self.dtype, c)).reduce(|| (0, 0), |a, c| (a.0 + c.0, a.1 + c.1))
        } else {
            float_scan(self.dtype, b)
        };
        let _ = self.zeros.set((self.dtype, z));
        let _ = self.finite.set((self.dtype, bad == 0));
        z
    }

    /// Count of non-zero elements.
    pub fn nnz(&self) -> usize {
        match self.dtype {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                self.data.len() / self.dtype.size().unwrap_or(1) - self.zero_count()
            }
            _ => self.zero_flags().iter().filter(|z| !**z).count(),
        }
    }

    /// Fraction of elements that are exactly zero (0 for empty tensors).
    pub fn sparsity(&self) -> f64 {
        let n = match self.dtype.size() {
            Some(s) if s > 0 && !matches!(self.dtype, DType::Other(_)) => self.data.len() / s,
            _ => self.zero_flags().len(),
        };
        if n == 0 {
            0.0
        } else {
            self.zero_count() as f64 / n as f64
        }
    }

    /// FNV-1a-64 hash of the non-zero bitmap: stable across platforms, independent of the values.
    pub fn mask_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for z in self.zero_flags() {
            h ^= u64::from(!z);
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }
}

/// Bytes per parallel task when scanning a large tensor.
const PAR_BYTES: usize = 1 << 22;

/// Index of the first `w`-byte element of `b` for which `bad` holds; large slices are searched in
/// parallel chunks (same answer: the first chunk with a hit wins).
fn first_where(b: &[u8], w: usize, bad: impl Fn(&[u8]) -> bool + Sync) -> Option<usize> {
    use rayon::prelude::*;
    if b.len() < 2 * PAR_BYTES {
        return b.chunks_exact(w).position(bad);
    }
    // Blocks of 64 elements tested without an early exit inside (a loop the compiler vectorises).
    let any_in = |c: &[u8]| c.chunks(64 * w).any(|blk| blk.chunks_exact(w).fold(false, |a, x| a | bad(x)));
    let chunk = b.par_chunks(PAR_BYTES).position_first(any_in)?;
    let at = b[chunk * PAR_BYTES..].chunks_exact(w).position(bad)?;
    Some(chunk * PAR_BYTES / w + at)
}

/// Zeros (either sign) and non-finite values (exponent bits all set: Inf, NaN) among the little-endian
/// floats of `dtype` in `b` (other dtypes: (0, 0)).
fn float_scan(dtype: DType, b: &[u8]) -> (usize, usize) {
    // Fixed-size words read in place (any alignment) and 32-bit counters per block of 1024: a loop the
    // compiler vectorises.
    fn count<const N: usize>(
        b: &[u8],
        zero: impl Fn(&[u8; N]) -> bool,
        bad: impl Fn(&[u8; N]) -> bool,
    ) -> (usize, usize) {
        let (words, _) = b.as_chunks::<N>();
        words.chunks(1024).fold((0, 0), |(z, n), blk| {
            let (bz, bn) = blk.iter().fold((0u32, 0u32), |(z, n), x| (z + u32::from(zero(x)), n + u32::from(bad(x))));
            (z + bz as usize, n + bn as usize)
        })
    }
    let h = |x: &[u8; 2]| u16::from_le_bytes(*x);
    match dtype {
        DType::F64 => {
            count::<8>(b, |x| u64::from_le_bytes(*x) << 1 == 0, |x| !u64::from_le_bytes(*x) & (0x7ff << 52) == 0)
        }
        DType::F32 => {
            count::<4>(b, |x| u32::from_le_bytes(*x) << 1 == 0, |x| !u32::from_le_bytes(*x) & 0x7f80_0000 == 0)
        }
        DType::F16 => count::<2>(b, |x| h(x) << 1 == 0, |x| !h(x) & 0x7c00 == 0),
        DType::BF16 => count::<2>(b, |x| h(x) << 1 == 0, |x| !h(x) & 0x7f80 == 0),
        _ => (0, 0),
    }
}

/// The elements of a float tensor in its own dtype, read in place from little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub enum Elems<'a> {
    F32(&'a [u8]),
    F16(&'a [u8]),
    BF16(&'a [u8]),
    F64(&'a [u8]),
}

impl<'a> Elems<'a> {
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(b) => b.len() / 4,
            Elems::F16(b) | Elems::BF16(b) => b.len() / 2,
            Elems::F64(b) => b.len() / 8,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `start..end` (a sub-view; indices restart at 0).
    pub fn slice(&self, start: usize, end: usize) -> Elems<'a> {
        match *self {
            Elems::F32(b) => Elems::F32(&b[4 * start..4 * end]),
            Elems::F16(b) => Elems::F16(&b[2 * start..2 * end]),
            Elems::BF16(b) => Elems::BF16(&b[2 * start..2 * end]),
            Elems::F64(b) => Elems::F64(&b[8 * start..8 * end]),
        }
    }

    /// Element `i` as `f64` (exact).
    #[inline]
    pub fn f64_at(&self, i: usize) -> f64 {
        match self {
            Elems::F64(b) => f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()),
            _ => self.f32_at(i) as f64,
        }
    }

    /// Element `i` as `f32`, exactly as `Tensor::to_f32` gives it (f64 rounded).
    #[inline]
    pub fn f32_at(&self, i: usize) -> f32 {
        match self {
            Elems::F32(b) => f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()),
            Elems::F16(b) => f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
            Elems::BF16(b) => bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
            Elems::F64(b) => f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()) as f32,
        }
    }

    /// Calls `f(i, value as f32, is_zero)` for every element in order; one dtype dispatch per call.
    #[inline]
    pub fn for_each_f32(&self, mut f: impl FnMut(usize, f32, bool)) {
        match self {
            Elems::F32(b) => b.chunks_exact(4).enumerate().for_each(|(i, c)| {
                let u = u32::from_le_bytes(c.try_into().unwrap());
                f(i, f32::from_bits(u), u << 1 == 0)
            }),
            Elems::F16(b) => b.chunks_exact(2).enumerate().for_each(|(i, c)| {
                let u = u16::from_le_bytes([c[0], c[1]]);
                f(i, f16::from_bits(u).to_f32(), u << 1 == 0)
            }),
            Elems::BF16(b) => b.chunks_exact(2).enumerate().for_each(|(i, c)| {
                let u = u16::from_le_bytes([c[0], c[1]]);
                f(i, bf16::from_bits(u).to_f32(), u << 1 == 0)
            }),
            Elems::F64(b) => b.chunks_exact(8).enumerate().for_each(|(i, c)| {
                let u = u64::from_le_bytes(c.try_into().unwrap());
                f(i, f64::from_bits(u) as f32, u << 1 == 0)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_is_an_error_naming_the_tensor() {
        let e = Tensor::new("w", DType::F32, vec![2, 3], Bytes::from(vec![0u8; 20])).unwrap_err();
        assert!(e.to_string().contains("'w'") && e.to_string().contains("needs 24"), "{e}");
    }

    #[test]
    fn zero_where_keeps_other_bits() {
        let mut t = Tensor::from_f32("w", vec![4], &[1.5, -0.0, f32::MIN_POSITIVE, 3.0]).unwrap();
        let before = t.bytes().clone();
        let n = t.zero_where(&[true, false, true, false]).unwrap();
        assert_eq!(n, 1, "-0.0 already counts as zero");
        assert_eq!(&t.bytes()[0..4], &before[0..4]);
        assert_eq!(&t.bytes()[8..12], &before[8..12]);
        assert_eq!(t.to_f32().unwrap().as_slice().unwrap(), &[1.5, 0.0, f32::MIN_POSITIVE, 0.0]);
        assert_eq!(t.sparsity(), 0.5);
    }

    #[test]
    fn half_types_round_trip_through_f64() {
        let vals = [1.0f64, -2.5, 0.0, 65504.0];
        for dtype in [DType::F16, DType::BF16] {
            let mut t = Tensor::new("h", dtype, vec![4], Bytes::from(vec![0u8; 8])).unwrap();
            t.write_f64(&ArrayD::from_shape_vec(IxDyn(&[4]), vals.to_vec()).unwrap()).unwrap();
            let back = t.to_f64().unwrap();
            assert_eq!(back[[1]], -2.5);
            assert_eq!(t.nnz(), 3);
        }
    }

    #[test]
    fn zero_by_matches_zero_where_in_every_float_dtype() {
        let vals = [1.5f64, -0.0, 0.0, -2.0, 3.25, 0.5];
        let keep = [true, false, false, false, true, false];
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let mut a = Tensor::new("h", dtype, vec![6], Bytes::from(vec![0u8; 6 * dtype.size().unwrap()])).unwrap();
            a.write_f64(&ArrayD::from_shape_vec(IxDyn(&[6]), vals.to_vec()).unwrap()).unwrap();
            let mut b = a.clone();
            assert_eq!(a.zero_where(&keep).unwrap(), 2);
            assert_eq!(b.zero_by(|i| !keep[i]).unwrap(), 2, "{dtype:?}: -0.0 and 0.0 were zero already");
            assert_eq!(a.bytes(), b.bytes(), "{dtype:?}");
            assert_eq!(b.zero_count(), 4);
            let e = b.elems().unwrap();
            assert_eq!((e.len(), e.f32_at(4), e.f64_at(0)), (6, 3.25, 1.5));
        }
    }

    #[test]
    fn zero_count_cache_follows_the_bytes() {
        let mut t = Tensor::from_f32("w", vec![4], &[1.0, 2.0, 0.0, 3.0]).unwrap();
        assert_eq!(t.zero_count(), 1);
        assert_eq!(t.zero_by(|i| i < 2).unwrap(), 2);
        assert_eq!(t.zero_count(), 3);
        // The same bytes in other storage keep the count; another length is refused.
        t.set_storage(Bytes::copy_from_slice(t.bytes())).unwrap();
        assert_eq!(t.zero_count(), 3);
        assert!(t.set_storage(Bytes::from(vec![0u8; 12])).is_err());
        // New values clear it.
        let ones: Vec<u8> = [1f32, 1.0, 1.0, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        t.set_bytes(Bytes::from(ones)).unwrap();
        assert_eq!(t.zero_count(), 1);
        // Another dtype is not answered from the cache: 1.0f32 read as two f16 is (+0, 0x3f80).
        t.dtype = DType::F16;
        t.dims = vec![8];
        assert_eq!(t.zero_count(), 5);
    }

    /// Zeros (either sign) are counted from words at any address, in every float width; tiny
    /// non-zero values are not zeros.
    #[test]
    fn float_zeros_reads_words_at_any_address() {
        let vals = [0.0f64, -0.0, 1.0, 2.0, 0.0, f64::MIN_POSITIVE, -3.0];
        for pad in 0..3 {
            let mut b64 = vec![7u8; pad];
            b64.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
            assert_eq!(float_scan(DType::F64, &b64[pad..]).0, 3);
            let mut b32 = vec![7u8; pad];
            b32.extend(vals.iter().flat_map(|v| (*v as f32).to_le_bytes()));
            assert_eq!(float_scan(DType::F32, &b32[pad..]).0, 4, "MIN_POSITIVE f64 is 0 as f32");
            let mut b16 = vec![7u8; pad];
            b16.extend([0x0000u16, 0x8000, 0x3c00, 0x0001, 0x8001].iter().flat_map(|v| v.to_le_bytes()));
            assert_eq!(float_scan(DType::F16, &b16[pad..]).0, 2);
        }
    }

    #[test]
    fn large_tensors_count_and_check_in_parallel_chunks() {
        let n = 2 * PAR_BYTES / 4 + 1001;
        let vals: Vec<f32> = (0..n).map(|i| if i % 7 == 0 { 0.0 } else { 1.0 }).collect();
        let t = Tensor::from_f32("big", vec![n as i64], &vals).unwrap();
        assert_eq!(t.zero_count(), n.div_ceil(7));
        assert_eq!(t.zero_count(), float_scan(DType::F32, t.bytes()).0);
        t.check_finite().unwrap();
        for bad in [[5, n - 3], [PAR_BYTES / 4 + 1, n - 1], [n - 2, n - 1]] {
            let mut v = vals.clone();
            v[bad[0]] = f32::NAN;
            v[bad[1]] = f32::INFINITY;
            let e = Tensor::from_f32("big", vec![n as i64], &v).unwrap().check_finite().unwrap_err();
            assert!(matches!(e, TensorError::NonFinite { index, .. } if index == bad[0]), "{e}");
        }
    }

    /// The zero count's read also counts Inf and NaN in each float width (the largest finite value is
    /// not counted), and a later finiteness check answers from it, naming the first bad element.
    #[test]
    fn the_zero_count_learns_finiteness() {
        let b64: Vec<u8> = [0.0, f64::MAX, f64::NEG_INFINITY, f64::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(float_scan(DType::F64, &b64), (1, 2));
        let b32: Vec<u8> = [0.0f32, f32::MAX, -0.0, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(float_scan(DType::F32, &b32), (2, 1));
        // f16: 0x7bff = max, 0x7c00 = +Inf, 0xfe00 = NaN; bf16: 0x7f7f = max, 0x7f80 = +Inf, 0xffc0 = NaN.
        let b16 = |w: &[u16]| w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(float_scan(DType::F16, &b16(&[0x7bff, 0x7c00, 0xfe00, 0x8000])), (1, 2));
        assert_eq!(float_scan(DType::BF16, &b16(&[0x7f7f, 0x7f80, 0xffc0, 0x0000])), (1, 2));
        // The same bits as f16 and bf16: 0x7c00 is Inf in f16, a finite number in bf16.
        assert_eq!(float_scan(DType::BF16, &b16(&[0x7c00])), (0, 0));
        for (dtype, bytes, first_bad) in [
            (DType::F64, b64.clone(), Some(2)),
            (DType::F32, b32.clone(), Some(3)),
            (DType::F16, b16(&[0x3c00, 0x0000, 0x7c00]), Some(2)),
            (DType::BF16, b16(&[0x3f80, 0x0000, 0x7c00]), None),
        ] {
            let n = bytes.len() / dtype.size().unwrap();
            let t = Tensor::new("w", dtype, vec![n as i64], Bytes::from(bytes)).unwrap();
            t.zero_count();
            assert_eq!(t.finite.get(), Some(&(dtype, first_bad.is_none())), "{dtype:?}: learnt with the count");
            match (t.check_finite(), first_bad) {
                (Ok(()), None) => {}
                (Err(TensorError::NonFinite { index, .. }), Some(i)) => assert_eq!(index, i, "{dtype:?}"),
                (r, want) => panic!("{dtype:?}: {r:?}, expected first bad {want:?}"),
            }
        }
        // New bytes forget what was learnt.
        let mut t = Tensor::from_f32("w", vec![2], &[1.0, 2.0]).unwrap();
        t.zero_count();
        t.check_finite().unwrap();
        t.set_bytes(Bytes::from([1.0f32, f32::INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()))
            .unwrap();
        assert!(t.check_finite().is_err());
    }

    #[test]
    fn non_finite_is_named() {
        let t = Tensor::from_f32("bad.w", vec![2], &[1.0, f32::NAN]).unwrap();
        let e = t.check_finite().unwrap_err().to_string();
        assert!(e.contains("bad.w") && e.contains("index 1"), "{e}");
    }
}
