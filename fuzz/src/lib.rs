//! Shared code of the fuzz targets: the checked properties ([`checks`], [`calib_check`], also used by the
//! normal test suite) and the structure-aware graph builder ([`graphs`]).

#[cfg(feature = "tract")]
pub mod calib_check;
pub mod checks;
#[cfg(feature = "tract")]
pub mod graphs;
