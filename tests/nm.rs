//! N:M, `check`, block sparsity and channel permutation on the real models, through the facade.
//! TensorRT's rule, block counts and Wanda decisions are re-derived here with plain loops from the op
//! types (not from the library's weight analysis); exactness of permutations is checked in tract.
//! Run with `--nocapture` to see the numbers.

mod common;

use sparsify_onnx::ir::{Model, Tensor};
use sparsify_onnx::validate::{self, Feed, ModelSource, Status, Thresholds};
use sparsify_onnx::{input_decls, load, save, ExportOptions, Pipeline, RunReport, TractCalibrator};
use sparsify_passes::nm_check::{all_compliant, check_nm};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn model(dir: &Path) -> Model {
    load(&dir.join("model.onnx")).unwrap()
}

fn feed(dir: &Path, sub: &str, m: &Model) -> Feed {
    validate::load_feed(&dir.join(sub), &input_decls(m)).unwrap()
}

fn run(text: &str, m: &mut Model, cal: Option<&TractCalibrator>) -> RunReport {
    let p = Pipeline::parse(text).unwrap();
    p.run(m, cal.map(|c| c as &dyn sparsify_onnx::Calibrator)).unwrap()
}

/// A weight read by a Conv/Gemm/MatMul at input 1, with the axes decided here from the op alone.
struct Direct {
    name: String,
    op: String,
    input: String,
    out_axis: usize,
    red_axis: usize,
    groups: usize,
}

/// Every (node, weight) pair of Conv / Gemm / MatMul whose input 1 is an initializer or a Constant node
/// output (the real models have no Transpose/Cast routes).
fn direct_weights(m: &Model) -> Vec<Direct> {
    let g = &m.graph;
    let mut v = Vec::new();
    for (_, n) in g.nodes() {
        let Some(w) = n.inputs.get(1) else { continue };
        let Some(t) = const_tensor(m, w) else { continue };
        let r = t.dims.len();
        let (out_axis, red_axis) = match n.op_type.as_str() {
            "Conv" => (0, 1),
            "Gemm" if n.attr_int("transB").unwrap_or(0) != 0 => (0, 1),
            "Gemm" => (1, 0),
            "MatMul" if r >= 2 => (r - 1, r - 2),
            _ => continue,
        };
        v.push(Direct {
            name: w.clone(),
            op: n.op_type.clone(),
            input: n.inputs[0].clone(),
            out_axis,
            red_axis,
            groups: n.attr_int("group").unwrap_or(1) as usize,
        });
    }
    v
}

fn const_tensor<'a>(m: &'a Model, name: &str) -> Option<&'a Tensor> {
    let g = &m.graph;
    if let Some(t) = g.initializer(name) {
        return Some(t);
    }
    g.nodes().find(|(_, n)| n.outputs.iter().any(|o| o == name)).and_then(|(_, n)| n.constant_tensor())
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// TensorRT's rule with plain loops: every 4 consecutive elements along `axis`, for every other
/// position, hold at most 2 non-zeros. Returns the number of groups checked.
fn trt_rule_groups(vals: &[f32], shape: &[usize], axis: usize) -> usize {
    let st = strides(shape)[axis];
    let mut groups = 0;
    for i in 0..vals.len() {
        if ((i / st) % shape[axis]).is_multiple_of(4) {
            let nz = (0..4).filter(|k| vals[i + k * st] != 0.0).count();
            assert!(nz <= 2, "group at flat index {i} has {nz} non-zeros");
            groups += 1;
        }
    }
    groups
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f32().unwrap().iter().copied().collect()
}

#[test]
fn l1_two_four_passes_check_and_the_tensorrt_rule_on_every_model() {
    for (name, dir) in common::all_models() {
        let mut m = model(&dir);
        let rep = run("score{method=l1},nm-legalize{n=2,m=4}", &mut m, None);
        let pass = rep.passes.iter().find(|p| p.pass == "nm-legalize").unwrap();
        let rows = check_nm(&m, 2, 4, false);
        assert!(all_compliant(&rows), "{name}");
        let mut checked = 0;
        let noted: BTreeSet<&str> = pass.notes.iter().map(|n| n.subject.as_str()).collect();
        for d in direct_weights(&m) {
            let t = const_tensor(&m, &d.name).unwrap();
            let shape = t.shape();
            let eligible =
                t.dtype.name() == "f32" && shape[d.red_axis].is_multiple_of(4) && !(d.op == "Conv" && shape[1] == 1);
            let row = rows.iter().find(|r| r.tensor == d.name).unwrap();
            assert_eq!(row.eligible, eligible, "{name}/{}: {:?}", d.name, row.reason);
            assert!(noted.contains(d.name.as_str()), "{name}/{} has no note: silently skipped", d.name);
            if eligible {
                let groups = trt_rule_groups(&f32s(t), &shape, d.red_axis);
                assert_eq!(groups, row.total_groups, "{name}/{}", d.name);
                checked += 1;
            }
        }
        let c = &pass.counters;
        assert_eq!(c["eligible"], checked as f64, "{name}");
        assert!(checked > 0, "{name}");
        println!(
            "{name}: eligible {} skipped {} zeros_added {} retained_l1 {:.3}",
            c["eligible"], c["skipped"], c["zeros_added"], c["retained_score_plain"]
        );
    }
}

