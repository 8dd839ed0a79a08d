//! Calibration on recurrent and odd-layout models, built here: LSTM and GRU with a fixed-shape state
//! (`h [1, 1, H]`, a sequence input `[sequence_length, F]`, as voice-activity models export them) and with
//! states batched on axis 1 (`x [seq, batch, F]`, `h0 [1, batch, H]`), plus a fixed-batch-1 model fed
//! from a folder of samples. The prunable weights are the MatMul input projection before the RNN and
//! the MatMul head after it (LSTM/GRU `W`/`R` are not Conv/Gemm/MatMul weights and stay dense).
//! Everything runs in tract; statistics are checked against a direct computation on unsplit data.

use ndarray::{ArrayD, IxDyn};
use sparsify_onnx::ir::{AttrValue, Dim, Graph, Model, Node, OpsetId, Tensor, ValueInfo, WeightId};
use sparsify_onnx::validate::{self, compare_outputs, run_model, Array, Feed, ModelSource, Thresholds};
use sparsify_onnx::{input_decls, to_bytes, Calibrator, Pipeline, TractCalibrator};
use sparsify_pm::{CalibRequest, CalibStat, FeatureAxis};

const F: usize = 12; // input features
const P: usize = 8; // projection (RNN input size)
const H: usize = 16; // hidden size
const O: usize = 4; // head outputs

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Lstm,
    Gru,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum States {
    /// `input [sequence_length, F]`, `h [1, 1, H]` (and `c`): the state has no batch axis.
    Fixed,
    /// `x [seq, batch, F]`, `h0 [1, batch, H]` (and `c0`): the batch sits on axis 1.
    BatchAxis1,
}

fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s % 2001) as f32 - 1000.0) / 1000.0
        })
        .collect()
}

fn dims(d: &[Dim]) -> Option<Vec<Dim>> {
    Some(d.to_vec())
}

fn vi(name: &str, shape: Option<Vec<Dim>>) -> ValueInfo {
    ValueInfo { name: name.into(), elem_type: Some(1), shape, opaque: vec![] }
}

fn v(n: i64) -> Dim {
    Dim::Value(n)
}

fn sym(s: &str) -> Dim {
    Dim::Param(s.into())
}

