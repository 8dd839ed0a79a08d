//! Import → export on the shared real models: byte-identical files, initializers and Constant weights.

use sparsify_onnx_io::{load, model_to_bytes, save, ExportOptions, ExternalMode};
use std::path::{Path, PathBuf};

fn models_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: shared models absent at {}", p.display());
        None
    }
}

const MODELS: [&str; 5] = ["digits_mlp", "digits_cnn", "char_lm", "ppocr_cls_mobile_v2", "paraphrase_minilm_l3_v2"];

#[test]
fn shared_models_round_trip_byte_identical() {
    let Some(dir) = models_dir() else { return };
    for m in MODELS {
        let path = dir.join(m).join("model.onnx");
        let original = std::fs::read(&path).unwrap();
        let model = load(&path).unwrap();
        let bytes = model_to_bytes(&model).unwrap();
        assert!(
            bytes == original,
            "{m}: re-encoded model differs from the input ({} vs {} bytes)",
            bytes.len(),
            original.len()
        );
    }
}

#[test]
fn external_data_round_trips_and_stays_external() {
    let Some(dir) = models_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = load(&dir.join("digits_mlp/model.onnx")).unwrap();
    let ext = tmp.path().join("ext.onnx");
    save(&model, &ext, &ExportOptions { external: ExternalMode::Always, threshold: 1024 }).unwrap();
    assert!(tmp.path().join("ext.onnx.data").exists());
    let back = load(&ext).unwrap();
    assert!(back.graph.initializers.iter().any(|t| matches!(t.storage, sparsify_ir::Storage::External { .. })));
    for (a, b) in model.graph.initializers.iter().zip(&back.graph.initializers) {
        assert_eq!(a.bytes(), b.bytes(), "{}", a.name);
    }
    // Saved again with defaults: stays external, and re-loading gives the same weights.
    let again = tmp.path().join("again.onnx");
    save(&back, &again, &ExportOptions::default()).unwrap();
    assert!(tmp.path().join("again.onnx.data").exists());
    let back2 = load(&again).unwrap();
    for (a, b) in model.graph.initializers.iter().zip(&back2.graph.initializers) {
        assert_eq!(a.bytes(), b.bytes(), "{}", a.name);
    }
}

/// A model with an `If` whose branch reads an outer weight: byte-identical round trip, and the weight is
/// flagged as read inside a subgraph so axis-dependent passes leave it alone.
#[test]
fn subgraphs_survive_and_their_outer_references_are_known() {
    use prost::Message;
    use sparsify_onnx_proto as pb;
    let node = |op: &str, ins: &[&str], outs: &[&str]| pb::NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        op_type: Some(op.into()),
        name: Some(format!("{op}_{}", outs[0])),
        ..Default::default()
    };
    let vi = |name: &str, elem: i32| pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            denotation: None,
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem),
                shape: None,
            })),
        }),
        ..Default::default()
    };
    let branch = |n: pb::NodeProto| pb::GraphProto {
        name: Some("branch".into()),
        node: vec![n],
        output: vec![vi("out", 1)],
        ..Default::default()
    };
    let mut if_node = node("If", &["cond"], &["z"]);
    let graph_attr = |name: &str, g: pb::GraphProto| pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Graph as i32),
        g: Some(g),
        ..Default::default()
    };
    if_node.attribute = vec![
        graph_attr("then_branch", branch(node("MatMul", &["y", "w"], &["out"]))),
        graph_attr("else_branch", branch(node("Identity", &["y"], &["out"]))),
    ];
    let w = pb::TensorProto {
        name: Some("w".into()),
        dims: vec![2, 2],
        data_type: Some(1),
        raw_data: Some(vec![0u8; 16].into()),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        producer_name: Some("test".into()),
        metadata_props: vec![pb::StringStringEntryProto { key: Some("k".into()), value: Some("v".into()) }],
        graph: Some(pb::GraphProto {
            name: Some("g".into()),
            node: vec![node("MatMul", &["x", "w"], &["y"]), if_node],
            initializer: vec![w],
            input: vec![vi("x", 1), vi("cond", 9)],
            output: vec![vi("z", 1)],
            doc_string: Some("doc".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("if.onnx");
    std::fs::write(&p, &bytes).unwrap();
    let m = load(&p).unwrap();
    assert!(m.graph.used_in_subgraphs("w") && m.graph.used_in_subgraphs("y"));
    let ws = m.graph.find_weights();
    assert_eq!(ws.len(), 1);
    assert!(ws[0].conflict.as_deref().unwrap_or("").contains("subgraph"));
    assert_eq!(model_to_bytes(&m).unwrap(), bytes);
}
