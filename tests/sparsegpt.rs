//! SparseGPT on the real models: relative output error against the dense model on the sample inputs,
//! compared with magnitude (and Wanda when registered) at the same pattern; 2:4 legality by a direct
//! loop; determinism; the tract calibrator's Gram statistics against a direct computation.

use sparsify_onnx::ir::{AttrValue, Graph, Model, Node, Tensor, ValueInfo, WeightId};
use sparsify_onnx::validate::{compare_outputs, load_feed, run_model, Array, Feed, ModelSource, Thresholds};
use sparsify_onnx::{input_decls, Calibrator, Pipeline, TractCalibrator};
use sparsify_pm::{CalibRequest, CalibStat, FeatureAxis};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn bundled(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/models")).join(name)
}

fn minilm() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models/paraphrase_minilm_l3_v2"));
    p.join("model.onnx").is_file().then_some(p)
}

struct Case {
    name: &'static str,
    model: Model,
    calib: TractCalibrator,
    sample: Feed,
    dense: Vec<(String, Array)>,
    /// Index of the output compared.
    output: usize,
}

impl Case {
    fn load(name: &'static str, dir: &Path, output: Option<&str>) -> Case {
        let model = sparsify_onnx::load(&dir.join("model.onnx")).unwrap();
        let decls = input_decls(&model);
        let calib = TractCalibrator::new(&load_feed(&dir.join("calib"), &decls).unwrap(), 16).unwrap();
        let sample = load_feed(&dir.join("sample"), &decls).unwrap();
        let dense = run_model(ModelSource::Path(&dir.join("model.onnx")), &sample, &[]).unwrap();
        let output = output.map_or(0, |o| dense.iter().position(|(n, _)| n == o).unwrap());
        Case { name, model, calib, sample, dense, output }
    }

