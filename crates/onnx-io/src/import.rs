//! ModelProto → IR. Weight bytes are sliced from the input buffer (a mapped file), never copied, except
//! typed fields (`float_data`, ...) which are converted to little-endian bytes.

use crate::external::{map_file, Resolver};
use crate::IoError;
use bytes::Bytes;
use prost::Message;
use sparsify_ir::{Attr, AttrValue, DType, Dim, Graph, Model, Node, OpsetId, Storage, Tensor, ValueInfo};
use sparsify_onnx_proto as pb;
use std::path::{Path, PathBuf};

/// Options for import.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Folder that external-data locations are relative to (the model file's folder when loading a file).
    pub base_dir: Option<PathBuf>,
}

pub(crate) fn load_file(path: &Path, opts: &LoadOptions) -> Result<Model, IoError> {
    if path.is_dir() {
        let source = std::io::Error::other("it is a folder, not an ONNX model file");
        return Err(IoError::Read { path: path.to_path_buf(), source });
    }
    let bytes = map_file(path).map_err(|source| IoError::Read { path: path.to_path_buf(), source })?;
    let base = opts.base_dir.clone().or_else(|| {
        Some(
            path.parent()
                .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        )
    });
    decode(bytes, path, base)
}

/// Decode a model held in memory. External data resolves against `opts.base_dir` (none: external data is
/// an error).
pub fn model_from_bytes(bytes: Bytes, opts: &LoadOptions) -> Result<Model, IoError> {
    decode(bytes, Path::new("<memory>"), opts.base_dir.clone())
}

fn decode(bytes: Bytes, path: &Path, base: Option<PathBuf>) -> Result<Model, IoError> {
    let mut proto =
        pb::ModelProto::decode(bytes).map_err(|e| IoError::Decode { path: path.to_path_buf(), msg: e.to_string() })?;
    let graph = proto.graph.take().ok_or(IoError::NoGraph)?;
    let mut res = Resolver::new(base);
    let graph = import_graph(graph, &mut res)?;
    let opset_import = proto
        .opset_import
        .iter()
        .map(|o| OpsetId { domain: o.domain.clone().unwrap_or_default(), version: o.version.unwrap_or(0) })
        .collect();
    let ir_version = proto.ir_version.take();
    // opset_import stays in the opaque blob too: export keeps it verbatim unless a pass changed the list.
    Ok(Model { ir_version, opset_import, graph, opaque: proto.encode_to_vec() })
}

fn import_graph(mut g: pb::GraphProto, res: &mut Resolver) -> Result<Graph, IoError> {
    let mut refs = std::collections::BTreeSet::new();
    let mut graph = Graph::new();
    graph.name = g.name.take();
    graph.initializers =
        std::mem::take(&mut g.initializer).into_iter().map(|t| import_tensor(t, res)).collect::<Result<_, _>>()?;
    graph.inputs = std::mem::take(&mut g.input).into_iter().map(import_value_info).collect();
    graph.outputs = std::mem::take(&mut g.output).into_iter().map(import_value_info).collect();
    graph.value_info = std::mem::take(&mut g.value_info).into_iter().map(import_value_info).collect();
    let nodes = std::mem::take(&mut g.node).into_iter().map(|n| import_node(n, res)).collect::<Result<Vec<_>, _>>()?;
    graph.opaque = g.encode_to_vec();
    let mut graph = graph.with_nodes(nodes);
    for (_, n) in graph.nodes() {
        for a in &n.attrs {
            if matches!(a.value, sparsify_ir::AttrValue::Opaque) {
                if let Ok(pa) = pb::AttributeProto::decode(&a.opaque[..]) {
                    pa.g.iter().chain(&pa.graphs).for_each(|sg| collect_refs(sg, &mut refs));
                }
            }
        }
    }
    graph.subgraph_refs = refs;
    Ok(graph)
}

/// Every name a subgraph's nodes read, recursively (a superset of its outer-scope references).
fn collect_refs(g: &pb::GraphProto, out: &mut std::collections::BTreeSet<String>) {
    for n in &g.node {
        out.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
        for a in &n.attribute {
            a.g.iter().chain(&a.graphs).for_each(|sg| collect_refs(sg, out));
        }
    }
}

fn import_node(mut n: pb::NodeProto, res: &mut Resolver) -> Result<Node, IoError> {
    let name = n.name.take();
    let op_type = n.op_type.take().unwrap_or_default();
    let domain = n.domain.take();
    let display = name.clone().unwrap_or_else(|| format!("<{op_type}>"));
    let attrs = std::mem::take(&mut n.attribute)
        .into_iter()
        .map(|a| import_attr(a, res))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IoError::Node { node: display.clone(), what: e.to_string() })?;
    Ok(Node {
        name,
        op_type,
        domain,
        inputs: std::mem::take(&mut n.input),
        outputs: std::mem::take(&mut n.output),
        attrs,
        opaque: n.encode_to_vec(),
    })
}

