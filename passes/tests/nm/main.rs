//! N:M legalization, the `check` report, block sparsity and channel permutation on models built in
//! code, each compared with an independent reference written here with plain strided loops.
#![allow(clippy::type_complexity)] // fixture tables of test cases

use sparsify_ir::{AttrValue, DType, Graph, Model, Node, Tensor, ValueInfo, WeightId};
use sparsify_passes::nm_check::{all_compliant, check_nm};
use sparsify_passes::permute_region::{find_region, WeightIndex};
use sparsify_passes::registry;
use sparsify_passes::scores::WeightScores;
use sparsify_pm::{
    AnalysisCache, CalibError, CalibRequest, CalibStat, Calibrator, FeatureAxis, PassCx, PassManager, RunEnv, RunReport,
};
use std::collections::BTreeMap;

// ---------- building models ----------

struct Rng(u64);
impl Rng {
    /// Values in [-1, 1) with 1/1024 resolution, never exactly 0.
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let v = (self.0 % 2047) as f32 - 1023.0;
        (if v == 0.0 { 1.0 } else { v }) / 1024.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn f32t(name: &str, dims: &[i64], rng: &mut Rng) -> Tensor {
    let n = dims.iter().product::<i64>() as usize;
    Tensor::from_f32(name, dims.to_vec(), &rng.vec(n)).unwrap()
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, AttrValue)]) -> Node {
    let mut n = Node::new(op, name, inputs, outputs);
    for (k, v) in attrs {
        n.set_attr(k, v.clone());
    }
    n
}

fn ints(v: &[i64]) -> AttrValue {
    AttrValue::Ints(v.to_vec())
}

fn model(inits: Vec<Tensor>, nodes: Vec<Node>, inputs: &[(&str, &[i64])], outputs: &[&str]) -> Model {
    let mut g = Graph::new();
    g.initializers = inits;
    g.inputs = inputs.iter().map(|(n, d)| ValueInfo::tensor(n, 1, d)).collect();
    g.outputs = outputs.iter().map(|n| ValueInfo::tensor(n, 1, &[])).collect();
    let g = g.with_nodes(nodes);
    Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] }
}

fn run(m: &mut Model, pipeline: &str) -> RunReport {
    let pm = PassManager::parse(pipeline, &registry()).unwrap();
    pm.run(m, RunEnv::default()).unwrap()
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    // Dequantized for quantized weights (`sparsify_ir::quant`); float weights as they are.
    m.graph.weight_values(&WeightId::Init(name.into())).unwrap().iter().copied().collect()
}

fn notes_for<'a>(r: &'a RunReport, pass: &str, subject: &str) -> Vec<&'a str> {
    r.passes
        .iter()
        .filter(|p| p.pass == pass)
        .flat_map(|p| p.notes.iter())
        .filter(|n| n.subject == subject)
        .map(|n| n.message.as_str())
        .collect()
}

// ---------- the independent reference ----------

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// N:M with plain loops: every element whose coordinate along `axis` is a multiple of m starts a group
/// of m elements `stride` apart; non-zeros rank first, then score, ties keep the lower index.
fn ref_nm(w: &[f32], scores: &[f32], shape: &[usize], axis: usize, n: usize, m: usize) -> Vec<f32> {
    let st = strides(shape)[axis];
    let mut out = w.to_vec();
    for i in 0..w.len() {
        if !((i / st) % shape[axis]).is_multiple_of(m) {
            continue;
        }
        let mut members: Vec<usize> = (0..m).map(|k| i + k * st).collect();
        members.sort_by(|&x, &y| {
            (w[y] != 0.0).cmp(&(w[x] != 0.0)).then(scores[y].partial_cmp(&scores[x]).unwrap()).then(x.cmp(&y))
        });
        for &j in &members[n..] {
            out[j] = 0.0;
        }
    }
    out
}

fn ref_violations(w: &[f32], shape: &[usize], axis: usize, n: usize, m: usize) -> (usize, usize) {
    let st = strides(shape)[axis];
    let (mut bad, mut total) = (0, 0);
    for i in 0..w.len() {
        if ((i / st) % shape[axis]).is_multiple_of(m) {
            total += 1;
            if (0..m).filter(|k| w[i + k * st] != 0.0).count() > n {
                bad += 1;
            }
        }
    }
    (bad, total)
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

mod blocks;
mod conv_transpose;
mod legalize;
mod permutation;
