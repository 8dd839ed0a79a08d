//! The sparsify IR: an ONNX model as a petgraph of nodes plus its tensors, with no knowledge of protobuf,
//! tract, the command line or the file system.
//!
//! - [`Model`] / [`Graph`] / [`Node`] mirror the ONNX structure that passes need; everything else an import
//!   carries is kept in opaque byte blobs that only the exporter reads, so a round trip loses nothing.
//! - [`Tensor`] holds weights as little-endian bytes in their original dtype (possibly a mapped file) and
//!   converts to and from `ndarray` for computation.
//! - [`weights`] finds the prunable weights and their output / reduction axes.
//! - [`print`](mod@print) writes the deterministic text dump used by snapshot tests; [`verify`] checks invariants.

pub mod dtype;
pub mod graph;
pub mod print;
pub mod quant;
pub mod tensor;
pub mod verify;
pub mod weights;

pub use dtype::DType;
pub use graph::{Attr, AttrValue, Dim, Graph, Model, Node, NodeId, OpsetId, ValueInfo};
pub use quant::{QuantError, QuantParams, QuantSlots};
pub use tensor::{Elems, Storage, Tensor, TensorError};
pub use weights::{WeightId, WeightInfo, WeightUse};
