//! `score{method=ria}` on the real models: its `mask` decisions against an independent implementation
//! of the RIA rule written here (plain loops over the op's [output, reduction] view), and its use by
//! `nm-legalize` and `block-sparsify`.

mod common;

use common::{feed, model, targeted};

use sparsify_onnx::ir::Model;
use sparsify_onnx::token_mask::TokenMask;
use sparsify_onnx::validate::{self, Array, Feed, ModelSource};
use sparsify_onnx::{to_bytes, Pipeline, TractCalibrator};
use std::collections::BTreeMap;
use std::path::Path;

fn run(text: &str, m: &mut Model, cal: &TractCalibrator) {
    Pipeline::parse(text).unwrap().run(m, Some(cal as &dyn sparsify_onnx::Calibrator)).unwrap();
}

/// Σ x² per input feature: axis 1 for Conv inputs, the last axis otherwise.
fn sq_norms(a: &Array, conv: bool) -> Vec<f64> {
    let shape = a.shape();
    let ax = if conv { 1 } else { shape.len() - 1 };
    let (f, inner) = (shape[ax], shape[ax + 1..].iter().product::<usize>());
    let mut s = vec![0f64; f];
    for (i, v) in a.to_f64_vec().into_iter().enumerate() {
        s[(i / inner) % f] += v * v;
    }
    s
}

/// The reference: RIA scores of every targeted weight, (flat index, score) per weight.
fn reference_scores(m0: &Model, calib: &Feed, a: f64) -> BTreeMap<String, Vec<f64>> {
    let g = &m0.graph;
    let weights = targeted(m0);
    let mut acts: Vec<(String, bool)> = Vec::new();
    for w in &weights {
        assert_eq!(w.uses.len(), 1, "the reference handles unshared weights only");
        assert!(w.uses[0].slot == 1 && w.uses[0].route.is_empty(), "the reference expects direct B/W inputs");
        let node = g.node(w.uses[0].node);
        let act = (node.inputs[0].clone(), node.op_type == "Conv");
        if !acts.contains(&act) {
            acts.push(act);
        }
    }
    let names: Vec<String> = acts.iter().map(|a| a.0.clone()).collect();
    let outs = validate::run_model(ModelSource::Bytes(&to_bytes(m0).unwrap()), calib, &names).unwrap();
    let extra = &outs[outs.len() - names.len()..];
    let norms: BTreeMap<&str, Vec<f64>> =
        acts.iter().zip(extra).map(|((n, conv), (_, x))| (n.as_str(), sq_norms(x, *conv))).collect();
    let mut out = BTreeMap::new();
    for w in &weights {
        let node = g.node(w.uses[0].node);
        let vals = g.weight(&w.id).unwrap().to_f64().unwrap();
        let shape = vals.shape().to_vec();
        let flat: Vec<f64> = vals.iter().map(|v| v.abs()).collect();
        // (output axis, reduction axis, groups) of the op, decided from the op here.
        let (o_ax, r_ax, groups) = match node.op_type.as_str() {
            "Conv" => (0, 1, node.attr_int("group").unwrap_or(1) as usize),
            "Gemm" if node.attr_int("transB").unwrap_or(0) == 1 => (0, 1, 1),
            "Gemm" => (1, 0, 1),
            _ => (1, 0, 1),
        };
        assert!(shape.len() == 2 || node.op_type == "Conv");
        let stride = |ax: usize| shape[ax + 1..].iter().product::<usize>();
        let kpos: usize = shape[2..].iter().product();
        let per_group = shape[o_ax] / groups;
        let coords = |f: usize| {
            let o = (f / stride(o_ax)) % shape[o_ax];
            let j = (f / stride(r_ax)) % shape[r_ax];
            let k = if shape.len() > 2 { f % kpos } else { 0 };
            (o, j, k)
        };
        let mut row: BTreeMap<usize, f64> = BTreeMap::new();
        let mut col: BTreeMap<(usize, usize, usize), f64> = BTreeMap::new();
        for (f, v) in flat.iter().enumerate() {
            let (o, j, k) = coords(f);
            *row.entry(o).or_default() += v;
            *col.entry((o / per_group, j, k)).or_default() += v;
        }
        let ss = &norms[node.inputs[0].as_str()];
        let scores: Vec<f64> = flat
            .iter()
            .enumerate()
            .map(|(f, &v)| {
                let (o, j, k) = coords(f);
                let (r, c) = (row[&o], col[&(o / per_group, j, k)]);
                let rel = if r > 0.0 { v / r } else { 0.0 } + if c > 0.0 { v / c } else { 0.0 };
                rel * ss[(o / per_group) * shape[r_ax] + j].sqrt().powf(a)
            })
            .collect();
        out.insert(w.id.name().to_string(), scores);
    }
    out
}

