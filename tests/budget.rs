//! Sensitivity curves and sparsity budgets on the bundled models: a curve entry equals the error of a
//! model pruned in that one layer by an ordinary pipeline, measured here in tract; the cache answers
//! repeats without running tract; `allocate=sensitivity` hits the global count exactly; `max_error`
//! keeps the validated calibration error within the bound.

mod common;

use sparsify_onnx::ir::Model;
use sparsify_onnx::passes::layer_sensitivity::{self, Curves};
use sparsify_onnx::passes::scope::Scope;
use sparsify_onnx::passes::sensitivity::Sensitivity;
use sparsify_onnx::validate::{self, Feed, ModelSource, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Calibrator, Pipeline, TractCalibrator};

fn setup(name: &str) -> (Model, Feed, TractCalibrator) {
    let dir = common::bundled(name);
    let m = load(&dir.join("model.onnx")).unwrap();
    let calib = validate::load_feed(&dir.join("calib"), &input_decls(&m)).unwrap();
    let cal = TractCalibrator::new(&calib, 16).unwrap();
    (m, calib, cal)
}

/// Relative L2 of the first output of `b` vs `a` on `feed`, measured directly in tract.
fn rel_l2(a: &Model, b: &Model, feed: &Feed) -> f64 {
    let run = |m: &Model| validate::run_model(ModelSource::Bytes(&to_bytes(m).unwrap()), feed, &[]).unwrap();
    validate::compare_outputs(&run(a), &run(b), &Thresholds::default()).outputs[0].rel_l2_err
}

fn targeted_names(m: &Model) -> Vec<String> {
    Scope::default()
        .select(&m.graph)
        .into_iter()
        .filter(|w| w.info.is_some())
        .map(|w| w.id.name().to_string())
        .collect()
}

fn targeted_elements(m: &Model) -> (usize, usize) {
    let g = &m.graph;
    let mut n = 0;
    let mut z = 0;
    for w in Scope::default().select(g) {
        if w.info.is_none() {
            continue;
        }
        let t = g.weight(&w.id).unwrap();
        n += t.numel().unwrap();
        z += t.numel().unwrap() - t.nnz();
    }
    (n, z)
}

#[test]
fn curve_entries_equal_single_layer_pruning_and_are_cached() {
    let (m, calib, cal) = setup("digits_mlp");
    let pass = Sensitivity {
        template: "score{method=wanda},mask{sparsity=$S,scope=layer}".into(),
        levels: vec![0.5, 0.9],
        output: None,
        scope: Scope::default(),
    };
    let curves: Curves = pass.analyze(&m, &cal).unwrap();
    assert_eq!(curves.layers.len(), 3);
    assert_eq!(curves.runs, 6);
    for l in &curves.layers {
        // Each layer alone, pruned by an ordinary pipeline restricted to it, measured here.
        for (i, s) in [0.5, 0.9].iter().enumerate() {
            let mut one = m.clone();
            let text = format!("score{{method=wanda,names={0}}},mask{{sparsity={s},scope=layer,names={0}}}", l.weight);
            Pipeline::parse(&text).unwrap().run(&mut one, Some(&cal as &dyn Calibrator)).unwrap();
            let direct = rel_l2(&m, &one, &calib);
            println!("{} at {s}: curve {:.6}, direct {direct:.6}", l.weight, l.errors[i]);
            assert!((l.errors[i] - direct).abs() <= 1e-4 * direct.max(1e-3), "{} at {s}", l.weight);
        }
        assert!(l.errors[1] > l.errors[0], "{}: 90% should hurt more than 50%", l.weight);
    }
    let again = pass.analyze(&m, &cal).unwrap();
    assert_eq!(again.runs, 0, "the repeat should come from the cache");
    assert_eq!(again.layers, curves.layers);
}

#[test]
fn allocate_sensitivity_hits_the_global_count() {
    for name in ["digits_cnn", "char_lm"] {
        let (m0, _, cal) = setup(name);
        let mut m = m0.clone();
        let rep = Pipeline::parse("score{method=wanda},mask{sparsity=0.6,allocate=sensitivity,levels=0.5|0.75|0.9}")
            .unwrap()
            .run(&mut m, Some(&cal as &dyn Calibrator))
            .unwrap();
        let (n, z0) = targeted_elements(&m0);
        let (_, z) = targeted_elements(&m);
        let want = ((0.6 * n as f64).floor() as usize).max(z0);
        println!("{name}: {z} zeros of {n} (want {want}); {:?}", rep.passes[1].counters);
        assert_eq!(z, want, "{name}");
        // Not uniform: some layer is below and some above 60%.
        let per: Vec<f64> = Scope::default()
            .select(&m.graph)
            .iter()
            .filter(|w| w.info.is_some())
            .map(|w| m.graph.weight(&w.id).unwrap().sparsity())
            .collect();
        assert!(per.iter().any(|s| *s < 0.55) && per.iter().any(|s| *s > 0.65), "{name}: {per:?}");
    }
}