fn exact_thresholds() -> Thresholds {
    Thresholds { max_rel_l2: 1e-5, min_cosine: 0.99999, max_abs: None }
}

/// Permute (unpruned) and compare outputs in tract; legalize with and without permutation and compare
/// retained magnitude. Returns (plain, permuted, worst rel L2 of the permuted dense model).
fn permutation_case(name: &str, dir: &Path) -> (f64, f64, f64) {
    let orig = model(dir);
    let mut perm = orig.clone();
    let rep = run("permute-channels{n=2,m=4}", &mut perm, None);
    let pc = &rep.passes[0].counters;
    for n in &rep.passes[0].notes {
        println!("  {name}: {}: {}", n.subject, n.message);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("orig.onnx"), tmp.path().join("perm.onnx"));
    save(&orig, &a, &ExportOptions::default()).unwrap();
    save(&perm, &b, &ExportOptions::default()).unwrap();
    let f = feed(dir, "sample", &orig);
    let v = validate::validate(ModelSource::Path(&a), ModelSource::Path(&b), &f, &exact_thresholds());
    assert_eq!(v.status, Status::Passed, "{name}: {v:?}");
    let worst = v.outputs.iter().map(|o| o.rel_l2_err).fold(0.0, f64::max);

    let mut plain_m = orig.clone();
    let plain = run("nm-legalize{n=2,m=4}", &mut plain_m, None);
    let mut both = orig.clone();
    let with = run("nm-legalize{n=2,m=4,permute=true}", &mut both, None);
    assert!(all_compliant(&check_nm(&both, 2, 4, false)), "{name}");
    let p0 = plain.passes[0].counters["retained_score_plain"];
    let p1 = with.passes[0].counters["retained_score_permuted"];
    assert_eq!(with.passes[0].counters["retained_score_plain"], p0);
    assert_eq!(pc["retained_score_permuted"], p1, "{name}: permute-channels and nm-legalize agree");
    assert!(p1 >= p0, "{name}: {p1} < {p0}");
    // What legalization really kept equals the counter (Σ|w| of the survivors of eligible weights).
    let eligible: Vec<String> =
        check_nm(&both, 2, 4, false).into_iter().filter(|r| r.eligible).map(|r| r.tensor).collect();
    let kept: f64 = eligible.iter().flat_map(|w| f32s(const_tensor(&both, w).unwrap())).map(|v| v.abs() as f64).sum();
    assert!((kept - p1).abs() <= 1e-6 * p1, "{name}: kept {kept} vs {p1}");
    println!(
        "{name}: retained |w| under 2:4: plain {p0:.4}, permuted {p1:.4} (+{:.3}%), regions permuted {}, refused {}; permuted dense model rel L2 {worst:.2e}",
        100.0 * (p1 - p0) / p0,
        pc.get("regions_permuted").copied().unwrap_or(0.0),
        pc.get("regions_refused").copied().unwrap_or(0.0),
    );
    (p0, p1, worst)
}

#[test]
fn permutation_keeps_more_and_the_permuted_dense_model_is_exact() {
    for name in common::BUNDLED {
        let (p0, p1, _) = permutation_case(name, &common::bundled(name));
        assert!(p1 > p0, "{name}: the search found no gain ({p0} -> {p1})");
    }
}

#[test]
fn permutation_on_minilm() {
    let Some(dir) = common::minilm() else { return };
    let (p0, p1, _) = permutation_case("paraphrase_minilm_l3_v2", &dir);
    assert!(p1 > p0);
}

/// Block view [output, reduction·spatial] decided from the op: (rows, cols, flat index of each cell).
fn block_view(d: &Direct, shape: &[usize]) -> (usize, usize, Vec<usize>) {
    let st = strides(shape);
    let rows = shape[d.out_axis];
    let mut rest: Vec<usize> = vec![d.red_axis];
    rest.extend((0..shape.len()).filter(|&a| a != d.out_axis && a != d.red_axis));
    let cols: usize = rest.iter().map(|&a| shape[a]).product();
    let mut idx = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            // decompose c over `rest` (first axis most significant)
            let mut rem = c;
            let mut flat = r * st[d.out_axis];
            for (k, &a) in rest.iter().enumerate() {
                let below: usize = rest[k + 1..].iter().map(|&b| shape[b]).product();
                flat += (rem / below) * st[a];
                rem %= below;
            }
            idx.push(flat);
        }
    }
    (rows, cols, idx)
}