    /// Run `pipeline` on a copy; the pruned model, its relative L2 output error and the seconds taken.
    fn run(&self, pipeline: &str) -> (Model, f64, f64) {
        let mut m = self.model.clone();
        let p = Pipeline::parse(pipeline).unwrap();
        let t = Instant::now();
        p.run(&mut m, Some(&self.calib as &dyn Calibrator)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let bytes = sparsify_onnx::to_bytes(&m).unwrap();
        let out = run_model(ModelSource::Bytes(&bytes), &self.sample, &[]).unwrap();
        let rep = compare_outputs(&self.dense, &out, &Thresholds::default());
        (m, rep.outputs[self.output].rel_l2_err, secs)
    }

    /// Relative errors of SparseGPT and the data-free / Wanda baselines at one pattern; asserts SparseGPT
    /// is best. Returns the SparseGPT model and the seconds its pipeline took.
    fn compare(&self, sgpt: &str, magnitude: &str, wanda: &str) -> (Model, f64) {
        let (m, e_sgpt, secs) = self.run(sgpt);
        let (_, e_mag, _) = self.run(magnitude);
        println!("{}: {sgpt}: rel L2 {e_sgpt:.4} ({secs:.2} s); {magnitude}: {e_mag:.4}", self.name);
        assert!(e_sgpt < e_mag, "{}: {sgpt} {e_sgpt} is not below {magnitude} {e_mag}", self.name);
        if registered(wanda) {
            let (_, e_w, _) = self.run(wanda);
            println!("{}: {wanda}: {e_w:.4}", self.name);
            assert!(e_sgpt < e_w, "{}: {sgpt} {e_sgpt} is not below {wanda} {e_w}", self.name);
        } else {
            println!("{}: {wanda}: skipped, a pass is not registered", self.name);
        }
        (m, secs)
    }
}

fn registered(pipeline: &str) -> bool {
    Pipeline::parse(pipeline).is_ok()
}

/// TensorRT's rule by direct loop: at most `n` non-zeros in every `m` consecutive elements along the
/// reduction axis, for every pruned MatMul/Gemm/Conv weight (Conv: for each output channel and kernel
/// position). Returns the number of weights checked.
fn assert_nm_legal(m: &Model, n: usize, mm: usize) -> usize {
    let mut checked = 0;
    for w in m.graph.find_weights() {
        let t = m.graph.weight(&w.id).unwrap();
        if t.sparsity() == 0.0 {
            continue;
        }
        let shape = t.shape();
        let ax = w.red_axis();
        let (outer, len, inner) =
            (shape[..ax].iter().product::<usize>(), shape[ax], shape[ax + 1..].iter().product::<usize>());
        assert_eq!(len % mm, 0, "{}", w.id.name());
        let z = t.zero_flags();
        for o in 0..outer {
            for i in 0..inner {
                for g in 0..len / mm {
                    let nz = (0..mm).filter(|k| !z[(o * len + g * mm + k) * inner + i]).count();
                    assert!(nz <= n, "{}: {nz} non-zeros in a group of {mm} at ({o}, {g}, {i})", w.id.name());
                }
            }
        }
        checked += 1;
    }
    checked
}

const MAG50: &str = "score{method=l1},mask{sparsity=0.5}";
const WANDA50: &str = "score{method=wanda},mask{sparsity=0.5}";
const MAG24: &str = "nm-legalize{n=2,m=4}";
const WANDA24: &str = "score{method=wanda},nm-legalize{n=2,m=4}";

#[test]
fn char_lm_beats_magnitude_and_is_deterministic() {
    let c = Case::load("char_lm", &bundled("char_lm"), None);
    let (m, _) = c.compare("sparsegpt{sparsity=0.5}", MAG50, WANDA50);
    for w in m.graph.find_weights() {
        let t = m.graph.weight(&w.id).unwrap();
        assert_eq!(t.numel().unwrap() - t.nnz(), t.numel().unwrap() / 2, "{}: exact 50%", w.id.name());
    }
    let (seq, e_seq, secs) = c.run("sparsegpt{sparsity=0.5,mode=sequential}");
    println!("char_lm: sparsegpt sequential mode: rel L2 {e_seq:.4} ({secs:.2} s)");
    assert!(e_seq < 0.3, "sequential mode works too: {e_seq}");
    assert_ne!(sparsify_onnx::to_bytes(&m).unwrap(), sparsify_onnx::to_bytes(&seq).unwrap(), "the modes differ");
    let (m24, _) = c.compare("sparsegpt{n=2,m=4}", MAG24, WANDA24);
    assert_eq!(assert_nm_legal(&m24, 2, 4), 9);
    let (again, _, _) = c.run("sparsegpt{n=2,m=4}");
    assert_eq!(
        sparsify_onnx::to_bytes(&m24).unwrap(),
        sparsify_onnx::to_bytes(&again).unwrap(),
        "same inputs, same bytes"
    );
}

#[test]
fn digits_mlp_beats_magnitude() {
    let c = Case::load("digits_mlp", &bundled("digits_mlp"), None);
    c.compare("sparsegpt{sparsity=0.5}", MAG50, WANDA50);
    let (m24, _) = c.compare("sparsegpt{n=2,m=4}", MAG24, WANDA24);
    // 64-256-128-10: the 10-output head has K=128, all three Gemm weights are eligible.
    assert_eq!(assert_nm_legal(&m24, 2, 4), 3);
}

#[test]
fn digits_cnn_conv_layers_follow_the_channel_groups() {
    let c = Case::load("digits_cnn", &bundled("digits_cnn"), None);
    c.compare("sparsegpt{sparsity=0.5}", MAG50, WANDA50);
    let (m24, e, _) = c.run("sparsegpt{n=2,m=4}");
    let (_, e_mag, _) = c.run(MAG24);
    println!("digits_cnn: sparsegpt 2:4 {e:.4}, magnitude 2:4 {e_mag:.4}");
    assert!(e < e_mag);
    // Conv 1 has C=1 (skipped, 1 is not a multiple of 4); Conv 2 (C=16) and the Gemm are pruned.
    assert_eq!(assert_nm_legal(&m24, 2, 4), 2);
}

fn minilm_case() -> Option<Case> {
    let Some(dir) = minilm() else {
        println!("skipped: ../shared/models/paraphrase_minilm_l3_v2 absent");
        return None;
    };
    Some(Case::load("paraphrase_minilm_l3_v2", &dir, Some("461")))
}

#[test]
fn minilm_50_percent_beats_magnitude_and_wanda_in_seconds() {
    let Some(c) = minilm_case() else { return };
    let (_, secs) = c.compare("sparsegpt{sparsity=0.5}", MAG50, WANDA50);
    assert!(secs < 60.0, "seconds, not minutes: {secs:.1} s (calibration included)");
}

#[test]
fn minilm_two_four_beats_magnitude_and_wanda_and_is_legal() {
    let Some(c) = minilm_case() else { return };
    let (m24, _) = c.compare("sparsegpt{n=2,m=4}", MAG24, WANDA24);
    assert_eq!(assert_nm_legal(&m24, 2, 4), 18);
}

/// Weights in `Constant` nodes, 1×1 and depthwise convs: the 2:4 output is legal (depthwise convs, C/g = 1,
/// are skipped) and the Constant-node weights really change.
#[test]
fn ppocr_constant_node_weights_two_four_is_legal() {
    let c = Case::load("ppocr_cls_mobile_v2", &bundled("ppocr_cls_mobile_v2"), None);
    let (m, e, secs) = c.run("sparsegpt{n=2,m=4}");
    let (_, e_mag, _) = c.run(MAG24);
    println!("ppocr_cls_mobile_v2: sparsegpt 2:4 rel L2 {e:.4} ({secs:.2} s); nm-legalize 2:4 {e_mag:.4}");
    let legal = assert_nm_legal(&m, 2, 4);
    let pruned_consts = m
        .graph
        .find_weights()
        .iter()
        .filter(|w| matches!(w.id, WeightId::Const(_)) && m.graph.weight(&w.id).unwrap().sparsity() > 0.0)
        .count();
    assert_eq!(legal, pruned_consts);
    // 54 weights: 11 depthwise convs and 8 with fewer than 4 or a non-multiple of 4 input channels skip.
    assert_eq!(legal, 35);
}

/// A Conv with groups, padding, strides and dilations, fed through tract in batches of 1: the
/// calibrator's Gram statistics equal a direct computation over all rows.
#[test]
fn calibrator_grams_match_a_direct_computation() {
    let (n, c, h, w) = (3usize, 4usize, 6usize, 5usize);
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[n as i64, c as i64, h as i64, w as i64]));
    g.outputs.push(ValueInfo { name: "y".into(), elem_type: Some(1), shape: None, opaque: vec![] });
    let wv: Vec<f32> = (0..4 * 2 * 3 * 2).map(|i| (i as f32 * 0.37).sin()).collect();
    g.initializers.push(Tensor::from_f32("w", vec![4, 2, 3, 2], &wv).unwrap());
    let mut node = Node::new("Conv", "conv", &["x", "w"], &["y"]);
    node.set_attr("group", AttrValue::Int(2));
    node.set_attr("pads", AttrValue::Ints(vec![1, 0, 2, 1]));
    node.set_attr("strides", AttrValue::Ints(vec![2, 1]));
    node.set_attr("dilations", AttrValue::Ints(vec![1, 2]));
    let model = Model {
        ir_version: Some(8),
        opset_import: vec![sparsify_onnx::ir::OpsetId { domain: String::new(), version: 13 }],
        graph: g.with_nodes(vec![node]),
        opaque: vec![],
    };
    let xv: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
    let arr = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n, c, h, w]), xv.clone()).unwrap();
    let cal = TractCalibrator::new(&Feed { arrays: vec![("x".into(), Array::F32(arr))] }, 1).unwrap();
    let reqs = [
        CalibRequest::ConvGram {
            tensor: "x".into(),
            kernel: vec![3, 2],
            strides: vec![2, 1],
            pads: vec![1, 0, 2, 1],
            dilations: vec![1, 2],
            groups: 2,
        },
        CalibRequest::Gram { tensor: "x".into(), axis: FeatureAxis::Index(1) },
    ];
    let stats = cal.collect(&model, &reqs).unwrap();
    // direct im2col: output size (6+1+2-3)/2+1 = 4, (5+0+1-3)/1+1 = 4
    let (oh, ow) = (4, 4);
    let CalibStat::GroupGrams { h: grams, k, rows } = &stats[0] else { panic!("{:?}", stats[0]) };
    assert_eq!((*k, *rows, grams.len()), (12, (n * oh * ow) as u64, 2));
    for (gi, gram) in grams.iter().enumerate() {
        let mut want = vec![0f64; 144];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut p = Vec::new();
                    for ch in 0..2 {
                        for ky in 0..3 {
                            for kx in 0..2 {
                                let (y, x) = ((oy * 2 + ky) as isize - 1, (ox + kx * 2) as isize);
                                let inside = y >= 0 && (y as usize) < h && (x as usize) < w;
                                p.push(if inside {
                                    xv[((b * c + gi * 2 + ch) * h + y as usize) * w + x as usize] as f64
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                    for i in 0..12 {
                        for j in 0..12 {
                            want[i * 12 + j] += p[i] * p[j];
                        }
                    }
                }
            }
        }
        for (a, b) in gram.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "group {gi}: {a} vs {b}");
        }
    }
    let CalibStat::Gram { h: gram, k, rows } = &stats[1] else { panic!() };
    assert_eq!((*k, *rows), (c, (n * h * w) as u64));
    for i in 0..c {
        for j in 0..c {
            let want: f64 = (0..n * h * w)
                .map(|r| {
                    let (b, s) = (r / (h * w), r % (h * w));
                    xv[(b * c + i) * h * w + s] as f64 * xv[(b * c + j) * h * w + s] as f64
                })
                .sum();
            assert!((gram[i * c + j] - want).abs() < 1e-9 * (1.0 + want.abs()));
        }
    }
}
