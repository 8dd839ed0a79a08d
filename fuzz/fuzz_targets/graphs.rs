//! Structure-aware: small valid graphs (Conv/Gemm/MatMul routes, Transpose, Cast, residual Add, Concat)
//! built with `arbitrary`, random pipelines of the data-free passes, invariants checked after each step.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|spec: sparsify_fuzz::graphs::Spec| sparsify_fuzz::graphs::check(&spec));