#[test]
fn block_sparsify_hits_the_element_sparsity_on_every_model() {
    for (name, dir) in common::all_models() {
        let orig = model(&dir);
        let mut m = orig.clone();
        run("block-sparsify{block=4x4,sparsity=0.5}", &mut m, None);
        let (mut weights, mut worst) = (0, 0.0f64);
        for d in direct_weights(&orig) {
            let t0 = const_tensor(&orig, &d.name).unwrap();
            if t0.dtype.name() != "f32" {
                continue;
            }
            let (w0, w1) = (f32s(t0), f32s(const_tensor(&m, &d.name).unwrap()));
            let (rows, cols, idx) = block_view(&d, &t0.shape());
            let (nbr, nbc) = (rows.div_ceil(4), cols.div_ceil(4));
            let nb = nbr * nbc;
            // Blocks ranked by mean |w| per element: every pruned block ranks at or below every kept one.
            let mut pruned_max = (f64::NEG_INFINITY, 0usize); // (mean, non-zeros before)
            let mut kept_min = (f64::INFINITY, 0usize); // (mean, non-zeros)
            for b in 0..nb {
                let cells: Vec<usize> = (b / nbc * 4..((b / nbc + 1) * 4).min(rows))
                    .flat_map(|r| (b % nbc * 4..((b % nbc + 1) * 4).min(cols)).map(move |c| r * cols + c))
                    .map(|p| idx[p])
                    .collect();
                let mean = cells.iter().map(|&i| w0[i].abs() as f64).sum::<f64>() / cells.len() as f64;
                let z0 = cells.iter().all(|&i| w0[i] == 0.0);
                let z1 = cells.iter().all(|&i| w1[i] == 0.0);
                if z1 && !z0 {
                    if mean > pruned_max.0 {
                        pruned_max = (mean, cells.iter().filter(|&&i| w0[i] != 0.0).count());
                    }
                } else if !z1 {
                    if mean < kept_min.0 {
                        kept_min = (mean, cells.iter().filter(|&&i| w0[i] != 0.0).count());
                    }
                    assert!(
                        cells.iter().all(|&i| w0[i].to_bits() == w1[i].to_bits()),
                        "{name}/{}: a kept block changed",
                        d.name
                    );
                }
            }
            assert!(
                pruned_max.0 <= kept_min.0,
                "{name}/{}: pruned a block of mean {} > kept {}",
                d.name,
                pruned_max.0,
                kept_min.0
            );
            // Element sparsity within one block (16 elements) of 50%, and no neighbouring count closer.
            let n = w0.len() as f64;
            let (z0, z1) = (zeros(&w0), zeros(&w1));
            let d1 = (z1 as f64 - 0.5 * n).abs();
            if (z0 as f64) <= 0.5 * n {
                assert!(d1 <= 16.0, "{name}/{}: {z1} zeros of {n} ({rows}x{cols})", d.name);
                if kept_min.1 > 0 {
                    assert!(
                        d1 <= ((z1 + kept_min.1) as f64 - 0.5 * n).abs() + 1e-9,
                        "{name}/{}: one more block",
                        d.name
                    );
                }
                if pruned_max.1 > 0 {
                    assert!(d1 <= ((z1 - pruned_max.1) as f64 - 0.5 * n).abs() + 1e-9, "{name}/{}: one less", d.name);
                }
            }
            worst = worst.max((z1 as f64 / n - 0.5).abs());
            weights += 1;
        }
        assert!(weights > 0);
        println!("{name}: block-sparsify 4x4 @0.5 on {weights} weights: element sparsity at most {worst:.4} from 0.5");
    }
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|x| **x == 0.0).count()
}

