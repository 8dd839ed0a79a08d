//! Peak memory of import → export on a large synthetic model: prints the model size and the process's
//! peak resident set (VmHWM), for the memory goal (at most one copy of the weights in memory).
//!
//! `cargo run --release --example roundtrip_memory -- [MB] [inline|external]`

#[path = "../benches/common_synth.rs"]
mod common_synth;

use sparsify_onnx::{ExportOptions, ExternalMode};

fn vm_hwm_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        // Child process: only the round trip, so its peak RSS is the round trip's own.
        let src = std::path::PathBuf::from(&args[2]);
        let t = std::time::Instant::now();
        let m = sparsify_onnx::load(&src).unwrap();
        sparsify_onnx::save(&m, &src.with_file_name("out.onnx"), &ExportOptions::default()).unwrap();
        println!("{:.3} {}", t.elapsed().as_secs_f64(), vm_hwm_kb());
        return;
    }
    let mb: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(512);
    let mode = args.get(2).map(String::as_str).unwrap_or("external");
    let width = 2048;
    let layers = (mb * (1 << 20) / (4 * width * width)).max(1);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.onnx");
    {
        let model = common_synth::synthetic_mlp(width, layers);
        let external = if mode == "inline" { ExternalMode::Never } else { ExternalMode::Always };
        sparsify_onnx::save(&model, &src, &ExportOptions { external, threshold: 1024 }).unwrap();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--measure", src.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let secs: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let kb: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let weights_mb = (layers * width * width * 4) as f64 / (1 << 20) as f64;
    println!(
        "{mode}: {weights_mb:.0} MB of weights, load+save {secs:.2} s, peak RSS {:.0} MB ({:.2}x the weights)",
        kb / 1024.0,
        kb / 1024.0 / weights_mb
    );
}
