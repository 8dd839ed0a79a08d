//! `prune-heads`: on char_lm (fused qkv + Split, Concat-built shapes), MiniLM L3 when present (separate
//! projections, `Shape` reads of the projections) and on a small BERT-like model built here with shape
//! constants shared by every layer, the model with heads removed computes in tract what
//! the masked-and-repaired model (`remove=false`) computes; parameters drop; `dead-channel-elim` on the
//! result changes nothing; unrecognised attention (a rotary-like op on the query path) is left unchanged
//! with a note.

mod common;

use common::run;
use sparsify_onnx::ir::{AttrValue, DType, Graph, Model, Node, OpsetId, Tensor, ValueInfo};
use sparsify_onnx::validate::{Array, Feed};
use sparsify_onnx::{Calibrator, Pipeline, RunReport, TractCalibrator};
use sparsify_passes::dead_channel_elim::param_count;

/// Relative L2 over every output.
fn rel(a: &[(String, Array)], b: &[(String, Array)]) -> f64 {
    common::outputs_rel_l2(a, b, "")
}

fn notes(r: &RunReport) -> Vec<String> {
    r.passes.iter().flat_map(|p| p.notes.iter().map(|n| format!("{}: {}", n.subject, n.message))).collect()
}

fn counter(r: &RunReport, k: &str) -> f64 {
    r.passes.last().unwrap().counters.get(k).copied().unwrap_or(0.0)
}

/// Removed vs masked-and-repaired in tract, parameters, dead-channel-elim fixed point. Returns the
/// removed model and its report.
fn removed_equals_masked(name: &str, m: &Model, calib: &dyn Calibrator, feed: &Feed, opts: &str) -> (Model, RunReport) {
    let mut removed = m.clone();
    let r = Pipeline::parse(&format!("prune-heads{{{opts}}}")).unwrap().run(&mut removed, Some(calib)).unwrap();
    let mut masked = m.clone();
    Pipeline::parse(&format!("prune-heads{{{opts},remove=false}}")).unwrap().run(&mut masked, Some(calib)).unwrap();
    let (yr, ym, yd) = (run(&removed, feed), run(&masked, feed), run(m, feed));
    let e = rel(&ym, &yr);
    eprintln!(
        "{name}: {} heads removed of {}, params {} -> {}, removed vs masked rel L2 {e:.2e}, vs dense {:.4}; notes {:?}",
        counter(&r, "heads_removed"),
        counter(&r, "heads_before"),
        param_count(&m.graph),
        param_count(&removed.graph),
        rel(&yd, &yr),
        notes(&r)
    );
    assert!(counter(&r, "heads_removed") > 0.0, "{name}: nothing removed: {:?}", notes(&r));
    assert!(e <= 1e-5, "{name}: removed vs masked rel L2 {e:e}");
    assert!(param_count(&removed.graph) < param_count(&m.graph));
    assert_eq!(counter(&r, "params_after"), param_count(&removed.graph) as f64);
    let mut again = removed.clone();
    let r2 = Pipeline::parse("dead-channel-elim").unwrap().run(&mut again, None).unwrap();
    assert!(!r2.passes[0].changed, "{name}: dead-channel-elim changed the removed model");
    assert_eq!(sparsify_onnx::to_bytes(&again).unwrap(), sparsify_onnx::to_bytes(&removed).unwrap());
    (removed, r)
}

#[test]
fn char_lm_fused_qkv_removed_equals_masked() {
    let dir = common::bundled("char_lm");
    let m = common::model(&dir);
    let calib = TractCalibrator::new(&common::feed(&dir, "calib", &m), 16).unwrap();
    let feed = common::feed(&dir, "sample", &m);
    let (removed, r) = removed_equals_masked("char_lm", &m, &calib, &feed, "fraction=0.25");
    assert_eq!(counter(&r, "blocks"), 2.0);
    assert_eq!(counter(&r, "heads_removed"), 2.0, "4 -> 3 heads in both blocks");
    let g = &removed.graph;
    let dims = |n: &str| g.weight(&g.constant_source(n).unwrap()).unwrap().dims.clone();
    assert_eq!(dims("onnx::MatMul_243"), vec![128, 288], "fused qkv: 3 × 3 heads × 32");
    assert_eq!(dims("blocks.0.qkv.bias"), vec![288]);
    assert_eq!(dims("onnx::MatMul_257"), vec![96, 128], "O loses one head's rows");
    // Fixed point of the selection: zero heads requested changes nothing.
    let mut same = removed.clone();
    let r0 =
        Pipeline::parse("prune-heads{fraction=0}").unwrap().run(&mut same, Some(&calib as &dyn Calibrator)).unwrap();
    assert!(!r0.passes[0].changed);
    assert_eq!(sparsify_onnx::to_bytes(&same).unwrap(), sparsify_onnx::to_bytes(&removed).unwrap());
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
}

