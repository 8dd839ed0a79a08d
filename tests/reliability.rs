//! Reliability of the embedded API (docs/reliability.md): pipelines on different models from several
//! threads give byte-identical results to sequential runs; hostile pipeline options are refused when
//! the pipeline is parsed; a graph of 100 000 chained nodes loads, verifies, runs a data-free pipeline
//! and exports on a small stack (nothing recurses over the graph depth).

mod common;

use sparsify_onnx::ir::{Graph, Model, Node, OpsetId, Tensor, ValueInfo};
use sparsify_onnx::Pipeline;

/// (model, pipeline): data-free pipelines touching every pass family.
const JOBS: [(&str, &str); 4] = [
    ("digits_cnn", "score{method=l2},mask{sparsity=0.5,granularity=coupled},dead-channel-elim"),
    ("digits_mlp", "score{method=l1},nm-legalize{n=2,m=4,permute=true}"),
    ("ppocr_cls_mobile_v2", "score{method=l1},mask{sparsity=0.5,granularity=channel},dead-channel-elim"),
    ("char_lm", "block-sparsify{block=2x2,sparsity=0.5},nm-legalize{n=2,m=4}"),
];

fn run_job(model: &str, pipeline: &str) -> Vec<u8> {
    let mut m = sparsify_onnx::load(&common::bundled(model).join("model.onnx")).unwrap();
    Pipeline::parse(pipeline).unwrap().run(&mut m, None).unwrap();
    sparsify_onnx::to_bytes(&m).unwrap()
}

#[test]
fn threads_give_byte_identical_results_to_sequential_runs() {
    let sequential: Vec<Vec<u8>> = JOBS.iter().map(|(m, p)| run_job(m, p)).collect();
    // Every job in its own thread at once, twice over (two threads per model: same model, same time).
    let parallel: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = JOBS.iter().chain(JOBS.iter()).map(|(m, p)| s.spawn(move || run_job(m, p))).collect();
        handles.into_iter().map(|h| h.join().expect("a pipeline thread panicked")).collect()
    });
    for (i, (m, _)) in JOBS.iter().enumerate() {
        assert!(parallel[i] == sequential[i], "{m}: threaded result differs from the sequential one");
        assert!(parallel[i + JOBS.len()] == sequential[i], "{m}: second threaded result differs");
    }
    // The jobs really changed the models (the comparison is not between untouched inputs).
    for (i, (m, _)) in JOBS.iter().enumerate() {
        let input = std::fs::read(common::bundled(m).join("model.onnx")).unwrap();
        assert!(sequential[i] != input, "{m}: the pipeline changed nothing");
    }
}

fn parse_err(text: &str) -> String {
    match Pipeline::parse(text) {
        Ok(_) => panic!("{text}: accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn absurd_pipeline_options_are_refused_at_parse_time() {
    let e = parse_err("block-sparsify{block=1000000000x1}");
    assert!(e.contains("'block'") && e.contains("65536"), "{e}");
    let e = parse_err("block-sparsify{block=99999999999999999999999x1}");
    assert!(e.contains("'block'"), "{e}");
    let e = parse_err("mask{steps=1000000000,schedule=linear}");
    assert!(e.contains("'steps'") && e.contains("1000"), "{e}");
    let e = parse_err("nm-legalize{n=2,m=99999999999999999999999}");
    assert!(e.contains("'m'") && e.contains("whole number"), "{e}");
    let e = parse_err("sparsegpt{blocksize=0}");
    assert!(e.contains("blocksize"), "{e}");
}

#[test]
fn huge_group_sizes_allocate_nothing_and_skip() {
    // m = 10^9 parses (it is an ordinary whole number) but no weight's reduction dim is a multiple of
    // it: the weight is skipped with a reason, and the run allocates nothing of size m.
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, 4]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[1, 4]));
    g.initializers.push(Tensor::from_f32("w", vec![4, 4], &[1.0; 16]).unwrap());
    let g = g.with_nodes(vec![Node::new("MatMul", "mm", &["x", "w"], &["y"])]);
    let mut m = Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] };
    for text in
        ["nm-legalize{n=1,m=1000000000}", "permute-channels{n=1,m=1000000000}", "block-sparsify{block=65536x65536}"]
    {
        let report = Pipeline::parse(text).unwrap().run(&mut m, None).unwrap();
        if text.starts_with("nm-legalize") {
            let notes: Vec<&str> = report.passes[0].notes.iter().map(|n| n.message.as_str()).collect();
            assert!(notes.iter().any(|n| n.contains("multiple")), "{text}: no skip reason in {notes:?}");
        }
        assert_eq!(m.graph.initializer("w").unwrap().nnz(), 16, "{text}: a weight changed");
    }
}

/// x → MatMul(w0) → 100 000 alternating Relu/Identity... → MatMul(w1) → y.
fn chain(n: usize) -> Model {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, 8]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[1, 8]));
    let vals: Vec<f32> = (0..64).map(|i| (i % 9) as f32 - 4.0).collect();
    g.initializers.push(Tensor::from_f32("w0", vec![8, 8], &vals).unwrap());
    g.initializers.push(Tensor::from_f32("w1", vec![8, 8], &vals).unwrap());
    let mut nodes = vec![Node::new("MatMul", "mm0", &["x", "w0"], &["t0"])];
    for i in 0..n {
        let op = if i % 2 == 0 { "Relu" } else { "Identity" };
        nodes.push(Node::new(op, &format!("n{i}"), &[&format!("t{i}")], &[&format!("t{}", i + 1)]));
    }
    nodes.push(Node::new("MatMul", "mm1", &[&format!("t{n}"), "w1"], &["y"]));
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
        graph: g.with_nodes(nodes),
        opaque: vec![],
    }
}

#[test]
fn a_graph_of_100k_chained_nodes_runs_on_a_small_stack() {
    // 256 KiB of stack: any recursion over the chain (100 000 frames) would overflow it.
    let worker = std::thread::Builder::new().stack_size(256 << 10).spawn(|| {
        let n = 100_000;
        let bytes = sparsify_onnx::to_bytes(&chain(n)).unwrap();
        let mut model = sparsify_onnx_io::model_from_bytes(bytes.into(), &Default::default()).unwrap();
        assert_eq!(model.graph.node_count(), n + 2);
        assert!(sparsify_onnx::ir::verify::verify(&model.graph).is_empty());
        let report = Pipeline::parse("score{method=l1},mask{sparsity=0.5},nm-legalize{n=2,m=4},dead-channel-elim")
            .unwrap()
            .run(&mut model, None)
            .unwrap();
        assert_eq!(report.weights.len(), 2);
        let out = sparsify_onnx::to_bytes(&model).unwrap();
        let back = sparsify_onnx_io::model_from_bytes(out.into(), &Default::default()).unwrap();
        assert_eq!(back.graph.node_count(), model.graph.node_count());
        assert!(back.graph.initializer("w0").unwrap().nnz() <= 32, "the mask did not survive export");
    });
    worker.unwrap().join().expect("the 100k-node chain overflowed the stack or failed");
}
