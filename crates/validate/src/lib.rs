//! `sparsify-validate`: the only crate of the workspace that knows tract.
//!
//! It reads `.npy`/`.npz` inputs ([`npy`]), builds feeds from files or seeded random data
//! ([`feed`]), runs ONNX models through tract (`tract_adapter`, re-exported here as
//! [`run_model`], [`Runner`] and [`ModelSource`]) and compares outputs ([`compare`]).
//! It depends on no other sparsify crate: callers describe graph inputs with [`InputDecl`].

mod array;
pub mod calib_batches;
pub mod compare;
mod error;
pub mod feed;
pub mod npy;
mod rng;
mod tract_adapter;

pub use array::Array;
pub use calib_batches::{load_samples, plan_batches, BatchPlan};
pub use compare::{compare_outputs, validate, OutputReport, Status, Thresholds, ValidationReport};
pub use error::ValidateError;
pub use feed::{load_feed, parse_input_shape, random_feed, split_batches};
pub use tract_adapter::{in_tract_run, run_model, ModelSource, Runner};

/// One dimension of a declared graph input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A concrete size. A value `<= 0` (e.g. `-1`) is treated like [`Dim::Unknown`].
    Fixed(i64),
    /// A symbolic size such as `"batch"` (or `"?"`).
    Named(String),
    /// No size information.
    Unknown,
}

impl Dim {
    /// The concrete size, if this dim is `Fixed` with a positive value.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(v) if *v > 0 => usize::try_from(*v).ok(),
            _ => None,
        }
    }
}

/// A graph input as declared in the model (the caller fills it from the ONNX graph).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputDecl {
    /// The ONNX input name.
    pub name: String,
    /// ONNX `TensorProto.DataType` code: 1=f32, 2=u8, 3=i8, 4=u16, 5=i16, 6=i32, 7=i64, 9=bool,
    /// 10=f16, 11=f64, 12=u32, 13=u64.
    pub elem_type: i32,
    /// Declared dims; an empty vector means rank 0 or an unknown rank (not checked).
    pub dims: Vec<Dim>,
}

/// One array per graph input, in graph-input order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Feed {
    /// `(input name, value)` pairs.
    pub arrays: Vec<(String, Array)>,
}

impl Feed {
    /// The array fed to input `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Array> {
        self.arrays.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}
