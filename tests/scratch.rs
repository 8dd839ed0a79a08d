//! Bounded-memory mode: a run that stores rewritten tensors in a scratch file (what the CLI does) saves
//! exactly the bytes of a run that keeps them in memory, inline and with external data, on real models.

mod common;

use sparsify_onnx::ir::Model;
use sparsify_onnx::{load, save, save_with_scratch, ExportOptions, ExternalMode, Pipeline, Scratch};
use std::path::{Path, PathBuf};

const PIPELINES: [&str; 4] = [
    "score{method=l1},mask{sparsity=0.5}",
    "score{method=l2},nm-legalize{n=2,m=4}",
    "mask{granularity=channel,sparsity=0.25},dead-channel-elim",
    "score{method=l1},block-sparsify{block=4x4,sparsity=0.5}",
];

fn opts(ext: bool) -> ExportOptions {
    ExportOptions { external: if ext { ExternalMode::Always } else { ExternalMode::Never }, ..Default::default() }
}

/// Save to `<dir>/<name>/m.onnx` (same file name in different folders: the external-data location is
/// recorded in the model) and return the model and data bytes.
fn saved(dir: &Path, name: &str, model: &Model, scratch: Option<&Scratch>, ext: bool) -> Vec<u8> {
    let path = out_path(dir, name);
    match scratch {
        Some(s) => save_with_scratch(model, &path, &opts(ext), s).unwrap(),
        None => save(model, &path, &opts(ext)).unwrap(),
    }
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(data) = std::fs::read(path.with_file_name("m.onnx.data")) {
        bytes.extend(data);
    }
    bytes
}

fn out_path(dir: &Path, name: &str) -> PathBuf {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("m.onnx")
}

#[test]
fn scratch_runs_save_the_same_bytes_as_in_memory_runs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, folder) in common::all_models() {
        let original = load(&folder.join("model.onnx")).unwrap();
        for text in PIPELINES {
            let p = Pipeline::parse(text).unwrap();
            let mut mem = original.clone();
            p.run(&mut mem, None).unwrap();
            let streaming = !text.contains("dead-channel-elim");
            for ext in [false, true] {
                let want = saved(dir.path(), "mem", &mem, None, ext);
                // Plain spill file, then the in-place output data file (for_output) when there is one.
                for in_place in [false, true] {
                    let scratch = if in_place {
                        Scratch::for_output(&original, &out_path(dir.path(), "spill"), &opts(ext)).unwrap()
                    } else {
                        Scratch::new_in(dir.path()).unwrap()
                    };
                    let mut spilled = original.clone();
                    p.run_with(&mut spilled, None, None, Some(&scratch)).unwrap();
                    // Every tensor a weight pass rewrote went to the scratch (dead-channel-elim, which
                    // reshapes tensors, is not a streaming pass and keeps its results in memory); with an
                    // in-place data file, straight to its final place.
                    let g = &spilled.graph;
                    let tensors = g.initializers.iter().chain(g.nodes().filter_map(|(_, n)| n.constant_tensor()));
                    let (mut modified, mut external, mut raw) = (0u64, 0u64, 0u64);
                    for t in tensors.filter(|t| t.modified) {
                        modified += t.bytes().len() as u64;
                        // Bytes the inline encoding writes whole (raw data, not typed fields).
                        if !matches!(t.storage, sparsify_onnx::ir::Storage::Typed) {
                            raw += t.bytes().len() as u64;
                        }
                        // Tensors the save puts in the data file (small ones stay inline).
                        if t.bytes().len() >= opts(ext).threshold {
                            external += t.bytes().len() as u64;
                        }
                    }
                    let stored = scratch.len() + scratch.in_place_len();
                    let what = format!("{name} / {text} (external: {ext}, in place: {in_place})");
                    if streaming {
                        assert!(stored >= modified, "{what}: {modified} bytes modified, {stored} stored");
                    }
                    assert_eq!(scratch.is_empty(), modified == 0, "{what}");
                    // (ppocr keeps its weights in Constant nodes, which the save never moves to the data file.)
                    if in_place && ext && streaming && name != "ppocr_cls_mobile_v2" {
                        assert_eq!(scratch.in_place_len(), external, "{what}: data-file tensors written in place");
                    }
                    // Inline: every rewritten raw tensor went straight to its place in the model file.
                    if in_place && !ext && streaming {
                        assert_eq!(scratch.in_place_len(), raw, "{what}: raw tensors written in place");
                    }
                    let got = saved(dir.path(), "spill", &spilled, Some(&scratch), ext);
                    assert!(got == want, "{what}: saved bytes differ");
                }
            }
            // Nothing is left in the folder but the outputs: spill files are unlinked at creation, the
            // in-place data file was renamed into place.
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "mem" && n != "spill")
                .collect();
            assert!(left.is_empty(), "left behind: {left:?}");
            let left: Vec<_> = std::fs::read_dir(dir.path().join("spill"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "m.onnx" && n != "m.onnx.data")
                .collect();
            assert!(left.is_empty(), "left behind in the output folder: {left:?}");
        }
    }
}

