//! `score` and `mask` on models built in code, the seed API and the schedules. A small calibrator
//! evaluates MatMul chains itself (so tests need no tract) and records what it was asked.

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use sparsify_ir::{AttrValue, Graph, Model, Node, Tensor, ValueInfo, WeightId};
use sparsify_passes::registry;
use sparsify_passes::scores::WeightScores;
use sparsify_passes::seed::{generate_unstructured_mask, Importance, Layer, MagnitudeImportance, WandaImportance};
use sparsify_pm::{
    CalibError, CalibRequest, CalibStat, Calibrator, Changed, Effects, FeatureAxis, Pass, PassCx, PassError, PassInfo,
    PassManager, PmError, RunEnv, RunReport,
};
use std::sync::Mutex;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n).map(|_| lcg(&mut s)).collect()
}

fn model(g: Graph) -> Model {
    Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] }
}

/// x[B,K] → MatMul w1 [K,H] → h → MatMul w2 [H,N] → y, plus a Gemm (transB=1, bias) on x.
fn mlp(k: usize, h: usize, n: usize, seed: u64) -> Model {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[-1, k as i64]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[-1, n as i64]));
    g.outputs.push(ValueInfo::tensor("z", 1, &[-1, h as i64]));
    g.initializers.push(Tensor::from_f32("w1", vec![k as i64, h as i64], &rand_vec(k * h, seed)).unwrap());
    g.initializers.push(Tensor::from_f32("w2", vec![h as i64, n as i64], &rand_vec(h * n, seed + 1)).unwrap());
    g.initializers.push(Tensor::from_f32("wg", vec![h as i64, k as i64], &rand_vec(h * k, seed + 2)).unwrap());
    g.initializers.push(Tensor::from_f32("bg", vec![h as i64], &rand_vec(h, seed + 3)).unwrap());
    let mut gemm = Node::new("Gemm", "gemm", &["x", "wg", "bg"], &["z"]);
    gemm.set_attr("transB", AttrValue::Int(1));
    model(g.with_nodes(vec![
        Node::new("MatMul", "mm1", &["x", "w1"], &["h"]),
        Node::new("MatMul", "mm2", &["h", "w2"], &["y"]),
        gemm,
    ]))
}

/// Evaluates 2-D MatMul / Gemm(transB=1) chains on fixed input rows; answers FeatureSqNorm requests.
struct ChainCalib {
    x: Vec<f32>,
    rows: usize,
    calls: Mutex<Vec<(Vec<String>, f64)>>,
}

impl ChainCalib {
    fn new(rows: usize, k: usize, seed: u64) -> ChainCalib {
        ChainCalib { x: rand_vec(rows * k, seed), rows, calls: Mutex::new(Vec::new()) }
    }

    fn activation(&self, m: &Model, name: &str) -> Result<(Vec<f32>, usize), CalibError> {
        if name == "x" {
            return Ok((self.x.clone(), self.x.len() / self.rows));
        }
        let g = &m.graph;
        let p = g.producer_of(name).ok_or_else(|| CalibError(format!("no producer of {name}")))?;
        let node = g.node(p);
        let (a, ka) = self.activation(m, &node.inputs[0])?;
        let w = g.initializer(&node.inputs[1]).unwrap().to_f32().unwrap();
        let trans = node.op_type == "Gemm";
        let n = if trans { w.shape()[0] } else { w.shape()[1] };
        let mut out = vec![0f32; self.rows * n];
        for r in 0..self.rows {
            for j in 0..n {
                out[r * n + j] = (0..ka).map(|i| a[r * ka + i] * if trans { w[[j, i]] } else { w[[i, j]] }).sum();
            }
        }
        Ok((out, n))
    }
}

impl Calibrator for ChainCalib {
    fn collect(&self, m: &Model, requests: &[CalibRequest]) -> Result<Vec<CalibStat>, CalibError> {
        let names = requests.iter().map(|r| format!("{r:?}")).collect();
        let zeros = m.graph.initializers.iter().map(|t| t.sparsity()).sum::<f64>();
        self.calls.lock().unwrap().push((names, zeros));
        requests
            .iter()
            .map(|r| match r {
                CalibRequest::FeatureSqNorm { tensor, axis: FeatureAxis::Last } => {
                    let (a, k) = self.activation(m, tensor)?;
                    let mut sums = vec![0f64; k];
                    for (i, v) in a.iter().enumerate() {
                        sums[i % k] += (*v as f64) * (*v as f64);
                    }
                    Ok(CalibStat::FeatureSqNorm { sums, rows: self.rows as u64 })
                }
                other => Err(CalibError(format!("unexpected request {other:?}"))),
            })
            .collect()
    }
}

