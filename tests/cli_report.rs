//! The command line's `--report` HTML page and its progress bars: the page is well-formed, self-contained
//! and names every weight; progress is drawn on a terminal only, never into pipes or with `--quiet`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sparsify-onnx")
}

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models").join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];

/// A strict well-formedness check: every element is closed, in order (HTML void elements excepted),
/// attribute quotes balance, `<style>`/`<script>` bodies are skipped. Returns the element names opened.
fn check_html(doc: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut opened = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("<!--") {
            rest = &r[r.find("-->").ok_or("unclosed comment")? + 3..];
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = &rest[rest.find('>').ok_or("unclosed declaration")? + 1..];
            continue;
        }
        let end = rest.find('>').ok_or("unclosed tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => return Err(format!("</{name}> closes <{open}>")),
                None => return Err(format!("</{name}> closes nothing")),
            }
            continue;
        }
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ':').collect();
        if name.is_empty() {
            return Err(format!("bad tag <{tag}>"));
        }
        opened.push(name.clone());
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "style" || name == "script" {
            let close = format!("</{name}>");
            rest = &rest[rest.find(&close).ok_or(format!("unclosed <{name}>"))? + close.len()..];
            continue;
        }
        stack.push(name);
    }
    match stack.last() {
        Some(open) => Err(format!("<{open}> is never closed")),
        None => Ok(opened),
    }
}

#[test]
fn the_checker_rejects_broken_markup() {
    assert!(check_html("<html><body><p>x</p></body></html>").is_ok());
    assert!(check_html("<svg><rect x=\"1\"/><text>a</text></svg>").is_ok());
    assert!(check_html("<html><body><p>x</body></html>").is_err());
    assert!(check_html("<div><span></div></span>").is_err());
    assert!(check_html("<table><tr><td a=\"1>x</td></tr></table>").is_err());
    assert!(check_html("<p>").is_err());
}

/// Escaped as the page escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn report_for(name: &str, pipeline: &str, extra: &[&str]) -> (String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(name);
    let html = tmp.path().join("report.html");
    let out = tmp.path().join("out.onnx");
    let mut args = vec![
        "run".to_string(),
        m.join("model.onnx").to_str().unwrap().to_string(),
        "-o".into(),
        out.to_str().unwrap().to_string(),
        "--pipeline".into(),
        pipeline.to_string(),
        "--report".into(),
        html.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.replace("{M}", m.to_str().unwrap())));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    (std::fs::read_to_string(&html).unwrap(), text(&o.stdout))
}

#[test]
fn report_is_well_formed_self_contained_and_names_every_weight() {
    for (name, pipeline, extra) in [
        ("ppocr_cls_mobile_v2", "score{method=l1},nm-legalize{n=2,m=4}", vec!["--validate", "--inputs", "{M}/sample"]),
        ("char_lm", "score{method=l2},mask{sparsity=0.5}", vec![]),
        ("digits_mlp", "sparsegpt{sparsity=0.5}", vec!["--calib", "{M}/calib"]),
    ] {
        let (html, stdout) = report_for(name, pipeline, &extra);
        assert!(stdout.contains("wrote report"), "{stdout}");
        let elements = check_html(&html).unwrap_or_else(|e| panic!("{name}: malformed HTML: {e}"));
        assert_eq!(elements.first().map(|s| s.as_str()), Some("html"));
        // Self-contained: nothing is fetched.
        for needle in ["src=", "href=", "url(", "@import", "<link", "<script"] {
            assert!(!html.contains(needle), "{name}: external resource marker '{needle}'");
        }
        // At least the timing and the sparsity chart, drawn as SVG.
        let svgs = elements.iter().filter(|e| *e == "svg").count();
        assert!(svgs >= 2, "{name}: {svgs} charts");
        // Every weight of the model (and embedding table) by name.
        let m = sparsify_onnx::load(&model(name).join("model.onnx")).unwrap();
        let weights = sparsify_onnx::weight_table(&m);
        assert!(!weights.is_empty());
        for w in &weights {
            assert!(html.contains(&esc(&w.name)), "{name}: weight {} missing from the report", w.name);
        }
        assert!(html.contains(&esc(pipeline.split(',').next().unwrap().split('{').next().unwrap())));
        if name == "ppocr_cls_mobile_v2" {
            assert!(html.contains("Validation in tract") && html.contains("cosine"), "validation table");
            assert!(html.contains("2:4 along each weight"), "legality summary");
        }
        if name == "digits_mlp" {
            // SparseGPT measures a per-layer reconstruction loss: charted.
            assert!(html.contains("sparsegpt reconstruction loss"), "per-layer metric chart");
        }
    }
}

#[test]
fn an_unwritable_report_fails_cleanly_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model("digits_mlp");
    let html = tmp.path().join("no-such-dir").join("report.html");
    let out = tmp.path().join("out.onnx");
    let o = run(&[
        "run",
        m.join("model.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("report.html"), "{}", text(&o.stderr));
    assert!(!html.exists());
}

/// Stage labels the passes and the calibrator report (see `sparsify-pm::progress`).
const LABELS: [&str; 3] = ["calibration: batches", "mask: steps", "nm-legalize: weights"];

fn progress_args(m: &Path, out: &Path, quiet: bool) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        m.join("model.onnx").display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--pipeline".into(),
        "score{method=wanda},mask{sparsity=0.5},nm-legalize{n=2,m=4}".into(),
        "--calib".into(),
        m.join("calib").display().to_string(),
    ];
    if quiet {
        a.push("--quiet".into());
    }
    a
}

#[test]
fn no_progress_output_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model("digits_cnn");
    let out = tmp.path().join("o.onnx");
    let args = progress_args(&m, &out, false);
    let o = Command::new(bin()).args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for stream in [text(&o.stdout), text(&o.stderr)] {
        assert!(!stream.contains('\r') && !stream.contains('\u{1b}'), "terminal control output: {stream:?}");
        for l in LABELS {
            assert!(!stream.contains(l), "progress '{l}' in piped output: {stream}");
        }
    }
}

/// Under a pseudo-terminal (util-linux `script`) the bars are drawn, and `--quiet` removes them.
#[test]
fn progress_on_a_terminal_unless_quiet() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: util-linux `script` (pseudo-terminal) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = model("digits_cnn");
    let out = tmp.path().join("o.onnx");
    let under_pty = |quiet: bool| {
        let cmd: Vec<String> = std::iter::once(bin().to_string())
            .chain(progress_args(&m, &out, quiet))
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let o = Command::new("script").args(["-qec", &cmd.join(" "), "/dev/null"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    };
    let shown = under_pty(false);
    for l in LABELS {
        assert!(shown.contains(l), "no '{l}' bar on a terminal: {shown}");
    }
    let quiet = under_pty(true);
    assert!(quiet.contains("wrote "), "{quiet}");
    for l in LABELS {
        assert!(!quiet.contains(l), "'{l}' bar despite --quiet: {quiet}");
    }
}