/// Inline (the planned `.onnx`) and external data (the planned data file): dropped unsaved, the
/// scratch removes its temporary file.
/// Every bundled ONNX file (quantized routes, folded casts, Constant-node weights), inline and with
/// external data: a weight pass run with an in-place scratch saves the bytes of an in-memory run.
#[test]
fn every_bundled_model_saves_the_same_bytes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files = Vec::new();
    for sub in ["", "quant"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "onnx") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let original = load(file).unwrap();
        for text in ["score{method=l1},mask{sparsity=0.5}", "score{method=l2},nm-legalize{n=2,m=4}"] {
            for ext in [false, true] {
                let (want, scratch, spilled) = in_memory_and_in_place_as(dir.path(), &original, text, ext);
                let got = saved(dir.path(), "spill", &spilled, Some(&scratch), ext);
                assert!(got == want, "{} / {text} (ext {ext}): saved bytes differ", file.display());
            }
        }
    }
}

#[test]
fn an_unsaved_in_place_scratch_leaves_nothing_behind() {
    for ext in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let original = load(&common::bundled("char_lm").join("model.onnx")).unwrap();
        let out = dir.path().join("out.onnx");
        let scratch = Scratch::for_output(&original, &out, &opts(ext)).unwrap();
        let mut m = original.clone();
        Pipeline::parse("score{method=l1},mask{sparsity=0.5}")
            .unwrap()
            .run_with(&mut m, None, None, Some(&scratch))
            .unwrap();
        assert!(scratch.in_place_len() > 0, "ext {ext}");
        drop(m);
        drop(scratch);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "ext {ext}: left behind: {left:?}");
    }
}

/// A pass that fails after earlier weights were handed to the background store: the error names the
/// bad weight, the stores in flight finish (no thread outlives the pass), and dropping the unsaved
/// scratch leaves nothing in the output folder.
#[test]
fn a_pass_failing_after_stores_started_leaves_nothing_behind() {
    // Both passes find the bad (last) weight only when they reach it, after storing the others
    // (nm-legalize computes its retained-score statistic in the same visit since 2026-12-07).
    for (pipeline, stores_first) in [("mask{sparsity=0.5}", true), ("nm-legalize{n=2,m=4}", true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = load(&common::bundled("char_lm").join("model.onnx")).unwrap();
        let last = m.graph.find_weights().into_iter().rev().find(|w| w.op() == "MatMul").unwrap().id;
        let t = m.graph.weight_mut(&last).unwrap();
        let mut b = t.bytes().to_vec();
        b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        t.set_bytes(bytes::Bytes::from(b)).unwrap();
        for ext in [false, true] {
            let mut m = m.clone();
            let scratch = Scratch::for_output(&m, &dir.path().join("out.onnx"), &opts(ext)).unwrap();
            let err = Pipeline::parse(pipeline).unwrap().run_with(&mut m, None, None, Some(&scratch)).unwrap_err();
            assert!(err.to_string().contains(last.name()), "{pipeline}: {err}");
            assert_eq!(scratch.in_place_len() > 0, stores_first, "{pipeline} (ext {ext}): stored before the failure");
            drop(scratch);
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "{pipeline} (ext {ext}): left behind: {left:?}");
        }
    }
}

