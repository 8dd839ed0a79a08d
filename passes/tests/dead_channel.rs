//! `dead-channel-elim` and the channel analysis on models built in code: MLP chains, residual Add,
//! Concat, Split, Flatten/Reshape → Gemm, grouped and depthwise Conv, BatchNorm, MatMul + Add bias, and
//! the things that must block. Every eliminated model is run in tract against the masked (zeroed but
//! unshrunk) model on the same random input.

use ndarray::{ArrayD, IxDyn};
use sparsify_ir::{AttrValue, Graph, Model, Node, OpsetId, Tensor, ValueInfo};
use sparsify_onnx::validate::{run_model, Array, Feed, ModelSource};
use sparsify_passes::channels::{channel_groups, SliceRole};
use sparsify_passes::dead_channel_elim::param_count;
use sparsify_passes::registry;
use sparsify_pm::{PassManager, RunEnv, RunReport};

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
}

/// A graph under construction with random weights.
struct B {
    g: Graph,
    nodes: Vec<Node>,
    seed: u64,
}

impl B {
    fn new(seed: u64) -> B {
        B { g: Graph::new(), nodes: Vec::new(), seed }
    }
    fn w(&mut self, name: &str, dims: &[i64]) -> String {
        let n: i64 = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| lcg(&mut self.seed)).collect();
        self.g.initializers.push(Tensor::from_f32(name, dims.to_vec(), &v).unwrap());
        name.to_string()
    }
    fn c(&mut self, name: &str, dims: &[i64], v: &[f32]) -> String {
        self.g.initializers.push(Tensor::from_f32(name, dims.to_vec(), v).unwrap());
        name.to_string()
    }
    fn ints(&mut self, name: &str, v: &[i64]) -> String {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.g
            .initializers
            .push(Tensor::new(name, sparsify_ir::DType::I64, vec![v.len() as i64], bytes.into()).unwrap());
        name.to_string()
    }
    fn op(&mut self, op: &str, ins: &[&str], out: &str, attrs: &[(&str, AttrValue)]) -> String {
        let ins: Vec<&str> = ins.iter().copied().filter(|i| !i.is_empty()).collect();
        let mut n = Node::new(op, out, &ins, &[out]);
        for (k, v) in attrs {
            n.set_attr(k, v.clone());
        }
        self.nodes.push(n);
        out.to_string()
    }
    fn conv(&mut self, x: &str, out: &str, (cin, cout): (i64, i64), k: i64, group: i64, bias: bool) -> String {
        let w = self.w(&format!("{out}.w"), &[cout, cin / group, k, k]);
        let b = if bias { self.w(&format!("{out}.b"), &[cout]) } else { String::new() };
        let p = k / 2;
        let attrs = [
            ("kernel_shape", AttrValue::Ints(vec![k, k])),
            ("pads", AttrValue::Ints(vec![p; 4])),
            ("group", AttrValue::Int(group)),
        ];
        self.op("Conv", &[x, &w, &b], out, &attrs)
    }
    fn bn(&mut self, x: &str, out: &str, c: usize) -> String {
        let mut s = self.seed;
        let pos: Vec<f32> = (0..c).map(|_| 0.5 + lcg(&mut s).abs()).collect();
        self.seed = s;
        let sc = self.c(&format!("{out}.scale"), &[c as i64], &pos);
        let b = self.w(&format!("{out}.b"), &[c as i64]);
        let m = self.w(&format!("{out}.mean"), &[c as i64]);
        let v = self.c(&format!("{out}.var"), &[c as i64], &pos);
        self.op("BatchNormalization", &[x, &sc, &b, &m, &v], out, &[])
    }
    fn gemm(&mut self, x: &str, out: &str, k: i64, n: i64, bias: bool) -> String {
        let w = self.w(&format!("{out}.w"), &[n, k]);
        let b = if bias { self.w(&format!("{out}.b"), &[n]) } else { String::new() };
        self.op("Gemm", &[x, &w, &b], out, &[("transB", AttrValue::Int(1))])
    }
    fn model(mut self, x: &[i64], y: &str) -> Model {
        self.g.inputs.push(ValueInfo::tensor("x", 1, x));
        self.g.outputs.push(ValueInfo { name: y.into(), elem_type: Some(1), shape: None, opaque: vec![] });
        let g = self.g.with_nodes(self.nodes);
        Model {
            ir_version: Some(8),
            opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
            graph: g,
            opaque: vec![],
        }
    }
}

