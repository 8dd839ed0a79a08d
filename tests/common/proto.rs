//! Hand-built protobuf models for tests of the command line.

use prost::Message;
use sparsify_onnx_proto as pb;

/// A tiny valid model: y = x @ w with w [2,2] float, optionally broken by `edit`.
pub fn tiny(edit: impl FnOnce(&mut pb::TensorProto)) -> Vec<u8> {
    let vi = |name: &str| pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            denotation: None,
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(pb::TensorShapeProto {
                    dim: [1i64, 2]
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            denotation: None,
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    };
    let mut w = pb::TensorProto {
        name: Some("w".into()),
        dims: vec![2, 2],
        data_type: Some(1),
        raw_data: Some([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()),
        ..Default::default()
    };
    edit(&mut w);
    let g = pb::GraphProto {
        name: Some("tiny".into()),
        node: vec![pb::NodeProto {
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            name: Some("mm".into()),
            op_type: Some("MatMul".into()),
            ..Default::default()
        }],
        initializer: vec![w],
        input: vec![vi("x")],
        output: vec![vi("y")],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(g),
        ..Default::default()
    }
    .encode_to_vec()
}
