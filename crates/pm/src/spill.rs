//! The [`Spill`] hook: where weight passes put a tensor as soon as its new bytes are final, so that the
//! modified weights of a large model do not all stay in memory at once.
//!
//! A pass that rewrote a tensor calls [`Spill::settle`] on it; an implementation stores the bytes
//! elsewhere (the CLI and facade use a file-backed scratch area beside the output, see
//! `sparsify_onnx_io::Scratch`) and replaces the tensor's in-memory bytes with a read-only view of the
//! stored copy. Values, dtype, shape and the `modified` flag are unchanged, so nothing downstream can
//! tell the difference — only where the bytes live. Without a spill (the default) tensors stay in memory.
//!
//! [`StoreBehind`] lets a pass that loops over weights store one tensor on a helper thread while it
//! computes the next (the store is a kernel copy on one core; the computation uses the others). At most
//! one store is in flight, and stores run in the order the pass hands tensors over, so the stored
//! layout — and the output — is the same as with [`Spill::settle`].

use crate::pass::PassError;
use bytes::Bytes;
use sparsify_ir::{Graph, Tensor, WeightId};
use std::thread::{Scope, ScopedJoinHandle};

pub trait Spill: Sync {
    /// Store a copy of tensor `name`'s new bytes and return a read-only view of the stored copy (the
    /// same bytes). Called from any thread; stores of one pass come one at a time, in order.
    fn store(&self, name: &str, bytes: &[u8]) -> Result<Bytes, PassError>;

    /// Move `t`'s bytes out of memory (they stay readable through `t`). Must not change any value.
    fn settle(&self, t: &mut Tensor) -> Result<(), PassError> {
        let stored = self.store(&t.name, t.bytes())?;
        t.set_storage(stored)?;
        Ok(())
    }
}

/// Tensors smaller than this are stored on the calling thread.
const BEHIND_MIN_BYTES: usize = 1 << 20;

/// A store started on a helper thread: the weight, and the thread returning the stored view.
type Pending<'scope> = (WeightId, ScopedJoinHandle<'scope, Result<Bytes, PassError>>);

/// Settles tensors one step behind the pass (made by [`with_store_behind`]): [`StoreBehind::hand`]
/// starts storing a weight's bytes on a scoped thread (after landing the previous one),
/// [`StoreBehind::land`] waits for the store in flight and points its weight at the stored copy. Until
/// then the handed weight keeps its in-memory bytes (readable, never changed by the store).
pub struct StoreBehind<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    spill: Option<&'env dyn Spill>,
    pending: Option<Pending<'scope>>,
}

/// Run a pass's per-weight loop `f` with a [`StoreBehind`] over `spill`, then land the last store (also
/// when `f` fails; `f`'s error comes first). Stores run on threads of a scope that ends here.
pub fn with_store_behind<'env, R>(
    g: &mut Graph,
    spill: Option<&'env dyn Spill>,
    f: impl for<'scope> FnOnce(&mut Graph, &mut StoreBehind<'scope, 'env>) -> Result<R, PassError>,
) -> Result<R, PassError> {
    std::thread::scope(|scope| {
        let mut behind = StoreBehind { scope, spill, pending: None };
        let out = f(g, &mut behind);
        let landed = behind.land(g);
        let out = out?;
        landed.map(|()| out)
    })
}

impl<'scope, 'env> StoreBehind<'scope, 'env> {
    /// Start storing weight `id` of `g` (no-op without a spill or when `g` lacks it), after landing the
    /// store in flight.
    pub fn hand(&mut self, g: &mut Graph, id: &WeightId) -> Result<(), PassError> {
        self.land(g)?;
        let Some(spill) = self.spill else { return Ok(()) };
        let Some(t) = g.weight_mut(id) else { return Ok(()) };
        if t.bytes().len() < BEHIND_MIN_BYTES {
            // Small tensors: a thread would cost more than the store it hides.
            return spill.settle(t);
        }
        let (name, bytes) = (t.name.clone(), t.bytes().clone());
        let handle = self.scope.spawn(move || spill.store(&name, &bytes));
        self.pending = Some((id.clone(), handle));
        Ok(())
    }

    /// Wait for the store in flight (if any) and swap the stored copy into its weight.
    pub fn land(&mut self, g: &mut Graph) -> Result<(), PassError> {
        let Some((id, handle)) = self.pending.take() else { return Ok(()) };
        let stored = handle.join().map_err(|_| PassError::Invalid {
            subject: id.name().into(),
            message: "the store thread panicked".into(),
        })??;
        if let Some(t) = g.weight_mut(&id) {
            t.set_storage(stored)?;
        }
        Ok(())
    }
}