/// `score{method=ria},mask{sparsity=0.5}` (layer comparison by default) against the reference: per
/// weight, zero exactly the floor(n/2) lowest (already-zero weights first, ties pruning the higher
/// index). Returns (differing decisions, decisions, largest relative score gap among the differing).
fn check_ria(name: &str, dir: &Path, a: f64) -> (usize, usize, f64) {
    let m0 = model(dir);
    let calib = feed(dir, "calib", &m0);
    let cal = TractCalibrator::new(&calib, 16).and_then(|c| c.with_token_mask(&TokenMask::Off)).unwrap(); // the published rule counts every position, padding included
    let mut m1 = m0.clone();
    run(&format!("score{{method=ria,a={a}}},mask{{sparsity=0.5}}"), &mut m1, &cal);
    let reference = reference_scores(&m0, &calib, a);
    let (mut differ, mut total, mut gap) = (0usize, 0usize, 0f64);
    for w in targeted(&m0) {
        let scores = &reference[w.id.name()];
        let zero0 = m0.graph.weight(&w.id).unwrap().zero_flags();
        let pruned = m1.graph.weight(&w.id).unwrap().zero_flags();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&x, &y| zero0[y].cmp(&zero0[x]).then(scores[x].total_cmp(&scores[y])).then(y.cmp(&x)));
        let k = (scores.len() / 2).max(zero0.iter().filter(|z| **z).count());
        let (mut only_pass, mut only_ref) = (f64::NEG_INFINITY, f64::INFINITY);
        for (rank, &f) in order.iter().enumerate() {
            total += 1;
            if pruned[f] != (rank < k) {
                differ += 1;
                if pruned[f] {
                    only_pass = only_pass.max(scores[f]);
                } else {
                    only_ref = only_ref.min(scores[f]);
                }
            }
        }
        if only_pass > f64::NEG_INFINITY {
            gap = gap.max((only_pass - only_ref).abs() / only_pass.abs().max(1e-30));
        }
    }
    println!(
        "ria reference {name} (a={a}): {differ} of {total} decisions differ, largest relative score gap {gap:.2e}"
    );
    (differ, total, gap)
}

#[test]
fn ria_matches_the_reference_rule_bundled() {
    for m in common::BUNDLED {
        for a in [0.5, 1.0] {
            let (differ, total, gap) = check_ria(m, &common::bundled(m), a);
            assert!(differ as f64 <= 0.001 * total as f64, "{m}: {differ} of {total} differ");
            assert!(gap < 1e-5, "{m}: a differing decision is not a near-tie (relative gap {gap})");
        }
    }
}

#[test]
fn ria_matches_the_reference_rule_minilm() {
    if let Some(dir) = common::minilm() {
        let (differ, total, gap) = check_ria("paraphrase_minilm_l3_v2", &dir, 0.5);
        assert!(differ as f64 <= 0.001 * total as f64 && gap < 1e-5, "{differ} of {total}, gap {gap}");
    }
}

/// nm-legalize keeps, in every group of 4 along the reduction axis, the 2 elements with the highest
/// reference RIA scores; block-sparsify runs on RIA scores and zeroes whole blocks.
#[test]
fn ria_drives_nm_legalize_and_block_sparsify() {
    let dir = common::bundled("char_lm");
    let m0 = model(&dir);
    let calib = feed(&dir, "calib", &m0);
    let cal = TractCalibrator::new(&calib, 16).unwrap();
    let reference = reference_scores(&m0, &calib, 0.5);
    let mut m1 = m0.clone();
    run("score{method=ria},nm-legalize{n=2,m=4}", &mut m1, &cal);
    let (mut groups, mut differ) = (0usize, 0usize);
    for w in targeted(&m0) {
        let t = m1.graph.weight(&w.id).unwrap().to_f64().unwrap();
        let (k, n) = (t.shape()[0], t.shape()[1]); // MatMul [K, N]: groups run down each column
        let s = &reference[w.id.name()];
        for col in 0..n {
            for g0 in (0..k).step_by(4) {
                groups += 1;
                let idx: Vec<usize> = (g0..g0 + 4).map(|r| r * n + col).collect();
                let kept: Vec<bool> = idx.iter().map(|&f| t.as_slice().unwrap()[f] != 0.0).collect();
                assert!(kept.iter().filter(|k| **k).count() <= 2, "'{}' group not 2:4", w.id.name());
                let mut by: Vec<usize> = (0..4).collect();
                by.sort_by(|&x, &y| s[idx[y]].total_cmp(&s[idx[x]]).then(x.cmp(&y)));
                if by[..2].iter().any(|&i| !kept[i]) {
                    differ += 1;
                }
            }
        }
    }
    println!("ria 2:4 on char_lm: {differ} of {groups} groups differ from the reference top-2");
    assert!(differ as f64 <= 0.001 * groups as f64);
    let mut m2 = m0.clone();
    run("score{method=ria},block-sparsify{block=4x4,sparsity=0.5}", &mut m2, &cal);
    for w in targeted(&m0) {
        let sp = m2.graph.weight(&w.id).unwrap().sparsity();
        assert!((0.45..=0.55).contains(&sp), "'{}' block sparsity {sp}", w.id.name());
    }
}
