//! `.npy` / `.npz` reading and writing.

mod common;

use std::io::Write;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use sparsify_validate::npy::{read_npy, read_npy_bytes, read_npz, to_npy_bytes, write_npy};
use sparsify_validate::{Array, ValidateError};

fn f32_array() -> Array {
    let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.25).collect();
    Array::F32(ArrayD::from_shape_vec(IxDyn(&[2, 3, 4]), v).unwrap())
}

fn i64_array() -> Array {
    let v: Vec<i64> = vec![i64::MIN, -1, 0, 1, 42, i64::MAX];
    Array::I64(ArrayD::from_shape_vec(IxDyn(&[6]), v).unwrap())
}

#[test]
fn roundtrip_f32_i64_and_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let scalar = Array::F32(ArrayD::from_elem(IxDyn(&[]), 7.5f32));
    let bools = Array::Bool(ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![true, false, false, true])?);
    let halfs = Array::F16(ArrayD::from_shape_vec(
        IxDyn(&[3]),
        vec![half::f16::from_f32(1.5), half::f16::from_f32(-2.0), half::f16::from_f32(0.0)],
    )?);
    for (i, arr) in [f32_array(), i64_array(), scalar, bools, halfs].into_iter().enumerate() {
        let path = dir.path().join(format!("a{i}.npy"));
        write_npy(&path, &arr)?;
        let bytes = std::fs::read(&path)?;
        // Header (magic + len + dict) is padded to a multiple of 64 bytes.
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(read_npy(&path)?, arr);
    }
    Ok(())
}

#[test]
fn non_contiguous_array_is_written_in_logical_order() -> anyhow::Result<()> {
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1i64, 2, 3, 4, 5, 6])?;
    let t = Array::I64(a.t().to_owned().into_dyn());
    let back = read_npy_bytes(&to_npy_bytes(&Array::I64(a.t().into_dyn().to_owned())), Path::new("t"))?;
    assert_eq!(back, t);
    assert_eq!(back.to_f64_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    Ok(())
}

/// Builds a `.npy` by hand with the given version, descr, order and raw data.
fn handmade(version: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY".to_vec();
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn reads_v2_v3_fortran_big_endian_and_small_ints() -> anyhow::Result<()> {
    let p = Path::new("mem");
    // v2, Fortran order: F-order data of [[1,2,3],[4,5,6]] is 1,4,2,5,3,6.
    let data: Vec<u8> = [1i32, 4, 2, 5, 3, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = read_npy_bytes(&handmade(2, "<i4", true, "(2, 3)", &data), p)?;
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(a.dtype_name(), "int32");
    // v3, big-endian f8.
    let data: Vec<u8> = [0.25f64, -8.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let a = read_npy_bytes(&handmade(3, ">f8", false, "(2,)", &data), p)?;
    assert_eq!(a, Array::F64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.25, -8.0])?));
    // 1-byte and 2-byte types.
    for (descr, name) in [("|u1", "uint8"), ("|i1", "int8"), ("|b1", "bool")] {
        let a = read_npy_bytes(&handmade(1, descr, false, "(1, 2)", &[1, 0]), p)?;
        assert_eq!((a.dtype_name(), a.shape()), (name, &[1usize, 2][..]));
    }
    for (descr, name) in [("<u2", "uint16"), ("<i2", "int16"), ("<f2", "float16")] {
        let a = read_npy_bytes(&handmade(1, descr, false, "(2,)", &[0, 60, 0, 0]), p)?;
        assert_eq!(a.dtype_name(), name);
    }
    for (descr, name) in [("<u4", "uint32"), ("<u8", "uint64")] {
        let a = read_npy_bytes(&handmade(1, descr, false, "()", &[9; 8]), p)?;
        assert_eq!((a.dtype_name(), a.shape().len()), (name, 0));
    }
    Ok(())
}

#[test]
fn malformed_files_are_errors_not_panics() -> anyhow::Result<()> {
    let good = to_npy_bytes(&f32_array());
    let p = Path::new("bad.npy");
    for cut in [0, 5, 9, 11, 40, 127, 128, good.len() - 1] {
        let err = read_npy_bytes(&good[..cut], p).expect_err("truncated file must fail");
        assert!(matches!(err, ValidateError::Npy { .. }), "{err}");
    }
    let err = read_npy_bytes(&good[..good.len() - 3], p).unwrap_err();
    assert!(err.to_string().contains("truncated data"), "{err}");
    let bad = [
        handmade(1, "<c8", false, "(1,)", &[0; 8]),
        handmade(1, "<f4", false, "(x,)", &[0; 4]),
        handmade(7, "<f4", false, "(1,)", &[0; 4]),
    ];
    for b in bad {
        assert!(matches!(read_npy_bytes(&b, p), Err(ValidateError::Npy { .. })));
    }
    // Truncated on disk too.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.npy");
    std::fs::write(&path, &good[..100])?;
    let err = read_npy(&path).unwrap_err();
    assert!(err.to_string().contains("t.npy"), "{err}");
    Ok(())
}

#[test]
fn npz_stored_and_deflated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("feed.npz");
    {
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&path)?);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zw.start_file("x.npy", stored)?;
        zw.write_all(&to_npy_bytes(&f32_array()))?;
        zw.start_file("ids", deflated)?;
        zw.write_all(&to_npy_bytes(&i64_array()))?;
        zw.finish()?;
    }
    let members = read_npz(&path)?;
    assert_eq!(members.len(), 2);
    assert_eq!(members[0], ("x".to_string(), f32_array()));
    assert_eq!(members[1], ("ids".to_string(), i64_array()));
    // Not a zip: an error naming the file.
    let not_zip = dir.path().join("junk.npz");
    std::fs::write(&not_zip, b"definitely not a zip archive")?;
    let err = read_npz(&not_zip).unwrap_err();
    assert!(err.to_string().contains("junk.npz"), "{err}");
    Ok(())
}

#[test]
fn reads_every_shared_sample_file() -> anyhow::Result<()> {
    let Some(models) = common::models_dir() else {
        return Ok(());
    };
    let mut count = 0;
    for entry in std::fs::read_dir(&models)? {
        let sample = entry?.path().join("sample");
        if !sample.is_dir() {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sample.join("sample.json"))?)?;
        for io in json["inputs"].as_array().unwrap().iter().chain(json["outputs"].as_array().unwrap()) {
            let arr = read_npy(&sample.join(io["file"].as_str().unwrap()))?;
            let shape: Vec<usize> =
                io["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_eq!(arr.shape(), &shape[..], "{}", io["file"]);
            assert_eq!(arr.dtype_name(), io["dtype"].as_str().unwrap(), "{}", io["file"]);
            count += 1;
        }
    }
    assert_eq!(count, 14, "5 models: 6 inputs and 8 reference outputs");
    Ok(())
}
