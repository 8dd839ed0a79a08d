//! sparsify-onnx facade (see crate docs).
