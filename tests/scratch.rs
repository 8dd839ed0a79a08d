//! Bounded-memory mode: a run that stores rewritten tensors in a scratch file (what the CLI does) saves
//! exactly the bytes of a run that keeps them in memory, inline and with external data, on real models.

mod common;

use sparsify_onnx::{load, save, save_with_scratch, ExportOptions, ExternalMode, Pipeline, Scratch};

const PIPELINES: [&str; 4] = [
    "score{method=l1},mask{sparsity=0.5}",
    "score{method=l2},nm-legalize{n=2,m=4}",
    "mask{granularity=channel,sparsity=0.25},dead-channel-elim",
    "score{method=l1},block-sparsify{block=4x4,sparsity=0.5}",
];

fn saved(
    dir: &std::path::Path,
    name: &str,
    model: &sparsify_onnx::ir::Model,
    scratch: Option<&Scratch>,
    ext: bool,
) -> Vec<u8> {
    // Same file name in different folders: the external-data location is recorded in the model.
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.onnx");
    let opts =
        ExportOptions { external: if ext { ExternalMode::Always } else { ExternalMode::Never }, ..Default::default() };
    match scratch {
        Some(s) => save_with_scratch(model, &path, &opts, s).unwrap(),
        None => save(model, &path, &opts).unwrap(),
    }
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(data) = std::fs::read(dir.join("m.onnx.data")) {
        bytes.extend(data);
    }
    bytes
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
            let scratch = Scratch::new_in(dir.path()).unwrap();
            let mut spilled = original.clone();
            p.run_with(&mut spilled, None, None, Some(&scratch)).unwrap();
            // Every tensor a weight pass rewrote went to the scratch file (dead-channel-elim, which reshapes
            // tensors, is not a streaming pass and keeps its results in memory).
            let g = &spilled.graph;
            let tensors = g.initializers.iter().chain(g.nodes().filter_map(|(_, n)| n.constant_tensor()));
            let modified: usize = tensors.filter(|t| t.modified).map(|t| t.bytes().len()).sum();
            if !text.contains("dead-channel-elim") {
                assert!(
                    scratch.len() as usize >= modified,
                    "{name} / {text}: {modified} bytes modified, {} in scratch",
                    scratch.len()
                );
            }
            assert_eq!(scratch.is_empty(), modified == 0, "{name} / {text}");
            for ext in [false, true] {
                let a = saved(dir.path(), "mem", &mem, None, ext);
                let b = saved(dir.path(), "spill", &spilled, Some(&scratch), ext);
                assert!(a == b, "{name} / {text} (external data: {ext}): saved bytes differ");
            }
            // Nothing is left in the folder but the outputs: the scratch file was unlinked at creation.
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "mem" && n != "spill")
                .collect();
            assert!(left.is_empty(), "left behind: {left:?}");
        }
    }
}
