//! Write failures and concurrent runs of the built binary (docs/reliability.md): a file-size limit
//! (RLIMIT_FSIZE, set with `ulimit -f` in a `sh` wrapper that also ignores SIGXFSZ so writes fail with
//! EFBIG instead of killing the process) or a read-only output folder give a one-line error, leave no
//! partial or temporary file, never touch the input and leave an existing output intact; two runs
//! writing the same output path at once leave one complete output, never a mix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sparsify-onnx");

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models").join(name).join("model.onnx")
}

/// Run the binary with a file-size limit of `blocks` × 512 bytes (dash's `ulimit -f` unit).
fn run_limited(blocks: u64, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .output()
        .expect("sh runs")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

/// The names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn assert_one_line_error(o: &Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "error should mention {want:?}: {err}");
}

/// A copy of a bundled model in `dir` (so the test can check the input is untouched).
fn input_copy(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let bytes = std::fs::read(model(name)).unwrap();
    let p = dir.join("in.onnx");
    std::fs::write(&p, &bytes).unwrap();
    (p, bytes)
}

#[test]
fn file_size_limit_on_the_model_keeps_the_old_output_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, in_bytes) = input_copy(tmp.path(), "digits_cnn");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("out.onnx");
    std::fs::write(&out, b"OLD OUTPUT").unwrap();
    // digits_cnn is ~40 KB: an 8 KB limit fails in the middle of the model.
    let o = run_limited(16, &["run", input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_one_line_error(&o, "File too large");
    assert_eq!(std::fs::read(&out).unwrap(), b"OLD OUTPUT", "the existing output was changed");
    assert_eq!(listing(&out_dir), ["out.onnx"], "a partial or temporary file was left");
    assert_eq!(std::fs::read(&input).unwrap(), in_bytes, "the input was modified");
    // Without the limit the same command succeeds (the limit was the only cause).
    assert!(run(&["run", input.to_str().unwrap(), "-o", out.to_str().unwrap()]).status.success());
    assert_eq!(listing(&out_dir), ["out.onnx"]);
}

#[test]
fn file_size_limit_on_external_data_keeps_both_old_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, in_bytes) = input_copy(tmp.path(), "digits_cnn");
    let out = tmp.path().join("out.onnx");
    let data = tmp.path().join("out.onnx.data");
    std::fs::write(&out, b"OLD MODEL").unwrap();
    std::fs::write(&data, b"OLD DATA").unwrap();
    let args = ["run", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--external-data", "always"];
    let o = run_limited(16, &args);
    assert_one_line_error(&o, "out.onnx.data");
    assert_eq!(std::fs::read(&out).unwrap(), b"OLD MODEL");
    assert_eq!(std::fs::read(&data).unwrap(), b"OLD DATA");
    assert_eq!(listing(tmp.path()), ["in.onnx", "out.onnx", "out.onnx.data"]);
    assert_eq!(std::fs::read(&input).unwrap(), in_bytes);
}

/// y = x @ w with a 2×2 weight: a model of ~150 bytes, so a limit can let it through and stop the JSON.
fn tiny_model() -> Vec<u8> {
    common::proto::tiny(|_| {})
}

#[test]
fn file_size_limit_on_the_json_report_keeps_the_old_report() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    std::fs::write(&input, tiny_model()).unwrap();
    let (out, json) = (tmp.path().join("out.onnx"), tmp.path().join("report.json"));
    let args = [
        "run",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--pipeline",
        "score{method=l1},mask{sparsity=0.5}",
        "--json",
        json.to_str().unwrap(),
    ];
    assert!(run(&args).status.success());
    let (model_len, json_len) = (std::fs::metadata(&out).unwrap().len(), std::fs::metadata(&json).unwrap().len());
    let blocks = model_len / 512 + 1;
    assert!(blocks * 512 < json_len, "test setup: the JSON ({json_len} B) must exceed the limit the model fits");
    std::fs::write(&json, b"OLD REPORT").unwrap();
    std::fs::remove_file(&out).unwrap();
    let o = run_limited(blocks, &args);
    assert_one_line_error(&o, "report.json");
    assert_eq!(std::fs::read(&json).unwrap(), b"OLD REPORT", "the existing report was changed");
    assert_eq!(listing(tmp.path()), ["in.onnx", "out.onnx", "report.json"], "a temporary file was left");
}

#[test]
fn read_only_output_folder_gives_one_line_error_and_writes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (input, in_bytes) = input_copy(tmp.path(), "digits_mlp");
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let out = ro.join("out.onnx");
    std::fs::write(&out, b"OLD OUTPUT").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let args = ["run", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json", "ro/report.json"];
    // root ignores folder permissions: run the binary as `nobody` then (setpriv, util-linux).
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let o = if is_root {
        let Ok(o) = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .current_dir(tmp.path())
            .output()
        else {
            eprintln!("skipped: running as root without setpriv, a read-only folder cannot be simulated");
            return;
        };
        o
    } else {
        Command::new(BIN).args(args).current_dir(tmp.path()).output().unwrap()
    };
    assert_one_line_error(&o, "Permission denied");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"OLD OUTPUT");
    assert_eq!(listing(&ro), ["out.onnx"]);
    assert_eq!(std::fs::read(&input).unwrap(), in_bytes);
}

/// Runs each pipeline alone into its own folder (same file name), then all at once into one folder,
/// several times: the shared output must always be exactly one run's complete output.
fn concurrent_runs_leave_one_complete_output(extra: &[&str], files: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let input = model("digits_cnn");
    let pipelines = ["", "score{method=l1},mask{sparsity=0.5}", "score{method=l2},nm-legalize{n=2,m=4}"];
    let refs: Vec<Vec<Vec<u8>>> = pipelines
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dir = tmp.path().join(format!("ref{i}"));
            std::fs::create_dir(&dir).unwrap();
            let out = dir.join("out.onnx");
            let mut args = vec!["run", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--pipeline", p];
            args.extend(extra);
            assert!(run(&args).status.success());
            files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect()
        })
        .collect();
    assert!(refs[0] != refs[1] && refs[1] != refs[2], "test setup: the pipelines must give different files");
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let out = shared.join("out.onnx");
    for round in 0..4 {
        let children: Vec<std::process::Child> = pipelines
            .iter()
            .map(|p| {
                let mut c = Command::new(BIN);
                c.args(["run", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--pipeline", p]).args(extra);
                c.stdout(std::process::Stdio::null()).spawn().unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let got: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(shared.join(f)).unwrap()).collect();
        assert!(refs.contains(&got), "round {round}: the output is not one run's complete output");
        assert_eq!(listing(&shared), files, "round {round}: temporary or lock files were left");
    }
}

#[test]
fn concurrent_runs_on_one_output_path_leave_one_complete_output() {
    concurrent_runs_leave_one_complete_output(&[], &["out.onnx"]);
}

#[test]
fn concurrent_runs_with_external_data_never_mix_model_and_data() {
    concurrent_runs_leave_one_complete_output(&["--external-data", "always"], &["out.onnx", "out.onnx.data"]);
}