/// Zero the given indices along `axis` of an initializer.
fn zero(m: &mut Model, name: &str, axis: usize, idx: &[usize]) {
    let t = m.graph.initializer_mut(name).unwrap();
    let (dims, inner) = (t.shape(), t.shape()[axis + 1..].iter().product::<usize>());
    let keep: Vec<bool> = (0..t.numel().unwrap()).map(|i| !idx.contains(&((i / inner) % dims[axis]))).collect();
    t.zero_where(&keep).unwrap();
}

fn run_pass(m: &mut Model, text: &str) -> RunReport {
    PassManager::parse(text, &registry()).unwrap().run(m, RunEnv::default()).unwrap()
}

fn notes(r: &RunReport) -> Vec<String> {
    r.passes.iter().flat_map(|p| p.notes.iter().map(|n| format!("{}: {}", n.subject, n.message))).collect()
}

fn outputs(m: &Model, x: &[usize]) -> Vec<f32> {
    let bytes = sparsify_onnx::to_bytes(m).unwrap();
    let mut s = 99u64;
    let n: usize = x.iter().product();
    let data = ArrayD::from_shape_vec(IxDyn(x), (0..n).map(|_| lcg(&mut s)).collect()).unwrap();
    let feed = Feed { arrays: vec![("x".into(), Array::F32(data))] };
    let out = run_model(ModelSource::Bytes(&bytes), &feed, &[]).unwrap();
    out[0].1.to_f64_vec().iter().map(|&v| v as f32).collect()
}

/// Eliminate, compare with the masked model in tract, check idempotence. Returns (report, model).
fn check(masked: &Model, x: &[usize]) -> (RunReport, Model) {
    let mut m = masked.clone();
    let report = run_pass(&mut m, "dead-channel-elim");
    let (a, b) = (outputs(masked, x), outputs(&m, x));
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |s, v| s.max(v.abs())) as f64;
    let (mut d2, mut n2, mut mx) = (0f64, 0f64, 0f64);
    for (p, q) in a.iter().zip(&b) {
        let d = (*p as f64 - *q as f64).abs();
        d2 += d * d;
        n2 += (*p as f64).powi(2);
        mx = mx.max(d);
    }
    let rel = (d2 / n2.max(1e-30)).sqrt();
    assert!(
        rel <= 1e-5 && mx <= 1e-5 * scale.max(1.0),
        "rel L2 {rel:e}, max abs {mx:e} (scale {scale}); {:?}",
        notes(&report)
    );
    let mut again = m.clone();
    let r2 = run_pass(&mut again, "dead-channel-elim");
    assert!(!r2.passes[0].changed, "second run changed the model: {:?}", notes(&r2));
    assert_eq!(sparsify_onnx::to_bytes(&again).unwrap(), sparsify_onnx::to_bytes(&m).unwrap());
    (report, m)
}

fn dims(m: &Model, name: &str) -> Vec<i64> {
    m.graph.initializer(name).map(|t| t.dims.clone()).unwrap_or_else(|| panic!("no initializer {name}"))
}

fn counter(r: &RunReport, k: &str) -> f64 {
    r.passes[0].counters.get(k).copied().unwrap_or(f64::NAN)
}

#[test]
fn mlp_chain_with_folded_bias() {
    let mut b = B::new(1);
    let h1 = b.gemm("x", "fc1", 5, 8, true);
    let r1 = b.op("Relu", &[&h1], "r1", &[]);
    let h2 = b.gemm(&r1, "fc2", 8, 6, true);
    let r2 = b.op("Sigmoid", &[&h2], "r2", &[]);
    b.gemm(&r2, "y", 6, 3, true);
    let mut m = b.model(&[4, 5], "y");
    zero(&mut m, "fc1.w", 0, &[2, 5]);
    zero(&mut m, "fc1.b", 0, &[2, 5]);
    zero(&mut m, "fc2.w", 0, &[0, 3, 4]); // bias kept: sigmoid(b) is folded into y's bias
    let before = param_count(&m.graph);
    let (r, out) = check(&m, &[4, 5]);
    assert_eq!(dims(&out, "fc1.w"), vec![6, 5]);
    assert_eq!(dims(&out, "fc2.w"), vec![3, 6]);
    assert_eq!(dims(&out, "y.w"), vec![3, 3]);
    assert_eq!(counter(&r, "channels_removed"), 5.0);
    assert_eq!(counter(&r, "biases_folded"), 3.0);
    assert!(param_count(&out.graph) < before);
    assert_eq!(counter(&r, "params_after"), param_count(&out.graph) as f64);
    assert!(counter(&r, "macs_after") < counter(&r, "macs_before"));
}

