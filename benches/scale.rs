//! Weight-pass throughput on a large synthetic model (generated here, never committed): the score →
//! mask and score → N:M pipelines run in memory, and the same through a scratch file (the CLI's
//! bounded-memory mode). Set SPARSIFY_BENCH_MB to change the size (default 128 MB of weights).
//! The end-to-end comparison with `cp` and the numpy peers is `benches/scale.sh`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sparsify_onnx::{Pipeline, Scratch};

#[path = "common_synth.rs"]
mod common_synth;

fn passes(c: &mut Criterion) {
    let mb: usize = std::env::var("SPARSIFY_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let width = 2048;
    let layers = (mb * (1 << 20) / (4 * width * width)).max(1);
    let model = common_synth::synthetic_mlp(width, layers);
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("weight-passes");
    group.throughput(Throughput::Bytes((layers * width * width * 4) as u64));
    group.sample_size(10);
    for (name, text) in
        [("mask-0.5", "score{method=l1},mask{sparsity=0.5}"), ("nm-2:4", "score{method=l1},nm-legalize{n=2,m=4}")]
    {
        let p = Pipeline::parse(text).unwrap();
        group.bench_function(name, |b| {
            b.iter_batched(|| model.clone(), |mut m| p.run(&mut m, None).unwrap(), BatchSize::PerIteration)
        });
        group.bench_function(format!("{name}-scratch"), |b| {
            b.iter_batched(
                || (model.clone(), Scratch::new_in(dir.path()).unwrap()),
                |(mut m, s)| p.run_with(&mut m, None, None, Some(&s)).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, passes);
criterion_main!(benches);