fn run(m: &mut Model, text: &str, cal: Option<&dyn Calibrator>) -> Result<RunReport, PmError> {
    let pm = PassManager::parse(text, &registry()).unwrap_or_else(|e| panic!("{e}"));
    pm.run(m, RunEnv { calibrator: cal, ..Default::default() })
}

fn values(m: &Model, name: &str) -> ArrayD<f32> {
    m.graph.initializer(name).unwrap().to_f32().unwrap()
}

fn zeros(a: &ArrayD<f32>) -> usize {
    a.iter().filter(|v| **v == 0.0).count()
}

fn notes(r: &RunReport, pass: usize) -> Vec<String> {
    r.passes[pass].notes.iter().map(|n| format!("{}: {}", n.subject, n.message)).collect()
}

#[test]
fn canonical_text_has_every_default_and_parses_back() {
    let pm = PassManager::parse("score{method=wanda},mask{sparsity=0.50}", &registry()).unwrap();
    let c = pm.canonical();
    assert_eq!(
        c,
        "score{method=wanda,ops=Conv|Gemm|MatMul,names=*,exclude=\"\",embeddings=false},\
         mask{sparsity=0.5,granularity=element,scope=auto,steps=1,schedule=oneshot,ops=Conv|Gemm|MatMul,names=*,exclude=\"\",embeddings=false}"
    );
    let again = PassManager::parse(&c, &registry()).unwrap();
    assert_eq!(again.canonical(), c);
    for bad in ["mask{steps=3}", "mask{granularity=channel,scope=row}", "mask{sparsity=1.5}", "score{method=l3}"] {
        assert!(PassManager::parse(bad, &registry()).is_err(), "{bad}");
    }
}

#[test]
fn wanda_matches_a_hand_computation_with_one_calibration_call() {
    let mut m = mlp(8, 6, 4, 1);
    let cal = ChainCalib::new(5, 8, 7);
    let orig = m.clone();
    let r = run(&mut m, "score{method=wanda},mask{sparsity=0.5}", Some(&cal)).unwrap();
    assert_eq!(cal.calls.lock().unwrap().len(), 1, "one calibrator call for every weight");
    // w2 [H=6, N=4] reads h: score = |w_ij|·‖h_i‖; default group for wanda = row = output column j.
    let (h, _) = cal.activation(&orig, "h").unwrap();
    let norms: Vec<f64> = (0..6).map(|i| (0..5).map(|r| (h[r * 6 + i] as f64).powi(2)).sum::<f64>().sqrt()).collect();
    let w2 = values(&orig, "w2");
    let after = values(&m, "w2");
    for j in 0..4 {
        let mut col: Vec<(f64, usize)> = (0..6).map(|i| ((w2[[i, j]].abs() as f64) * norms[i], i)).collect();
        col.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        for (rank, (_, i)) in col.iter().enumerate() {
            assert_eq!(after[[*i, j]] == 0.0, rank < 3, "w2[{i},{j}]");
        }
    }
    // The Gemm (transB=1) weight [H, K] reduces over axis 1 = features of x; rows are axis 0.
    let wg = values(&m, "wg");
    for o in 0..6 {
        assert_eq!((0..8).filter(|&i| wg[[o, i]] == 0.0).count(), 4);
    }
    assert!(r.passes[1].notes.iter().any(|n| n.message.contains("group=row")), "{:?}", notes(&r, 1));
}