#[test]
fn residual_add_with_batchnorm_and_flatten() {
    let mut b = B::new(2);
    let a = b.conv("x", "ca", (3, 8), 3, 1, false);
    let a = b.bn(&a, "bna", 8);
    let a = b.op("Relu", &[&a], "ra", &[]);
    let p = b.conv(&a, "cb", (8, 8), 1, 1, false);
    let p = b.bn(&p, "bnb", 8);
    let q = b.conv(&a, "cc", (8, 8), 1, 1, true);
    let s = b.op("Add", &[&p, &q], "sum", &[]);
    let s = b.op("Relu", &[&s], "rs", &[]);
    let s = b.op("GlobalAveragePool", &[&s], "gap", &[]);
    let s = b.op("Flatten", &[&s], "flat", &[("axis", AttrValue::Int(1))]);
    b.gemm(&s, "y", 8, 4, true);
    let mut m = b.model(&[2, 3, 6, 6], "y");
    zero(&mut m, "ca.w", 0, &[1, 6]); // BN shift → const → 1×1 consumers fold it
    zero(&mut m, "cb.w", 0, &[2, 5]);
    zero(&mut m, "cc.w", 0, &[2]); // channel 5 lives on in cc → kept
    let (r, out) = check(&m, &[2, 3, 6, 6]);
    assert_eq!(dims(&out, "ca.w"), vec![6, 3, 3, 3]);
    assert_eq!(dims(&out, "bna.mean"), vec![6]);
    assert_eq!(dims(&out, "cb.w"), vec![7, 6, 1, 1]);
    assert_eq!(dims(&out, "cc.w"), vec![7, 6, 1, 1]);
    assert_eq!(dims(&out, "cc.b"), vec![7]);
    assert_eq!(dims(&out, "y.w"), vec![4, 7]);
    let n = notes(&r);
    assert!(n.iter().any(|s| s.starts_with("cb: kept 1 dead channel(s) [5]: not dead")), "{n:?}");
}

#[test]
fn concat_split_and_reshape_remap_offsets() {
    let mut b = B::new(3);
    let p = b.conv("x", "p1", (2, 4), 1, 1, true);
    let q = b.conv("x", "p2", (2, 6), 1, 1, true);
    let c = b.op("Concat", &[&p, &q], "cat", &[("axis", AttrValue::Int(1))]);
    let c = b.op("Relu", &[&c], "rc", &[]);
    let sizes = b.ints("sizes", &[3, 7]);
    let mut split = Node::new("Split", "split", &[&c, &sizes], &["s0", "s1"]);
    split.set_attr("axis", AttrValue::Int(1));
    b.nodes.push(split);
    let u = b.conv("s0", "u", (3, 4), 1, 1, true);
    let v = b.conv("s1", "v", (7, 4), 1, 1, true);
    let s = b.op("Add", &[&u, &v], "uv", &[]);
    let shape = b.ints("shape", &[0, 64]);
    let f = b.op("Reshape", &[&s, &shape], "flat", &[]);
    b.gemm(&f, "y", 64, 3, true);
    let mut m = b.model(&[1, 2, 4, 4], "y");
    zero(&mut m, "p1.w", 0, &[1]);
    zero(&mut m, "p1.b", 0, &[1]);
    zero(&mut m, "p2.w", 0, &[0, 4]);
    zero(&mut m, "p2.b", 0, &[0, 4]);
    zero(&mut m, "u.w", 0, &[3]);
    zero(&mut m, "u.b", 0, &[3]);
    zero(&mut m, "v.w", 0, &[3]);
    zero(&mut m, "v.b", 0, &[3]);
    let (_, out) = check(&m, &[1, 2, 4, 4]);
    assert_eq!(dims(&out, "u.w"), vec![3, 2, 1, 1], "split part 0 lost concat position 1");
    assert_eq!(dims(&out, "v.w"), vec![3, 5, 1, 1], "split part 1 lost positions 4 and 8");
    let sizes: Vec<u8> = out.graph.initializer("sizes").unwrap().bytes().to_vec();
    assert_eq!(sizes[..8], 2i64.to_le_bytes());
    assert_eq!(sizes[8..], 5i64.to_le_bytes());
    assert_eq!(dims(&out, "y.w"), vec![3, 48]);
    let shape = out.graph.initializer("shape").unwrap().bytes().to_vec();
    assert_eq!(shape[8..], 48i64.to_le_bytes());
}

