//! What the results examples share: the shared models' task metrics (digits and ppocr accuracy,
//! char_lm held-out cross-entropy, MiniLM pair AUC), computed in tract on each model's own data.

use anyhow::{anyhow, bail, Result};
use sparsify_onnx::validate::{self, npy::read_npy, Array, Feed, InputDecl, ModelSource};
use std::path::Path;

/// How one model is evaluated.
pub struct Spec {
    pub name: &'static str,
    /// The output compared with the dense model (relative L2, cosine).
    pub output: &'static str,
    pub metric_name: &'static str,
    /// (model folder, model bytes, graph inputs) → the metric.
    pub metric: fn(&Path, &[u8], &[InputDecl]) -> Result<f64>,
}

pub const MODELS: &[Spec] = &[
    Spec { name: "digits_mlp", output: "logits", metric_name: "test accuracy", metric: digits_accuracy },
    Spec { name: "digits_cnn", output: "logits", metric_name: "test accuracy", metric: digits_accuracy },
    Spec { name: "char_lm", output: "logits", metric_name: "held-out nats/char", metric: char_lm_nats },
    Spec { name: "ppocr_cls_mobile_v2", output: "", metric_name: "sample accuracy", metric: ppocr_accuracy },
    Spec { name: "paraphrase_minilm_l3_v2", output: "461", metric_name: "pair AUC", metric: minilm_auc },
];

pub fn run(bytes: &[u8], feed: &Feed) -> Result<Vec<(String, Array)>> {
    Ok(validate::run_model(ModelSource::Bytes(bytes), feed, &[])?)
}

pub fn f32s(a: &Array) -> Result<Vec<f32>> {
    match a {
        Array::F32(x) => Ok(x.iter().copied().collect()),
        other => bail!("expected float32, got {}", other.dtype_name()),
    }
}

pub fn ints(a: &Array) -> Vec<i64> {
    a.to_f64_vec().into_iter().map(|v| v as i64).collect()
}

/// Fraction of rows whose arg-max over the last axis equals the label.
pub fn accuracy(scores: &Array, labels: &[i64]) -> Result<f64> {
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
pub fn first_output(bytes: &[u8], decls: &[InputDecl], x: Array) -> Result<Array> {
    let name = decls.first().ok_or_else(|| anyhow!("no input"))?.name.clone();
    let out = run(bytes, &Feed { arrays: vec![(name, x)] })?;
    Ok(out.into_iter().next().ok_or_else(|| anyhow!("no output"))?.1)
}

pub fn digits_accuracy(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
    let out = first_output(bytes, decls, read_npy(&dir.join("test_x.npy"))?)?;
    accuracy(&out, &ints(&read_npy(&dir.join("test_y.npy"))?))
}

pub fn ppocr_accuracy(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
    let out = first_output(bytes, decls, read_npy(&dir.join("sample/input_0.npy"))?)?;
    accuracy(&out, &ints(&read_npy(&dir.join("sample/labels.npy"))?))
}

/// Mean cross-entropy (nats per character) of the next-character logits [B, T, V].
pub fn char_lm_nats(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
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
pub fn minilm_auc(dir: &Path, bytes: &[u8], decls: &[InputDecl]) -> Result<f64> {
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

/// The folder of a shared model (MiniLM from `../shared/models`, the others bundled), or `None` with a
/// "skipped" line when it is absent.
pub fn model_dir(name: &str) -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if name == "paraphrase_minilm_l3_v2" {
        root.join("../shared/models").join(name)
    } else {
        root.join("tests/data/models").join(name)
    };
    if dir.join("model.onnx").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: {name} absent at {}", dir.display());
        None
    }
}
