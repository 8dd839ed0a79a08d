//! The accuracy tables of `docs/results.md` (issue 11): bias correction and RIA next to Wanda and
//! SparseGPT, and error-bounded budgets (uniform vs sensitivity allocation).
//!
//! ```text
//! cargo run --release --example accuracy -- bias      # bias-correct / RIA rows
//! cargo run --release --example accuracy -- budget    # mask{max_error=E}, uniform vs allocate=sensitivity
//! cargo run --release --example accuracy -- budget char_lm   # one model
//! ```
//!
//! Calibration uses each model's `calib/` inputs (batches of 16); errors are measured on the held-out
//! `sample/` inputs, which calibration never sees.

use anyhow::{anyhow, bail, Result};
use sparsify_onnx::validate::{self, npy::read_npy, Array, Feed, InputDecl, ModelSource, Thresholds};
use sparsify_onnx::{input_decls, load, to_bytes, Pipeline, TractCalibrator};
use std::path::{Path, PathBuf};
use std::time::Instant;

const BIAS_ROWS: &[(&str, &str)] = &[
    ("wanda 50%", "score{method=wanda},mask{sparsity=0.5}"),
    ("wanda 50% + bias-correct", "score{method=wanda},mask{sparsity=0.5},bias-correct"),
    ("ria 50%", "score{method=ria},mask{sparsity=0.5}"),
    ("ria 50% + bias-correct", "score{method=ria},mask{sparsity=0.5},bias-correct"),
    ("sparsegpt 50%", "sparsegpt{sparsity=0.5}"),
    ("sparsegpt 50% + bias-correct", "sparsegpt{sparsity=0.5},bias-correct"),
    ("wanda 2:4", "score{method=wanda},nm-legalize{n=2,m=4}"),
    ("wanda 2:4 + bias-correct", "score{method=wanda},nm-legalize{n=2,m=4},bias-correct"),
    ("ria 2:4 + bias-correct", "score{method=ria},nm-legalize{n=2,m=4},bias-correct"),
    ("sparsegpt 2:4", "sparsegpt{n=2,m=4}"),
    ("sparsegpt 2:4 + bias-correct", "sparsegpt{n=2,m=4},bias-correct"),
];

struct Spec {
    name: &'static str,
    output: &'static str,
    metric_name: &'static str,
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
    let (mode, only) = match args.as_slice() {
        [m] => (m.clone(), None),
        [m, name] => (m.clone(), Some(name.clone())),
        _ => bail!("usage: accuracy bias|budget [MODEL]"),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match mode.as_str() {
        "bias" => println!("| model | pipeline | task metric | value | rel. L2 vs dense | weight sparsity | seconds |\n|---|---|---|---|---|---|---|"),
        "budget" => println!(
            "| model | allocation | error bound E | global sparsity | validated rel. L2 (calib) | held-out rel. L2 (sample) | task metric | seconds |\n|---|---|---|---|---|---|---|---|"
        ),
        _ => bail!("unknown mode '{mode}'"),
    }
    for spec in MODELS {
        if only.as_deref().is_some_and(|o| o != spec.name) {
            continue;
        }
        let dir: PathBuf = if spec.name == "paraphrase_minilm_l3_v2" {
            root.join("../shared/models").join(spec.name)
        } else {
            root.join("tests/data/models").join(spec.name)
        };
        if !dir.join("model.onnx").exists() {
            eprintln!("skipped: {} absent at {}", spec.name, dir.display());
            continue;
        }
        if mode == "bias" {
            let rows: Vec<(String, String)> = BIAS_ROWS.iter().map(|(l, t)| (l.to_string(), t.to_string())).collect();
            evaluate(spec, &dir, &rows, false)?;
        } else {
            let mut rows = Vec::new();
            for e in [0.05, 0.1, 0.2] {
                rows.push((format!("uniform|{e}"), format!("score{{method=wanda}},mask{{max_error={e}}}")));
                rows.push((format!("owl|{e}"), format!("score{{method=wanda}},mask{{max_error={e},allocate=owl}}")));
                rows.push((
                    format!("sensitivity|{e}"),
                    format!("score{{method=wanda}},mask{{max_error={e},allocate=sensitivity}}"),
                ));
            }
            evaluate(spec, &dir, &rows, true)?;
        }
    }
    Ok(())
}

fn evaluate(spec: &Spec, dir: &Path, rows: &[(String, String)], budget: bool) -> Result<()> {
    let dense = load(&dir.join("model.onnx"))?;
    let decls = input_decls(&dense);
    let sample = validate::load_feed(&dir.join("sample"), &decls)?;
    let calib = TractCalibrator::new(&validate::load_feed(&dir.join("calib"), &decls)?, 16)?;
    let dense_out = run(&to_bytes(&dense)?, &sample)?;
    for (label, text) in rows {
        let start = Instant::now();
        let mut m = dense.clone();
        let report = Pipeline::parse(text)?.run(&mut m, Some(&calib))?;
        let secs = start.elapsed().as_secs_f64();
        let bytes = to_bytes(&m)?;
        let metric = (spec.metric)(dir, &bytes, &decls)?;
        let cmp = validate::compare_outputs(&dense_out, &run(&bytes, &sample)?, &Thresholds::default());
        let o = cmp
            .outputs
            .iter()
            .find(|o| o.name == spec.output || (spec.output.is_empty() && o.dtype == "float32"))
            .ok_or_else(|| anyhow!("no output '{}'", spec.output))?;
        let sparsity = report.totals_weights.sparsity_after;
        if budget {
            let (alloc, e) = label.split_once('|').unwrap_or((label, ""));
            let mask = report.passes.iter().find(|p| p.pass == "mask").ok_or_else(|| anyhow!("no mask pass"))?;
            let chosen: f64 = mask
                .notes
                .iter()
                .find(|n| n.message.starts_with("chosen global sparsity"))
                .and_then(|n| n.message.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
                .unwrap_or(f64::NAN);
            let calib_err = mask
                .notes
                .iter()
                .filter_map(|n| {
                    let rest = n.message.strip_prefix("global sparsity ")?;
                    let (s, e) = rest.split_once(": validated rel L2 ")?;
                    Some((s.parse::<f64>().ok()?, e.parse::<f64>().ok()?))
                })
                .filter(|(s, _)| (s - chosen).abs() < 1e-9)
                .map(|(_, e)| e)
                .next_back()
                .unwrap_or(f64::NAN);
            println!(
                "| {} | {alloc} | {e} | {sparsity:.4} | {calib_err:.4} | {:.4} | {metric:.4} | {secs:.1} |",
                spec.name, o.rel_l2_err
            );
        } else {
            println!(
                "| {} | {label} | {} | {metric:.4} | {:.4} | {sparsity:.4} | {secs:.2} |",
                spec.name, spec.metric_name, o.rel_l2_err
            );
        }
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

fn accuracy(scores: &Array, labels: &[i64]) -> Result<f64> {
    let classes = *scores.shape().last().unwrap();
    let v = f32s(scores)?;
    let hits = v
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &y)| row.iter().enumerate().fold(0, |b, (i, x)| if *x > row[b] { i } else { b }) as i64 == y)
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

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