#[test]
fn grouped_conv_loses_equal_counts_per_group() {
    let mut b = B::new(4);
    let p = b.conv("x", "p", (4, 8), 1, 1, false);
    let p = b.op("Relu", &[&p], "rp", &[]);
    let gc = b.conv(&p, "gc", (8, 4), 3, 2, true); // consumer, 2 groups of 4 input channels
    let gp = b.conv(&gc, "gp", (4, 4), 1, 2, false); // producer, 2 groups of 2 output channels
    b.conv(&gp, "y", (4, 3), 1, 1, true);
    let mut m = b.model(&[1, 4, 5, 5], "y");
    zero(&mut m, "p.w", 0, &[1, 2, 5]);
    zero(&mut m, "gp.w", 0, &[0, 2, 3]);
    let (r, out) = check(&m, &[1, 4, 5, 5]);
    assert_eq!(dims(&out, "p.w"), vec![6, 4, 1, 1]);
    assert_eq!(dims(&out, "gc.w"), vec![4, 3, 3, 3]);
    assert_eq!(dims(&out, "gp.w"), vec![2, 2, 1, 1]);
    assert_eq!(dims(&out, "y.w"), vec![3, 2, 1, 1]);
    let n = notes(&r);
    assert!(n.iter().any(|s| s.contains("p: kept 1 dead channel(s) [2]: a grouped Conv")), "{n:?}");
    assert!(n.iter().any(|s| s.contains("gp: kept 1 dead channel(s) [3]: a grouped Conv")), "{n:?}");
}

#[test]
fn depthwise_couples_in_and_out_channels() {
    let mut b = B::new(5);
    let e = b.conv("x", "e", (3, 6), 1, 1, false);
    let e = b.bn(&e, "bne", 6);
    let e = b.op("Relu", &[&e], "re", &[]);
    let d = b.conv(&e, "dw", (6, 6), 3, 6, false);
    let d = b.bn(&d, "bnd", 6); // non-zero constants of removed channels reach `y` directly
    b.conv(&d, "y", (6, 4), 1, 1, false);
    let mut m = b.model(&[1, 3, 7, 7], "y");
    zero(&mut m, "e.w", 0, &[1, 2, 4]);
    zero(&mut m, "dw.w", 0, &[1, 4]); // channel 2: constant through BN hits the padded depthwise conv
    zero(&mut m, "bne.b", 0, &[2]);
    zero(&mut m, "bne.mean", 0, &[2]); // ... unless it is exactly 0 there: then 2 goes too
    let (r, out) = check(&m, &[1, 3, 7, 7]);
    assert_eq!(dims(&out, "e.w"), vec![3, 3, 1, 1]);
    assert_eq!(dims(&out, "dw.w"), vec![3, 1, 3, 3]);
    assert_eq!(dims(&out, "bnd.var"), vec![3]);
    assert_eq!(dims(&out, "y.w"), vec![4, 3, 1, 1]);
    let dw = out.graph.nodes().find(|(_, n)| n.name.as_deref() == Some("dw")).unwrap().1;
    assert_eq!(dw.attr_int("group"), Some(3));
    assert!(out.graph.initializer("y.dce_bias").is_some(), "BN shift of removed channels folded into a new bias");
    assert_eq!(counter(&r, "channels_removed"), 3.0);
}

