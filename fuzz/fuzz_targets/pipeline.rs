//! Pipeline text → parse → print → parse (syntax fixed point) and canonical → parse → canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        sparsify_fuzz::checks::pipeline_fixed_point(text);
    }
});
