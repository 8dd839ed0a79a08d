//! `.npy` reading and writing, `.npz` reading.
//!
//! Reads format versions 1, 2 and 3, C or Fortran order, little- or big-endian, dtypes
//! `f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1`. Writes version 1 (version 2 for huge headers),
//! little-endian, C order, any supported dtype. `.npz` members may be stored or deflated.

use std::io::Read;
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::array::{map_array, Array};
use crate::ValidateError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads one `.npy` file.
pub fn read_npy(path: &Path) -> Result<Array, ValidateError> {
    let bytes = std::fs::read(path).map_err(|e| ValidateError::io(path, e))?;
    read_npy_bytes(&bytes, path)
}

/// Parses `.npy` bytes; `origin` only names the data in error messages.
pub fn read_npy_bytes(bytes: &[u8], origin: &Path) -> Result<Array, ValidateError> {
    let err = |msg: String| ValidateError::npy(origin, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("not a .npy file (bad magic string)".into()));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header".into()));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (len as usize, 12)
        }
        v => return Err(err(format!("unsupported .npy format version {v}"))),
    };
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err(err(format!("truncated header: needs {data_start} bytes, file has {}", bytes.len())));
    }
    let header =
        std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| err("header is not valid UTF-8".into()))?;
    let header = parse_header(header).map_err(|m| err(format!("{m} (header: {})", header.trim())))?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err("shape overflows".into()))?;
    let need = count.checked_mul(header.elem_size).ok_or_else(|| err("shape overflows".into()))?;
    let data = &bytes[data_start..];
    if data.len() < need {
        return Err(err(format!(
            "truncated data: shape {:?} of {} needs {need} bytes, file has {}",
            header.shape,
            header.descr,
            data.len()
        )));
    }
    let data = &data[..need];
    let shape = IxDyn(&header.shape);
    let h = &header;
    let arr = match (header.kind, header.elem_size) {
        ('f', 2) => build::<f16>(h, shape, data).map(Array::F16),
        ('f', 4) => build::<f32>(h, shape, data).map(Array::F32),
        ('f', 8) => build::<f64>(h, shape, data).map(Array::F64),
        ('i', 1) => build::<i8>(h, shape, data).map(Array::I8),
        ('i', 2) => build::<i16>(h, shape, data).map(Array::I16),
        ('i', 4) => build::<i32>(h, shape, data).map(Array::I32),
        ('i', 8) => build::<i64>(h, shape, data).map(Array::I64),
        ('u', 1) => build::<u8>(h, shape, data).map(Array::U8),
        ('u', 2) => build::<u16>(h, shape, data).map(Array::U16),
        ('u', 4) => build::<u32>(h, shape, data).map(Array::U32),
        ('u', 8) => build::<u64>(h, shape, data).map(Array::U64),
        ('b', 1) => build::<bool>(h, shape, data).map(Array::Bool),
        _ => return Err(err(format!("unsupported dtype `{}`", header.descr))),
    };
    arr.map_err(|e| err(format!("shape error: {e}")))
}

/// Writes `array` as a version-1 (little-endian, C order) `.npy` file.
pub fn write_npy(path: &Path, array: &Array) -> Result<(), ValidateError> {
    std::fs::write(path, to_npy_bytes(array)).map_err(|e| ValidateError::io(path, e))
}

/// Serialises `array` to `.npy` bytes (little-endian, C order).
pub fn to_npy_bytes(array: &Array) -> Vec<u8> {
    let descr = match array {
        Array::F32(_) => "<f4",
        Array::F64(_) => "<f8",
        Array::F16(_) => "<f2",
        Array::I64(_) => "<i8",
        Array::I32(_) => "<i4",
        Array::I16(_) => "<i2",
        Array::I8(_) => "|i1",
        Array::U8(_) => "|u1",
        Array::U16(_) => "<u2",
        Array::U32(_) => "<u4",
        Array::U64(_) => "<u8",
        Array::Bool(_) => "|b1",
    };
    let shape = array.shape();
    let dims = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let v1 = header.len() + 11 <= usize::from(u16::MAX);
    let prefix = if v1 { 10 } else { 12 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(prefix + header.len() + array.len() * 8);
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    map_array!(array, a => a.iter().for_each(|v| v.put_le(&mut out)));
    out
}

/// Reads every `.npy` member of a `.npz` archive; names lose their `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>, ValidateError> {
    let file = std::fs::File::open(path).map_err(|e| ValidateError::io(path, e))?;
    read_npz_from(file, path)
}

