//! Building a [`Feed`]: from `.npz`/`.npy` files, from seeded random data, and batching.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, Axis, IxDyn, Slice};

use crate::array::{rewrap_array, Array};
use crate::rng::SplitMix64;
use crate::{npy, Dim, Feed, InputDecl, ValidateError};

/// Loads one array per declared input.
///
/// `path` is either a `.npz` whose keys are graph input names (with or without a `.npy` suffix),
/// or a folder holding `<input name>.npy` or `input_<k>.npy` files (k = graph-input index), or —
/// for a single-input model — one `.npy` file. Other files in the folder are ignored. A missing
/// input, a dtype different from `elem_type`, or a wrong rank / fixed dim is an error naming
/// the input.
pub fn load_feed(path: &Path, decls: &[InputDecl]) -> Result<Feed, ValidateError> {
    let meta = std::fs::metadata(path).map_err(|e| ValidateError::io(path, e))?;
    let mut arrays = Vec::with_capacity(decls.len());
    if meta.is_dir() {
        for (k, decl) in decls.iter().enumerate() {
            let candidates = [
                path.join(format!("{}.npy", decl.name)),
                path.join(format!("{}.npy", sanitize(&decl.name))),
                path.join(format!("input_{k}.npy")),
            ];
            let file = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                ValidateError::feed(format!(
                    "input `{}` (#{k}): neither `{}.npy` nor `input_{k}.npy` in {}",
                    decl.name,
                    decl.name,
                    path.display()
                ))
            })?;
            arrays.push((decl.name.clone(), npy::read_npy(file)?));
        }
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        if decls.len() != 1 {
            return Err(ValidateError::feed(format!(
                "{} is a single .npy file but the model has {} inputs; use a folder or a .npz",
                path.display(),
                decls.len()
            )));
        }
        arrays.push((decls[0].name.clone(), npy::read_npy(path)?));
    } else {
        let mut members = npy::read_npz(path)?;
        for (k, decl) in decls.iter().enumerate() {
            let keys = [decl.name.clone(), sanitize(&decl.name), format!("input_{k}")];
            let pos = keys.iter().find_map(|key| members.iter().position(|(n, _)| n == key)).ok_or_else(|| {
                let have: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
                ValidateError::feed(format!(
                    "input `{}` (#{k}) not found in {} (keys: {})",
                    decl.name,
                    path.display(),
                    have.join(", ")
                ))
            })?;
            let (_, arr) = members.swap_remove(pos);
            arrays.push((decl.name.clone(), arr));
        }
    }
    for ((_, arr), decl) in arrays.iter().zip(decls) {
        check_against_decl(arr, decl)?;
    }
    check_shared_sizes(&arrays, decls)?;
    Ok(Feed { arrays })
}

/// Inputs whose declarations name the same symbolic size (`batch`, `seq`) must hold the same size
/// there: tract would otherwise fail deep inside the graph with an error that names neither input.
fn check_shared_sizes(arrays: &[(String, Array)], decls: &[InputDecl]) -> Result<(), ValidateError> {
    let mut seen: std::collections::BTreeMap<&str, (&str, usize, usize)> = std::collections::BTreeMap::new();
    for ((_, arr), decl) in arrays.iter().zip(decls) {
        for (axis, (d, &got)) in decl.dims.iter().zip(arr.shape()).enumerate() {
            let Dim::Named(sym) = d else { continue };
            if sym.is_empty() || sym == "?" {
                continue;
            }
            match seen.get(sym.as_str()) {
                Some(&(other, at, size)) if size != got => {
                    return Err(ValidateError::feed(format!(
                        "inputs `{other}` (axis {at}) and `{}` (axis {axis}) share the size '{sym}' but hold {size} and {got}",
                        decl.name
                    )))
                }
                Some(_) => {}
                None => {
                    seen.insert(sym, (decl.name.as_str(), axis, got));
                }
            }
        }
    }
    Ok(())
}