#[test]
fn wanda_without_calibration_is_an_error_and_falls_back_per_weight_with_notes() {
    let mut m = mlp(4, 4, 4, 2);
    let e = run(&mut m, "score{method=wanda}", None).unwrap_err().to_string();
    assert!(e.contains("calib"), "{e}");
    // A MatMul whose constant is input A: no data input to take features from, so l1 with a note.
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[3, 2]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[2, 2]));
    g.initializers.push(Tensor::from_f32("a", vec![2, 3], &[1.0, -2.0, 3.0, 0.5, 0.0, 4.0]).unwrap());
    let mut m = model(g.with_nodes(vec![Node::new("MatMul", "mm", &["a", "x"], &["y"])]));
    let cal = ChainCalib::new(1, 1, 0);
    let r = run(&mut m, "score{method=wanda},mask{sparsity=0.5}", Some(&cal)).unwrap();
    assert!(notes(&r, 0).iter().any(|n| n.starts_with("a: wanda not applicable")), "{:?}", notes(&r, 0));
    assert_eq!(r.passes[0].counters["wanda_fallback_l1"], 1.0);
    // Still masked per row (the scores are Wanda's, so scope=auto is row): rows [1, -2, 3] and
    // [0.5, 0, 4] lose floor(1.5) = 1 each, the second one's already-zero element.
    assert_eq!(values(&m, "a").as_slice().unwrap(), &[0.0, -2.0, 3.0, 0.5, 0.0, 4.0]);
}

