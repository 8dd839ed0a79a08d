//! Hostile declared sizes in model files: tensor shapes whose element or byte counts overflow, shapes
//! that promise far more data than the file holds (raw, typed or external), and external-data offsets
//! and lengths that overflow are load errors naming the tensor — decided from the declared numbers
//! before any buffer of the declared size exists.

use prost::Message;
use sparsify_onnx_io::{model_from_bytes, LoadOptions};
use sparsify_onnx_proto as pb;

fn model_with(t: pb::TensorProto) -> Vec<u8> {
    pb::ModelProto {
        ir_version: Some(8),
        graph: Some(pb::GraphProto { name: Some("g".into()), initializer: vec![t], ..Default::default() }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn tensor(dims: Vec<i64>, data_type: i32, raw: Option<Vec<u8>>) -> pb::TensorProto {
    pb::TensorProto {
        name: Some("w".into()),
        dims,
        data_type: Some(data_type),
        raw_data: raw.map(Into::into),
        ..Default::default()
    }
}

fn load_err(bytes: Vec<u8>, opts: &LoadOptions) -> String {
    match model_from_bytes(bytes.into(), opts) {
        Ok(_) => panic!("a hostile model loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn overflowing_and_absurd_tensor_shapes_are_rejected() {
    let none = LoadOptions::default();
    // Element count overflows usize.
    let e = load_err(model_with(tensor(vec![1 << 40, 1 << 40], 1, Some(vec![0; 4]))), &none);
    assert!(e.contains("'w'") && e.contains("overflows"), "{e}");
    // Byte count overflows (2^61 f64 elements).
    let e = load_err(model_with(tensor(vec![1 << 61], 11, Some(vec![0; 8]))), &none);
    assert!(e.contains("'w'") && e.contains("overflows"), "{e}");
    // A zero dim does not hide two huge ones.
    let e = load_err(model_with(tensor(vec![0, 1 << 40, 1 << 40], 1, Some(vec![]))), &none);
    assert!(e.contains("'w'") && e.contains("overflows"), "{e}");
    // 2^40 declared f32 elements over 4 bytes of data: a length mismatch, not a 4 TiB allocation.
    let e = load_err(model_with(tensor(vec![1 << 40], 1, Some(vec![0; 4]))), &none);
    assert!(e.contains("'w'") && e.contains("4398046511104"), "{e}");
    // Typed field: same check.
    let mut t = tensor(vec![1 << 40], 1, None);
    t.float_data = vec![1.0];
    let e = load_err(model_with(t), &none);
    assert!(e.contains("'w'") && e.contains("needs"), "{e}");
    // Negative dims.
    let e = load_err(model_with(tensor(vec![-1], 1, Some(vec![]))), &none);
    assert!(e.contains("negative"), "{e}");
}

#[test]
fn overflowing_external_offsets_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.bin"), [0u8; 64]).unwrap();
    let opts = LoadOptions { base_dir: Some(dir.path().to_path_buf()) };
    let ext = |offset: &str, length: &str| {
        let mut t = tensor(vec![1 << 40], 1, None);
        t.data_location = Some(1);
        let kv = |k: &str, v: &str| pb::StringStringEntryProto { key: Some(k.into()), value: Some(v.into()) };
        t.external_data = vec![kv("location", "w.bin"), kv("offset", offset), kv("length", length)];
        model_with(t)
    };
    let e = load_err(ext("18446744073709551615", "2"), &opts);
    assert!(e.contains("'w'") && e.contains("runs past the end"), "{e}");
    let e = load_err(ext("0", "4398046511104"), &opts);
    assert!(e.contains("'w'") && e.contains("runs past the end"), "{e}");
    let e = load_err(ext("0", "64"), &opts);
    assert!(e.contains("'w'") && e.contains("needs 4398046511104"), "{e}");
}
