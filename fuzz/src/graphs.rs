//! Structure-aware fuzzing: `arbitrary` picks a small valid model — Conv (plain, grouped, depthwise, 1×1 or
//! 3×3, with or without bias), residual `Add`, `Concat` of two branches, `MatMul` over the last axis, and a
//! `Flatten → Gemm/MatMul` head; weights reach their op directly or through `Transpose`, `Cast` (stored
//! f16) or `Identity`; some output channels are exactly zero — then a random pipeline of the data-free
//! passes, one step at a time, checking after each step:
//!
//! - the pass manager accepts the generated pipeline and the run succeeds (the verifier runs after every
//!   pass inside it);
//! - `mask{granularity=element}` with a per-layer group leaves exactly max(zeros before, ⌊s·n⌋) zeros
//!   in every weight;
//! - after `nm-legalize{n,m}` every eligible weight is N:M compliant (`check_nm`);
//! - `permute-channels` keeps every weight's non-zero count; `check` changes nothing;
//! - every step except `permute-channels` (whose search may improve on a rerun) is idempotent: running
//!   it again on its output gives byte-identical bytes;
//! - the exact rewrites — no passes (byte-identical), `permute-channels`, `dead-channel-elim` — give the
//!   same outputs in tract, to float rounding.

use arbitrary::Arbitrary;
use bytes::Bytes;
use sparsify_ir::{AttrValue, DType, Graph, Model, Node, OpsetId, Tensor, ValueInfo};
use sparsify_onnx::Pipeline;
use sparsify_validate::{Feed, ModelSource};
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Route {
    Direct,
    Transpose,
    Cast,
    Identity,
}

#[derive(Arbitrary, Debug)]
pub enum Layer {
    Conv { out: u8, k3: bool, kind: u8, bias: bool, route: Route, dead: u8 },
    Relu,
    Residual { bias: bool, dead: u8 },
    Concat { a: u8, b: u8, dead: u8 },
    MatMulLast { out: u8, route: Route },
}

#[derive(Arbitrary, Debug)]
pub enum Head {
    None,
    Gemm { out: u8, trans_b: bool, bias: bool, route: Route, dead: u8 },
    MatMul { out: u8, route: Route },
}

#[derive(Arbitrary, Debug)]
pub enum Step {
    Mask { l2: bool, sparsity: u8, granularity: u8, scope: u8 },
    NmLegalize { l2: bool, nm: u8, permute: bool },
    Block { r: u8, c: u8, sparsity: u8 },
    Permute { nm: u8 },
    DeadChannelElim { fold: bool },
    Check { nm: u8 },
}

#[derive(Arbitrary, Debug)]
pub struct Spec {
    pub in_ch: u8,
    pub h: u8,
    pub w: u8,
    pub layers: Vec<Layer>,
    pub head: Head,
    pub values: Vec<i8>,
    pub steps: Vec<Step>,
}

const NM: [(usize, usize); 5] = [(2, 4), (1, 2), (1, 4), (2, 8), (3, 4)];

fn eighths(v: u8) -> f64 {
    f64::from(v % 9) / 8.0
}

impl Step {
    fn text(&self) -> String {
        let method = |l2: bool| if l2 { "l2" } else { "l1" };
        match *self {
            Step::Mask { l2, sparsity, granularity, scope } => {
                let gran = ["element", "channel", "coupled"][usize::from(granularity % 3)];
                let scope = match gran {
                    "element" => ["auto", "layer", "row", "global"][usize::from(scope % 4)],
                    "channel" => ["auto", "layer"][usize::from(scope % 2)],
                    _ => "auto",
                };
                format!(
                    "score{{method={}}},mask{{sparsity={},granularity={gran},scope={scope}}}",
                    method(l2),
                    eighths(sparsity)
                )
            }
            Step::NmLegalize { l2, nm, permute } => {
                let (n, m) = NM[usize::from(nm) % NM.len()];
                format!("score{{method={}}},nm-legalize{{n={n},m={m},permute={permute}}}", method(l2))
            }
            Step::Block { r, c, sparsity } => {
                format!("block-sparsify{{block={}x{},sparsity={}}}", r % 4 + 1, c % 4 + 1, eighths(sparsity))
            }
            Step::Permute { nm } => {
                let (n, m) = NM[usize::from(nm) % NM.len()];
                format!("permute-channels{{n={n},m={m}}}")
            }
            Step::DeadChannelElim { fold } => format!("dead-channel-elim{{fold={fold}}}"),
            Step::Check { nm } => {
                let (n, m) = NM[usize::from(nm) % NM.len()];
                format!("check{{n={n},m={m}}}")
            }
        }
    }
}