/// MatMul projection → LSTM/GRU → Reshape → MatMul head.
fn rnn_model(cell: Cell, states: States) -> Model {
    let gates = if cell == Cell::Lstm { 4 } else { 3 };
    let mut g = Graph::new();
    let (x, h, c) = match states {
        States::Fixed => ("input", "h", "c"),
        States::BatchAxis1 => ("x", "h0", "c0"),
    };
    let state_dims = match states {
        States::Fixed => vec![v(1), v(1), v(H as i64)],
        States::BatchAxis1 => vec![v(1), sym("batch"), v(H as i64)],
    };
    match states {
        States::Fixed => g.inputs.push(vi(x, dims(&[sym("sequence_length"), v(F as i64)]))),
        States::BatchAxis1 => g.inputs.push(vi(x, dims(&[sym("seq"), sym("batch"), v(F as i64)]))),
    }
    g.inputs.push(vi(h, Some(state_dims.clone())));
    if cell == Cell::Lstm {
        g.inputs.push(vi(c, Some(state_dims)));
    }
    g.outputs.push(vi("out", None));
    g.outputs.push(vi("h_n", None));
    let t = |name: &str, d: &[usize], seed: u64, scale: f32| {
        let n = d.iter().product();
        let data: Vec<f32> = vals(n, seed).iter().map(|x| x * scale).collect();
        Tensor::from_f32(name, d.iter().map(|&x| x as i64).collect(), &data).unwrap()
    };
    g.initializers.push(t("w_in", &[F, P], 1, 0.5));
    g.initializers.push(t("rnn_w", &[1, gates * H, P], 2, 0.4));
    g.initializers.push(t("rnn_r", &[1, gates * H, H], 3, 0.3));
    g.initializers.push(t("rnn_b", &[1, 2 * gates * H], 4, 0.1));
    g.initializers.push(t("w_out", &[H, O], 5, 0.5));
    let i64s = |name: &str, v: &[i64]| {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor::new(name, sparsify_onnx::ir::DType::I64, vec![v.len() as i64], bytes.into()).unwrap()
    };
    let mut nodes = vec![Node::new("MatMul", "proj", &[x, "w_in"], &["p"])];
    let rnn_in = match states {
        States::Fixed => {
            g.initializers.push(i64s("axis1", &[1]));
            nodes.push(Node::new("Unsqueeze", "unsq", &["p", "axis1"], &["p3"]));
            "p3"
        }
        States::BatchAxis1 => "p",
    };
    let mut rnn = match cell {
        Cell::Lstm => Node::new("LSTM", "rnn", &[rnn_in, "rnn_w", "rnn_r", "rnn_b", "", h, c], &["y", "h_n", "c_n"]),
        Cell::Gru => Node::new("GRU", "rnn", &[rnn_in, "rnn_w", "rnn_r", "rnn_b", "", h], &["y", "h_n"]),
    };
    rnn.set_attr("hidden_size", AttrValue::Int(H as i64));
    nodes.push(rnn);
    // Y [seq, 1, batch, H] → [seq·batch, H] (fixed) or [seq, batch, H] (batched).
    match states {
        States::Fixed => g.initializers.push(i64s("y_shape", &[-1, H as i64])),
        States::BatchAxis1 => g.initializers.push(i64s("y_shape", &[0, -1, H as i64])),
    }
    nodes.push(Node::new("Reshape", "flat", &["y", "y_shape"], &["y2"]));
    nodes.push(Node::new("MatMul", "head", &["y2", "w_out"], &["out"]));
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
        graph: g.with_nodes(nodes),
        opaque: vec![],
    }
}

fn arr(shape: &[usize], seed: u64) -> Array {
    let n = shape.iter().product();
    Array::F32(ArrayD::from_shape_vec(IxDyn(shape), vals(n, seed)).unwrap())
}

/// Calibration data: 40 sequence windows (fixed) or 5 steps × 20 sequences (batched), with states.
fn calib_feed(cell: Cell, states: States) -> Feed {
    let mut arrays = match states {
        States::Fixed => vec![("input".to_string(), arr(&[40, F], 11)), ("h".into(), arr(&[1, 1, H], 12))],
        States::BatchAxis1 => vec![("x".to_string(), arr(&[5, 20, F], 11)), ("h0".into(), arr(&[1, 20, H], 12))],
    };
    if cell == Cell::Lstm {
        let c = if states == States::Fixed { "c" } else { "c0" };
        let shape = if states == States::Fixed { vec![1, 1, H] } else { vec![1, 20, H] };
        arrays.push((c.to_string(), arr(&shape, 13)));
    }
    Feed { arrays }
}

fn cases() -> Vec<(Cell, States)> {
    vec![
        (Cell::Lstm, States::Fixed),
        (Cell::Gru, States::Fixed),
        (Cell::Lstm, States::BatchAxis1),
        (Cell::Gru, States::BatchAxis1),
    ]
}

/// Σ x² per feature (last axis) of a named tensor over whole runs of the given feeds, in tract.
fn direct_sq(model: &Model, feeds: &[Feed], tensor: &str) -> Vec<f64> {
    let bytes = to_bytes(model).unwrap();
    let mut sums: Vec<f64> = Vec::new();
    for f in feeds {
        let outs = run_model(ModelSource::Bytes(&bytes), f, &[tensor.to_string()]).unwrap();
        let a = outs.last().unwrap().1.to_f64_vec();
        let k = *outs.last().unwrap().1.shape().last().unwrap();
        sums.resize(k, 0.0);
        for (i, x) in a.iter().enumerate() {
            sums[i % k] += x * x;
        }
    }
    sums
}

