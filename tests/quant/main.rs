//! Quantized models (issue 14), on the committed fixtures in `tests/data/quant/` (made once by
//! `scripts/make_quant_fixtures.py` with onnxruntime's quantizer; no Python here): QDQ int8 per tensor,
//! QDQ uint8 per channel (zero point 128), dynamic (MatMulInteger) and QOperator (QLinearConv, QGemm,
//! QLinearMatMul).
//!
//! The checks decode the quantized bytes and zero points here, independently of `sparsify_ir::quant`:
//! exact floor(n/2) dequantized zeros (`q == zp`) with kept bytes identical, magnitude decisions on the
//! dequantized values, N:M along the reduction axis (the TensorRT 2:4 rule), `inspect` counting q == zp,
//! Wanda on QDQ equal to Wanda on the dequantized float model, tract runs with the output error printed.
//!
//! One test binary, split by what is checked: `masks` (the data-free masks and `inspect`), `calibrated`
//! (Wanda and SparseGPT on quantized weights), `dead_channels` (structural removal with scales and zero
//! points), `bias_correct` (quantized biases), `runs` (tract runs of the pruned fixtures and the error
//! helpers the others use).

#[path = "../common/mod.rs"]
mod common;

mod bias_correct;
mod calibrated;
mod dead_channels;
mod masks;
mod runs;

use sparsify_onnx::input_decls;
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{self, Feed};

/// The bundled model's calibration inputs, as `m` declares its inputs.
pub(crate) fn calib_feed(model: &str, m: &Model) -> Feed {
    validate::load_feed(&common::bundled(model).join("calib"), &input_decls(m)).unwrap()
}