/// Builds the model a spec describes. Every model it returns is valid ONNX that tract runs.
pub struct Builder<'a> {
    g: Graph,
    nodes: Vec<Node>,
    values: &'a [i8],
    next_value: usize,
    count: usize,
}

impl Builder<'_> {
    fn name(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{what}{}", self.count)
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let i = self.next_value;
                self.next_value += 1;
                let v = if self.values.is_empty() {
                    ((i * 7 + 3) % 11) as i32 - 5
                } else {
                    i32::from(self.values[i % self.values.len()])
                };
                v as f32 / 4.0
            })
            .collect()
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, AttrValue)>) -> String {
        let out = self.name(&format!("{}_out", op.to_lowercase()));
        let name = self.name(&op.to_lowercase());
        let mut n = Node::new(op, &name, inputs, &[&out]);
        for (k, v) in attrs {
            n.set_attr(k, v);
        }
        self.nodes.push(n);
        out
    }

    /// A weight of logical shape `dims` (values in row-major order of `dims`) reaching its op through
    /// `route`; `dead` output rows (along `out_axis`, bit j = row j) are zeroed. Returns the op input name.
    fn weight(&mut self, dims: &[usize], out_axis: usize, dead: u8, route: Route) -> String {
        let n: usize = dims.iter().product();
        let mut vals = self.values(n);
        let inner: usize = dims[out_axis + 1..].iter().product();
        for (i, v) in vals.iter_mut().enumerate() {
            let row = (i / inner) % dims[out_axis];
            if row < 8 && dead >> row & 1 == 1 {
                *v = 0.0;
            }
        }
        let name = self.name("w");
        let idims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        match route {
            Route::Direct | Route::Identity => {
                self.g.initializers.push(Tensor::from_f32(name.clone(), idims, &vals).expect("weight"));
                if matches!(route, Route::Identity) {
                    return self.node("Identity", &[&name], vec![]);
                }
                name
            }
            Route::Cast => {
                let bytes: Vec<u8> = vals.iter().flat_map(|&v| f32_to_f16_bits(v).to_le_bytes()).collect();
                self.g
                    .initializers
                    .push(Tensor::new(name.clone(), DType::F16, idims, Bytes::from(bytes)).expect("f16"));
                self.node("Cast", &[&name], vec![("to", AttrValue::Int(1))])
            }
            Route::Transpose => {
                // Store with the first two axes swapped; Transpose(perm=[1,0,...]) restores the layout.
                let mut sd = dims.to_vec();
                sd.swap(0, 1);
                let rest: usize = dims[2..].iter().product();
                let mut stored = vec![0f32; n];
                for a in 0..dims[0] {
                    for b in 0..dims[1] {
                        for r in 0..rest {
                            stored[(b * dims[0] + a) * rest + r] = vals[(a * dims[1] + b) * rest + r];
                        }
                    }
                }
                let sdims: Vec<i64> = sd.iter().map(|&d| d as i64).collect();
                self.g.initializers.push(Tensor::from_f32(name.clone(), sdims, &stored).expect("weight"));
                let mut perm: Vec<i64> = (0..dims.len() as i64).collect();
                perm.swap(0, 1);
                self.node("Transpose", &[&name], vec![("perm", AttrValue::Ints(perm))])
            }
        }
    }

    fn bias(&mut self, n: usize, dead: u8) -> String {
        let mut vals = self.values(n);
        for (j, v) in vals.iter_mut().enumerate() {
            if j < 8 && dead >> j & 1 == 1 {
                *v = 0.0;
            }
        }
        let name = self.name("b");
        self.g.initializers.push(Tensor::from_f32(name.clone(), vec![n as i64], &vals).expect("bias"));
        name
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        x: &str,
        c: usize,
        out: usize,
        k: usize,
        group: usize,
        bias: bool,
        route: Route,
        dead: u8,
    ) -> String {
        let w = self.weight(&[out, c / group, k, k], 0, dead, route);
        let mut inputs = vec![x.to_string(), w];
        if bias {
            inputs.push(self.bias(out, dead));
        }
        let p = (k / 2) as i64;
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "Conv",
            &refs,
            vec![
                ("kernel_shape", AttrValue::Ints(vec![k as i64, k as i64])),
                ("pads", AttrValue::Ints(vec![p, p, p, p])),
                ("group", AttrValue::Int(group as i64)),
            ],
        )
    }
}