/// Weights of 1 MiB and more are stored on a helper thread while the next one is computed (smaller ones
/// on the calling thread): the saved bytes equal an in-memory run, and every rewritten weight went to
/// its place in the output data file.
#[test]
fn background_stores_of_large_weights_save_the_same_bytes() {
    // 2 MiB, 2 MiB, 1 MiB (threaded) and 16 KiB (on the calling thread).
    let original = matmul_chain(
        None,
        &[("w1", [512, 1024], 0.7), ("w2", [1024, 512], 0.45), ("w3", [512, 512], 0.3), ("w4", [512, 8], 0.9)],
    );
    let dir = tempfile::tempdir().unwrap();
    for text in ["score{method=l1},mask{sparsity=0.5}", "score{method=l2},nm-legalize{n=2,m=4}"] {
        let (want, scratch, spilled) = in_memory_and_in_place(dir.path(), &original, text);
        let modified: u64 =
            spilled.graph.initializers.iter().filter(|t| t.modified).map(|t| t.bytes().len() as u64).sum();
        assert_eq!(modified, (5 << 20) + (16 << 10), "{text}: every weight rewritten");
        assert_eq!(scratch.in_place_len(), modified, "{text}: written in place");
        // The three large weights start on page boundaries in memory and in the file: they go around
        // the page cache wherever the file system takes O_DIRECT writes; the 16 KiB one never does.
        let want_direct = if direct_io_works(dir.path()) { 5 << 20 } else { 0 };
        assert_eq!(scratch.direct_len(), want_direct, "{text}: bytes written with O_DIRECT");
        assert!(saved(dir.path(), "spill", &spilled, Some(&scratch), true) == want, "{text}: saved bytes differ");
    }
}

/// Rewritten weights whose slots do not start on a page boundary (a 2 KiB constant is laid out first):
/// their whole pages still go around the page cache (through the bounce buffer), the partial pages at
/// both ends through it, and the saved bytes are those of an in-memory run.
#[test]
fn unaligned_slots_write_their_whole_pages_directly() {
    let original = matmul_chain(Some(("c0", 0.2)), &[("w1", [512, 1024], 0.7), ("w2", [1024, 512], 0.45)]);
    let dir = tempfile::tempdir().unwrap();
    let (want, scratch, spilled) = in_memory_and_in_place(dir.path(), &original, "score{method=l1},mask{sparsity=0.5}");
    assert_eq!(scratch.in_place_len(), 4 << 20, "both weights written in place");
    // w1 at offset 2048 and w2 at 2048 + 2 MiB: each loses its first and last partial page.
    let want_direct = if direct_io_works(dir.path()) { (4 << 20) - 2 * 4096 } else { 0 };
    assert_eq!(scratch.direct_len(), want_direct, "bytes written with O_DIRECT");
    assert!(saved(dir.path(), "spill", &spilled, Some(&scratch), true) == want, "saved bytes differ");
}

/// Inline outputs: the model file is laid out up front as well, and rewritten weights go straight to
/// their place in it (whole pages with O_DIRECT through the bounce buffer: protobuf puts them at odd
/// offsets). Saving writes the rest around them, and the bytes equal an in-memory run.
#[test]
fn inline_outputs_write_rewritten_weights_in_place() {
    let original = matmul_chain(Some(("c0", 0.2)), &[("w1", [512, 1024], 0.7), ("w2", [1024, 512], 0.45)]);
    let dir = tempfile::tempdir().unwrap();
    for text in ["score{method=l1},mask{sparsity=0.5}", "score{method=l2},nm-legalize{n=2,m=4}"] {
        let (want, scratch, spilled) = in_memory_and_in_place_as(dir.path(), &original, text, false);
        assert_eq!(scratch.in_place_len(), 4 << 20, "{text}: both weights written in place");
        assert_eq!(scratch.len(), 0, "{text}: nothing spilled");
        if direct_io_works(dir.path()) {
            // Each weight loses at most its two partial end pages to the page cache.
            let direct = scratch.direct_len();
            assert!(((4 << 20) - 4 * 4096..4 << 20).contains(&direct), "{text}: {direct} bytes with O_DIRECT");
        }
        assert!(saved(dir.path(), "spill", &spilled, Some(&scratch), false) == want, "{text}: saved bytes differ");
        assert_eq!(std::fs::read_dir(dir.path().join("spill")).unwrap().count(), 1, "{text}: only m.onnx is left");
    }
}