/// Reads a `.npz` archive held in memory; `origin` only names the data in error messages.
pub fn read_npz_bytes(bytes: &[u8], origin: &Path) -> Result<Vec<(String, Array)>, ValidateError> {
    read_npz_from(std::io::Cursor::new(bytes), origin)
}

fn read_npz_from<R: Read + std::io::Seek>(reader: R, path: &Path) -> Result<Vec<(String, Array)>, ValidateError> {
    let zerr = |e: zip::result::ZipError| ValidateError::npy(path, format!("bad .npz archive: {e}"));
    let mut archive = zip::ZipArchive::new(reader).map_err(zerr)?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(zerr)?;
        if member.is_dir() {
            continue;
        }
        let name = member.name().to_string();
        // Read no more than the member declares (a lying header cannot make a small archive inflate
        // without bound); no allocation is sized from the declared size itself.
        let declared = member.size();
        let mut bytes = Vec::new();
        (&mut member)
            .take(declared.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| ValidateError::npy(path, format!("member `{name}`: {e}")))?;
        if bytes.len() as u64 > declared {
            return Err(ValidateError::npy(
                path,
                format!("member `{name}` is larger than its declared {declared} bytes"),
            ));
        }
        let origin = path.join(&name);
        let arr = read_npy_bytes(&bytes, &origin)?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((key, arr));
    }
    Ok(out)
}

struct Header {
    descr: String,
    kind: char,
    elem_size: usize,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a `.npy` header.
fn parse_header(text: &str) -> Result<Header, String> {
    let descr = value_after(text, "descr")?;
    let descr = descr
        .strip_prefix(['\'', '"'])
        .and_then(|s| s.split(['\'', '"']).next())
        .ok_or("`descr` is not a simple dtype string (structured dtypes are unsupported)")?
        .to_string();
    let (order, rest) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '=' | '|')) => (c, &descr[1..]),
        _ => ('=', &descr[..]),
    };
    let (kind, size) = if rest == "?" {
        ('b', 1)
    } else {
        let kind = rest.chars().next().ok_or("empty `descr`")?;
        let size = rest[kind.len_utf8()..].parse::<usize>().map_err(|_| format!("unsupported dtype `{descr}`"))?;
        (kind, size)
    };
    let fortran = value_after(text, "fortran_order")?.starts_with("True");
    let shape_text = value_after(text, "shape")?;
    let shape_text = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("`shape` is not a tuple")?;
    let shape = shape_text
        .split(',')
        .map(|s| s.trim().trim_end_matches('L'))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension `{s}` in shape")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header { descr: descr.clone(), kind, elem_size: size, big_endian: order == '>', fortran, shape })
}

/// The text following `'key':` in the header dict, leading whitespace trimmed.
fn value_after<'t>(text: &'t str, key: &str) -> Result<&'t str, String> {
    for quote in ['\'', '"'] {
        let pat = format!("{quote}{key}{quote}");
        if let Some(pos) = text.find(&pat) {
            let rest = text[pos + pat.len()..].trim_start();
            let rest = rest.strip_prefix(':').ok_or(format!("no `:` after `{key}`"))?;
            return Ok(rest.trim_start());
        }
    }
    Err(format!("header has no `{key}` entry"))
}

/// Decodes `data` into an array of `shape` in C order (transposing Fortran-order data).
fn build<T: NpyElem + Clone>(h: &Header, shape: IxDyn, data: &[u8]) -> Result<ArrayD<T>, ndarray::ShapeError> {
    let values: Vec<T> =
        data.chunks_exact(T::SIZE).map(|c| if h.big_endian { T::from_be(c) } else { T::from_le(c) }).collect();
    if h.fortran {
        ArrayD::from_shape_vec(shape.f(), values).map(|a| a.as_standard_layout().into_owned())
    } else {
        ArrayD::from_shape_vec(shape, values)
    }
}

/// Fixed-size element (de)serialisation.
trait NpyElem: Sized {
    const SIZE: usize;
    fn from_le(b: &[u8]) -> Self;
    fn from_be(b: &[u8]) -> Self;
    fn put_le(&self, out: &mut Vec<u8>);
}

macro_rules! npy_elem {
    ($($t:ty),*) => {$(
        impl NpyElem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("chunk of element size"))
            }
            fn from_be(b: &[u8]) -> Self {
                <$t>::from_be_bytes(b.try_into().expect("chunk of element size"))
            }
            fn put_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

npy_elem!(f16, f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl NpyElem for bool {
    const SIZE: usize = 1;
    fn from_le(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn from_be(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn put_le(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}