fn i64s(name: &str, v: &[i64]) -> Tensor {
    Tensor::new(
        name,
        DType::I64,
        vec![v.len() as i64],
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
    )
    .unwrap()
}

/// A BERT-like encoder: `layers` blocks of separate q/k/v projections with biases, head-split and merge
/// Reshapes reading the shape constants `heads_shape` [0,0,H,dh] and `merge_shape` [0,0,D] shared by
/// every layer (as `benches/make_transformer.py` writes them), scale, Softmax, output projection,
/// residual. `rotary_in`: layers whose query path gets a `Sin` (an unsupported per-position transform).
fn shared_shape_bert(layers: usize, rotary_in: &[usize]) -> Model {
    let (d, h, dh, s) = (16i64, 4i64, 4i64, 6i64);
    let mut seed = 11u64;
    let mut g = Graph::new();
    let mut mat = |g: &mut Graph, name: &str, dims: Vec<i64>| {
        let n: i64 = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 0.5).collect();
        g.initializers.push(Tensor::from_f32(name, dims, &v).unwrap());
    };
    g.initializers.push(i64s("heads_shape", &[0, 0, h, dh]));
    g.initializers.push(i64s("merge_shape", &[0, 0, d]));
    g.initializers.push(Tensor::from_f32("scale", vec![], &[1.0 / (dh as f32).sqrt()]).unwrap());
    g.inputs.push(ValueInfo::tensor("x", 1, &[-1, s, d]));
    let mut nodes = Vec::new();
    let mut x = "x".to_string();
    for l in 0..layers {
        let p = |s: &str| format!("l{l}.{s}");
        for part in ["q", "k", "v", "o"] {
            mat(&mut g, &p(&format!("{part}.w")), vec![d, d]);
            mat(&mut g, &p(&format!("{part}.b")), vec![d]);
        }
        let heads = |part: &str, perm: Vec<i64>, nodes: &mut Vec<Node>| -> String {
            nodes.push(Node::new(
                "MatMul",
                &p(&format!("{part}/mm")),
                &[&x, &p(&format!("{part}.w"))],
                &[&p(&format!("{part}/mm"))],
            ));
            nodes.push(Node::new(
                "Add",
                &p(&format!("{part}/add")),
                &[&p(&format!("{part}/mm")), &p(&format!("{part}.b"))],
                &[&p(&format!("{part}/out"))],
            ));
            let mut src = p(&format!("{part}/out"));
            if part == "q" && rotary_in.contains(&l) {
                nodes.push(Node::new("Sin", &p("q/rot"), &[&src], &[&p("q/rot")]));
                src = p("q/rot");
            }
            nodes.push(Node::new(
                "Reshape",
                &p(&format!("{part}/split")),
                &[&src, "heads_shape"],
                &[&p(&format!("{part}/split"))],
            ));
            let mut t = Node::new(
                "Transpose",
                &p(&format!("{part}/heads")),
                &[&p(&format!("{part}/split"))],
                &[&p(&format!("{part}/heads"))],
            );
            t.set_attr("perm", AttrValue::Ints(perm));
            nodes.push(t);
            p(&format!("{part}/heads"))
        };
        let q = heads("q", vec![0, 2, 1, 3], &mut nodes);
        let k = heads("k", vec![0, 2, 3, 1], &mut nodes);
        let v = heads("v", vec![0, 2, 1, 3], &mut nodes);
        nodes.push(Node::new("MatMul", &p("scores"), &[&q, &k], &[&p("scores")]));
        nodes.push(Node::new("Mul", &p("scaled"), &[&p("scores"), "scale"], &[&p("scaled")]));
        let mut sm = Node::new("Softmax", &p("probs"), &[&p("scaled")], &[&p("probs")]);
        sm.set_attr("axis", AttrValue::Int(-1));
        nodes.push(sm);
        nodes.push(Node::new("MatMul", &p("ctx"), &[&p("probs"), &v], &[&p("ctx")]));
        let mut t = Node::new("Transpose", &p("ctx/t"), &[&p("ctx")], &[&p("ctx/t")]);
        t.set_attr("perm", AttrValue::Ints(vec![0, 2, 1, 3]));
        nodes.push(t);
        nodes.push(Node::new("Reshape", &p("merged"), &[&p("ctx/t"), "merge_shape"], &[&p("merged")]));
        nodes.push(Node::new("MatMul", &p("o/mm"), &[&p("merged"), &p("o.w")], &[&p("o/mm")]));
        nodes.push(Node::new("Add", &p("o/add"), &[&p("o/mm"), &p("o.b")], &[&p("o/out")]));
        nodes.push(Node::new("Add", &p("res"), &[&x, &p("o/out")], &[&p("res")]));
        x = p("res");
    }
    nodes.push(Node::new("Identity", "out", &[&x], &["y"]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[-1, s, d]));
    let g = g.with_nodes(nodes);
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 17 }],
        graph: g,
        opaque: vec![],
    }
}

