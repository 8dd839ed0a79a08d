//! Zeroing pruned elements: one pass writes a new buffer from the old bytes, pruned elements as +0
//! and kept ones bit-identical, counting what changed and the zeros left (cached as the tensor's zero
//! count). Large outputs start on a page boundary so a store can hand them to the disk (`O_DIRECT`)
//! without a copy. f32 tensors get word-wide loops the compiler vectorises; other widths a byte-mask
//! loop.

use super::{Tensor, TensorError};
use crate::DType;
use bytes::Bytes;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

impl Tensor {
    /// [`Tensor::zero_by`] for f32 tensors with a predicate that sees each element's bits:
    /// `prune(i, bits)` (no second read of the element). Same result and return value as `zero_by`.
    pub fn zero_by_f32_bits(&mut self, prune: impl Fn(usize, u32) -> bool + Sync) -> Result<usize, TensorError> {
        self.rewrite_f32(&prune, |base, om, sm| {
            let mut j = base;
            zero_words_where(om, sm, |w| {
                j += 1;
                prune(j - 1, w)
            })
        })
    }

    /// [`Tensor::zero_by_f32_bits`] for an exact-count cut on a 32-bit key of each element's bits:
    /// element `i` is pruned iff `key(bits) < below`, or `key(bits) == below` and `i >= ties_from`.
    /// The index test splits each task's range once, so the per-element work is 32-bit compares the
    /// compiler vectorises. Same result and return value as the equivalent `zero_by_f32_bits`.
    pub fn zero_f32_by_key(
        &mut self,
        key: impl Fn(u32) -> u32 + Sync,
        below: u32,
        ties_from: usize,
    ) -> Result<usize, TensorError> {
        let prune = |i: usize, b: u32| {
            let k = key(b);
            (k < below) | ((k == below) & (i >= ties_from))
        };
        self.rewrite_f32(prune, |base, om, sm| {
            let t = ties_from.saturating_sub(base).min(sm.len());
            let (o1, o2) = om.split_at_mut(t);
            let (a1, a2) = zero_words_where(o1, &sm[..t], |w| key(w) < below);
            let (b1, b2) = zero_words_where(o2, &sm[t..], |w| key(w) <= below);
            (a1 + b1, a2 + b2)
        })
    }

    /// The f32 zeroing loop: `words(first index, output words, input words)` on each task's aligned
    /// words, or `prune(i, bits)` element by element where a task's bytes are not 4-byte aligned.
    fn rewrite_f32(
        &mut self,
        prune: impl Fn(usize, u32) -> bool + Sync,
        words: impl Fn(usize, &mut [MaybeUninit<u32>], &[u32]) -> (usize, usize) + Sync,
    ) -> Result<usize, TensorError> {
        if self.dtype != DType::F32 {
            return Err(TensorError::Unsupported { name: self.name.clone(), dtype: self.dtype.name() });
        }
        Ok(self.rewrite::<4>(|base, o, s| {
            // SAFETY: `u32` and `MaybeUninit<u32>` accept any bit pattern, so reinterpreting aligned
            // middles of byte slices is sound; `align_to` returns only correctly aligned middles.
            let (oh, om, ot) = unsafe { o.align_to_mut::<MaybeUninit<u32>>() };
            let (sh, sm, st) = unsafe { s.align_to::<u32>() };
            if oh.is_empty() && ot.is_empty() && sh.is_empty() && st.is_empty() && om.len() == sm.len() {
                words(base, om, sm)
            } else {
                zero_chunk::<4>(base, o, s, |i, w| prune(i, u32::from_le_bytes(w)))
            }
        }))
    }

    /// Set to +0 every element `i` for which `prune(i)` holds, in one pass over the bytes; kept elements
    /// stay bit-identical. Returns how many elements changed (were non-zero before); the tensor is left
    /// untouched (not marked modified) when none did.
    pub fn zero_by(&mut self, prune: impl Fn(usize) -> bool + Sync) -> Result<usize, TensorError> {
        // The prunable floats are f16/bf16 (2 bytes), f32 (4) and f64 (8).
        match self.dtype.size().filter(|_| self.dtype.is_prunable_float()) {
            Some(2) => Ok(self.rewrite::<2>(|b, o, s| zero_chunk::<2>(b, o, s, |i, _| prune(i)))),
            Some(4) => self.zero_by_f32_bits(|i, _| prune(i)),
            Some(8) => Ok(self.rewrite::<8>(|b, o, s| zero_chunk::<8>(b, o, s, |i, _| prune(i)))),
            _ => Err(TensorError::Unsupported { name: self.name.clone(), dtype: self.dtype.name() }),
        }
    }

