//! insta snapshots of the IR dumps of the shared models (`snapshots/`). Review changes with
//! `cargo insta review`; CI (CI=true) never writes snapshots, so a mismatch fails.

mod common;

use sparsify_onnx::ir::print::dump_model;

fn snapshot(name: &str, dir: &std::path::Path) {
    let model = sparsify_onnx::load(&dir.join("model.onnx")).unwrap();
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(format!("ir__{name}"), dump_model(&model));
    });
}

#[test]
fn ir_dumps_of_bundled_models() {
    for m in common::BUNDLED {
        snapshot(m, &common::bundled(m));
    }
}

#[test]
fn ir_dump_of_minilm() {
    if let Some(dir) = common::minilm() {
        snapshot("paraphrase_minilm_l3_v2", &dir);
    }
}
