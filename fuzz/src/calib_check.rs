//! The property the `calib` fuzz target checks (shared with `tests/fuzz_regressions.rs`, like
//! [`checks`](super::checks)); separate because it needs `sparsify-validate`, hence tract.

use std::path::Path;

/// `.npy` / `.npz` bytes → the calibration readers. An array that reads writes back to `.npy` bytes that
/// read to the same array.
pub fn calib_bytes(data: &[u8]) {
    use sparsify_validate::npy::{read_npy_bytes, read_npz_bytes, to_npy_bytes};
    match read_npy_bytes(data, Path::new("fuzz.npy")) {
        Ok(a) => {
            let b = read_npy_bytes(&to_npy_bytes(&a), Path::new("again.npy")).expect("written .npy reads back");
            assert!(a.bit_identical(&b), "npy write/read changed the array");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "empty error message"),
    }
    match read_npz_bytes(data, Path::new("fuzz.npz")) {
        Ok(members) => drop(members),
        Err(e) => assert!(!e.to_string().is_empty(), "empty error message"),
    }
}