    /// The zeroing loop behind [`Tensor::zero_by`]: the output is written once from the input in
    /// parallel tasks, `body(first element index, output chunk, input chunk)` writing every byte of
    /// its output chunk and returning (elements changed, zeros in the chunk after); replaces the bytes
    /// only if any element changed.
    fn rewrite<const W: usize>(
        &mut self,
        body: impl Fn(usize, &mut [MaybeUninit<u8>], &[u8]) -> (usize, usize) + Sync,
    ) -> usize {
        use rayon::prelude::*;
        const TASK: usize = 1 << 16;
        let src = &self.data[..];
        // Every byte of the output is written below, so it is not zero-filled first. Large outputs start
        // on a page boundary (`pad` bytes in), so a store can hand them to the disk without a copy.
        let pad_room = if src.len() >= ALIGN_FROM { PAGE_ALIGN - 1 } else { 0 };
        let mut out: Vec<u8> = Vec::with_capacity(src.len() + pad_room);
        let pad = if pad_room > 0 { out.as_ptr().align_offset(PAGE_ALIGN).min(pad_room) } else { 0 };
        let (changed, zeros): (usize, usize) = out.spare_capacity_mut()[pad..pad + src.len()]
            .par_chunks_mut(TASK * W)
            .zip(src.par_chunks(TASK * W))
            .enumerate()
            .map(|(c, (o, s))| body(c * TASK, o, s))
            .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        // The `pad` bytes before the data are never read; they are set so that the whole length is
        // initialised.
        for b in &mut out.spare_capacity_mut()[..pad] {
            b.write(0);
        }
        // SAFETY: the `pad` bytes were just written, and `body` wrote every byte of each chunk of the
        // next `src.len()` bytes (the chunks cover them exactly).
        unsafe { out.set_len(pad + src.len()) };
        if changed > 0 {
            self.data = Bytes::from(out).slice(pad..);
            self.modified = true;
        }
        // The zero count of the result (equal to the input's when nothing changed). Zeroing keeps finite
        // values finite; a tensor not known to be finite may have lost its Inf/NaN, so it is unknown.
        self.zeros = OnceLock::new();
        let _ = self.zeros.set((self.dtype, zeros));
        if changed > 0 && self.finite.get() != Some(&(self.dtype, true)) {
            self.finite = OnceLock::new();
        }
        changed
    }

    /// Set to +0 every element whose `keep` flag is false; kept elements stay bit-identical.
    /// Returns how many elements changed (were non-zero before). Marks the tensor modified only if any did.
    pub fn zero_where(&mut self, keep: &[bool]) -> Result<usize, TensorError> {
        if !self.dtype.is_prunable_float() {
            return Err(TensorError::Unsupported { name: self.name.clone(), dtype: self.dtype.name() });
        }
        if keep.len() != self.numel()? {
            return Err(self.invalid(format!("mask has {} entries", keep.len())));
        }
        if self.dtype == DType::F32 {
            // The flags are read in step with the words (no indexed lookup per element).
            return self.rewrite_f32(
                |i, _| !keep[i],
                |base, om, sm| zero_words_with(om, sm, keep[base..base + sm.len()].iter(), |_, &k| !k),
            );
        }
        self.zero_by(|i| !keep[i])
    }
}

/// One task of the generic zeroing loop: `W`-byte little-endian elements of `s` (the first is element
/// `base`) copied to `o`, pruned ones (`prune(i, bytes)`) as +0; every byte of `o` is written. Returns
/// (pruned elements that were not ±0, zeros in the output).
fn zero_chunk<const W: usize>(
    base: usize,
    o: &mut [MaybeUninit<u8>],
    s: &[u8],
    prune: impl Fn(usize, [u8; W]) -> bool,
) -> (usize, usize) {
    let (mut n, mut zeros) = (0usize, 0usize);
    // A trailing partial element (a malformed length) is copied unchanged.
    let tail = s.len() / W * W;
    for (ob, &b) in o[tail..].iter_mut().zip(&s[tail..]) {
        ob.write(b);
    }
    // Branch-free: a pruned element is written as +0 through a byte mask (pruning decisions are close
    // to random, so a branch per element would mispredict about half the time).
    for (j, (oc, sc)) in o.chunks_exact_mut(W).zip(s.chunks_exact(W)).enumerate() {
        let w: [u8; W] = sc.try_into().expect("chunks of W bytes");
        let p = prune(base + j, w);
        // Non-zero: any bit set other than the sign (top bit of the last byte).
        let mut any = w[W - 1] & 0x7f;
        for &b in &w[..W - 1] {
            any |= b;
        }
        n += usize::from(p & (any != 0));
        zeros += usize::from(p | (any == 0));
        let keep = u8::from(p).wrapping_sub(1);
        for (ob, &b) in oc.iter_mut().zip(&w) {
            ob.write(b & keep);
        }
    }
    (n, zeros)
}

/// The f32 zeroing loop over aligned words: `o[j] = s[j]`, or +0 where `prune(bits)` (called once per
/// element, in order). Returns (pruned elements that were not ±0, zeros in the output).
#[inline(always)]
fn zero_words_where(o: &mut [MaybeUninit<u32>], s: &[u32], mut prune: impl FnMut(u32) -> bool) -> (usize, usize) {
    zero_words_with(o, s, std::iter::repeat(()), |w, ()| prune(w))
}

/// [`zero_words_where`] with a value from `extra` beside each word (e.g. its keep flag), read in step
/// rather than by index (no bounds check per element).
fn zero_words_with<X>(
    o: &mut [MaybeUninit<u32>],
    s: &[u32],
    mut extra: impl Iterator<Item = X>,
    mut prune: impl FnMut(u32, X) -> bool,
) -> (usize, usize) {
    let (mut n, mut zeros) = (0usize, 0usize);
    // 32-bit counters per block keep the loop in 32-bit lanes.
    for (ob, sb) in o.chunks_mut(1 << 12).zip(s.chunks(1 << 12)) {
        let (mut bn, mut bz) = (0u32, 0u32);
        for ((ow, &w), x) in ob.iter_mut().zip(sb).zip(&mut extra) {
            let w = u32::from_le(w);
            let p = prune(w, x);
            let nonzero = w << 1 != 0;
            bn += u32::from(p & nonzero);
            bz += u32::from(p | !nonzero);
            ow.write((w & u32::from(p).wrapping_sub(1)).to_le());
        }
        n += bn as usize;
        zeros += bz as usize;
    }
    (n, zeros)
}

/// Rewritten tensors of at least this many bytes start on a `PAGE_ALIGN` boundary (see
/// [`Tensor::zero_by`]): a page-aligned buffer can be written to disk directly (`O_DIRECT`).
const ALIGN_FROM: usize = 1 << 20;
const PAGE_ALIGN: usize = 4096;
