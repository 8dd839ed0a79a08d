//! ONNX element types (`TensorProto.DataType`) and their byte sizes.

/// An ONNX element type. Unknown codes are kept as [`DType::Other`] so they survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    Complex64,
    Complex128,
    BF16,
    /// Float8, int4, float4 and any code this version does not name.
    Other(i32),
}

impl DType {
    pub fn from_code(code: i32) -> DType {
        use DType::*;
        match code {
            1 => F32,
            2 => U8,
            3 => I8,
            4 => U16,
            5 => I16,
            6 => I32,
            7 => I64,
            8 => String,
            9 => Bool,
            10 => F16,
            11 => F64,
            12 => U32,
            13 => U64,
            14 => Complex64,
            15 => Complex128,
            16 => BF16,
            c => Other(c),
        }
    }

    pub fn code(self) -> i32 {
        use DType::*;
        match self {
            F32 => 1,
            U8 => 2,
            I8 => 3,
            U16 => 4,
            I16 => 5,
            I32 => 6,
            I64 => 7,
            String => 8,
            Bool => 9,
            F16 => 10,
            F64 => 11,
            U32 => 12,
            U64 => 13,
            Complex64 => 14,
            Complex128 => 15,
            BF16 => 16,
            Other(c) => c,
        }
    }

    /// Bytes per element in `raw_data`, or `None` for strings and sub-byte / unknown types.
    pub fn size(self) -> Option<usize> {
        use DType::*;
        Some(match self {
            U8 | I8 | Bool => 1,
            U16 | I16 | F16 | BF16 => 2,
            F32 | I32 | U32 => 4,
            F64 | I64 | U64 | Complex64 => 8,
            Complex128 => 16,
            // float8 variants are one byte each.
            Other(17..=20) | Other(23) => 1,
            String | Other(_) => return None,
        })
    }

    /// Floating-point types whose weights the passes may prune.
    pub fn is_prunable_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    pub fn name(self) -> String {
        use DType::*;
        match self {
            F32 => "f32".into(),
            U8 => "u8".into(),
            I8 => "i8".into(),
            U16 => "u16".into(),
            I16 => "i16".into(),
            I32 => "i32".into(),
            I64 => "i64".into(),
            String => "string".into(),
            Bool => "bool".into(),
            F16 => "f16".into(),
            F64 => "f64".into(),
            U32 => "u32".into(),
            U64 => "u64".into(),
            Complex64 => "c64".into(),
            Complex128 => "c128".into(),
            BF16 => "bf16".into(),
            Other(c) => format!("dtype{c}"),
        }
    }
}