fn random_feed(rows: usize, seed: u64) -> Feed {
    let mut s = seed;
    let v: Vec<f32> = (0..rows * 6 * 16).map(|_| lcg(&mut s)).collect();
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[rows, 6, 16]), v).unwrap();
    Feed { arrays: vec![("x".into(), Array::F32(a))] }
}

#[test]
fn shared_shape_constants_are_cloned_per_layer() {
    let m = shared_shape_bert(3, &[]);
    let calib = TractCalibrator::new(&random_feed(32, 1), 16).unwrap();
    let feed = random_feed(4, 2);
    let (removed, r) = removed_equals_masked("shared-shape bert", &m, &calib, &feed, "fraction=0.25");
    assert_eq!(counter(&r, "heads_removed"), 3.0, "4 -> 3 heads in each of 3 layers");
    let g = &removed.graph;
    // Every layer reads its own head-count constant; the shared originals are gone.
    let mut shapes: Vec<String> =
        g.nodes().filter(|(_, n)| n.op_type == "Reshape").map(|(_, n)| n.inputs[1].clone()).collect();
    assert!(shapes.iter().all(|s| s != "heads_shape" && s != "merge_shape"), "{shapes:?}");
    for s in &shapes {
        let v: Vec<i64> =
            g.initializer(s).unwrap().bytes().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        assert!(v == [0, 0, 3, 4] || v == [0, 0, 12], "{s}: {v:?}");
    }
    shapes.sort();
    shapes.dedup();
    assert_eq!(shapes.len(), 6, "one head shape and one merge shape per layer");
}

#[test]
fn budget_global_spreads_the_same_total() {
    let m = shared_shape_bert(3, &[]);
    let calib = TractCalibrator::new(&random_feed(32, 1), 16).unwrap();
    let feed = random_feed(4, 2);
    let (_, r) = removed_equals_masked("shared-shape bert, global", &m, &calib, &feed, "fraction=0.25,budget=global");
    assert_eq!(counter(&r, "heads_removed"), 3.0);
}

#[test]
fn rotary_like_query_path_is_left_unchanged_with_a_note() {
    let m = shared_shape_bert(2, &[0]);
    let calib = TractCalibrator::new(&random_feed(32, 1), 16).unwrap();
    let mut out = m.clone();
    let r =
        Pipeline::parse("prune-heads{fraction=0.5}").unwrap().run(&mut out, Some(&calib as &dyn Calibrator)).unwrap();
    let n = notes(&r);
    assert!(n.iter().any(|s| s.starts_with("l0.o/mm: attention not recognised") && s.contains("Sin")), "{n:?}");
    assert_eq!(counter(&r, "heads_removed"), 2.0, "layer 1 only: {n:?}");
    let g = &out.graph;
    assert_eq!(g.initializer("l0.q.w").unwrap().dims, vec![16, 16], "layer 0 untouched");
    assert_eq!(g.initializer("l0.o.w").unwrap().dims, vec![16, 16]);
    assert_eq!(g.initializer("l1.o.w").unwrap().dims, vec![8, 16]);
    // A model without attention: unchanged, with a note.
    let mut mlp = common::model(&common::bundled("digits_mlp"));
    let before = sparsify_onnx::to_bytes(&mlp).unwrap();
    let r = Pipeline::parse("prune-heads").unwrap().run(&mut mlp, Some(&calib as &dyn Calibrator)).unwrap();
    assert!(!r.passes[0].changed);
    assert!(notes(&r).iter().any(|s| s.contains("no multi-head attention")));
    assert_eq!(sparsify_onnx::to_bytes(&mlp).unwrap(), before);
}

#[test]
fn minilm_l3_separate_projections_removed_equals_masked() {
    let Some(dir) = common::minilm() else { return };
    let m = common::model(&dir);
    let calib = TractCalibrator::new(&common::feed(&dir, "calib", &m), 16).unwrap();
    let feed = common::feed(&dir, "sample", &m);
    let (removed, r) = removed_equals_masked("minilm_l3", &m, &calib, &feed, "fraction=0.25");
    assert_eq!(counter(&r, "heads_removed"), 9.0, "12 -> 9 heads in each of 3 layers");
    let g = &removed.graph;
    let dims = |n: &str| g.weight(&g.constant_source(n).unwrap()).unwrap().dims.clone();
    assert_eq!(dims("onnx::MatMul_470"), vec![384, 288], "query columns: 9 heads × 32");
    assert_eq!(dims("onnx::MatMul_480"), vec![288, 384], "output projection rows");
}
