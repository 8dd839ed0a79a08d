//! [`Array`]: a dynamically typed n-dimensional array (one variant per supported element type).

use half::f16;
use ndarray::ArrayD;

/// A dense array of one of the supported element types (C order when built by this crate).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<f16>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    I16(ArrayD<i16>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    Bool(ArrayD<bool>),
}

/// Applies `$body` to the inner `ArrayD` of any variant, bound as `$a`.
macro_rules! map_array {
    ($value:expr, $a:ident => $body:expr) => {
        match $value {
            Array::F32($a) => $body,
            Array::F64($a) => $body,
            Array::F16($a) => $body,
            Array::I64($a) => $body,
            Array::I32($a) => $body,
            Array::I16($a) => $body,
            Array::I8($a) => $body,
            Array::U8($a) => $body,
            Array::U16($a) => $body,
            Array::U32($a) => $body,
            Array::U64($a) => $body,
            Array::Bool($a) => $body,
        }
    };
}

/// Like `map_array!` but rebuilds an `Array` of the same variant from `$body`.
macro_rules! rewrap_array {
    ($value:expr, $a:ident => $body:expr) => {
        match $value {
            Array::F32($a) => Array::F32($body),
            Array::F64($a) => Array::F64($body),
            Array::F16($a) => Array::F16($body),
            Array::I64($a) => Array::I64($body),
            Array::I32($a) => Array::I32($body),
            Array::I16($a) => Array::I16($body),
            Array::I8($a) => Array::I8($body),
            Array::U8($a) => Array::U8($body),
            Array::U16($a) => Array::U16($body),
            Array::U32($a) => Array::U32($body),
            Array::U64($a) => Array::U64($body),
            Array::Bool($a) => Array::Bool($body),
        }
    };
}

pub(crate) use {map_array, rewrap_array};

impl Array {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        map_array!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        map_array!(self, a => a.len())
    }

    /// True when the array holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All elements converted to `f64`, in logical (C) order. `bool` maps to 0/1.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Array::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::F64(a) => a.iter().copied().collect(),
            Array::F16(a) => a.iter().map(|v| v.to_f64()).collect(),
            Array::I64(a) => a.iter().map(|&v| v as f64).collect(),
            Array::I32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::I16(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::I8(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::U8(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::U16(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::U32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Array::U64(a) => a.iter().map(|&v| v as f64).collect(),
            Array::Bool(a) => a.iter().map(|&v| f64::from(u8::from(v))).collect(),
        }
    }

    /// The rows of this array, seen as `[len / row_len, row_len]` in C order, for which `keep` is true,
    /// as a 2-D array `[kept, row_len]` of the same element type. `None` when `row_len` is 0 or does not
    /// divide the length, or `keep` does not have one entry per row.
    pub fn select_rows(&self, row_len: usize, keep: &[bool]) -> Option<Array> {
        if row_len == 0 || !self.len().is_multiple_of(row_len) || self.len() / row_len != keep.len() {
            return None;
        }
        let kept = keep.iter().filter(|&&k| k).count();
        Some(rewrap_array!(self, a => {
            let owned: Vec<_>;
            let flat = match a.as_slice() {
                Some(s) => s,
                None => {
                    owned = a.iter().cloned().collect();
                    &owned
                }
            };
            let vals: Vec<_> =
                flat.chunks(row_len).zip(keep).filter(|(_, &k)| k).flat_map(|(row, _)| row.iter().cloned()).collect();
            ArrayD::from_shape_vec(ndarray::IxDyn(&[kept, row_len]), vals).expect("kept rows × row length")
        }))
    }

    /// The numpy name of the element type (`"float32"`, `"int64"`, `"bool"`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            Array::F32(_) => "float32",
            Array::F64(_) => "float64",
            Array::F16(_) => "float16",
            Array::I64(_) => "int64",
            Array::I32(_) => "int32",
            Array::I16(_) => "int16",
            Array::I8(_) => "int8",
            Array::U8(_) => "uint8",
            Array::U16(_) => "uint16",
            Array::U32(_) => "uint32",
            Array::U64(_) => "uint64",
            Array::Bool(_) => "bool",
        }
    }

    /// The ONNX `TensorProto.DataType` code of the element type.
    pub fn onnx_elem_type(&self) -> i32 {
        match self {
            Array::F32(_) => 1,
            Array::U8(_) => 2,
            Array::I8(_) => 3,
            Array::U16(_) => 4,
            Array::I16(_) => 5,
            Array::I32(_) => 6,
            Array::I64(_) => 7,
            Array::Bool(_) => 9,
            Array::F16(_) => 10,
            Array::F64(_) => 11,
            Array::U32(_) => 12,
            Array::U64(_) => 13,
        }
    }

    /// True for `float16`, `float32` and `float64`.
    pub fn is_float(&self) -> bool {
        matches!(self, Array::F32(_) | Array::F64(_) | Array::F16(_))
    }

    /// Exact equality of dtype, shape and element bits (NaN payloads included, `-0.0 != 0.0`).
    pub fn bit_identical(&self, other: &Array) -> bool {
        if self.shape() != other.shape() {
            return false;
        }
        match (self, other) {
            (Array::F32(a), Array::F32(b)) => a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            (Array::F64(a), Array::F64(b)) => a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            (Array::F16(a), Array::F16(b)) => a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            (Array::I64(a), Array::I64(b)) => a == b,
            (Array::I32(a), Array::I32(b)) => a == b,
            (Array::I16(a), Array::I16(b)) => a == b,
            (Array::I8(a), Array::I8(b)) => a == b,
            (Array::U8(a), Array::U8(b)) => a == b,
            (Array::U16(a), Array::U16(b)) => a == b,
            (Array::U32(a), Array::U32(b)) => a == b,
            (Array::U64(a), Array::U64(b)) => a == b,
            (Array::Bool(a), Array::Bool(b)) => a == b,
            _ => false,
        }
    }
}

macro_rules! impl_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<ArrayD<$t>> for Array {
            fn from(a: ArrayD<$t>) -> Self {
                Array::$v(a)
            }
        }
    )*};
}

impl_from!(f32 => F32, f64 => F64, f16 => F16, i64 => I64, i32 => I32, i16 => I16, i8 => I8,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, bool => Bool);
