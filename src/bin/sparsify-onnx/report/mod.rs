//! `run --report FILE.html`: one self-contained HTML page (inline CSS and SVG, no external resources)
//! with the pipeline and per-pass timing, per-layer sparsity before/after, per-layer measurements passes
//! recorded (e.g. SparseGPT's reconstruction loss), N:M and block legality, validation per output, and
//! what was skipped and why. Written atomically like every output.

mod charts;

use crate::common::write_atomic;
use anyhow::Result;
use charts::{hbars, Series, AFTER, BEFORE, METRIC};
use sparsify_onnx::ir::Model;
use sparsify_onnx::passes::nm_check::check_nm;
use sparsify_onnx::validate::{Status, ValidationReport};
use sparsify_onnx::RunReport;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Everything the page shows.
pub struct Page<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub report: &'a RunReport,
    /// The transformed model (for the legality check).
    pub model: &'a Model,
    pub validation: Option<&'a ValidationReport>,
    /// Whether validation thresholds were given (a verdict is shown only then).
    pub enforced: bool,
}

/// Render and write the page atomically.
pub fn write(path: &Path, page: &Page<'_>) -> Result<()> {
    write_atomic(path, render(page)?.as_bytes())
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1140px;\
color:#1a202c;padding:0 12px}h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #cbd5e0;padding-bottom:4px;\
margin-top:32px}table{border-collapse:collapse;font-size:13px;margin:8px 0;max-width:100%}td{overflow-wrap:anywhere}th,td{border:1px solid #e2e8f0;\
padding:3px 8px;text-align:left;vertical-align:top}th{background:#edf2f7}td.num{text-align:right;\
font-variant-numeric:tabular-nums}pre{background:#f7fafc;border:1px solid #e2e8f0;padding:8px;white-space:pre-wrap;\
word-break:break-all}.ok{color:#276749}.bad{color:#c53030;font-weight:600}.muted{color:#718096}\
svg{display:block;margin:8px 0;max-width:100%;height:auto}details{margin:6px 0}";

/// The whole page as a string.
pub fn render(p: &Page<'_>) -> Result<String> {
    let r = p.report;
    let mut h = String::new();
    let title = format!("sparsify-onnx report: {}", file_name(p.input));
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    writeln!(h, "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>", esc(&title))?;
    writeln!(h, "<h1>{}</h1>", esc(&title))?;
    writeln!(
        h,
        "<p class=\"muted\">input <code>{}</code> → output <code>{}</code> · sparsify-onnx {}</p>",
        esc(&p.input.display().to_string()),
        esc(&p.output.display().to_string()),
        env!("CARGO_PKG_VERSION")
    )?;
    pipeline_section(&mut h, r)?;
    sparsity_section(&mut h, r)?;
    metrics_section(&mut h, r)?;
    legality_section(&mut h, p)?;
    validation_section(&mut h, p)?;
    skipped_section(&mut h, r)?;
    weights_section(&mut h, r)?;
    notes_section(&mut h, r)?;
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

fn pipeline_section(h: &mut String, r: &RunReport) -> Result<()> {
    h.push_str("<h2>Pipeline</h2>\n");
    let text = if r.pipeline.is_empty() { "(no passes)" } else { &r.pipeline };
    writeln!(h, "<pre>{}</pre>", esc(text))?;
    if r.passes.is_empty() {
        return Ok(());
    }
    let total: f64 = r.passes.iter().map(|p| p.millis).sum();
    let rows: Vec<Vec<Cell>> = r
        .passes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let counters: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k}={}", num(*v))).collect();
            vec![
                Cell::num((i + 1).to_string()),
                Cell::code(&p.element),
                Cell::num(format!("{:.1}", p.millis)),
                Cell::text(if p.changed { "yes" } else { "no" }),
                Cell::text(&counters.join(", ")),
            ]
        })
        .collect();
    table(h, &["#", "pass", "time (ms)", "changed", "counters"], &rows);
    writeln!(h, "<p>total pass time: {total:.1} ms</p>")?;
    let labels: Vec<String> = r.passes.iter().enumerate().map(|(i, p)| format!("{} {}", i + 1, p.pass)).collect();
    let times: Vec<f64> = r.passes.iter().map(|p| p.millis).collect();
    let max = times.iter().cloned().fold(0.0, f64::max) * 1.05;
    let svg =
        hbars("Time per pass", &labels, &[Series { name: "time", color: AFTER, values: times }], max, "milliseconds")?;
    h.push_str(&svg);
    h.push('\n');
    Ok(())
}

