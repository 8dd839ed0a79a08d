//! `.npy` / `.npz` bytes → the calibration readers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sparsify_fuzz::calib_check::calib_bytes(data));