#[test]
fn padded_consumer_keeps_a_constant_channel() {
    let mut b = B::new(6);
    let e = b.conv("x", "e", (3, 4), 3, 1, true);
    let e = b.op("Relu", &[&e], "re", &[]);
    b.conv(&e, "y", (4, 2), 3, 1, true);
    let mut m = b.model(&[1, 3, 5, 5], "y");
    let mut bias = m.graph.initializer("e.b").unwrap().to_f64().unwrap();
    bias[[0]] = 0.7;
    bias[[3]] = -0.4; // relu(-0.4) = 0: dead for real
    m.graph.initializer_mut("e.b").unwrap().write_f64(&bias).unwrap();
    zero(&mut m, "e.w", 0, &[0, 3]);
    let (r, out) = check(&m, &[1, 3, 5, 5]);
    assert_eq!(dims(&out, "e.w"), vec![3, 3, 3, 3]);
    let n = notes(&r);
    assert!(n.iter().any(|s| s.contains("e: kept 1 dead channel(s) [0]: outputs the constant 0.7") && s.contains("padded Conv")), "{n:?}");
}

#[test]
fn matmul_add_bias_gelu_chain() {
    let mut b = B::new(7);
    let w1 = b.w("w1", &[6, 8]);
    let b1 = b.w("b1", &[8]);
    let mm = b.op("MatMul", &["x", &w1], "mm1", &[]);
    let h = b.op("Add", &[&b1, &mm], "h", &[]);
    let sq2 = b.c("sqrt2", &[], &[std::f32::consts::SQRT_2]);
    let one = b.c("one", &[], &[1.0]);
    let half = b.c("half", &[], &[0.5]);
    let d = b.op("Div", &[&h, &sq2], "d", &[]);
    let e = b.op("Erf", &[&d], "e", &[]);
    let e1 = b.op("Add", &[&e, &one], "e1", &[]);
    let g = b.op("Mul", &[&h, &e1], "g", &[]);
    let g = b.op("Mul", &[&g, &half], "gelu", &[]);
    let w2 = b.w("w2", &[8, 6]);
    let mm2 = b.op("MatMul", &[&g, &w2], "mm2", &[]);
    let h2 = b.op("Relu", &[&mm2], "h2", &[]);
    let w3 = b.w("w3", &[6, 5]);
    b.op("MatMul", &[&h2, &w3], "y", &[]);
    let mut m = b.model(&[2, 3, 6], "y");
    zero(&mut m, "w1", 1, &[3, 5, 7]);
    zero(&mut m, "b1", 0, &[3, 5]); // channel 7 keeps its bias: gelu(b) is folded into a new Add after mm2
    zero(&mut m, "w2", 1, &[1, 4]); // no bias: relu(0) = 0, plain removal
    let (r, out) = check(&m, &[2, 3, 6]);
    assert_eq!(dims(&out, "w1"), vec![6, 5]);
    assert_eq!(dims(&out, "b1"), vec![5]);
    assert_eq!(dims(&out, "w2"), vec![5, 4]);
    assert_eq!(dims(&out, "w3"), vec![4, 5]);
    assert!(out
        .graph
        .nodes()
        .any(|(_, n)| n.op_type == "Add" && n.inputs.iter().any(|i| i.starts_with("mm2.dce_bias"))));
    assert_eq!(counter(&r, "biases_folded"), 1.0);
}

#[test]
fn blockers_keep_channels_with_reasons() {
    let mut b = B::new(8);
    let w = b.w("w", &[4, 4]);
    let h = b.op("MatMul", &["x", &w], "h", &[]);
    let sc = b.w("ln.s", &[4]);
    let bb = b.w("ln.b", &[4]);
    let ln = b.op("LayerNormalization", &[&h, &sc, &bb], "ln", &[("axis", AttrValue::Int(-1))]);
    let h2 = b.op("MatMul", &[&ln, &w], "h2", &[]); // `w` is shared
    b.op("Softmax", &[&h2], "y", &[("axis", AttrValue::Int(-1))]);
    let mut m = b.model(&[2, 4], "y");
    zero(&mut m, "w", 1, &[2]);
    let mut out = m.clone();
    let r = run_pass(&mut out, "dead-channel-elim");
    assert!(!r.passes[0].changed);
    let n = notes(&r);
    assert!(n.iter().any(|s| s.contains("kept 1 dead channel(s) [2]") && s.contains("shared")), "{n:?}");
    let groups = channel_groups(&m.graph);
    assert!(groups.iter().all(|g| g.removable() == 0), "{groups:?}");
}

