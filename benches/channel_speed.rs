//! Tract latency before and after removing 50% of the hidden channels: `digits_mlp` (both hidden
//! layers) and `char_lm` (the MLP blocks — the only removable channels: the residual stream sits under
//! LayerNorm and the attention heads are reshaped). Channels are zeroed by lowest group L2 norm, then
//! `dead-channel-elim` removes them. Prints the dense / pruned latency ratio per model.

use criterion::{criterion_group, criterion_main, Criterion};
use sparsify_onnx::ir::Model;
use sparsify_onnx::validate::{load_feed, Feed, ModelSource, Runner};
use sparsify_onnx::{input_decls, Pipeline};
use sparsify_passes::channels::{channel_groups, group_scores, zero_channels};
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

criterion_group!(benches, channel_speed);
criterion_main!(benches);
