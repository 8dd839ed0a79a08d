//! Tract latency before and after removing 50% of the hidden channels: `digits_mlp` (both hidden
//! layers) and `char_lm` (the MLP blocks — the only removable channels: the residual stream sits under
//! LayerNorm and the attention heads are reshaped). Channels are zeroed by lowest group L2 norm, then
//! `dead-channel-elim` removes them. Prints the dense / pruned latency ratio per model.
//!
//! Issue 12: char_lm and MiniLM L3 (when `../shared/models` has it) also go through the calibrated
//! structured pipeline `mask{sparsity=0.5,granularity=coupled,reconstruct=obs},dead-channel-elim`
//! (calibration on `calib/`); the bench prints parameters, MACs per example and the median tract
//! latency before / after, and the held-out rel. L2 of the main output.
//!
//! ```text
//! cargo bench --profile dev --bench channel_speed      # dev profile: deps are optimised there too
//! ```
//! char_lm also gets the attention-head rows (issue 12 item 3): `prune-heads{fraction=0.25}` (4 -> 3
//! heads per block, calibrated on `calib/`) alone and after the FFN channel removal. Their speed ratios
//! are measured interleaved (dense and pruned runs alternate, medians of each) so that load from other
//! processes hits both sides alike.

use criterion::{criterion_group, criterion_main, Criterion};
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{load_feed, Feed, ModelSource, Runner};
use sparsify_onnx::{input_decls, Calibrator, Pipeline, TractCalibrator};
use sparsify_passes::channels::{channel_groups, group_scores, zero_channels};
use sparsify_passes::dead_channel_elim::{mac_count, param_count};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/models")).join(name)
}

/// Zero the lowest-norm half of every removable channel group, then eliminate.
fn pruned(m: &Model) -> Model {
    let mut m = m.clone();
    for grp in channel_groups(&m.graph) {
        let free: Vec<usize> = (0..grp.channels).filter(|&c| grp.blocked[c].is_none()).collect();
        let s = group_scores(&m.graph, &grp, None).unwrap();
        let mut order = free.clone();
        order.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
        zero_channels(&mut m.graph, &grp, &order[..free.len() / 2]).unwrap();
    }
    Pipeline::parse("dead-channel-elim").unwrap().run(&mut m, None).unwrap();
    m
}

fn runner(m: &Model, feed: &Feed) -> Runner {
    let bytes = sparsify_onnx::to_bytes(m).unwrap();
    let r = Runner::new(ModelSource::Bytes(&bytes), Some(feed), &[]).unwrap();
    r.run(feed).unwrap();
    r
}

/// Median wall time of `runs` runs.
fn median(r: &Runner, feed: &Feed, runs: usize) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            std::hint::black_box(r.run(feed).unwrap());
            s.elapsed()
        })
        .collect();
    t.sort();
    t[runs / 2]
}

/// `pipeline` (with calibration) on a copy of `m`.
fn piped(m: &Model, pipeline: &str, calib: &TractCalibrator) -> Model {
    let mut m = m.clone();
    Pipeline::parse(pipeline).unwrap().run(&mut m, Some(calib as &dyn Calibrator)).unwrap();
    m
}

/// Medians of `runs` alternating runs of `a` and `b`.
fn interleaved(a: &Runner, b: &Runner, feed: &Feed, runs: usize) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (r, t) in [(a, &mut ta), (b, &mut tb)] {
            let s = Instant::now();
            std::hint::black_box(r.run(feed).unwrap());
            t.push(s.elapsed());
        }
    }
    ta.sort();
    tb.sort();
    (ta[runs / 2], tb[runs / 2])
}