#[test]
fn shared_weight_sums_squared_norms_of_both_inputs() {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[-1, 2]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[-1, 2]));
    g.initializers.push(Tensor::from_f32("w", vec![2, 2], &[1.0, 1.0, 1.0, 1.0]).unwrap());
    g.initializers.push(Tensor::from_f32("p", vec![2, 2], &[0.0, 3.0, 1.0, 0.0]).unwrap());
    let mut m = model(g.with_nodes(vec![
        Node::new("MatMul", "perm", &["x", "p"], &["xp"]),
        Node::new("MatMul", "a", &["x", "w"], &["ya"]),
        Node::new("MatMul", "b", &["xp", "w"], &["yb"]),
        Node::new("Add", "sum", &["ya", "yb"], &["y"]),
    ]));
    // x = [[1, 0]]: ‖x‖² = (1, 0); xp = x·p = [0, 3]: ‖xp‖² = (0, 9) → combined norms (1, 3).
    let cal = ChainCalib { x: vec![1.0, 0.0], rows: 1, calls: Mutex::new(Vec::new()) };
    let r = run(&mut m, "score{method=wanda,names=w},mask{sparsity=0.5,names=w}", Some(&cal)).unwrap();
    assert!(notes(&r, 0).iter().any(|n| n.contains("summed")), "{:?}", notes(&r, 0));
    // rows (output columns) keep the feature with norm 3 (row 1 of w).
    assert_eq!(values(&m, "w").as_slice().unwrap(), &[0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn channel_granularity_zeroes_rows_and_bias_and_lists_them() {
    let mut m = mlp(4, 6, 3, 3);
    // Make channels 1 and 4 of the Gemm weight clearly the weakest.
    let mut wg = values(&m, "wg");
    for i in 0..4 {
        wg[[1, i]] *= 0.01;
        wg[[4, i]] *= 0.02;
    }
    let t = Tensor::from_f32("wg", vec![6, 4], wg.as_slice().unwrap()).unwrap();
    *m.graph.initializer_mut("wg").unwrap() = t;
    let r = run(&mut m, "score{method=l2},mask{sparsity=0.34,granularity=channel,names=wg}", None).unwrap();
    let wg = values(&m, "wg");
    let bg = values(&m, "bg");
    for o in 0..6 {
        let dead = (0..4).all(|i| wg[[o, i]] == 0.0);
        assert_eq!(dead, o == 1 || o == 4, "channel {o}");
        assert_eq!(bg[[o]] == 0.0, dead, "bias {o}");
    }
    assert!(notes(&r, 1).iter().any(|n| n.contains("zero output channels [1, 4] of 6")), "{:?}", notes(&r, 1));
    assert_eq!(r.passes[1].counters["bias_entries_zeroed"], 2.0);
    // Idempotent, bias included.
    let r2 = run(&mut m, "score{method=l2},mask{sparsity=0.34,granularity=channel,names=wg}", None).unwrap();
    assert!(!r2.passes[1].changed);
}

/// A Gemm reading its weight as A (`W · x`, with and without transA): its channels are the rows of
/// the output, and a `[M, 1]` C follows the mask; a `[M]` C (broadcast along columns) is left, noted.
#[test]
fn channel_masks_zero_the_row_bias_of_a_weight_first_gemm() {
    for (ta, c_dims) in [(0, vec![6, 1]), (1, vec![6, 1]), (0, vec![6])] {
        let mut g = Graph::new();
        g.inputs.push(ValueInfo::tensor("x", 1, &[4, 2]));
        g.outputs.push(ValueInfo::tensor("y", 1, &[6, 2]));
        let mut w = rand_vec(24, 5);
        for k in 0..4 {
            // Channel 2 weakest in either layout.
            w[if ta == 0 { 2 * 4 + k } else { k * 6 + 2 }] *= 0.01;
        }
        let dims = if ta == 0 { vec![6, 4] } else { vec![4, 6] };
        g.initializers.push(Tensor::from_f32("wa", dims, &w).unwrap());
        g.initializers.push(Tensor::from_f32("c", c_dims.clone(), &rand_vec(6, 6)).unwrap());
        let mut gemm = Node::new("Gemm", "gemm_wx", &["wa", "x", "c"], &["y"]);
        gemm.set_attr("transA", AttrValue::Int(ta));
        let mut m = model(g.with_nodes(vec![gemm]));
        let r = run(&mut m, "score{method=l2},mask{sparsity=0.17,granularity=channel}", None).unwrap();
        let c = values(&m, "c");
        let zeroed: Vec<usize> = (0..6).filter(|&o| c.as_slice().unwrap()[o] == 0.0).collect();
        if c_dims.len() == 2 {
            assert_eq!(zeroed, vec![2], "transA={ta}: {:?}", notes(&r, 1));
        } else {
            assert!(zeroed.is_empty());
            assert!(notes(&r, 1).iter().any(|n| n.contains("bias 'c' left unchanged")), "{:?}", notes(&r, 1));
        }
    }
}

#[test]
fn mask_without_scores_uses_l1_and_notes_it() {
    let mut m = mlp(4, 4, 4, 4);
    let r = run(&mut m, "mask{sparsity=0.25}", None).unwrap();
    assert!(notes(&r, 0).contains(&"mask: no score analysis: using l1".to_string()));
    assert_eq!(zeros(&values(&m, "w1")), 4);
    assert_eq!(r.passes[0].counters["zeros_added"], 12.0);
    assert_eq!(r.passes[0].counters["tensors_masked"], 3.0);
}

/// A pass that records what the score analysis holds when it runs.
struct Peek;
static PEEKED: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
impl Pass for Peek {
    fn name(&self) -> &'static str {
        "peek"
    }
    fn effects(&self) -> Effects {
        Effects::ANNOTATIONS
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        vec![]
    }
    fn run(&self, m: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let s = cx.analyses.get::<WeightScores>().expect("scores survive the mask");
        let z = s.get(&m.graph, &WeightId::Init("w1".into())).unwrap().iter().filter(|v| **v == 0.0).count();
        PEEKED.lock().unwrap().push((s.method.clone(), z));
        Ok(Changed::No)
    }
}

#[test]
fn scores_are_preserved_with_pruned_entries_zeroed() {
    let mut reg = registry();
    reg.register(PassInfo {
        name: "peek",
        description: "test",
        effects: Effects::ANNOTATIONS,
        options: &[],
        build: |_| Ok(Box::new(Peek)),
    });
    let mut m = mlp(8, 8, 4, 5);
    let pm = PassManager::parse("score{method=l1},mask{sparsity=0.75},peek", &reg).unwrap();
    pm.run(&mut m, RunEnv::default()).unwrap();
    assert_eq!(PEEKED.lock().unwrap().as_slice(), &[("l1".to_string(), 48)]);
}

#[test]
fn gradual_wanda_recalibrates_on_the_partly_pruned_model() {
    let mut m = mlp(8, 8, 4, 6);
    let cal = ChainCalib::new(6, 8, 9);
    let r = run(&mut m, "score{method=wanda},mask{sparsity=0.8,steps=4,schedule=cubic}", Some(&cal)).unwrap();
    let calls = cal.calls.lock().unwrap();
    assert_eq!(calls.len(), 4, "score + 3 recalibrations");
    assert!(calls.windows(2).all(|w| w[1].1 > w[0].1), "each recalibration sees a sparser model: {calls:?}");
    assert_eq!(r.passes[1].counters["recalibrations"], 3.0);
    // Exact per-row count at the end: w1 [8, 8] rows = columns, floor(0.8·8) = 6 each.
    let w1 = values(&m, "w1");
    for j in 0..8 {
        assert_eq!((0..8).filter(|&i| w1[[i, j]] == 0.0).count(), 6);
    }
}

#[test]
fn already_zero_weights_count_as_pruned() {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, 4]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[1, 1]));
    // Three zeros already: 50% asks for 2, so nothing changes, and nothing non-zero is touched.
    g.initializers.push(Tensor::from_f32("w", vec![4, 1], &[0.0, 0.0, 0.0, 5.0]).unwrap());
    let mut m = model(g.with_nodes(vec![Node::new("MatMul", "mm", &["x", "w"], &["y"])]));
    let r = run(&mut m, "score{method=l2},mask{sparsity=0.5}", None).unwrap();
    assert!(!r.passes[1].changed);
    assert_eq!(values(&m, "w").as_slice().unwrap(), &[0.0, 0.0, 0.0, 5.0]);
}