/// Seeded random inputs from the declared shapes.
///
/// `overrides` maps an input name to a concrete shape; unknown or symbolic dims without an
/// override are 1. Floats are uniform in `[-1, 1)`, integers in `[0, 2)`, bools random.
pub fn random_feed(
    decls: &[InputDecl],
    overrides: &BTreeMap<String, Vec<usize>>,
    seed: u64,
) -> Result<Feed, ValidateError> {
    if let Some(name) = overrides.keys().find(|n| !decls.iter().any(|d| &d.name == *n)) {
        let names: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        return Err(ValidateError::feed(format!(
            "--input-shape names unknown input `{name}` (inputs: {})",
            names.join(", ")
        )));
    }
    let mut arrays = Vec::with_capacity(decls.len());
    for (k, decl) in decls.iter().enumerate() {
        let shape: Vec<usize> = match overrides.get(&decl.name) {
            Some(s) => {
                check_shape(&decl.name, s, &decl.dims)?;
                s.clone()
            }
            None => decl.dims.iter().map(|d| d.fixed().unwrap_or(1)).collect(),
        };
        let stream = seed ^ (k as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let arr = random_array(&decl.name, decl.elem_type, &shape, &mut SplitMix64::new(stream))?;
        arrays.push((decl.name.clone(), arr));
    }
    Ok(Feed { arrays })
}

/// Parses `"name=1,3,224,224"` into `("name", [1, 3, 224, 224])`.
pub fn parse_input_shape(text: &str) -> Result<(String, Vec<usize>), ValidateError> {
    let bad = |msg: &str| ValidateError::InputShape { text: text.to_string(), msg: msg.to_string() };
    let (name, dims) = text.rsplit_once('=').ok_or_else(|| bad("expected `name=d0,d1,...` (e.g. `x=1,3,224,224`)"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("the input name before `=` is empty"));
    }
    if dims.trim().is_empty() {
        return Err(bad("no dimensions after `=` (e.g. `x=1,3,224,224`)"));
    }
    let shape = dims
        .split(',')
        .map(|d| match d.trim().parse::<usize>() {
            Ok(0) => Err(bad("dimensions must be positive, found 0")),
            Ok(v) => Ok(v),
            Err(_) => Err(bad(&format!("`{}` is not a positive integer", d.trim()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), shape))
}

/// Splits a feed along axis 0 into batches of at most `batch` rows; every input is sliced the
/// same way, so all inputs must share their leading dimension.
pub fn split_batches(feed: &Feed, batch: usize) -> Result<Vec<Feed>, ValidateError> {
    if batch == 0 {
        return Err(ValidateError::feed("batch size must be at least 1"));
    }
    let Some((first_name, first)) = feed.arrays.first() else {
        return Err(ValidateError::feed("cannot split an empty feed"));
    };
    let rows = *first
        .shape()
        .first()
        .ok_or_else(|| ValidateError::feed(format!("input `{first_name}` is a scalar: no batch axis")))?;
    for (name, arr) in &feed.arrays {
        if arr.shape().first() != Some(&rows) {
            return Err(ValidateError::feed(format!(
                "input `{name}` has shape {:?} but `{first_name}` has {rows} rows: inputs must share axis 0",
                arr.shape()
            )));
        }
    }
    let mut out = Vec::with_capacity(rows.div_ceil(batch));
    for start in (0..rows).step_by(batch) {
        let end = (start + batch).min(rows);
        let arrays = feed
            .arrays
            .iter()
            .map(|(name, arr)| {
                let sliced = rewrap_array!(arr, a => a.slice_axis(Axis(0), Slice::from(start..end)).to_owned());
                (name.clone(), sliced)
            })
            .collect();
        out.push(Feed { arrays });
    }
    Ok(out)
}

/// Numpy / ONNX name of an ONNX element type code, for messages.
pub fn elem_type_name(code: i32) -> String {
    let n = match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => return format!("ONNX type {code}"),
    };
    n.to_string()
}

/// Replaces characters that cannot appear in a file name (`/`, `:`, ...) by `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect()
}

fn check_against_decl(arr: &Array, decl: &InputDecl) -> Result<(), ValidateError> {
    if arr.onnx_elem_type() != decl.elem_type {
        return Err(ValidateError::feed(format!(
            "input `{}`: the model expects {} but the file holds {}",
            decl.name,
            elem_type_name(decl.elem_type),
            arr.dtype_name()
        )));
    }
    if arr.shape().contains(&0) {
        return Err(ValidateError::feed(format!("input `{}` holds no values (shape {:?})", decl.name, arr.shape())));
    }
    check_shape(&decl.name, arr.shape(), &decl.dims)
}

/// Rank and fixed dims of `shape` against the declaration (no check when `dims` is empty).
fn check_shape(name: &str, shape: &[usize], dims: &[Dim]) -> Result<(), ValidateError> {
    if dims.is_empty() {
        return Ok(());
    }
    if shape.len() != dims.len() {
        return Err(ValidateError::feed(format!(
            "input `{name}`: the model expects rank {} ({}) but got shape {shape:?} (rank {})",
            dims.len(),
            describe_dims(dims),
            shape.len()
        )));
    }
    for (axis, (&got, dim)) in shape.iter().zip(dims).enumerate() {
        if let Some(want) = dim.fixed() {
            if want != got {
                return Err(ValidateError::feed(format!(
                    "input `{name}`: axis {axis} must be {want} ({}) but got shape {shape:?}",
                    describe_dims(dims)
                )));
            }
        }
    }
    Ok(())
}

fn describe_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match (d, d.fixed()) {
            (_, Some(v)) => v.to_string(),
            (Dim::Named(s), None) => s.clone(),
            _ => "?".to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The most elements one generated random input may have (1 GiB of f32): declared shapes beyond this are
/// refused before anything is allocated.
pub const MAX_RANDOM_ELEMENTS: usize = 1 << 28;

fn random_array(name: &str, elem_type: i32, shape: &[usize], rng: &mut SplitMix64) -> Result<Array, ValidateError> {
    // Zero dims do not hide huge ones: ndarray refuses shapes whose non-zero dims overflow.
    let fits =
        shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1))).is_some_and(|n| n <= MAX_RANDOM_ELEMENTS);
    if !fits {
        return Err(ValidateError::feed(format!(
            "input `{name}`: declared shape {shape:?} is too large to generate random data for (over {MAX_RANDOM_ELEMENTS} \
             elements): give --inputs or a smaller --input-shape"
        )));
    }
    let n: usize = shape.iter().product();
    let dim = IxDyn(shape);
    macro_rules! fill {
        ($variant:ident, $f:expr) => {{
            let v = (0..n).map(|_| $f(&mut *rng)).collect();
            Array::$variant(ArrayD::from_shape_vec(dim, v).expect("length matches shape"))
        }};
    }
    let bit = |r: &mut SplitMix64| r.below(2);
    let arr = match elem_type {
        1 => fill!(F32, |r: &mut SplitMix64| r.next_signed_unit() as f32),
        10 => fill!(F16, |r: &mut SplitMix64| f16::from_f64(r.next_signed_unit())),
        11 => fill!(F64, |r: &mut SplitMix64| r.next_signed_unit()),
        7 => fill!(I64, |r: &mut SplitMix64| bit(r) as i64),
        6 => fill!(I32, |r: &mut SplitMix64| bit(r) as i32),
        5 => fill!(I16, |r: &mut SplitMix64| bit(r) as i16),
        3 => fill!(I8, |r: &mut SplitMix64| bit(r) as i8),
        2 => fill!(U8, |r: &mut SplitMix64| bit(r) as u8),
        4 => fill!(U16, |r: &mut SplitMix64| bit(r) as u16),
        12 => fill!(U32, |r: &mut SplitMix64| bit(r) as u32),
        13 => fill!(U64, bit),
        9 => fill!(Bool, |r: &mut SplitMix64| bit(r) == 1),
        other => {
            return Err(ValidateError::feed(format!(
                "input `{name}`: cannot generate random data of type {}",
                elem_type_name(other)
            )))
        }
    };
    Ok(arr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two inputs declared `[batch, seq]` must agree on both sizes; the error names both inputs.
    #[test]
    fn inputs_sharing_a_symbolic_size_must_agree() {
        let d = tempfile::tempdir().unwrap();
        let decl = |name: &str| InputDecl {
            name: name.into(),
            elem_type: 7,
            dims: vec![Dim::Named("batch".into()), Dim::Named("seq".into())],
        };
        let decls = [decl("ids"), decl("mask")];
        let ids = |rows: usize, cols: usize| Array::I64(ArrayD::zeros(IxDyn(&[rows, cols])));
        npy::write_npy(&d.path().join("ids.npy"), &ids(4, 32)).unwrap();
        npy::write_npy(&d.path().join("mask.npy"), &ids(4, 32)).unwrap();
        assert!(load_feed(d.path(), &decls).is_ok());
        npy::write_npy(&d.path().join("mask.npy"), &ids(4, 20)).unwrap();
        let e = load_feed(d.path(), &decls).unwrap_err().to_string();
        assert!(e.contains("`ids` (axis 1) and `mask` (axis 1) share the size 'seq' but hold 32 and 20"), "{e}");
        // No rows at all is refused too (calibration on it would measure nothing).
        npy::write_npy(&d.path().join("ids.npy"), &ids(0, 32)).unwrap();
        npy::write_npy(&d.path().join("mask.npy"), &ids(0, 32)).unwrap();
        let e = load_feed(d.path(), &decls).unwrap_err().to_string();
        assert!(e.contains("input `ids` holds no values"), "{e}");
    }
}