fn head_speed(c: &mut Criterion) {
    let name = "char_lm";
    let model = sparsify_onnx::load(&dir(name).join("model.onnx")).unwrap();
    let decls = input_decls(&model);
    let feed = load_feed(&dir(name).join("sample"), &decls).unwrap();
    let calib = TractCalibrator::new(&load_feed(&dir(name).join("calib"), &decls).unwrap(), 16).unwrap();
    let ffn = "score{method=l2},mask{sparsity=0.5,granularity=coupled},dead-channel-elim";
    let rows = [
        ("heads-25%", "prune-heads{fraction=0.25}".to_string()),
        ("ffn-50%", ffn.to_string()),
        ("ffn-50%+heads-25%", format!("{ffn},prune-heads{{fraction=0.25}}")),
    ];
    let dense_r = runner(&model, &feed);
    let mut group = c.benchmark_group("tract-char_lm-heads");
    group.sample_size(20);
    let small: Vec<(&str, Runner)> = rows.iter().map(|(l, p)| (*l, runner(&piped(&model, p, &calib), &feed))).collect();
    for (label, r) in &small {
        group.bench_function(*label, |b| b.iter(|| r.run(&feed).unwrap()));
    }
    group.finish();
    for (label, r) in &small {
        let (d, s) = interleaved(&dense_r, r, &feed, 41);
        println!(
            "{name} {label}: median dense {:.3} ms, pruned {:.3} ms, speedup {:.2}x (interleaved)",
            d.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3,
            d.as_secs_f64() / s.as_secs_f64()
        );
    }
}

fn channel_speed(c: &mut Criterion) {
    for (name, runs) in [("digits_mlp", 201), ("char_lm", 31)] {
        let model = sparsify_onnx::load(&dir(name).join("model.onnx")).unwrap();
        let feed = load_feed(&dir(name).join("sample"), &input_decls(&model)).unwrap();
        let small = pruned(&model);
        let (dense_r, small_r) = (runner(&model, &feed), runner(&small, &feed));
        let mut group = c.benchmark_group(format!("tract-{name}"));
        group.sample_size(if name == "char_lm" { 20 } else { 50 });
        group.bench_function("dense", |b| b.iter(|| dense_r.run(&feed).unwrap()));
        group.bench_function("50%-channels-removed", |b| b.iter(|| small_r.run(&feed).unwrap()));
        group.finish();
        let (d, s) = (median(&dense_r, &feed, runs), median(&small_r, &feed, runs));
        println!(
            "{name}: median dense {:.3} ms, pruned {:.3} ms, speedup {:.2}x",
            d.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3,
            d.as_secs_f64() / s.as_secs_f64()
        );
    }
}

/// The calibrated structured pipeline at FFN 50%: params, MACs, latency before / after.
fn structured_speed(c: &mut Criterion) {
    let shared = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models/paraphrase_minilm_l3_v2"));
    for (name, folder, output, runs) in
        [("char_lm", dir("char_lm"), "logits", 31), ("paraphrase_minilm_l3_v2", shared, "461", 31)]
    {
        if !folder.join("model.onnx").exists() {
            eprintln!("skipped: {name} absent at {}", folder.display());
            continue;
        }
        let model = sparsify_onnx::load(&folder.join("model.onnx")).unwrap();
        let decls = input_decls(&model);
        let feed = load_feed(&folder.join("sample"), &decls).unwrap();
        let calib = TractCalibrator::new(&load_feed(&folder.join("calib"), &decls).unwrap(), 16).unwrap();
        let mut small = model.clone();
        Pipeline::parse("mask{sparsity=0.5,granularity=coupled,reconstruct=obs},dead-channel-elim")
            .unwrap()
            .run(&mut small, Some(&calib))
            .unwrap();
        let (dense_r, small_r) = (runner(&model, &feed), runner(&small, &feed));
        let (a, b) = (dense_r.run(&feed).unwrap(), small_r.run(&feed).unwrap());
        let cmp = sparsify_onnx::validate::compare_outputs(&a, &b, &Default::default());
        let err = cmp.outputs.iter().find(|o| o.name == output).map_or(f64::NAN, |o| o.rel_l2_err);
        let mut group = c.benchmark_group(format!("tract-structured-{name}"));
        group.sample_size(10);
        group.bench_function("dense", |b| b.iter(|| dense_r.run(&feed).unwrap()));
        group.bench_function("ffn-50%-obs", |b| b.iter(|| small_r.run(&feed).unwrap()));
        group.finish();
        let (d, s) = (median(&dense_r, &feed, runs), median(&small_r, &feed, runs));
        println!(
            "{name} (FFN 50%, obs): params {} -> {}, MACs/example {} -> {}, median tract {:.3} ms -> {:.3} ms ({:.2}x), held-out rel L2 {err:.4}",
            param_count(&model.graph),
            param_count(&small.graph),
            mac_count(&model.graph),
            mac_count(&small.graph),
            d.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3,
            d.as_secs_f64() / s.as_secs_f64()
        );
    }
}

criterion_group!(benches, channel_speed, structured_speed, head_speed);
criterion_main!(benches);