fn sparsity_section(h: &mut String, r: &RunReport) -> Result<()> {
    h.push_str("<h2>Sparsity per layer</h2>\n");
    let t = &r.totals_weights;
    let te = &r.totals_with_embeddings;
    writeln!(
        h,
        "<p>weights: {} elements, sparsity {:.3} → {:.3}; with embedding tables: {} elements, {:.3} → {:.3}</p>",
        t.elements, t.sparsity_before, t.sparsity_after, te.elements, te.sparsity_before, te.sparsity_after
    )?;
    if r.weights.is_empty() {
        h.push_str("<p class=\"muted\">The model has no prunable weights.</p>\n");
        return Ok(());
    }
    let labels: Vec<String> = r.weights.iter().map(|w| w.name.clone()).collect();
    let svg = hbars(
        "Sparsity per weight, before and after the pipeline",
        &labels,
        &[
            Series { name: "before", color: BEFORE, values: r.weights.iter().map(|w| w.sparsity_before).collect() },
            Series { name: "after", color: AFTER, values: r.weights.iter().map(|w| w.sparsity_after).collect() },
        ],
        1.0,
        "fraction of zero elements",
    )?;
    h.push_str(&svg);
    h.push('\n');
    Ok(())
}

/// Per-layer measurements recorded by passes (metric → weight → value), one chart per metric.
fn metrics_section(h: &mut String, r: &RunReport) -> Result<()> {
    h.push_str("<h2>Per-layer error and sensitivity</h2>\n");
    let mut metrics: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for p in &r.passes {
        for (metric, per_weight) in &p.weight_metrics {
            let key = format!("{metric} ({})", p.pass);
            metrics.entry(key).or_default().extend(per_weight.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }
    if metrics.is_empty() {
        h.push_str("<p class=\"muted\">No pass of this pipeline measured a per-layer error or sensitivity.</p>\n");
        return Ok(());
    }
    for (metric, per_weight) in &metrics {
        // In weight-table order, then any other subject.
        let mut labels: Vec<String> =
            r.weights.iter().filter(|w| per_weight.contains_key(&w.name)).map(|w| w.name.clone()).collect();
        let others: Vec<String> = per_weight.keys().filter(|k| !labels.contains(k)).cloned().collect();
        labels.extend(others);
        let values: Vec<f64> = labels.iter().map(|l| per_weight[l]).collect();
        let max = values.iter().cloned().filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.05;
        let svg = hbars(metric, &labels, &[Series { name: metric, color: METRIC, values }], max, metric)?;
        h.push_str(&svg);
        h.push('\n');
    }
    Ok(())
}

fn legality_section(h: &mut String, p: &Page<'_>) -> Result<()> {
    h.push_str("<h2>N:M and block legality</h2>\n");
    let (n, m) = nm_of(p.report).unwrap_or((2, 4));
    let rows = check_nm(p.model, n, m, false);
    let eligible = rows.iter().filter(|r| r.eligible).count();
    let compliant = rows.iter().filter(|r| r.compliant == Some(true)).count();
    let bad = rows.iter().filter(|r| r.compliant == Some(false)).count();
    writeln!(
        h,
        "<p>{n}:{m} along each weight's reduction axis (TensorRT's rule) on the output model: {eligible} eligible \
         weights, <span class=\"{}\">{compliant} compliant, {bad} not compliant</span>; {} not eligible.</p>",
        if bad == 0 { "ok" } else { "bad" },
        rows.len() - eligible
    )?;
    let table_rows: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            vec![
                Cell::code(&r.tensor),
                Cell::text(&r.op),
                Cell::text(&format!("{:?}", r.shape)),
                Cell::text(&r.axis.map(|a| a.to_string()).unwrap_or_else(|| "-".into())),
                match r.compliant {
                    Some(true) => Cell::class("yes", "ok"),
                    Some(false) => Cell::class(&format!("NO ({:.1}% of groups)", r.violating_fraction * 100.0), "bad"),
                    None => Cell::text("-"),
                },
                Cell::text(r.reason.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    h.push_str("<details><summary>per weight</summary>\n");
    table(h, &["tensor", "op", "shape", "axis", "compliant", "not eligible because"], &table_rows);
    h.push_str("</details>\n");
    let blocks: Vec<Vec<Cell>> = p
        .report
        .passes
        .iter()
        .filter(|s| s.pass == "block-sparsify")
        .flat_map(|s| s.notes.iter().map(|n| vec![Cell::code(&n.subject), Cell::text(&n.message)]))
        .collect();
    if blocks.is_empty() {
        h.push_str("<p class=\"muted\">No block-sparsify pass in this pipeline.</p>\n");
    } else {
        h.push_str("<p>block-sparsify, per weight:</p>\n");
        table(h, &["weight", "result"], &blocks);
    }
    Ok(())
}

/// N and M of the last N:M pass of the pipeline (`nm-legalize`, `check`, `permute-channels`, `sparsegpt`).
fn nm_of(r: &RunReport) -> Option<(usize, usize)> {
    r.passes.iter().rev().find_map(|p| {
        let n = option(&p.element, "n")?.parse().ok()?;
        let m = option(&p.element, "m")?.parse().ok()?;
        (n > 0 && n < m).then_some((n, m))
    })
}

/// The value of `key` in a canonical pipeline element `name{k=v,...}` (quoted values may hold commas).
fn option(element: &str, key: &str) -> Option<String> {
    let body = element.split_once('{')?.1.strip_suffix('}')?;
    let (mut items, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in body.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items.into_iter().find_map(|it| it.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
}

fn validation_section(h: &mut String, p: &Page<'_>) -> Result<()> {
    h.push_str("<h2>Validation in tract</h2>\n");
    let Some(v) = p.validation else {
        h.push_str("<p class=\"muted\">Not run (pass <code>--validate</code>).</p>\n");
        return Ok(());
    };
    if let Status::NotValidated { reason } = &v.status {
        writeln!(h, "<p class=\"bad\">Not validated: {}</p>", esc(reason))?;
    } else if !p.enforced {
        h.push_str(
            "<p>Fidelity of the transformed model against the original (no thresholds given: no verdict).</p>\n",
        );
    } else if v.status == Status::Passed {
        h.push_str("<p class=\"ok\">Every output is within the thresholds.</p>\n");
    } else {
        h.push_str("<p class=\"bad\">At least one output is over a threshold.</p>\n");
    }
    let rows: Vec<Vec<Cell>> = v
        .outputs
        .iter()
        .map(|o| {
            let mut row = vec![
                Cell::code(&o.name),
                Cell::text(&format!("{}{:?}", o.dtype, o.shape)),
                Cell::num(format!("{:.3e}", o.max_abs_err)),
                Cell::num(format!("{:.3e}", o.rel_l2_err)),
                Cell::num(format!("{:.6}", o.cosine)),
                Cell::num(o.top1_agreement.map(|t| format!("{:.2}%", t * 100.0)).unwrap_or_else(|| "-".into())),
                Cell::text(if o.bit_identical { "yes" } else { "no" }),
            ];
            if p.enforced {
                row.push(if o.within_threshold { Cell::class("ok", "ok") } else { Cell::class("OVER", "bad") });
            }
            row
        })
        .collect();
    let mut header = vec!["output", "type", "max abs error", "relative L2 error", "cosine", "top-1 agreement"];
    header.push("bit-identical");
    if p.enforced {
        header.push("threshold");
    }
    table(h, &header, &rows);
    Ok(())
}

/// Notes that say a weight or node was left alone, and why.
fn skipped_section(h: &mut String, r: &RunReport) -> Result<()> {
    h.push_str("<h2>Skipped and why</h2>\n");
    let rows: Vec<Vec<Cell>> = r
        .passes
        .iter()
        .flat_map(|p| {
            p.notes
                .iter()
                .filter(|n| is_skip(&n.message))
                .map(move |n| vec![Cell::text(&p.pass), Cell::code(&n.subject), Cell::text(&n.message)])
        })
        .collect();
    if rows.is_empty() {
        h.push_str("<p class=\"muted\">Nothing was skipped.</p>\n");
    } else {
        table(h, &["pass", "subject", "reason"], &rows);
    }
    Ok(())
}

fn is_skip(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.starts_with("skipped") || m.starts_with("not ") || m.starts_with("kept ") || m.contains("no weight selected")
}

fn weights_section(h: &mut String, r: &RunReport) -> Result<()> {
    h.push_str("<h2>Weights</h2>\n");
    let rows: Vec<Vec<Cell>> = r
        .weights
        .iter()
        .map(|w| {
            vec![
                Cell::code(&w.name),
                Cell::text(&w.op),
                Cell::text(&format!("{:?}", w.shape)),
                Cell::text(&w.dtype),
                Cell::num(w.elements.to_string()),
                Cell::num(format!("{:.3}", w.sparsity_before)),
                Cell::num(format!("{:.3}", w.sparsity_after)),
            ]
        })
        .collect();
    table(h, &["weight", "op", "shape", "dtype", "elements", "sparsity before", "after"], &rows);
    Ok(())
}

fn notes_section(h: &mut String, r: &RunReport) -> Result<()> {
    h.push_str("<h2>All notes</h2>\n");
    for (i, p) in r.passes.iter().enumerate() {
        writeln!(h, "<details><summary>{} {} — {} notes</summary>", i + 1, esc(&p.pass), p.notes.len())?;
        let rows: Vec<Vec<Cell>> =
            p.notes.iter().map(|n| vec![Cell::code(&n.subject), Cell::text(&n.message)]).collect();
        if !rows.is_empty() {
            table(h, &["subject", "note"], &rows);
        }
        h.push_str("</details>\n");
    }
    Ok(())
}

/// A table cell: escaped text with an optional class, or code.
struct Cell {
    html: String,
    class: Option<&'static str>,
}

impl Cell {
    fn text(s: &str) -> Cell {
        Cell { html: esc(s), class: None }
    }
    fn code(s: &str) -> Cell {
        Cell { html: format!("<code>{}</code>", esc(s)), class: None }
    }
    fn num(s: String) -> Cell {
        Cell { html: esc(&s), class: Some("num") }
    }
    fn class(s: &str, class: &'static str) -> Cell {
        Cell { html: esc(s), class: Some(class) }
    }
}

fn table(h: &mut String, header: &[&str], rows: &[Vec<Cell>]) {
    h.push_str("<table>\n<thead><tr>");
    for c in header {
        h.push_str("<th>");
        h.push_str(&esc(c));
        h.push_str("</th>");
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            match c.class {
                Some(cl) => {
                    let _ = write!(h, "<td class=\"{cl}\">");
                }
                None => h.push_str("<td>"),
            }
            h.push_str(&c.html);
            h.push_str("</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
}

/// HTML-escape text and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// A counter value: integers without a fraction.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_canonical_elements() {
        let e = r#"nm-legalize{n=2,m=4,names="a,b",permute=true}"#;
        assert_eq!(option(e, "n").as_deref(), Some("2"));
        assert_eq!(option(e, "m").as_deref(), Some("4"));
        assert_eq!(option(e, "names").as_deref(), Some("a,b"));
        assert_eq!(option(e, "permute").as_deref(), Some("true"));
        assert_eq!(option("dead-channel-elim", "n"), None);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
