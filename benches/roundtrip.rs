//! Import → export throughput on a large synthetic model (generated here, never committed), inline and
//! with external data. Set SPARSIFY_BENCH_MB to change the size (default 256 MB of weights).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sparsify_onnx::{ExportOptions, ExternalMode};

#[path = "common_synth.rs"]
mod common_synth;

fn roundtrip(c: &mut Criterion) {
    let mb: usize = std::env::var("SPARSIFY_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let width = 2048;
    let layers = (mb * (1 << 20) / (4 * width * width)).max(1);
    let dir = tempfile::tempdir().unwrap();
    let model = common_synth::synthetic_mlp(width, layers);
    let bytes = (layers * width * width * 4) as u64;
    let inline = dir.path().join("inline.onnx");
    let ext = dir.path().join("ext.onnx");
    sparsify_onnx::save(&model, &inline, &ExportOptions { external: ExternalMode::Never, threshold: 1024 }).unwrap();
    sparsify_onnx::save(&model, &ext, &ExportOptions { external: ExternalMode::Always, threshold: 1024 }).unwrap();
    drop(model);
    let mut group = c.benchmark_group("import-export");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    for (name, src) in [("inline", &inline), ("external", &ext)] {
        let out = dir.path().join(format!("out-{name}.onnx"));
        group.bench_function(name, |b| {
            b.iter(|| {
                let m = sparsify_onnx::load(src).unwrap();
                sparsify_onnx::save(&m, &out, &ExportOptions::default()).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