/// Round-to-nearest f32 → f16 for the small multiples of 1/4 the builder uses (exact in f16).
fn f32_to_f16_bits(v: f32) -> u16 {
    if v == 0.0 {
        return if v.is_sign_negative() { 0x8000 } else { 0 };
    }
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = ((bits >> 13) & 0x3ff) as u16;
    sign | ((exp as u16) << 10) | mant
}

/// The model a spec describes.
pub fn build(spec: &Spec) -> Model {
    let (mut c, h, mut w) = (usize::from(spec.in_ch % 6) + 1, usize::from(spec.h % 4) + 1, usize::from(spec.w % 4) + 1);
    let mut b = Builder { g: Graph::new(), nodes: Vec::new(), values: &spec.values, next_value: 0, count: 0 };
    b.g.inputs.push(ValueInfo::tensor("x", 1, &[1, c as i64, h as i64, w as i64]));
    let mut cur = "x".to_string();
    for layer in spec.layers.iter().take(6) {
        cur = match *layer {
            Layer::Conv { out, k3, kind, bias, route, dead } => {
                let k = if k3 { 3 } else { 1 };
                let (out, group) = match kind % 3 {
                    1 => (c, c),
                    2 if c % 2 == 0 => (2 * (usize::from(out % 4) + 1), 2),
                    _ => (usize::from(out % 8) + 1, 1),
                };
                let y = b.conv(&cur, c, out, k, group, bias, route, dead);
                c = out;
                y
            }
            Layer::Relu => b.node("Relu", &[&cur], vec![]),
            Layer::Residual { bias, dead } => {
                let y = b.conv(&cur, c, c, 1, 1, bias, Route::Direct, dead);
                b.node("Add", &[&cur, &y], vec![])
            }
            Layer::Concat { a, b: bb, dead } => {
                let (na, nb) = (usize::from(a % 4) + 1, usize::from(bb % 4) + 1);
                let ya = b.conv(&cur, c, na, 1, 1, true, Route::Direct, dead);
                let yb = b.conv(&cur, c, nb, 1, 1, false, Route::Direct, dead >> 4);
                c = na + nb;
                b.node("Concat", &[&ya, &yb], vec![("axis", AttrValue::Int(1))])
            }
            Layer::MatMulLast { out, route } => {
                let out = usize::from(out % 4) + 1;
                let wt = b.weight(&[w, out], 1, 0, route);
                w = out;
                b.node("MatMul", &[&cur, &wt], vec![])
            }
        };
    }
    let features = c * h * w;
    cur = match spec.head {
        Head::None => cur,
        Head::Gemm { out, trans_b, bias, route, dead } => {
            let flat = b.node("Flatten", &[&cur], vec![("axis", AttrValue::Int(1))]);
            let n = usize::from(out % 8) + 1;
            let (dims, out_axis) = if trans_b { ([n, features], 0) } else { ([features, n], 1) };
            let wt = b.weight(&dims, out_axis, dead, route);
            let mut inputs = vec![flat, wt];
            if bias {
                inputs.push(b.bias(n, dead));
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            b.node("Gemm", &refs, vec![("transB", AttrValue::Int(i64::from(trans_b)))])
        }
        Head::MatMul { out, route } => {
            let flat = b.node("Flatten", &[&cur], vec![("axis", AttrValue::Int(1))]);
            let wt = b.weight(&[features, usize::from(out % 8) + 1], 1, 0, route);
            b.node("MatMul", &[&flat, &wt], vec![])
        }
    };
    if cur == "x" {
        cur = b.node("Relu", &["x"], vec![]);
    }
    b.g.outputs.push(ValueInfo { name: cur, elem_type: Some(1), shape: None, opaque: Vec::new() });
    let nodes = std::mem::take(&mut b.nodes);
    let graph = b.g.with_nodes(nodes);
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
        graph,
        opaque: Vec::new(),
    }
}

