//! IR → ModelProto. Each struct starts from its opaque blob (the fields the IR does not model) and gets
//! the modeled fields filled back in, so nothing the passes did not change is lost. Tensor bytes are
//! reference-counted slices: building the proto copies no weights.

use crate::IoError;
use bytes::Bytes;
use prost::Message;
use sparsify_ir::{AttrValue, DType, Dim, Graph, Model, Node, Storage, Tensor, ValueInfo};
use sparsify_onnx_proto as pb;

/// Where tensor data goes on export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalMode {
    /// External when the input tensor was external, or when the model would pass protobuf's 2 GiB limit.
    #[default]
    Auto,
    /// Every initializer of at least `threshold` bytes goes to the external data file.
    Always,
    /// Everything inline (fails over 2 GiB).
    Never,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub external: ExternalMode,
    /// Minimum tensor size in bytes to move out with [`ExternalMode::Always`] (and over 2 GiB in `Auto`).
    pub threshold: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { external: ExternalMode::Auto, threshold: 1024 }
    }
}

/// Protobuf's hard limit on one message.
pub const PROTO_LIMIT: u64 = (1 << 31) - 1;

/// Tensors placed in the external data file while building the proto.
pub(crate) struct ExternalPlan {
    pub location: Option<String>,
    pub all: bool,
    pub threshold: usize,
    pub offset: u64,
    pub chunks: Vec<(u64, Bytes)>,
    /// The tensor name of each chunk.
    pub names: Vec<String>,
}

impl ExternalPlan {
    fn place(&mut self, t: &Tensor, in_attr: bool) -> Option<(String, u64)> {
        let location = self.location.clone()?;
        let wanted = matches!(t.storage, Storage::External { .. })
            || (self.all && !in_attr && t.bytes().len() >= self.threshold && t.dtype != DType::String);
        if !wanted || t.dtype == DType::String {
            return None;
        }
        // 64-byte alignment keeps mapped reads of each tensor aligned for any element type.
        let offset = self.offset.div_ceil(64) * 64;
        self.chunks.push((offset, t.bytes().clone()));
        self.names.push(t.name.clone());
        self.offset = offset + t.bytes().len() as u64;
        Some((location, offset))
    }
}

/// Encode a model fully inline (for tract runs and tests). Fails over 2 GiB.
pub fn model_to_bytes(model: &Model) -> Result<Vec<u8>, IoError> {
    let mut plan =
        ExternalPlan { location: None, all: false, threshold: 0, offset: 0, chunks: Vec::new(), names: Vec::new() };
    let proto = build(model, &mut plan)?;
    let len = proto.encoded_len() as u64;
    if len > PROTO_LIMIT {
        return Err(IoError::TooLarge { bytes: len });
    }
    Ok(proto.encode_to_vec())
}

/// Sum of all tensor bytes: an upper bound of what inline export adds to the file.
pub(crate) fn weight_bytes(model: &Model) -> u64 {
    let g = &model.graph;
    let init: u64 = g.initializers.iter().map(|t| t.bytes().len() as u64).sum();
    let consts: u64 = g.nodes().filter_map(|(_, n)| n.constant_tensor()).map(|t| t.bytes().len() as u64).sum();
    init + consts
}

pub(crate) fn has_external(model: &Model) -> bool {
    let ext = |t: &Tensor| matches!(t.storage, Storage::External { .. });
    model.graph.initializers.iter().any(ext) || model.graph.nodes().any(|(_, n)| n.constant_tensor().is_some_and(ext))
}

pub(crate) fn build(model: &Model, plan: &mut ExternalPlan) -> Result<pb::ModelProto, IoError> {
    let mut m = decode::<pb::ModelProto>(&model.opaque, "model")?;
    m.ir_version = model.ir_version;
    let unchanged = m.opset_import.len() == model.opset_import.len()
        && m.opset_import
            .iter()
            .zip(&model.opset_import)
            .all(|(p, o)| p.domain.as_deref().unwrap_or("") == o.domain && p.version.unwrap_or(0) == o.version);
    if !unchanged {
        m.opset_import = model
            .opset_import
            .iter()
            .map(|o| pb::OperatorSetIdProto { domain: Some(o.domain.clone()), version: Some(o.version) })
            .collect();
    }
    m.graph = Some(export_graph(&model.graph, plan)?);
    Ok(m)
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, IoError> {
    M::decode(bytes).map_err(|e| IoError::Decode { path: format!("<opaque {what}>").into(), msg: e.to_string() })
}

fn export_graph(g: &Graph, plan: &mut ExternalPlan) -> Result<pb::GraphProto, IoError> {
    let mut p = decode::<pb::GraphProto>(&g.opaque, "graph")?;
    p.name = g.name.clone();
    p.initializer = g.initializers.iter().map(|t| export_tensor(t, plan, false)).collect::<Result<_, _>>()?;
    p.input = g.inputs.iter().map(export_value_info).collect::<Result<_, _>>()?;
    p.output = g.outputs.iter().map(export_value_info).collect::<Result<_, _>>()?;
    p.value_info = g.value_info.iter().map(export_value_info).collect::<Result<_, _>>()?;
    p.node = g.nodes().map(|(_, n)| export_node(n, plan)).collect::<Result<_, _>>()?;
    Ok(p)
}

fn export_node(n: &Node, plan: &mut ExternalPlan) -> Result<pb::NodeProto, IoError> {
    let mut p = decode::<pb::NodeProto>(&n.opaque, "node")?;
    p.name = n.name.clone();
    p.op_type = Some(n.op_type.clone());
    p.domain = n.domain.clone();
    p.input = n.inputs.clone();
    p.output = n.outputs.clone();
    p.attribute = n
        .attrs
        .iter()
        .map(|a| {
            let mut pa = decode::<pb::AttributeProto>(&a.opaque, "attribute")?;
            pa.name = Some(a.name.clone());
            use pb::attribute_proto::AttributeType as T;
            let set_type = |pa: &mut pb::AttributeProto, t: T| {
                if pa.r#type.is_none() && a.opaque.is_empty() {
                    pa.r#type = Some(t as i32);
                }
            };
            match &a.value {
                AttrValue::Float(v) => (pa.f = Some(*v), set_type(&mut pa, T::Float)).1,
                AttrValue::Int(v) => (pa.i = Some(*v), set_type(&mut pa, T::Int)).1,
                AttrValue::String(v) => (pa.s = Some(v.clone()), set_type(&mut pa, T::String)).1,
                AttrValue::Tensor(t) => (pa.t = Some(export_tensor(t, plan, true)?), set_type(&mut pa, T::Tensor)).1,
                AttrValue::Floats(v) => (pa.floats = v.clone(), set_type(&mut pa, T::Floats)).1,
                AttrValue::Ints(v) => (pa.ints = v.clone(), set_type(&mut pa, T::Ints)).1,
                AttrValue::Strings(v) => (pa.strings = v.clone(), set_type(&mut pa, T::Strings)).1,
                AttrValue::Opaque => {}
            }
            Ok(pa)
        })
        .collect::<Result<_, IoError>>()?;
    Ok(p)
}