/// Σ x² per feature of each requested activation over the calibration set, computed here.
fn feature_sq(dir: &Path, m: &Model, acts: &[(String, bool)]) -> BTreeMap<String, Vec<f64>> {
    let f = feed(dir, "calib", m);
    let names: Vec<String> = acts.iter().map(|(n, _)| n.clone()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.onnx");
    save(m, &p, &ExportOptions::default()).unwrap();
    let outs = validate::run_model(ModelSource::Path(&p), &f, &names).unwrap();
    let extras = &outs[outs.len() - names.len()..];
    let mut res = BTreeMap::new();
    for ((n, channels_axis1), (_, a)) in acts.iter().zip(extras) {
        let shape = a.shape().to_vec();
        let vals = a.to_f64_vec();
        let axis = if *channels_axis1 { 1 } else { shape.len() - 1 };
        let st = strides(&shape)[axis];
        let mut sq = vec![0f64; shape[axis]];
        for (i, v) in vals.iter().enumerate() {
            sq[(i / st) % shape[axis]] += v * v;
        }
        res.insert(n.clone(), sq);
    }
    res
}

/// Wanda 2:4 decisions made here: score |w|·‖X_j‖₂ along the reduction axis, keep 2 of 4 (ties: lower
/// index). Returns the number of elements whose kept/pruned state differs from the pipeline's output.
fn wanda_mismatches(name: &str, dir: &Path) -> (usize, usize) {
    let orig = model(dir);
    let ds: Vec<Direct> = direct_weights(&orig)
        .into_iter()
        .filter(|d| {
            let s = const_tensor(&orig, &d.name).unwrap().shape();
            d.groups == 1 && s[d.red_axis].is_multiple_of(4)
        })
        .collect();
    let acts: Vec<(String, bool)> = ds.iter().map(|d| (d.input.clone(), d.op == "Conv")).collect();
    let sq = feature_sq(dir, &orig, &acts);
    let cal = TractCalibrator::new(&feed(dir, "calib", &orig), 64).unwrap();
    let mut m = orig.clone();
    run("score{method=wanda},nm-legalize{n=2,m=4}", &mut m, Some(&cal));
    let (mut bad, mut total) = (0, 0);
    for d in &ds {
        let t = const_tensor(&orig, &d.name).unwrap();
        let (w, shape) = (f32s(t), t.shape());
        let after = f32s(const_tensor(&m, &d.name).unwrap());
        let st = strides(&shape)[d.red_axis];
        let norms = &sq[&d.input];
        for i in 0..w.len() {
            if !((i / st) % shape[d.red_axis]).is_multiple_of(4) {
                continue;
            }
            let mut g: Vec<(usize, f64)> = (0..4)
                .map(|k| {
                    let j = i + k * st;
                    (j, w[j].abs() as f64 * norms[(j / st) % shape[d.red_axis]].sqrt())
                })
                .collect();
            g.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            for (rank, (j, _)) in g.iter().enumerate() {
                total += 1;
                if (rank < 2) != (after[*j] != 0.0) {
                    bad += 1;
                }
            }
        }
    }
    println!("{name}: wanda 2:4 vs in-test reference: {bad} of {total} elements differ");
    (bad, total)
}

#[test]
fn wanda_scores_drive_nm_legalize_like_the_reference() {
    for name in ["digits_mlp", "digits_cnn", "char_lm"] {
        let (bad, total) = wanda_mismatches(name, &common::bundled(name));
        assert!(total > 0);
        assert_eq!(bad, 0, "{name}");
    }
}

/// Output error (relative L2 vs dense, per float output) of magnitude 2:4 and Wanda 2:4.
fn two_four_errors(dir: &Path) -> BTreeMap<String, (f64, f64)> {
    let orig = model(dir);
    let cal = TractCalibrator::new(&feed(dir, "calib", &orig), 64).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("dense.onnx");
    save(&orig, &a, &ExportOptions::default()).unwrap();
    let f = feed(dir, "sample", &orig);
    let mut errs: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (k, text) in
        ["score{method=l1},nm-legalize{n=2,m=4}", "score{method=wanda},nm-legalize{n=2,m=4}"].iter().enumerate()
    {
        let mut m = orig.clone();
        run(text, &mut m, Some(&cal));
        let b = tmp.path().join("pruned.onnx");
        save(&m, &b, &ExportOptions::default()).unwrap();
        let v = validate::validate(ModelSource::Path(&a), ModelSource::Path(&b), &f, &Thresholds::default());
        assert!(!matches!(v.status, Status::NotValidated { .. }), "{v:?}");
        for o in v.outputs.iter().filter(|o| o.dtype.starts_with("float")) {
            let e = errs.entry(o.name.clone()).or_default();
            if k == 0 {
                e.0 = o.rel_l2_err;
            } else {
                e.1 = o.rel_l2_err;
            }
        }
    }
    errs
}

#[test]
fn wanda_vs_magnitude_two_four_output_error() {
    for (name, dir) in common::all_models() {
        let errs = two_four_errors(&dir);
        for (out, (mag, wanda)) in &errs {
            println!("{name}: output {out}: 2:4 rel L2 vs dense: magnitude {mag:.4}, wanda {wanda:.4}");
        }
        if name == "paraphrase_minilm_l3_v2" {
            let (mag, wanda) = errs["461"];
            assert!(wanda < mag, "MiniLM sentence embedding: wanda {wanda} should beat magnitude {mag}");
        }
    }
}