/// The layout changes after weights were written in place. Channel removal gives the weights new,
/// smaller buffers: the save writes them and everything else at the new offsets in the planned file.
/// A longer graph name moves every stored weight: the save notices and writes a fresh file. Either way
/// the bytes equal an in-memory run and no temporary file is left.
#[test]
fn inline_layout_changed_after_stores_saves_the_same_bytes() {
    let original = matmul_chain(None, &[("w1", [512, 1024], 0.7), ("w2", [1024, 512], 0.45)]);
    let dir = tempfile::tempdir().unwrap();
    let rename = |m: &mut Model| m.graph.name = Some("a graph name longer than before".into());
    for (text, edit) in [
        ("mask{granularity=channel,sparsity=0.25},dead-channel-elim", None),
        ("score{method=l1},mask{sparsity=0.5}", Some(rename)),
    ] {
        let p = Pipeline::parse(text).unwrap();
        let mut mem = original.clone();
        p.run(&mut mem, None).unwrap();
        let scratch = Scratch::for_output(&original, &out_path(dir.path(), "spill"), &opts(false)).unwrap();
        let mut spilled = original.clone();
        p.run_with(&mut spilled, None, None, Some(&scratch)).unwrap();
        assert!(scratch.in_place_len() > 0, "{text}: weights stored in place before the change");
        if let Some(edit) = edit {
            edit(&mut mem);
            edit(&mut spilled);
        } else {
            let w1 = spilled.graph.initializers.iter().find(|t| t.name == "w1").unwrap();
            assert_eq!(w1.dims, vec![512, 768], "a quarter of w1's columns removed");
        }
        let want = saved(dir.path(), "mem", &mem, None, false);
        assert!(saved(dir.path(), "spill", &spilled, Some(&scratch), false) == want, "{text}: saved bytes differ");
        drop(scratch);
        let left: Vec<_> =
            std::fs::read_dir(dir.path().join("spill")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("m.onnx")], "{text}: only the output is left");
    }
}

/// Unchanged weights of a model loaded from disk (mapped input bytes) are written into the planned
/// output file around the page cache too (read straight from the input's map), inline and with
/// external data: the save's `fsync` then has no page-cache copy of them to write back. The bytes equal
/// a plain save.
#[test]
fn unchanged_mapped_weights_are_written_in_place() {
    let built = matmul_chain(Some(("c0", 0.2)), &[("w1", [512, 1024], 0.7), ("w2", [1024, 512], 0.45)]);
    let dir = tempfile::tempdir().unwrap();
    for ext in [false, true] {
        let input = dir.path().join(if ext { "in_ext" } else { "in" }).join("model.onnx");
        std::fs::create_dir_all(input.parent().unwrap()).unwrap();
        save(&built, &input, &opts(ext)).unwrap();
        let original = load(&input).unwrap();
        let want = saved(dir.path(), "mem", &original, None, ext);
        let scratch = Scratch::for_output(&original, &out_path(dir.path(), "spill"), &opts(ext)).unwrap();
        assert_eq!(scratch.in_place_len(), 0, "nothing stored: no pass ran");
        assert!(saved(dir.path(), "spill", &original, Some(&scratch), ext) == want, "ext {ext}: saved bytes differ");
        if direct_io_works(dir.path()) {
            // w1 and w2 (2 MiB each) minus at most their partial end pages; c0 (2 KiB) is copied.
            let direct = scratch.direct_len();
            assert!(((4 << 20) - 4 * 4096..=4 << 20).contains(&direct), "ext {ext}: {direct} bytes with O_DIRECT");
        }
    }
}

/// Weights rewritten twice (two masks): the second version spills, and the first version's map is
/// dropped, so a later map may land at its address. The save must find every tensor's bytes where
/// they are now, never through a dropped map's record: the bytes equal an in-memory run.
#[test]
fn weights_rewritten_twice_save_the_same_bytes() {
    let ws: Vec<(String, [i64; 2], f32)> =
        (0..6).map(|i| (format!("w{i}"), [512, 512], 0.3 + 0.1 * i as f32)).collect();
    let ws: Vec<(&str, [i64; 2], f32)> = ws.iter().map(|(n, d, s)| (n.as_str(), *d, *s)).collect();
    let original = matmul_chain(None, &ws);
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "score{method=l1},mask{sparsity=0.3},mask{sparsity=0.5}",
        "score{method=l1},mask{sparsity=0.5},nm-legalize{n=2,m=4}",
    ] {
        for ext in [false, true] {
            let (want, scratch, spilled) = in_memory_and_in_place_as(dir.path(), &original, text, ext);
            assert_ne!(scratch.len(), 0, "{text}: second versions spilled");
            assert!(
                saved(dir.path(), "spill", &spilled, Some(&scratch), ext) == want,
                "{text} (ext {ext}): saved bytes differ"
            );
        }
    }
}

