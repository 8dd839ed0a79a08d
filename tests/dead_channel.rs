//! `dead-channel-elim` on the bundled real models: zero 50% of the removable channels of every coupled
//! group (lowest group L2 norm first, producer rows and biases zeroed as a channel mask does), eliminate,
//! and check in tract on the sample inputs that the eliminated model gives the masked model's outputs,
//! that parameters drop, and that a second run changes nothing.

mod common;

use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{load_feed, run_model, Array, Feed, ModelSource};
use sparsify_onnx::{input_decls, Pipeline, RunReport};
use sparsify_passes::channels::{channel_groups, group_scores, zero_channels, SliceRole};
use sparsify_passes::dead_channel_elim::param_count;

/// Zero the lowest-scoring half of the removable channels of each group; returns how many.
fn zero_half(m: &mut Model, only: Option<&str>) -> usize {
    let mut zeroed = 0;
    for grp in channel_groups(&m.graph) {
        let producers: Vec<&str> =
            grp.slices.iter().filter(|s| s.role == SliceRole::Producer).map(|s| s.weight.name()).collect();
        if producers.is_empty() || only.is_some_and(|o| !producers.iter().any(|p| p.contains(o))) {
            continue;
        }
        let free: Vec<usize> = (0..grp.channels).filter(|&c| grp.blocked[c].is_none()).collect();
        let scores = group_scores(&m.graph, &grp, None).unwrap();
        let mut order = free.clone();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let pick = &order[..free.len() / 2];
        if !pick.is_empty() {
            assert!(zero_channels(&mut m.graph, &grp, pick).unwrap() > 0);
            zeroed += pick.len();
        }
    }
    zeroed
}

fn sample(name: &str, m: &Model) -> Feed {
    load_feed(&common::bundled(name).join("sample"), &input_decls(m)).unwrap()
}

fn run(m: &Model, feed: &Feed) -> Vec<(String, Array)> {
    let bytes = sparsify_onnx::to_bytes(m).unwrap();
    run_model(ModelSource::Bytes(&bytes), feed, &[]).unwrap()
}

/// (rel L2, max abs, max |reference|) over every output.
fn diff(a: &[(String, Array)], b: &[(String, Array)]) -> (f64, f64, f64) {
    let (mut d2, mut n2, mut mx, mut sc) = (0f64, 0f64, 0f64, 0f64);
    assert_eq!(a.len(), b.len());
    for ((_, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape());
        for (p, q) in x.to_f64_vec().iter().zip(y.to_f64_vec()) {
            d2 += (p - q).powi(2);
            n2 += p * p;
            mx = mx.max((p - q).abs());
            sc = sc.max(p.abs());
        }
    }
    ((d2 / n2.max(1e-300)).sqrt(), mx, sc)
}

fn counter(r: &RunReport, k: &str) -> f64 {
    r.passes.last().unwrap().counters[k]
}

fn notes(r: &RunReport) -> Vec<String> {
    r.passes.iter().flat_map(|p| p.notes.iter().map(|n| format!("{}: {}", n.subject, n.message))).collect()
}

/// Eliminate `masked`, check outputs against it in tract, idempotence; returns the report and model.
fn eliminate_and_check(name: &str, masked: &Model) -> (RunReport, Model) {
    let feed = sample(name, masked);
    let mut elim = masked.clone();
    let report = Pipeline::parse("dead-channel-elim").unwrap().run(&mut elim, None).unwrap();
    let (rel, mx, scale) = diff(&run(masked, &feed), &run(&elim, &feed));
    eprintln!(
        "{name}: removed {} channels, kept dead {}, params {} -> {}, MACs {} -> {}, rel L2 {rel:.2e}, max abs {mx:.2e}",
        counter(&report, "channels_removed"),
        counter(&report, "channels_kept_dead"),
        counter(&report, "params_before"),
        counter(&report, "params_after"),
        counter(&report, "macs_before"),
        counter(&report, "macs_after"),
    );
    assert!(rel <= 1e-5 && mx <= 1e-5 * scale.max(1.0), "{name}: rel L2 {rel:e}, max abs {mx:e} (scale {scale})");
    let mut again = elim.clone();
    let r2 = Pipeline::parse("dead-channel-elim").unwrap().run(&mut again, None).unwrap();
    assert!(!r2.passes[0].changed, "{name}: second run changed the model");
    assert_eq!(sparsify_onnx::to_bytes(&again).unwrap(), sparsify_onnx::to_bytes(&elim).unwrap());
    (report, elim)
}