#[test]
fn max_error_stays_within_the_bound_on_calibration_data() {
    for (name, e) in [("digits_mlp", 0.1), ("digits_cnn", 0.2)] {
        for alloc in ["uniform", "sensitivity"] {
            let (m0, calib, cal) = setup(name);
            let mut m = m0.clone();
            let text = format!("score{{method=wanda}},mask{{max_error={e},allocate={alloc}}}");
            let rep = Pipeline::parse(&text).unwrap().run(&mut m, Some(&cal as &dyn Calibrator)).unwrap();
            let err = rel_l2(&m0, &m, &calib);
            let s = rep.totals_weights.sparsity_after;
            println!("{name} {alloc} max_error={e}: sparsity {s:.4}, calibration rel L2 {err:.4}");
            assert!(err <= e + 1e-6, "{name} {alloc}: {err} > {e}");
            assert!(s > 0.1, "{name} {alloc}: only {s}");
        }
    }
}

/// `output=NAME` chooses the tensor `max_error` bounds: a graph output or any tensor the graph
/// computes (e.g. the logits before a final Softmax, whose saturation hides damage on confident
/// calibration inputs). On digits_mlp, the default bounds the logits' error and
/// `output=/Relu_1_output_0` the second hidden activation's, each measured here in tract (the hidden
/// tensor exposed as an extra graph output for the measurement only). An unknown name is refused,
/// naming it and the graph outputs.
#[test]
fn max_error_bounds_the_tensor_named() {
    let (m0, calib, cal) = setup("digits_mlp");
    let hidden = "/Relu_1_output_0";
    let exposed = |m: &Model| {
        let mut m = m.clone();
        m.graph.outputs.push(sparsify_onnx::ir::ValueInfo::tensor(hidden, 1, &[-1, 128]));
        m
    };
    let err_of = |m: &Model, name: &str| {
        let run =
            |m: &Model| validate::run_model(ModelSource::Bytes(&to_bytes(&exposed(m)).unwrap()), &calib, &[]).unwrap();
        let cmp = validate::compare_outputs(&run(&m0), &run(m), &Thresholds::default());
        cmp.outputs.iter().find(|o| o.name == name).unwrap().rel_l2_err
    };
    let e = 0.1;
    let mut chosen = Vec::new();
    for (opt, bounded) in [(String::new(), "logits"), (format!(",output={hidden}"), hidden)] {
        let mut m = m0.clone();
        let text = format!("score{{method=wanda}},mask{{max_error={e}{opt}}}");
        let rep = Pipeline::parse(&text).unwrap().run(&mut m, Some(&cal as &dyn Calibrator)).unwrap();
        let err = err_of(&m, bounded);
        println!("{text}: sparsity {:.4}, {bounded} rel L2 {err:.4}", rep.totals_weights.sparsity_after);
        assert!(err <= e + 1e-6 && err > 0.5 * e, "{text}: {bounded} error {err}");
        chosen.push(rep.totals_weights.sparsity_after);
    }
    assert_ne!(chosen[0], chosen[1], "the two tensors give different budgets");
    let mut m = m0.clone();
    let err = Pipeline::parse("score{method=wanda},mask{max_error=0.1,output=nope}")
        .unwrap()
        .run(&mut m, Some(&cal as &dyn Calibrator))
        .unwrap_err()
        .to_string();
    assert!(err.contains("'nope'") && err.contains("logits"), "{err}");
}

/// digits_mlp with its logits scaled by 8 into a Softmax (the graph output `probs`, saturated on most
/// calibration images) and, as a second output, a hidden layer.
fn softmax_and_hidden_outputs(m0: &Model) -> Model {
    use sparsify_onnx::ir::{Node, Tensor, ValueInfo};
    let mut m = m0.clone();
    let g = &mut m.graph;
    g.initializers.push(Tensor::from_f32("eight", vec![], &[8.0]).unwrap());
    g.push_node(Node::new("Mul", "scale", &["logits", "eight"], &["scaled"]));
    // Opset 13: the axis defaults to the last one.
    g.push_node(Node::new("Softmax", "softmax", &["scaled"], &["probs"]));
    g.outputs = vec![ValueInfo::tensor("probs", 1, &[-1, 10]), ValueInfo::tensor("/Relu_1_output_0", 1, &[-1, 128])];
    m
}

