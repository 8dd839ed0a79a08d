//! SparseGPT speed. `layer-solve`: the per-layer solver alone on MiniLM's largest layer shape (W 384 × 1536
//! against a 1536 × 1536 Hessian), next to one matrix product of the same size (W · H) for scale.
//! `minilm` / `char_lm`: the whole pass (calibration through tract included) in both modes; MiniLM is
//! read from ../shared/models and skipped with a message when absent.

use criterion::{criterion_group, criterion_main, Criterion};
use sparsify_onnx::validate::load_feed;
use sparsify_onnx::{input_decls, Calibrator, Pipeline, TractCalibrator};
use sparsify_passes::obs::{sparsegpt, Pattern};
use std::path::{Path, PathBuf};

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn layer_solve(c: &mut Criterion) {
    let (rows, cols, n) = (384, 1536, 2048);
    let mut s = 1;
    let x = ndarray::Array2::from_shape_fn((n, cols), |_| lcg(&mut s));
    let h = x.t().dot(&x);
    let hv: Vec<f64> = h.iter().copied().collect();
    let w0: Vec<f64> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
    let wm = ndarray::Array2::from_shape_vec((rows, cols), w0.clone()).unwrap();
    let mut g = c.benchmark_group("layer-solve-384x1536");
    g.sample_size(10);
    g.bench_function("sparsegpt-50%", |b| {
        b.iter(|| {
            let mut w = w0.clone();
            sparsegpt(&mut w, rows, cols, hv.clone(), Pattern::Unstructured { sparsity: 0.5, offset: 0 }, 128, 0.01)
                .unwrap()
        })
    });
    g.bench_function("sparsegpt-2:4", |b| {
        b.iter(|| {
            let mut w = w0.clone();
            sparsegpt(&mut w, rows, cols, hv.clone(), Pattern::NM { n: 2, m: 4 }, 128, 0.01).unwrap()
        })
    });
    g.bench_function("matmul-W·H", |b| b.iter(|| wm.dot(&h)));
    g.finish();
}

fn whole_pass(c: &mut Criterion, name: &str, dir: &Path) {
    let model = sparsify_onnx::load(&dir.join("model.onnx")).unwrap();
    let feed = load_feed(&dir.join("calib"), &input_decls(&model)).unwrap();
    let cal = TractCalibrator::new(&feed, 16).unwrap();
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    for p in [
        "sparsegpt{sparsity=0.5,mode=parallel}",
        "sparsegpt{sparsity=0.5,mode=sequential}",
        "sparsegpt{n=2,m=4,mode=parallel}",
    ] {
        let pipeline = Pipeline::parse(p).unwrap();
        g.bench_function(p, |b| {
            b.iter(|| {
                let mut m = model.clone();
                pipeline.run(&mut m, Some(&cal as &dyn Calibrator)).unwrap()
            })
        });
    }
    g.finish();
}

fn models(c: &mut Criterion) {
    whole_pass(c, "char_lm", &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/char_lm"));
    let minilm = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models/paraphrase_minilm_l3_v2"));
    if minilm.join("model.onnx").is_file() {
        whole_pass(c, "paraphrase_minilm_l3_v2", &minilm);
    } else {
        println!("skipped: ../shared/models/paraphrase_minilm_l3_v2 absent");
    }
}

criterion_group!(benches, layer_solve, models);
criterion_main!(benches);