fn check_model(name: &str, only: Option<&str>) -> (usize, RunReport, Model, Model) {
    let mut m = sparsify_onnx::load(&common::bundled(name).join("model.onnx")).unwrap();
    let zeroed = zero_half(&mut m, only);
    assert!(zeroed > 0, "{name}: no removable channel group");
    let (r, elim) = eliminate_and_check(name, &m);
    assert!(param_count(&elim.graph) < param_count(&m.graph), "{name}: parameters did not drop");
    assert_eq!(counter(&r, "params_after"), param_count(&elim.graph) as f64);
    assert_eq!(counter(&r, "channels_kept_dead"), 0.0, "{name}: {:?}", notes(&r));
    (zeroed, r, m, elim)
}

fn dims(m: &Model, name: &str) -> Vec<i64> {
    m.graph.weight(&m.graph.constant_source(name).unwrap()).unwrap().dims.clone()
}

#[test]
fn digits_mlp_hidden_layers_halve() {
    let (zeroed, r, _, elim) = check_model("digits_mlp", None);
    assert_eq!(zeroed, 128 + 64);
    assert_eq!(counter(&r, "channels_removed"), 192.0);
    assert_eq!(dims(&elim, "fc1.weight"), vec![128, 64]);
    assert_eq!(dims(&elim, "fc2.weight"), vec![64, 128]);
    assert_eq!(dims(&elim, "fc3.weight"), vec![10, 64]);
}

#[test]
fn digits_cnn_convs_and_flatten_gemm_shrink() {
    let (zeroed, _, _, elim) = check_model("digits_cnn", None);
    assert_eq!(zeroed, 8 + 16);
    assert_eq!(dims(&elim, "conv2.weight"), vec![16, 8, 3, 3]);
    assert_eq!(dims(&elim, "fc.weight"), vec![10, 16 * 16], "flatten: 16 channels × 4×4");
}

#[test]
fn char_lm_mlp_blocks_halve() {
    let (zeroed, _, _, elim) = check_model("char_lm", None);
    assert_eq!(
        zeroed,
        2 * 256,
        "only the MLP hidden channels are removable (residual stream under LayerNorm, heads reshaped)"
    );
    assert_eq!(dims(&elim, "onnx::MatMul_258"), vec![128, 256]);
    assert_eq!(dims(&elim, "onnx::MatMul_259"), vec![256, 128]);
    assert_eq!(dims(&elim, "blocks.1.fc1.bias"), vec![256]);
}

#[test]
fn ppocr_constant_node_weights_bn_depthwise_se_shrink() {
    let (zeroed, r, masked, elim) = check_model("ppocr_cls_mobile_v2", None);
    let (p0, p1) = (param_count(&masked.graph), param_count(&elim.graph));
    eprintln!(
        "ppocr: {zeroed} channel groups zeroed, params {p0} -> {p1}, biases folded {}",
        counter(&r, "biases_folded")
    );
    assert!(p1 * 10 < p0 * 7, "ppocr lost only {p0} -> {p1} parameters");
    assert!(counter(&r, "biases_folded") > 0.0, "BatchNorm shifts of removed channels must be folded");
    assert!(elim.graph.initializers.is_empty() || elim.graph.initializers.iter().all(|t| t.name.contains("dce_bias")));
}

#[test]
fn score_mask_channel_pipeline_shrinks_digits_mlp() {
    let dir = common::bundled("digits_mlp");
    let mut masked = sparsify_onnx::load(&dir.join("model.onnx")).unwrap();
    let mut full = masked.clone();
    Pipeline::parse("score{method=l2},mask{sparsity=0.5,granularity=channel}").unwrap().run(&mut masked, None).unwrap();
    let (r, elim) = eliminate_and_check("digits_mlp", &masked);
    assert_eq!(dims(&elim, "fc1.weight"), vec![128, 64]);
    assert_eq!(dims(&elim, "fc2.weight"), vec![64, 128]);
    let n = notes(&r);
    assert!(n.iter().any(|s| s.contains("/fc3/Gemm: kept 5 dead channel(s)") && s.contains("graph output")), "{n:?}");
    let one = Pipeline::parse("score{method=l2},mask{sparsity=0.5,granularity=channel},dead-channel-elim").unwrap();
    one.run(&mut full, None).unwrap();
    assert_eq!(sparsify_onnx::to_bytes(&full).unwrap(), sparsify_onnx::to_bytes(&elim).unwrap());
}

