//! Dense / pruned numbers for every shared model: the task metric and the output error against the
//! dense model, one row per pipeline. The table is Markdown, as pasted into `docs/results.md`.
//!
//! ```text
//! cargo run --release --example results -- [--models DIR]
//! ```
//!
//! Without `--models`, the four bundled models are read from `tests/data/models` and MiniLM from
//! `../shared/models` (skipped with a message when absent). With `--models DIR`, every model is read
//! from `DIR/<name>`. Calibration (for Wanda) uses each model's `calib/` folder; the output error uses
//! the `sample/` inputs. To add a row (2:4, SparseGPT, ...), add a `(label, pipeline)` to [`ROWS`].

use anyhow::{anyhow, bail, Context, Result};
use sparsify_onnx::validate::{self, npy::read_npy, Array, Feed, InputDecl, ModelSource, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The rows of the table: a label and the pipeline that produces it ("" = the dense model).
const ROWS: &[(&str, &str)] = &[
    ("dense", ""),
    ("magnitude 50%", "score{method=l1},mask{sparsity=0.5}"),
    ("magnitude 50% per row", "score{method=l1},mask{sparsity=0.5,scope=row}"),
    ("wanda 50%", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50%, 4 cubic steps", "score{method=wanda},mask{sparsity=0.5,steps=4,schedule=cubic}"),
    ("sparsegpt 50%", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 2:4", "sparsegpt{n=2,m=4}"),
];

/// How one model is evaluated.
struct Spec {
    name: &'static str,
    /// The output compared with the dense model (relative L2, cosine).
    output: &'static str,
    metric_name: &'static str,
    /// (model folder, model bytes, graph inputs) → the metric.
    metric: fn(&Path, &[u8], &[InputDecl]) -> Result<f64>,
}

const MODELS: &[Spec] = &[
    Spec { name: "digits_mlp", output: "logits", metric_name: "test accuracy", metric: digits_accuracy },
    Spec { name: "digits_cnn", output: "logits", metric_name: "test accuracy", metric: digits_accuracy },
    Spec { name: "char_lm", output: "logits", metric_name: "held-out nats/char", metric: char_lm_nats },
    Spec { name: "ppocr_cls_mobile_v2", output: "", metric_name: "sample accuracy", metric: ppocr_accuracy },
    Spec { name: "paraphrase_minilm_l3_v2", output: "461", metric_name: "pair AUC", metric: minilm_auc },
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let models_dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--models" => Some(PathBuf::from(dir)),
        _ => bail!("usage: results [--models DIR]"),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!(
        "| model | pipeline | task metric | value | rel. L2 vs dense | cosine vs dense | weight sparsity | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for spec in MODELS {
        let dir = match &models_dir {
            Some(d) => d.join(spec.name),
            None if spec.name == "paraphrase_minilm_l3_v2" => root.join("../shared/models").join(spec.name),
            None => root.join("tests/data/models").join(spec.name),
        };
        if !dir.join("model.onnx").exists() {
            eprintln!("skipped: {} absent at {}", spec.name, dir.display());
            continue;
        }
        evaluate(spec, &dir).with_context(|| spec.name.to_string())?;
    }
    Ok(())
}

fn evaluate(spec: &Spec, dir: &Path) -> Result<()> {
    let dense = load(&dir.join("model.onnx"))?;
    let decls = input_decls(&dense);
    let sample = validate::load_feed(&dir.join("sample"), &decls)?;
    let calib = TractCalibrator::new(&validate::load_feed(&dir.join("calib"), &decls)?, 16)?;
    let dense_bytes = to_bytes(&dense)?;
    let dense_out = run(&dense_bytes, &sample)?;
    for (label, text) in ROWS {
        let start = Instant::now();
        let mut m = dense.clone();
        let report = Pipeline::parse(text)?.run(&mut m, Some(&calib))?;
        let secs = start.elapsed().as_secs_f64();
        let bytes = to_bytes(&m)?;
        let metric = (spec.metric)(dir, &bytes, &decls)?;
        let out = run(&bytes, &sample)?;
        let cmp = validate::compare_outputs(&dense_out, &out, &Thresholds::default());
        let o = cmp
            .outputs
            .iter()
            .find(|o| o.name == spec.output || (spec.output.is_empty() && o.dtype == "float32"))
            .ok_or_else(|| anyhow!("no output '{}'", spec.output))?;
        println!(
            "| {} | {label} | {} | {metric:.4} | {:.4} | {:.4} | {:.4} | {secs:.2} |",
            spec.name, spec.metric_name, o.rel_l2_err, o.cosine, report.totals_weights.sparsity_after
        );
    }
    Ok(())
}

fn run(bytes: &[u8], feed: &Feed) -> Result<Vec<(String, Array)>> {
    Ok(validate::run_model(ModelSource::Bytes(bytes), feed, &[])?)
}

fn f32s(a: &Array) -> Result<Vec<f32>> {
    match a {
        Array::F32(x) => Ok(x.iter().copied().collect()),
        other => bail!("expected float32, got {}", other.dtype_name()),
    }
}

fn ints(a: &Array) -> Vec<i64> {
    a.to_f64_vec().into_iter().map(|v| v as i64).collect()
}

/// Fraction of rows whose arg-max over the last axis equals the label.
fn accuracy(scores: &Array, labels: &[i64]) -> Result<f64> {
    let classes = *scores.shape().last().unwrap();
    let v = f32s(scores)?;
    let hits = v
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &y)| {
            let best = row.iter().enumerate().fold(0, |b, (i, x)| if *x > row[b] { i } else { b });
            best as i64 == y
        })
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Runs the model on one array fed to its first input; returns the first output.
fn first_output(bytes: &[u8], decls: &[InputDecl], x: Array) -> Result<Array> {
    let name = decls.first().ok_or_else(|| anyhow!("no input"))?.name.clone();
    let out = run(bytes, &Feed { arrays: vec![(name, x)] })?;
    Ok(out.into_iter().next().ok_or_else(|| anyhow!("no output"))?.1)
}

fn digits_accuracy(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
    let out = first_output(bytes, decls, read_npy(&dir.join("test_x.npy"))?)?;
    accuracy(&out, &ints(&read_npy(&dir.join("test_y.npy"))?))
}

fn ppocr_accuracy(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
    let out = first_output(bytes, decls, read_npy(&dir.join("sample/input_0.npy"))?)?;
    accuracy(&out, &ints(&read_npy(&dir.join("sample/labels.npy"))?))
}

/// Mean cross-entropy (nats per character) of the next-character logits [B, T, V].
fn char_lm_nats(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
    let out = first_output(bytes, decls, read_npy(&dir.join("heldout_x.npy"))?)?;
    let vocab = *out.shape().last().unwrap();
    let y = ints(&read_npy(&dir.join("heldout_y.npy"))?);
    let logits = f32s(&out)?;
    let mut total = 0f64;
    for (row, &t) in logits.chunks(vocab).zip(&y) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        total += lse - row[t as usize] as f64;
    }
    Ok(total / y.len() as f64)
}

/// Paraphrase-pair AUC: sentences 2i and 2i+1 form pair i (sample.json); the score is the cosine of
/// their embeddings (output '461'), the label `pair_labels.npy[i]`.
fn minilm_auc(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
    let feed = validate::load_feed(&dir.join("sample"), decls)?;
    let out = run(bytes, &feed)?;
    let (_, emb) = out.iter().find(|(n, _)| n == "461").ok_or_else(|| anyhow!("no output 461"))?;
    let d = emb.shape()[1];
    let e = f32s(emb)?;
    let labels = ints(&read_npy(&dir.join("sample/pair_labels.npy"))?);
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    };
    let scores: Vec<f64> =
        (0..labels.len()).map(|i| cos(&e[2 * i * d..(2 * i + 1) * d], &e[(2 * i + 1) * d..(2 * i + 2) * d])).collect();
    let (mut wins, mut pairs) = (0f64, 0f64);
    for (i, &li) in labels.iter().enumerate() {
        for (j, &lj) in labels.iter().enumerate() {
            if li == 1 && lj == 0 {
                pairs += 1.0;
                wins += match scores[i].partial_cmp(&scores[j]) {
                    Some(std::cmp::Ordering::Greater) => 1.0,
                    Some(std::cmp::Ordering::Equal) => 0.5,
                    _ => 0.0,
                };
            }
        }
    }
    Ok(wins / pairs)
}
