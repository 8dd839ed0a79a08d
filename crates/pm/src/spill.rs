//! The [`Spill`] hook: where weight passes put a tensor as soon as its new bytes are final, so that the
//! modified weights of a large model do not all stay in memory at once.
//!
//! A pass that rewrote a tensor calls [`Spill::settle`] on it; an implementation stores the bytes
//! elsewhere (the CLI and facade use a file-backed scratch area beside the output, see
//! `sparsify_onnx_io::Scratch`) and replaces the tensor's in-memory bytes with a read-only view of the
//! stored copy. Values, dtype, shape and the `modified` flag are unchanged, so nothing downstream can
//! tell the difference — only where the bytes live. Without a spill (the default) tensors stay in memory.

use crate::pass::PassError;
use sparsify_ir::Tensor;

pub trait Spill: Sync {
    /// Move `t`'s bytes out of memory (they stay readable through `t`). Must not change any value.
    fn settle(&self, t: &mut Tensor) -> Result<(), PassError>;
}