#[test]
fn minilm_ffn_channels_when_present() {
    let Some(dir) = common::minilm() else { return };
    let mut m = sparsify_onnx::load(&dir.join("model.onnx")).unwrap();
    let t = std::time::Instant::now();
    let zeroed = zero_half(&mut m, None);
    let feed = load_feed(&dir.join("sample"), &input_decls(&m)).unwrap();
    let mut elim = m.clone();
    let r = Pipeline::parse("dead-channel-elim").unwrap().run(&mut elim, None).unwrap();
    eprintln!(
        "minilm: zeroed {zeroed}, analysis+elimination {:.2?}, notes {:?}",
        t.elapsed(),
        &notes(&r)[..notes(&r).len().min(12)]
    );
    let (rel, mx, scale) = diff(&run(&m, &feed), &run(&elim, &feed));
    eprintln!(
        "minilm: rel L2 {rel:.2e}, max abs {mx:.2e}, params {} -> {}",
        param_count(&m.graph),
        param_count(&elim.graph)
    );
    assert_eq!(zeroed, 3 * 768, "the three FFN hidden layers (1536 each) are the removable groups");
    assert!(rel <= 1e-5 && mx <= 1e-5 * scale.max(1.0), "rel L2 {rel:e}, max abs {mx:e}");
    assert_eq!(counter(&r, "channels_removed"), zeroed as f64);
}

#[test]
fn coupled_mask_pipeline_shrinks_ppocr_and_is_idempotent() {
    let dir = common::bundled("ppocr_cls_mobile_v2");
    let mut masked = sparsify_onnx::load(&dir.join("model.onnx")).unwrap();
    let mask = "score{method=l2},mask{sparsity=0.5,granularity=coupled}";
    let r = Pipeline::parse(mask).unwrap().run(&mut masked, None).unwrap();
    assert!(r.pipeline.contains("granularity=coupled"), "{}", r.pipeline);
    let mut twice = masked.clone();
    let r2 = Pipeline::parse(mask).unwrap().run(&mut twice, None).unwrap();
    assert!(!r2.passes[1].changed, "coupled mask is not idempotent");
    let (er, elim) = eliminate_and_check("ppocr_cls_mobile_v2", &masked);
    assert_eq!(counter(&er, "channels_kept_dead"), 0.0, "{:?}", notes(&er));
    // pruned counts coupled channels; removed counts producer rows (a residual channel has several)
    let pruned = r.passes[1].counters["channels_pruned"];
    assert!(pruned > 0.0 && counter(&er, "channels_removed") >= pruned, "{pruned}: {:?}", notes(&er));
    let (p0, p1) = (param_count(&masked.graph), param_count(&elim.graph));
    assert!(p1 * 10 < p0 * 7, "{p0} -> {p1}");
}

/// Fuzz finding (graphs target, `fuzz/findings/graphs/crash-5139…`): constant channels folded into a
/// MatMul whose weight is an f16 tensor cast to f32 got a new bias in f16 — an Add of f32 and f16 (an
/// invalid model) whose rounding moved the output by 0.125. The bias takes the activation dtype now.
#[test]
fn fold_through_a_cast_weight_creates_an_activation_dtype_bias() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dce_fold_through_cast.onnx");
    let m0 = sparsify_onnx::load(&path).unwrap();
    let mut m = m0.clone();
    Pipeline::parse("dead-channel-elim{fold=true}").unwrap().run(&mut m, None).unwrap();
    let bias = m.graph.initializers.iter().find(|t| t.name.ends_with(".dce_bias")).expect("a folded bias");
    assert_eq!(bias.dtype, sparsify_onnx::ir::DType::F32, "the bias must match the f32 activation");
    let feed = sparsify_onnx::validate::random_feed(&input_decls(&m0), &Default::default(), 7).unwrap();
    let run = |m: &Model| run_model(ModelSource::Bytes(&sparsify_onnx::to_bytes(m).unwrap()), &feed, &[]).unwrap();
    let (a, b) = (run(&m0)[0].1.to_f64_vec(), run(&m)[0].1.to_f64_vec());
    let scale = a.iter().fold(1f64, |s, v| s.max(v.abs()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * scale, "{x} vs {y}");
    }
}