/// Run `text` on `original` in memory and with an in-place scratch for an external-data output in
/// `dir`: (the in-memory run's saved bytes, the scratch, the scratch run's model, not yet saved).
fn in_memory_and_in_place(dir: &Path, original: &Model, text: &str) -> (Vec<u8>, Scratch, Model) {
    in_memory_and_in_place_as(dir, original, text, true)
}

/// [`in_memory_and_in_place`] for an external-data (`ext`) or inline output.
fn in_memory_and_in_place_as(dir: &Path, original: &Model, text: &str, ext: bool) -> (Vec<u8>, Scratch, Model) {
    let p = Pipeline::parse(text).unwrap();
    let mut mem = original.clone();
    p.run(&mut mem, None).unwrap();
    let want = saved(dir, "mem", &mem, None, ext);
    let scratch = Scratch::for_output(original, &out_path(dir, "spill"), &opts(ext)).unwrap();
    let mut spilled = original.clone();
    p.run_with(&mut spilled, None, None, Some(&scratch)).unwrap();
    (want, scratch, spilled)
}

/// A chain of MatMuls from input `x` [1, 512] to output `y` over weights (name, dims, seed), in
/// initializer order; `first` adds a [512] constant to `x` before them (and lays it out first).
fn matmul_chain(first: Option<(&str, f32)>, ws: &[(&str, [i64; 2], f32)]) -> Model {
    use common::built::{model, out, weights};
    use sparsify_onnx::ir::{Graph, Node, ValueInfo};
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, 512]));
    g.outputs.push(out("y"));
    let mut nodes = Vec::new();
    let mut prev = "x".to_string();
    if let Some((name, seed)) = first {
        g.initializers.push(weights(name, &[512], seed));
        nodes.push(Node::new("Add", "add", &["x", name], &["x0"]));
        prev = "x0".into();
    }
    for (i, (name, dims, seed)) in ws.iter().enumerate() {
        g.initializers.push(weights(name, dims, *seed));
        let next = if i + 1 == ws.len() { "y".to_string() } else { format!("h{i}") };
        nodes.push(Node::new("MatMul", &format!("mm{i}"), &[&prev, name], &[&next]));
        prev = next;
    }
    model(g, nodes)
}

/// Whether a page-aligned O_DIRECT write works in `dir` (tmpfs before Linux 6.6 refuses the flag).
fn direct_io_works(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join("direct-probe");
    let Ok(f) = std::fs::File::options().write(true).create(true).custom_flags(libc::O_DIRECT).open(&path) else {
        return false;
    };
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a non-zero-sized layout; the buffer is zeroed, used as a slice of its size and freed once.
    let ok = unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        let ok = f.write_all_at(std::slice::from_raw_parts(p, 4096), 0).is_ok();
        std::alloc::dealloc(p, layout);
        ok
    };
    let _ = std::fs::remove_file(&path);
    ok
}

/// The library refuses to write over a file a loaded model still reads its weights from (the mapped
/// external data), whatever the output is called; once nothing reads it, the file is an ordinary path.
#[test]
fn saving_over_a_mapped_input_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let big = |name: &str| sparsify_onnx::ir::Tensor::from_f32(name, vec![512, 512], &vec![0.5; 512 * 512]).unwrap();
    let mut m = common::built::mlp();
    m.graph.initializers.push(big("big"));
    let ext = ExportOptions { external: ExternalMode::Always, threshold: 0 };
    save(&m, &d.join("in.onnx"), &ext).unwrap();
    let before = std::fs::read(d.join("in.onnx.data")).unwrap();
    let loaded = load(&d.join("in.onnx")).unwrap();
    let err = save(&loaded, &d.join("in.onnx.data"), &ExportOptions::default()).unwrap_err().to_string();
    assert!(err.contains("still reads its weights"), "{err}");
    // Writing the model with external data next to an output named like the input: the data file
    // would be the input's.
    let err = save(&loaded, &d.join("in.onnx"), &ext).unwrap_err().to_string();
    assert!(err.contains("still reads its weights"), "{err}");
    assert_eq!(std::fs::read(d.join("in.onnx.data")).unwrap(), before);
    drop(loaded);
    save(&m, &d.join("in.onnx.data"), &ExportOptions::default()).unwrap();
}