fn export_value_info(v: &ValueInfo) -> Result<pb::ValueInfoProto, IoError> {
    let mut p = decode::<pb::ValueInfoProto>(&v.opaque, "value_info")?;
    p.name = Some(v.name.clone());
    let orig = match p.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => (t.elem_type, t.shape.as_ref().map(crate::import::import_shape)),
        _ => (None, None),
    };
    if orig != (v.elem_type, v.shape.clone()) {
        // A pass changed the type: rewrite the tensor type, keeping dim denotations where dims line up.
        let ty = p.r#type.get_or_insert_with(Default::default);
        let old_dims = match ty.value.take() {
            Some(pb::type_proto::Value::TensorType(t)) => t.shape.map(|s| s.dim).unwrap_or_default(),
            _ => Vec::new(),
        };
        let shape = v.shape.as_ref().map(|dims| pb::TensorShapeProto {
            dim: dims
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    use pb::tensor_shape_proto::dimension::Value as V;
                    pb::tensor_shape_proto::Dimension {
                        denotation: old_dims.get(i).and_then(|o| o.denotation.clone()),
                        value: match d {
                            Dim::Value(x) => Some(V::DimValue(*x)),
                            Dim::Param(s) => Some(V::DimParam(s.clone())),
                            Dim::Unknown => None,
                        },
                    }
                })
                .collect(),
        });
        ty.value = Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: v.elem_type, shape }));
    }
    Ok(p)
}

fn export_tensor(t: &Tensor, plan: &mut ExternalPlan, in_attr: bool) -> Result<pb::TensorProto, IoError> {
    let mut p = decode::<pb::TensorProto>(&t.opaque, "tensor")?;
    if p.name.as_deref().unwrap_or("") != t.name {
        p.name = Some(t.name.clone());
    }
    p.dims = t.dims.clone();
    if p.data_type != Some(t.dtype.code()) {
        p.data_type = Some(t.dtype.code());
    }
    if let Some((location, offset)) = plan.place(t, in_attr) {
        let kv = |k: &str, v: String| pb::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        p.external_data =
            vec![kv("location", location), kv("offset", offset.to_string()), kv("length", t.bytes().len().to_string())];
        p.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        return Ok(p);
    }
    match t.storage {
        Storage::Typed => bytes_to_typed(t, &mut p)?,
        Storage::Raw | Storage::External { .. } => p.raw_data = Some(t.bytes().clone()),
    }
    Ok(p)
}

/// Little-endian element bytes → the typed field the tensor came from.
fn bytes_to_typed(t: &Tensor, p: &mut pb::TensorProto) -> Result<(), IoError> {
    use DType::*;
    let b = &t.bytes()[..];
    match t.dtype {
        String => p.string_data = t.strings.clone(),
        F32 | Complex64 => {
            p.float_data = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        }
        F64 | Complex128 => {
            p.double_data = b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
        }
        I64 => p.int64_data = b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        U64 => p.uint64_data = b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect(),
        U32 => p.uint64_data = b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64).collect(),
        I32 => p.int32_data = b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect(),
        I16 => p.int32_data = b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i32).collect(),
        U16 | F16 | BF16 => p.int32_data = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i32).collect(),
        I8 => p.int32_data = b.iter().map(|&x| x as i8 as i32).collect(),
        U8 | Bool | Other(17..=20) | Other(23) => p.int32_data = b.iter().map(|&x| x as i32).collect(),
        d => {
            return Err(IoError::Tensor(sparsify_ir::TensorError::Unsupported {
                name: t.name.clone(),
                dtype: format!("{} in typed fields", d.name()),
            }))
        }
    }
    Ok(())
}
