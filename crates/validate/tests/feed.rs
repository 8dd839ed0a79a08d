//! Feed building: loading from folders / npz, random feeds, `--input-shape` parsing, batching.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use ndarray::{ArrayD, IxDyn};
use sparsify_validate::npy::{to_npy_bytes, write_npy};
use sparsify_validate::{
    load_feed, parse_input_shape, random_feed, split_batches, Array, Dim, Feed, InputDecl, ValidateError,
};

fn decl(name: &str, elem_type: i32, dims: Vec<Dim>) -> InputDecl {
    InputDecl { name: name.into(), elem_type, dims }
}

fn two_inputs() -> Vec<InputDecl> {
    vec![decl("ids", 7, vec![Dim::Named("b".into()), Dim::Unknown]), decl("x", 1, vec![Dim::Fixed(-1), Dim::Fixed(3)])]
}

fn ids(rows: usize) -> Array {
    Array::I64(ArrayD::from_shape_fn(IxDyn(&[rows, 2]), |d| (d[0] * 2 + d[1]) as i64))
}

fn xs(rows: usize) -> Array {
    Array::F32(ArrayD::from_shape_fn(IxDyn(&[rows, 3]), |d| (d[0] * 3 + d[1]) as f32))
}

#[test]
fn folder_by_name_and_by_index_ignoring_other_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_npy(&dir.path().join("ids.npy"), &ids(5))?;
    write_npy(&dir.path().join("input_1.npy"), &xs(5))?;
    write_npy(&dir.path().join("ort_output_0.npy"), &xs(1))?;
    std::fs::write(dir.path().join("sample.json"), "{}")?;
    let feed = load_feed(dir.path(), &two_inputs())?;
    assert_eq!(feed.arrays, vec![("ids".to_string(), ids(5)), ("x".to_string(), xs(5))]);
    Ok(())
}

#[test]
fn npz_keys_with_and_without_suffix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("feed.npz");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&path)?);
    let opts = zip::write::SimpleFileOptions::default();
    zw.start_file("x.npy", opts)?;
    zw.write_all(&to_npy_bytes(&xs(4)))?;
    zw.start_file("ids", opts)?;
    zw.write_all(&to_npy_bytes(&ids(4)))?;
    zw.finish()?;
    let feed = load_feed(&path, &two_inputs())?;
    assert_eq!(feed.get("ids"), Some(&ids(4)));
    assert_eq!(feed.arrays[1].0, "x");
    Ok(())
}

#[test]
fn load_errors_name_the_input() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_npy(&dir.path().join("ids.npy"), &ids(2))?;
    let err = load_feed(dir.path(), &two_inputs()).unwrap_err();
    assert!(matches!(err, ValidateError::Feed { .. }) && err.to_string().contains("`x`"), "{err}");
    // Wrong dtype: f32 data for the int64 input.
    write_npy(&dir.path().join("x.npy"), &xs(2))?;
    write_npy(&dir.path().join("ids.npy"), &xs(2))?;
    let err = load_feed(dir.path(), &two_inputs()).unwrap_err().to_string();
    assert!(err.contains("`ids`") && err.contains("int64") && err.contains("float32"), "{err}");
    // Wrong rank.
    write_npy(&dir.path().join("ids.npy"), &Array::I64(ArrayD::zeros(IxDyn(&[2]))))?;
    let err = load_feed(dir.path(), &two_inputs()).unwrap_err().to_string();
    assert!(err.contains("`ids`") && err.contains("rank 2"), "{err}");
    // Wrong fixed dim.
    write_npy(&dir.path().join("ids.npy"), &ids(2))?;
    write_npy(&dir.path().join("x.npy"), &Array::F32(ArrayD::zeros(IxDyn(&[2, 4]))))?;
    let err = load_feed(dir.path(), &two_inputs()).unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("axis 1 must be 3"), "{err}");
    Ok(())
}

#[test]
fn random_feed_is_seeded_and_respects_shapes_and_ranges() -> anyhow::Result<()> {
    let decls = vec![
        decl("x", 1, vec![Dim::Fixed(-1), Dim::Fixed(3), Dim::Named("?".into()), Dim::Unknown]),
        decl("ids", 7, vec![Dim::Named("b".into()), Dim::Fixed(16)]),
        decl("mask", 9, vec![Dim::Fixed(64)]),
        decl("h", 10, vec![Dim::Fixed(8)]),
    ];
    let mut ov = BTreeMap::new();
    ov.insert("x".to_string(), vec![2, 3, 48, 192]);
    let a = random_feed(&decls, &ov, 42)?;
    assert_eq!(a, random_feed(&decls, &ov, 42)?);
    assert_ne!(a, random_feed(&decls, &ov, 43)?);
    assert_eq!(a.arrays[0].1.shape(), &[2, 3, 48, 192]);
    assert_eq!(a.arrays[1].1.shape(), &[1, 16]);
    let x = a.arrays[0].1.to_f64_vec();
    assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    assert!(mean.abs() < 0.02, "mean {mean}");
    let ids = a.arrays[1].1.to_f64_vec();
    assert!(ids.iter().all(|&v| v == 0.0 || v == 1.0) && ids.contains(&1.0));
    assert_eq!(a.arrays[2].1.dtype_name(), "bool");
    assert_eq!(a.arrays[3].1.dtype_name(), "float16");
    // Override problems.
    let mut bad = BTreeMap::new();
    bad.insert("nope".to_string(), vec![1]);
    assert!(random_feed(&decls, &bad, 1).unwrap_err().to_string().contains("`nope`"));
    let mut bad = BTreeMap::new();
    bad.insert("x".to_string(), vec![1, 3]);
    assert!(random_feed(&decls, &bad, 1).unwrap_err().to_string().contains("rank 4"));
    Ok(())
}

#[test]
fn parse_input_shape_cases() {
    assert_eq!(parse_input_shape("x=1,3,224,224").unwrap(), ("x".into(), vec![1, 3, 224, 224]));
    assert_eq!(parse_input_shape(" a:0 = 2, 5 ").unwrap(), ("a:0".into(), vec![2, 5]));
    assert_eq!(parse_input_shape("a=b=4").unwrap(), ("a=b".into(), vec![4]));
    for (text, needle) in [
        ("x", "name=d0"),
        ("=1,2", "name before"),
        ("x=", "no dimensions"),
        ("x=1,,2", "not a positive integer"),
        ("x=1,-3", "`-3`"),
        ("x=0,3", "positive"),
    ] {
        let err = parse_input_shape(text).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains(text.trim()), "{text}: {err}");
    }
}

#[test]
fn split_batches_slices_every_input_the_same() -> anyhow::Result<()> {
    let feed = Feed { arrays: vec![("ids".into(), ids(5)), ("x".into(), xs(5))] };
    let batches = split_batches(&feed, 2)?;
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].arrays[0].1.shape(), &[1, 2]);
    assert_eq!(batches[1].arrays[1].1.to_f64_vec(), vec![6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    assert_eq!(split_batches(&feed, 10)?, vec![feed.clone()]);
    assert!(split_batches(&feed, 0).is_err());
    let ragged = Feed { arrays: vec![("ids".into(), ids(5)), ("x".into(), xs(4))] };
    let err = split_batches(&ragged, 2).unwrap_err().to_string();
    assert!(err.contains("`x`"), "{err}");
    Ok(())
}