#[test]
fn schedules_serialise_with_a_type_tag() {
    use sparsify_passes::schedule::PruningSchedule;
    let s = PruningSchedule::Cubic { start_step: 0, end_step: 10, final_sparsity: 0.5 };
    let j = serde_json::to_string(&s).unwrap();
    assert_eq!(j, r#"{"type":"cubic","start_step":0,"end_step":10,"final_sparsity":0.5}"#);
    assert_eq!(serde_json::from_str::<PruningSchedule>(&j).unwrap(), s);
    let o: PruningSchedule = serde_json::from_str(r#"{"type":"one_shot","step":3}"#).unwrap();
    assert_eq!(o, PruningSchedule::OneShot { step: 3 });
}

/// Random weights with some exact zeros (and a few negative zeros).
fn weights_strategy(max: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1..max, 1..max).prop_flat_map(|(r, c)| {
        let elem = prop_oneof![6 => -4.0f32..4.0, 1 => Just(0.0f32), 1 => Just(-0.0f32), 1 => Just(1.0f32)];
        (Just(r), Just(c), proptest::collection::vec(elem, r * c))
    })
}

fn one_matmul(r: usize, c: usize, w: &[f32]) -> Model {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, r as i64]));
    g.outputs.push(ValueInfo::tensor("y", 1, &[1, c as i64]));
    g.outputs.push(ValueInfo::tensor("z", 1, &[1, r as i64]));
    g.initializers.push(Tensor::from_f32("w", vec![r as i64, c as i64], w).unwrap());
    // The same values transposed as a Gemm transB=1 weight [c, r] on another branch.
    let t: Vec<f32> = (0..c).flat_map(|j| (0..r).map(move |i| (i, j))).map(|(i, j)| w[i * c + j] * 0.5).collect();
    g.initializers.push(Tensor::from_f32("v", vec![c as i64, r as i64], &t).unwrap());
    let mut gemm = Node::new("Gemm", "g", &["y", "v"], &["z"]);
    gemm.set_attr("transB", AttrValue::Int(1));
    model(g.with_nodes(vec![Node::new("MatMul", "mm", &["x", "w"], &["y"]), gemm]))
}