#[test]
fn channel_groups_couple_residual_producers_and_consumers() {
    let mut b = B::new(9);
    let p = b.conv("x", "p", (3, 4), 1, 1, true);
    let q = b.conv("x", "q", (3, 4), 1, 1, true);
    let s = b.op("Add", &[&p, &q], "s", &[]);
    b.conv(&s, "y", (4, 2), 1, 1, true);
    let m = b.model(&[1, 3, 4, 4], "y");
    let groups = channel_groups(&m.graph);
    let g = groups.iter().find(|g| g.slices.iter().any(|s| s.weight.name() == "p.w")).unwrap();
    assert_eq!(g.channels, 4);
    assert_eq!(g.removable(), 4);
    let roles: Vec<(&str, SliceRole)> = g.slices.iter().map(|s| (s.weight.name(), s.role)).collect();
    for want in [
        ("p.w", SliceRole::Producer),
        ("q.w", SliceRole::Producer),
        ("p.b", SliceRole::Bias),
        ("y.w", SliceRole::Consumer),
    ] {
        assert!(roles.contains(&want), "{roles:?}");
    }
    let yw = g.slices.iter().find(|s| s.weight.name() == "y.w").unwrap();
    assert_eq!((yw.axis, yw.entries.len()), (1, 4));
    let out = groups
        .iter()
        .find(|g| g.slices.iter().any(|s| s.weight.name() == "y.w" && s.role == SliceRole::Producer))
        .unwrap();
    assert!(out.blocked.iter().all(|b| b.as_deref().is_some_and(|r| r.contains("graph output"))));
}

#[test]
fn coupled_mask_prunes_residual_channels_together() {
    let mut b = B::new(10);
    let p = b.conv("x", "p", (3, 6), 1, 1, true);
    let q = b.conv("x", "q", (3, 6), 1, 1, true);
    let s = b.op("Add", &[&p, &q], "s", &[]);
    b.conv(&s, "y", (6, 2), 1, 1, true);
    let mut m = b.model(&[1, 3, 4, 4], "y");
    let r = run_pass(&mut m, "mask{sparsity=0.5,granularity=coupled}");
    assert_eq!(r.pipeline.split(',').nth(1), Some("granularity=coupled"));
    let zero_rows = |m: &Model, w: &str| -> Vec<usize> {
        let t = m.graph.initializer(w).unwrap().to_f32().unwrap();
        (0..6).filter(|&i| t.index_axis(ndarray::Axis(0), i).iter().all(|&v| v == 0.0)).collect()
    };
    let (zp, zq) = (zero_rows(&m, "p.w"), zero_rows(&m, "q.w"));
    assert_eq!(zp.len(), 3);
    assert_eq!(zp, zq, "coupled channels are pruned in both producers");
    let mut twice = m.clone();
    assert!(!run_pass(&mut twice, "mask{sparsity=0.5,granularity=coupled}").passes[0].changed);
    let (_, out) = check(&m, &[1, 3, 4, 4]);
    assert_eq!(dims(&out, "p.w"), vec![3, 3, 1, 1]);
    assert_eq!(dims(&out, "q.b"), vec![3]);
    assert_eq!(dims(&out, "y.w"), vec![2, 3, 1, 1]);
}

#[test]
fn slice_bounds_follow_removed_channels() {
    let mut b = B::new(11);
    let p = b.conv("x", "p", (3, 8), 1, 1, false);
    let (st, en, ax) = (b.ints("starts", &[2]), b.ints("ends", &[7]), b.ints("axes", &[1]));
    let s = b.op("Slice", &[&p, &st, &en, &ax], "sl", &[]);
    b.conv(&s, "y", (5, 3), 1, 1, true);
    let mut m = b.model(&[1, 3, 4, 4], "y");
    zero(&mut m, "p.w", 0, &[0, 3, 7]);
    let (_, out) = check(&m, &[1, 3, 4, 4]);
    assert_eq!(dims(&out, "p.w"), vec![5, 3, 1, 1]);
    assert_eq!(dims(&out, "y.w"), vec![3, 4, 1, 1]);
    let int = |n: &str| i64::from_le_bytes(out.graph.initializer(n).unwrap().bytes()[..8].try_into().unwrap());
    assert_eq!((int("starts"), int("ends")), (1, 5));
}