fn to_bytes(m: &Model) -> Vec<u8> {
    sparsify_onnx_io::model_to_bytes(m).expect("export")
}

fn zeros(m: &Model, name: &str) -> usize {
    let t = m.graph.initializer(name).unwrap_or_else(|| panic!("weight '{name}' not found"));
    t.numel().expect("numel") - t.nnz()
}

fn weight_names(m: &Model) -> Vec<(String, usize)> {
    sparsify_pm::weight_table(m).into_iter().filter(|r| !r.embedding).map(|r| (r.name, r.elements)).collect()
}

fn run_tract(bytes: &[u8], feed: &Feed) -> Vec<Vec<f64>> {
    let out = sparsify_validate::run_model(ModelSource::Bytes(bytes), feed, &[])
        .unwrap_or_else(|e| panic!("tract cannot run a generated model: {e}"));
    out.iter().map(|(_, a)| a.to_f64_vec()).collect()
}

fn same_outputs(a: &[Vec<f64>], b: &[Vec<f64>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: output count differs");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{what}: output size differs");
        let scale = x.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            assert!((p - q).abs() <= 1e-5 * scale, "{what}: output element {i}: {p} vs {q} (scale {scale})");
        }
    }
}

/// Build the spec's model and check every invariant along its pipeline (panics on a violation).
pub fn check(spec: &Spec) {
    let model = build(spec);
    let errors = sparsify_ir::verify::verify(&model.graph);
    assert!(errors.is_empty(), "the builder made an invalid graph: {errors:?}");
    let base = to_bytes(&model);
    if let Some(dir) = std::env::var_os("SPARSIFY_FUZZ_DUMP") {
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("graph_{}.onnx", base.len())), &base);
    }
    // No passes: byte-identical.
    let mut same = model.clone();
    Pipeline::parse("").expect("empty pipeline").run(&mut same, None).expect("empty pipeline runs");
    assert!(to_bytes(&same) == base, "an empty pipeline changed the model");

    let decls = sparsify_onnx::input_decls(&model);
    let feed = sparsify_validate::random_feed(&decls, &BTreeMap::new(), 7).expect("random feed");
    let mut outputs = run_tract(&base, &feed);
    let (mut cur, mut cur_bytes) = (model, base);
    for step in spec.steps.iter().take(4) {
        let text = step.text();
        let pipeline = Pipeline::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let mut next = cur.clone();
        pipeline.run(&mut next, None).unwrap_or_else(|e| panic!("{text}: {e}"));
        let next_bytes = to_bytes(&next);
        match *step {
            Step::Mask { l2: _, sparsity, granularity, scope } if granularity % 3 == 0 && scope % 4 < 2 => {
                let s = eighths(sparsity);
                for (name, n) in weight_names(&cur) {
                    let want = zeros(&cur, &name).max((s * n as f64).floor() as usize);
                    assert_eq!(zeros(&next, &name), want, "{text}: weight '{name}' of {n} elements");
                }
            }
            Step::NmLegalize { nm, .. } => {
                let (n, m) = NM[usize::from(nm) % NM.len()];
                let rows = sparsify_passes::nm_check::check_nm(&next, n, m, false);
                assert!(sparsify_passes::nm_check::all_compliant(&rows), "{text}: not compliant: {rows:?}");
            }
            Step::Permute { .. } => {
                for (name, _) in weight_names(&cur) {
                    assert_eq!(zeros(&cur, &name), zeros(&next, &name), "{text}: '{name}' zero count changed");
                }
            }
            Step::Check { .. } => assert!(next_bytes == cur_bytes, "{text} changed the model"),
            _ => {}
        }
        if !matches!(step, Step::Permute { .. }) {
            let mut again = next.clone();
            pipeline.run(&mut again, None).unwrap_or_else(|e| panic!("{text} (second run): {e}"));
            assert!(to_bytes(&again) == next_bytes, "{text} is not idempotent");
        }
        let next_outputs = if next_bytes == cur_bytes { outputs.clone() } else { run_tract(&next_bytes, &feed) };
        if matches!(step, Step::Permute { .. } | Step::DeadChannelElim { .. }) {
            same_outputs(&outputs, &next_outputs, &text);
        }
        (cur, cur_bytes, outputs) = (next, next_bytes, next_outputs);
    }
}