#[test]
fn max_error_bounds_every_output_and_the_logits_of_a_softmax() {
    let (m0, calib, _) = setup("digits_mlp");
    let dense = softmax_and_hidden_outputs(&m0);
    let cal = TractCalibrator::new(&calib, 16).unwrap();
    let tensors: Vec<String> = ["probs", "/Relu_1_output_0", "scaled"].map(String::from).to_vec();
    let values = |m: &Model| layer_sensitivity::tensor_values(m, &cal, &tensors).unwrap();
    let reference = values(&dense);
    let errors = |m: &Model| -> Vec<f64> {
        reference.iter().zip(values(m)).map(|(r, v)| layer_sensitivity::rel_l2(r, &v)).collect()
    };
    let e = 0.1;
    let run = |opts: &str| {
        let mut m = dense.clone();
        let text = format!("score{{method=wanda}},mask{{max_error={e}{opts}}}");
        let rep = Pipeline::parse(&text).unwrap().run(&mut m, Some(&cal as &dyn Calibrator)).unwrap();
        let errs = errors(&m);
        println!(
            "{text}: sparsity {:.4}, probs / hidden / logits rel L2 {errs:.4?}",
            rep.totals_weights.sparsity_after
        );
        (rep.totals_weights.sparsity_after, errs)
    };
    // Default: both graph outputs and the Softmax's input are within E.
    let (s_all, errs) = run("");
    assert!(errs.iter().all(|&x| x <= e + 1e-6), "{errs:?}");
    assert!(errs.iter().any(|&x| x > 0.5 * e), "the bound should be close to binding: {errs:?}");
    // The probabilities alone allow more, and the logits then move further than E: the saturated
    // Softmax hides it.
    let (s_probs, errs) = run(",output=probs,logits=off");
    assert!(errs[0] <= e + 1e-6, "{errs:?}");
    assert!(s_probs > s_all && errs[2] > e, "probs alone: sparsity {s_probs} vs {s_all}, logits error {}", errs[2]);
}

/// A weight the measured tensor does not depend on is not allocated by its (flat) curve: it keeps the
/// global sparsity, with a note.
#[test]
fn weights_that_do_not_reach_the_measured_output_keep_the_global_sparsity() {
    let (m0, calib, _) = setup("digits_mlp");
    let mut dense = softmax_and_hidden_outputs(&m0);
    // Curves measure the hidden layer: the last weight does not reach it.
    dense.graph.outputs.swap(0, 1);
    let cal = TractCalibrator::new(&calib, 16).unwrap();
    let last = targeted_names(&dense).pop().unwrap();
    let mut m = dense.clone();
    let rep = Pipeline::parse("score{method=wanda},mask{sparsity=0.6,allocate=sensitivity,levels=0.5|0.9}")
        .unwrap()
        .run(&mut m, Some(&cal as &dyn Calibrator))
        .unwrap();
    let t = m.graph.initializer(&last).unwrap();
    let s = 1.0 - t.nnz() as f64 / t.numel().unwrap() as f64;
    assert!((s - 0.6).abs() < 1e-3, "{last}: sparsity {s}, not the global 0.6");
    let noted =
        rep.passes.iter().flat_map(|p| &p.notes).any(|n| n.subject == last && n.message.contains("does not reach"));
    assert!(noted, "no note for {last}");
    assert_eq!(targeted_elements(&m).1, (0.6 * targeted_elements(&dense).0 as f64) as usize, "global count");
}

#[test]
fn bad_budget_options_are_refused() {
    for bad in [
        "mask{allocate=sometimes}",
        "mask{max_error=0}",
        "mask{max_error=abc}",
        "mask{allocate=sensitivity,granularity=channel}",
        "mask{allocate=sensitivity,min_sparsity=0.8,max_sparsity=0.5}",
        "mask{max_error=0.1,sparsity=0.7}",
        "mask{max_error=0.1,logits=sometimes}",
        "sensitivity{template=\"mask{sparsity=0.5}\"}",
        "sensitivity{levels=0}",
    ] {
        assert!(Pipeline::parse(bad).is_err(), "{bad}");
    }
}