fn sparsity(m: &Model, name: &str) -> f64 {
    m.graph.weight(&WeightId::Init(name.into())).unwrap().sparsity()
}

fn rel_l2(orig: &Model, pruned: &Model, feed: &Feed) -> f64 {
    let (a, b) = (to_bytes(orig).unwrap(), to_bytes(pruned).unwrap());
    let oa = run_model(ModelSource::Bytes(&a), feed, &[]).unwrap();
    let ob = run_model(ModelSource::Bytes(&b), feed, &[]).unwrap();
    compare_outputs(&oa, &ob, &Thresholds::default()).outputs[0].rel_l2_err
}

/// Relative L2 error of one intermediate tensor of `pruned` against `orig`.
fn layer_rel_l2(orig: &Model, pruned: &Model, feed: &Feed, tensor: &str) -> f64 {
    let run = |m: &Model| {
        let bytes = to_bytes(m).unwrap();
        let outs = run_model(ModelSource::Bytes(&bytes), feed, &[tensor.to_string()]).unwrap();
        outs.last().unwrap().1.to_f64_vec()
    };
    let (a, b) = (run(orig), run(pruned));
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

#[test]
fn tract_runs_the_built_lstm_and_gru_models() {
    for (cell, states) in cases() {
        let m = rnn_model(cell, states);
        let bytes = to_bytes(&m).unwrap();
        let outs = run_model(ModelSource::Bytes(&bytes), &calib_feed(cell, states), &[]).unwrap();
        let want_out = if states == States::Fixed { vec![40, O] } else { vec![5, 20, O] };
        let want_h = if states == States::Fixed { vec![1, 1, H] } else { vec![1, 20, H] };
        assert_eq!(outs[0].1.shape(), &want_out[..], "{cell:?}/{states:?}");
        assert_eq!(outs[1].1.shape(), &want_h[..], "{cell:?}/{states:?}");
        assert!(outs[0].1.to_f64_vec().iter().all(|x| x.is_finite()));
    }
}

#[test]
fn batches_follow_each_inputs_batch_axis() {
    for (cell, states) in cases() {
        let m = rnn_model(cell, states);
        let decls = input_decls(&m);
        let cal = TractCalibrator::plan(&[calib_feed(cell, states)], &decls, 16).unwrap();
        let shapes: Vec<Vec<Vec<usize>>> =
            cal.batches().iter().map(|b| b.arrays.iter().map(|(_, a)| a.shape().to_vec()).collect()).collect();
        let notes = cal.notes().join("\n");
        match states {
            // 40 windows in 16, 16, 8; the states whole in every batch.
            States::Fixed => {
                assert_eq!(shapes.len(), 3, "{notes}");
                for (b, rows) in shapes.iter().zip([16, 16, 8]) {
                    assert_eq!(b[0], vec![rows, F]);
                    assert!(b[1..].iter().all(|s| s == &vec![1, 1, H]));
                }
                assert!(notes.contains("input `h` [1, 1, 16] has no batch axis: passed whole"), "{notes}");
                assert!(notes.contains("the last batch has 8"), "{notes}");
            }
            // 20 sequences along axis 1 of x and of the states: 16, 4.
            States::BatchAxis1 => {
                assert_eq!(shapes.len(), 2, "{notes}");
                for (b, rows) in shapes.iter().zip([16, 4]) {
                    assert_eq!(b[0], vec![5, rows, F]);
                    assert!(b[1..].iter().all(|s| s == &vec![1, rows, H]));
                }
                assert!(notes.contains("input `h0`: batch axis 1"), "{notes}");
            }
        }
        // The old axis-0 split refuses these layouts; the plan runs them.
        assert!(TractCalibrator::new(&calib_feed(cell, states), 16).is_err());
    }
}

#[test]
fn batched_statistics_equal_one_whole_run() {
    // Along the batch axis the RNN treats sequences independently: the head's activation statistics over
    // the batches equal those of one unsplit run (computed here from tract outputs directly).
    for cell in [Cell::Lstm, Cell::Gru] {
        let m = rnn_model(cell, States::BatchAxis1);
        let feed = calib_feed(cell, States::BatchAxis1);
        let cal = TractCalibrator::plan(std::slice::from_ref(&feed), &input_decls(&m), 8).unwrap();
        assert_eq!(cal.batches().len(), 3);
        let reqs = [
            CalibRequest::FeatureSqNorm { tensor: "y2".into(), axis: FeatureAxis::Last },
            CalibRequest::FeatureSqNorm { tensor: "x".into(), axis: FeatureAxis::Last },
        ];
        let stats = cal.collect(&m, &reqs).unwrap();
        for (r, (tensor, rows)) in stats.iter().zip([("y2", 100u64), ("x", 100)]) {
            let CalibStat::FeatureSqNorm { sums, rows: got } = r else { panic!("{r:?}") };
            assert_eq!(*got, rows, "{cell:?} {tensor}");
            let want = direct_sq(&m, std::slice::from_ref(&feed), tensor);
            assert_eq!(sums.len(), want.len());
            for (a, b) in sums.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{cell:?} {tensor}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn wanda_and_sparsegpt_calibrate_and_prune_rnn_models() {
    for (cell, states) in cases() {
        let orig = rnn_model(cell, states);
        let feed = calib_feed(cell, states);
        let decls = input_decls(&orig);
        let cal = TractCalibrator::plan(std::slice::from_ref(&feed), &decls, 16).unwrap();
        let cal: &dyn Calibrator = &cal;
        let x = if states == States::Fixed { "input" } else { "x" };

        // Wanda: the projection's activation is the graph input, so its norms are exact sums over the
        // data whatever the batching; row scope keeps the 6 of 12 highest |w|·‖x_k‖ per output column.
        let mut wanda = orig.clone();
        Pipeline::parse("score{method=wanda},mask{sparsity=0.5}").unwrap().run(&mut wanda, Some(cal)).unwrap();
        let sq = direct_sq(&orig, std::slice::from_ref(&feed), x);
        let w0: Vec<f32> = orig.graph.initializer("w_in").unwrap().to_f32().unwrap().iter().copied().collect();
        let w1: Vec<f32> = wanda.graph.initializer("w_in").unwrap().to_f32().unwrap().iter().copied().collect();
        for n in 0..P {
            let mut order: Vec<usize> = (0..F).collect();
            let s = |k: usize| w0[k * P + n].abs() as f64 * sq[k].sqrt();
            order.sort_by(|&a, &b| s(a).partial_cmp(&s(b)).unwrap().then(b.cmp(&a)));
            for (rank, &k) in order.iter().enumerate() {
                assert_eq!(w1[k * P + n] == 0.0, rank < F / 2, "{cell:?}/{states:?}: w_in[{k}, {n}]");
            }
        }
        assert_eq!(sparsity(&wanda, "w_out"), 0.5);
        // The RNN's own W/R are not Conv/Gemm/MatMul weights: untouched.
        assert_eq!(sparsity(&wanda, "rnn_w"), 0.0);

        // SparseGPT on both MatMul weights, through the same batches.
        let mut sgpt = orig.clone();
        let rep = Pipeline::parse("sparsegpt{sparsity=0.5}").unwrap().run(&mut sgpt, Some(cal)).unwrap();
        let notes: Vec<String> = rep.passes[0].notes.iter().map(|n| format!("{}: {}", n.subject, n.message)).collect();
        assert!(!notes.iter().any(|n| n.contains("skipped")), "{notes:?}");
        assert_eq!(sparsity(&sgpt, "w_in"), 0.5);
        assert_eq!(sparsity(&sgpt, "w_out"), 0.5);

        let mut mag = orig.clone();
        Pipeline::parse("score{method=l1},mask{sparsity=0.5}").unwrap().run(&mut mag, None).unwrap();
        let (e_mag, e_wanda, e_sgpt) =
            (rel_l2(&orig, &mag, &feed), rel_l2(&orig, &wanda, &feed), rel_l2(&orig, &sgpt, &feed));
        println!("{cell:?}/{states:?}: rel L2 magnitude {e_mag:.4}, wanda {e_wanda:.4}, sparsegpt {e_sgpt:.4}");
        assert!(e_sgpt.is_finite() && e_wanda.is_finite() && e_sgpt > 0.0);
        // SparseGPT minimises each layer's reconstruction error, not the end-to-end error through the
        // recurrent cell (on these random weights it can be above magnitude at the output). The projection
        // `p` = x·w_in sees exactly the calibration input, so there it must beat magnitude pruning.
        let (l_mag, l_sgpt) = (layer_rel_l2(&orig, &mag, &feed, "p"), layer_rel_l2(&orig, &sgpt, &feed, "p"));
        println!("{cell:?}/{states:?}: projection rel L2 magnitude {l_mag:.4}, sparsegpt {l_sgpt:.4}");
        assert!(l_sgpt < l_mag, "{cell:?}/{states:?}: projection sparsegpt {l_sgpt} vs magnitude {l_mag}");
    }
}

#[test]
fn fixed_batch_one_model_calibrates_from_a_folder_of_samples() {
    // x [1, F] fixed → MatMul → Relu → MatMul; ten samples in calib/<k>/input_0.npy.
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, F as i64]));
    g.outputs.push(vi("y", None));
    g.initializers.push(Tensor::from_f32("w1", vec![F as i64, P as i64], &vals(F * P, 7)).unwrap());
    g.initializers.push(Tensor::from_f32("w2", vec![P as i64, O as i64], &vals(P * O, 8)).unwrap());
    let nodes = vec![
        Node::new("MatMul", "m1", &["x", "w1"], &["a"]),
        Node::new("Relu", "r", &["a"], &["b"]),
        Node::new("MatMul", "m2", &["b", "w2"], &["y"]),
    ];
    let m = Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
        graph: g.with_nodes(nodes),
        opaque: vec![],
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut feeds = Vec::new();
    for k in 0..10 {
        let dir = tmp.path().join(k.to_string());
        std::fs::create_dir(&dir).unwrap();
        let a = arr(&[1, F], 100 + k as u64);
        validate::npy::write_npy(&dir.join("input_0.npy"), &a).unwrap();
        feeds.push(Feed { arrays: vec![("x".into(), a)] });
    }
    let decls = input_decls(&m);
    let samples = validate::load_samples(tmp.path(), &decls).unwrap();
    assert_eq!(samples, feeds, "samples in numeric order");
    let cal = TractCalibrator::plan(&samples, &decls, 16).unwrap();
    assert_eq!(cal.batches().len(), 10);
    assert!(cal.notes().iter().any(|n| n.contains("each sample runs as given")), "{:?}", cal.notes());
    let stats =
        cal.collect(&m, &[CalibRequest::FeatureSqNorm { tensor: "b".into(), axis: FeatureAxis::Last }]).unwrap();
    let CalibStat::FeatureSqNorm { sums, rows } = &stats[0] else { panic!() };
    assert_eq!(*rows, 10);
    let want = direct_sq(&m, &feeds, "b");
    for (a, b) in sums.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()));
    }
    let mut pruned = m.clone();
    Pipeline::parse("score{method=wanda},mask{sparsity=0.5}").unwrap().run(&mut pruned, Some(&cal)).unwrap();
    assert_eq!(sparsity(&pruned, "w1"), 0.5);
    assert_eq!(sparsity(&pruned, "w2"), 0.5);
}