fn import_attr(mut a: pb::AttributeProto, res: &mut Resolver) -> Result<Attr, IoError> {
    let name = a.name.take().unwrap_or_default();
    // The attribute type says which field holds the value; without it (old files) the first set field.
    use pb::attribute_proto::AttributeType as T;
    let ty = a.r#type.and_then(|t| T::try_from(t).ok());
    let value = match ty {
        Some(T::Float) if a.f.is_some() => AttrValue::Float(a.f.take().unwrap()),
        Some(T::Int) if a.i.is_some() => AttrValue::Int(a.i.take().unwrap()),
        Some(T::String) if a.s.is_some() => AttrValue::String(a.s.take().unwrap()),
        Some(T::Tensor) if a.t.is_some() => AttrValue::Tensor(Box::new(import_tensor(a.t.take().unwrap(), res)?)),
        Some(T::Floats) => AttrValue::Floats(std::mem::take(&mut a.floats)),
        Some(T::Ints) => AttrValue::Ints(std::mem::take(&mut a.ints)),
        Some(T::Strings) => AttrValue::Strings(std::mem::take(&mut a.strings)),
        _ => AttrValue::Opaque,
    };
    Ok(Attr { name, value, opaque: a.encode_to_vec() })
}

fn import_value_info(mut v: pb::ValueInfoProto) -> ValueInfo {
    let name = v.name.take().unwrap_or_default();
    let (elem_type, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => (t.elem_type, t.shape.as_ref().map(import_shape)),
        _ => (None, None),
    };
    ValueInfo { name, elem_type, shape, opaque: v.encode_to_vec() }
}

pub(crate) fn import_shape(s: &pb::TensorShapeProto) -> Vec<Dim> {
    use pb::tensor_shape_proto::dimension::Value as V;
    s.dim
        .iter()
        .map(|d| match &d.value {
            Some(V::DimValue(v)) => Dim::Value(*v),
            Some(V::DimParam(p)) => Dim::Param(p.clone()),
            None => Dim::Unknown,
        })
        .collect()
}

fn import_tensor(mut t: pb::TensorProto, res: &mut Resolver) -> Result<Tensor, IoError> {
    // name and data_type stay in the opaque blob as well, so their presence survives (export rewrites
    // them only when a pass changed them).
    let name = t.name.clone().unwrap_or_default();
    let dtype = DType::from_code(t.data_type.unwrap_or(0));
    let dims = std::mem::take(&mut t.dims);
    let external = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    let (data, storage, strings) = if external {
        let kv = |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
        let location =
            kv("location").ok_or_else(|| IoError::External { tensor: name.clone(), what: "has no location".into() })?;
        let num = |k: &str| -> Result<Option<u64>, IoError> {
            kv(k)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| IoError::External {
                        tensor: name.clone(),
                        what: format!("{k} '{v}' is not a number"),
                    })
                })
                .transpose()
        };
        let (offset, length) = (num("offset")?.unwrap_or(0), num("length")?);
        let data = res.slice(&name, &location, offset, length)?;
        (data, Storage::External { location }, Vec::new())
    } else if let Some(raw) = t.raw_data.take() {
        (raw, Storage::Raw, Vec::new())
    } else if dtype == DType::String {
        (Bytes::new(), Storage::Typed, std::mem::take(&mut t.string_data))
    } else {
        (typed_to_bytes(&name, dtype, &mut t)?, Storage::Typed, Vec::new())
    };
    t.external_data.clear();
    t.data_location = None;
    let mut tensor = if dtype == DType::String {
        let mut x = Tensor::new(name, dtype, dims, Bytes::new())?;
        x.strings = strings;
        x
    } else {
        Tensor::new(name, dtype, dims, data)?
    };
    tensor.storage = storage;
    tensor.opaque = t.encode_to_vec();
    Ok(tensor)
}

/// Typed repeated fields → little-endian element bytes (the exact inverse of `export::bytes_to_typed`).
fn typed_to_bytes(name: &str, dtype: DType, t: &mut pb::TensorProto) -> Result<Bytes, IoError> {
    use DType::*;
    let mut out = Vec::new();
    match dtype {
        F32 | Complex64 => {
            std::mem::take(&mut t.float_data).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        }
        F64 | Complex128 => {
            std::mem::take(&mut t.double_data).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        }
        I64 => std::mem::take(&mut t.int64_data).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        U32 => {
            std::mem::take(&mut t.uint64_data).iter().for_each(|&v| out.extend_from_slice(&(v as u32).to_le_bytes()))
        }
        U64 => std::mem::take(&mut t.uint64_data).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        I32 => std::mem::take(&mut t.int32_data).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        I16 | U16 | F16 | BF16 => {
            std::mem::take(&mut t.int32_data).iter().for_each(|&v| out.extend_from_slice(&(v as u16).to_le_bytes()))
        }
        I8 | U8 | Bool | Other(17..=20) | Other(23) => {
            std::mem::take(&mut t.int32_data).iter().for_each(|&v| out.push(v as u8))
        }
        d => {
            return Err(IoError::Tensor(sparsify_ir::TensorError::Unsupported {
                name: name.to_string(),
                dtype: format!("{} in typed fields", d.name()),
            }))
        }
    }
    Ok(Bytes::from(out))
}
