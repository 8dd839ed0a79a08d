//! `sparsify-onnx inspect INPUT [--json]`: one row per prunable weight (and embedding table).

use crate::common::print_table;
use crate::Outcome;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model.
    input: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    tensor: String,
    node: String,
    op: String,
    shape: Vec<i64>,
    dtype: String,
    sparsity: f64,
    out_axis: Option<usize>,
    red_axis: Option<usize>,
    groups: usize,
    consumers: usize,
    storage: String,
    /// Quantized weights: where the scale / zero point come from (sparsity counts q == zero point).
    quant: Option<String>,
    route: Vec<String>,
    embedding: bool,
    note: Option<String>,
}

pub fn main(a: Args) -> Result<Outcome> {
    let model = sparsify_onnx::load(&a.input).with_context(|| format!("loading {}", a.input.display()))?;
    let g = &model.graph;
    let default_scope = sparsify_onnx::passes::scope::Scope::default();
    let mut rows = Vec::new();
    for w in g.find_weights() {
        let Some(t) = g.weight(&w.id) else { continue };
        let note = if let Some(c) = &w.conflict {
            Some(c.clone())
        } else if let Some(why) = default_scope.left_out(&w) {
            // Same default as the passes and `check`: say how to include it.
            Some(format!("not pruned or checked by default: {why}"))
        } else if let Err(why) = g.weight_prunable(&w.id) {
            Some(format!("not prunable: {why}"))
        } else if t.dims.len() < 2 {
            Some("rank < 2: not a prunable weight".into())
        } else {
            None
        };
        rows.push(Row {
            tensor: w.id.name().to_string(),
            node: w.uses[0].node_name.clone(),
            op: w.op().to_string(),
            shape: t.dims.clone(),
            dtype: t.dtype.name(),
            sparsity: g.weight_sparsity(&w.id).unwrap_or_else(|_| t.sparsity()),
            out_axis: w.conflict.is_none().then(|| w.out_axis()),
            red_axis: w.conflict.is_none().then(|| w.red_axis()),
            groups: w.groups(),
            consumers: w.uses.len(),
            storage: match w.id {
                sparsify_onnx::ir::WeightId::Init(_) => "initializer".into(),
                sparsify_onnx::ir::WeightId::Const(_) => "constant-node".into(),
            },
            quant: g.weight_quant(&w.id).ok().flatten().map(|p| {
                let per = match p.axis {
                    Some(a) => format!("per axis {a}"),
                    None => "per tensor".into(),
                };
                let zp = match p.zero_point_tensor {
                    Some(z) if p.zero_point.iter().all(|&v| v == p.zero_point[0]) => {
                        format!("zero point {} ('{z}')", p.zero_point[0])
                    }
                    Some(z) => format!("zero points '{z}'"),
                    None => "zero point 0".into(),
                };
                let scale = p.scale_tensor.map(|s| format!("scale '{s}'")).unwrap_or_else(|| "no scale (1)".into());
                format!("{per}, {zp}, {scale}, from '{}'", p.node)
            }),
            route: w.uses[0].route.clone(),
            embedding: false,
            note,
        });
    }
    for r in sparsify_onnx::weight_table(&model).into_iter().filter(|r| r.embedding) {
        rows.push(Row {
            tensor: r.name,
            node: r.node,
            op: r.op,
            shape: r.shape,
            dtype: r.dtype,
            sparsity: r.sparsity_after,
            out_axis: None,
            red_axis: None,
            groups: 1,
            consumers: 1,
            storage: r.storage,
            quant: None,
            route: vec![],
            embedding: true,
            note: Some("embedding table: not pruned unless embeddings=true".into()),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let ax = |x: Option<usize>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            vec![
                r.tensor.clone(),
                r.node.clone(),
                r.op.clone(),
                format!("{:?}", r.shape),
                r.dtype.clone(),
                format!("{:.3}", r.sparsity),
                ax(r.out_axis),
                ax(r.red_axis),
                r.storage.clone(),
                r.note.clone().or_else(|| r.quant.as_ref().map(|q| format!("quantized {q}"))).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["tensor", "node", "op", "shape", "dtype", "sparsity", "out", "red", "storage", "note"], &table);
    let n_w = rows.iter().filter(|r| !r.embedding).count();
    println!("\n{n_w} weights ({} embedding tables)", rows.len() - n_w);
    Ok(Outcome::Ok)
}