fn floor_count(s: f64, n: usize) -> usize {
    (s * n as f64).floor() as usize
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn scores_are_nonnegative_and_zero_for_zero_weights((r, c, w) in weights_strategy(9), norms in proptest::collection::vec(0.0f64..10.0, 9)) {
        let a = ArrayD::from_shape_vec(IxDyn(&[r, c]), w.clone()).unwrap();
        let layer = Layer::new("w", a).with_axes(1, 0);
        let all = [
            MagnitudeImportance::l1().compute(&layer, None).unwrap(),
            MagnitudeImportance::l2().compute(&layer, None).unwrap(),
            WandaImportance::new().compute(&layer, Some(&norms[..r])).unwrap(),
        ];
        for s in &all {
            for (v, x) in s.iter().zip(&w) {
                prop_assert!(*v >= 0.0);
                if *x == 0.0 { prop_assert_eq!(*v, 0.0); }
            }
        }
    }

    #[test]
    fn exact_counts_per_group((r, c, w) in weights_strategy(10), s in 0.0f64..=1.0, group in 0usize..3, method in 0usize..2) {
        let g = ["layer", "row", "global"][group];
        let meth = ["l1", "l2"][method];
        let mut m = one_matmul(r, c, &w);
        let before_w = zeros(&values(&m, "w"));
        let before_v = zeros(&values(&m, "v"));
        let rep = run(&mut m, &format!("score{{method={meth}}},mask{{sparsity={s},scope={g}}}"), None).unwrap();
        let (aw, av) = (values(&m, "w"), values(&m, "v"));
        let n = r * c;
        match g {
            "layer" => {
                prop_assert_eq!(zeros(&aw), floor_count(s, n).max(before_w));
                prop_assert_eq!(zeros(&av), floor_count(s, n).max(before_v));
            }
            "row" => {
                // w [r, c]: rows are output columns j; v [c, r]: rows are output rows j.
                for j in 0..c {
                    let zw = (0..r).filter(|&i| aw[[i, j]] == 0.0).count();
                    let zb = (0..r).filter(|&i| w[i * c + j] == 0.0).count();
                    prop_assert_eq!(zw, floor_count(s, r).max(zb));
                    let zv = (0..r).filter(|&i| av[[j, i]] == 0.0).count();
                    prop_assert_eq!(zv, floor_count(s, r).max(zb));
                }
            }
            _ => prop_assert_eq!(zeros(&aw) + zeros(&av), floor_count(s, 2 * n).max(before_w + before_v)),
        }
        // sparsity = zeros / elements, as reported.
        let row = rep.weights.iter().find(|x| x.name == "w").unwrap();
        prop_assert!((row.sparsity_after - zeros(&aw) as f64 / n as f64).abs() < 1e-12);
        // Kept weights are bit-identical.
        for (a, b) in aw.iter().zip(&w) {
            prop_assert!(*a == 0.0 || a.to_bits() == b.to_bits());
        }
    }

    #[test]
    fn mask_twice_equals_once((r, c, w) in weights_strategy(10), s in 0.0f64..=1.0, group in 0usize..3, wanda in any::<bool>()) {
        let text = format!(
            "score{{method={}}},mask{{sparsity={s},scope={}}}",
            if wanda { "wanda" } else { "l2" },
            ["layer", "row", "global"][group]
        );
        let cal = ChainCalib::new(3, r, 11);
        let mut once = one_matmul(r, c, &w);
        run(&mut once, &text, Some(&cal)).unwrap();
        let mut twice = once.clone();
        let rep = run(&mut twice, &text, Some(&cal)).unwrap();
        prop_assert!(!rep.passes[1].changed);
        for name in ["w", "v"] {
            prop_assert_eq!(once.graph.initializer(name).unwrap().bytes(), twice.graph.initializer(name).unwrap().bytes());
        }
        // The seed API: a mask recomputed from the masked weights is the same mask.
        let a = ArrayD::from_shape_vec(IxDyn(&[r, c]), w.clone()).unwrap();
        let layer = Layer::new("w", a.clone());
        let m1 = generate_unstructured_mask(&MagnitudeImportance::l1().compute(&layer, None).unwrap(), s).unwrap();
        let mut w1 = a;
        m1.apply(&mut w1).unwrap();
        prop_assert_eq!(m1.sparsity(), floor_count(s, r * c) as f64 / (r * c) as f64);
        let m2 = generate_unstructured_mask(&MagnitudeImportance::l1().compute(&Layer::new("w", w1.clone()), None).unwrap(), s).unwrap();
        let mut w2 = w1.clone();
        m2.apply(&mut w2).unwrap();
        prop_assert_eq!(w1, w2);
    }

    #[test]
    fn non_finite_weights_are_errors_naming_the_tensor((r, c, mut w) in weights_strategy(8), pos in any::<prop::sample::Index>(), which in 0usize..3) {
        w[pos.index(r * c)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][which];
        for text in ["score{method=l1}", "mask{sparsity=0.5}", "score{method=l2},mask{sparsity=0.5}"] {
            let mut m = one_matmul(r, c, &w);
            let e = run(&mut m, text, None).unwrap_err().to_string();
            prop_assert!(e.contains("'w'"), "{}", e);
        }
        let a = ArrayD::from_shape_vec(IxDyn(&[r, c]), w).unwrap();
        let e = MagnitudeImportance::l1().compute(&Layer::new("dense.w", a), None).unwrap_err().to_string();
        prop_assert!(e.contains("dense.w"), "{}", e);
    }
}
