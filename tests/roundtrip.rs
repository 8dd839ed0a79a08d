//! Foundation guarantees on the real models: a pipeline with no passes writes every weight back
//! byte-identical, the file itself is identical, and tract gives bit-identical outputs.

mod common;

use sparsify_onnx::validate::{load_feed, Status, Thresholds};
use sparsify_onnx::{ExportOptions, Pipeline};

#[test]
fn empty_pipeline_is_exact_on_every_model() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, dir) in common::all_models() {
        let input = dir.join("model.onnx");
        let before = std::fs::read(&input).unwrap();
        let mut model = sparsify_onnx::load(&input).unwrap();
        let report = Pipeline::parse("").unwrap().run(&mut model, None).unwrap();
        assert!(report.passes.is_empty());
        let out = tmp.path().join(format!("{name}.onnx"));
        sparsify_onnx::save(&model, &out, &ExportOptions::default()).unwrap();

        // Weights: initializers and Constant-node tensors byte-identical.
        let a = sparsify_onnx::load(&input).unwrap();
        let b = sparsify_onnx::load(&out).unwrap();
        assert_eq!(a.graph.initializers.len(), b.graph.initializers.len());
        for (x, y) in a.graph.initializers.iter().zip(&b.graph.initializers) {
            assert_eq!((&x.name, &x.dims, x.dtype), (&y.name, &y.dims, y.dtype));
            assert!(x.bytes() == y.bytes(), "{name}: initializer {} changed", x.name);
        }
        let consts = |m: &sparsify_onnx::ir::Model| -> Vec<Vec<u8>> {
            m.graph.nodes().filter_map(|(_, n)| n.constant_tensor()).map(|t| t.bytes().to_vec()).collect()
        };
        assert_eq!(consts(&a), consts(&b), "{name}: Constant-node weights changed");
        // The whole file: every field survived (opsets, metadata, doc strings, value_info, node order).
        assert!(std::fs::read(&out).unwrap() == before, "{name}: output file differs from the input");
        assert!(std::fs::read(&input).unwrap() == before, "{name}: input modified");

        // tract: bit-identical outputs on the sample inputs.
        let feed = load_feed(&dir.join("sample"), &sparsify_onnx::input_decls(&a)).unwrap();
        let v = sparsify_onnx::validate_files(&input, &out, &feed, &Thresholds::default());
        assert_eq!(v.status, Status::Passed, "{name}: {:?}", v.status);
        assert!(v.outputs.iter().all(|o| o.bit_identical), "{name}: outputs not bit-identical");
    }
}

#[test]
fn ppocr_constant_node_weights_are_found() {
    let model = sparsify_onnx::load(&common::bundled("ppocr_cls_mobile_v2").join("model.onnx")).unwrap();
    assert!(model.graph.initializers.is_empty(), "this model keeps every weight in Constant nodes");
    let w = model.graph.find_weights();
    let conv = w.iter().filter(|w| w.op() == "Conv").count();
    let matmul = w.iter().filter(|w| w.op() == "MatMul").count();
    assert_eq!((conv, matmul), (53, 1));
    assert!(w.iter().all(|w| matches!(w.id, sparsify_onnx::ir::WeightId::Const(_))));
    for x in w.iter().filter(|w| w.op() == "Conv") {
        assert_eq!((x.out_axis(), x.red_axis()), (0, 1));
    }
    let mm = w.iter().find(|w| w.op() == "MatMul").unwrap();
    assert_eq!((mm.out_axis(), mm.red_axis()), (1, 0));
}

#[test]
fn weight_axes_match_the_design_table_on_real_models() {
    // digits_mlp: Gemm transB=1, [N, K] → out 0, reduction 1.
    let m = sparsify_onnx::load(&common::bundled("digits_mlp").join("model.onnx")).unwrap();
    let w = m.graph.find_weights();
    assert_eq!(w.len(), 3);
    assert!(w.iter().all(|w| w.op() == "Gemm" && (w.out_axis(), w.red_axis()) == (0, 1)));
    // char_lm: MatMul [K, N] → out 1, reduction 0.
    let m = sparsify_onnx::load(&common::bundled("char_lm").join("model.onnx")).unwrap();
    let w = m.graph.find_weights();
    assert_eq!(w.iter().filter(|w| w.op() == "MatMul").count(), 9);
    assert!(w.iter().filter(|w| w.op() == "MatMul").all(|w| (w.out_axis(), w.red_axis()) == (1, 0)));
}
