//! A detector-like model (Conv, depthwise Conv, two upsampling ConvTransposes — one grouped — and a 1x1
//! head; every weight in a Constant node): the output of `nm-legalize` passes `check` with the same scope,
//! by default (ConvTranspose left dense and not held to the rule) and with ConvTranspose in `ops`
//! (2:4 along C_in, verified here with a plain loop). Both results run in tract.

use sparsify_onnx::ir::{AttrValue, Graph, Model, Node, OpsetId, Tensor, ValueInfo};
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsify-onnx")).args(args).output().expect("binary runs")
}

fn out_err(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s % 1999) as f32 + 1.0 - 1000.0) / 1000.0 // never 0
        })
        .collect()
}

fn constant(out: &str, dims: &[i64], seed: u64) -> Node {
    let n = dims.iter().product::<i64>() as usize;
    let t = Tensor::from_f32(out, dims.to_vec(), &vals(n, seed)).unwrap();
    let mut node = Node::new("Constant", &format!("{out}_const"), &[], &[out]);
    node.set_attr("value", AttrValue::Tensor(Box::new(t)));
    node
}

fn op(kind: &str, name: &str, inputs: &[&str], out: &str, attrs: &[(&str, AttrValue)]) -> Node {
    let mut n = Node::new(kind, name, inputs, &[out]);
    for (k, v) in attrs {
        n.set_attr(k, v.clone());
    }
    n
}

fn detector() -> Model {
    let mut g = Graph::new();
    g.inputs.push(ValueInfo::tensor("x", 1, &[1, 8, 12, 12]));
    g.outputs.push(ValueInfo { name: "y".into(), elem_type: Some(1), shape: None, opaque: vec![] });
    let ints = |v: &[i64]| AttrValue::Ints(v.to_vec());
    let nodes = vec![
        constant("c1_w", &[16, 8, 3, 3], 1),
        op("Conv", "c1", &["x", "c1_w"], "a1", &[("pads", ints(&[1, 1, 1, 1]))]),
        op("Relu", "r1", &["a1"], "b1", &[]),
        constant("dw_w", &[16, 1, 3, 3], 2),
        op("Conv", "dw", &["b1", "dw_w"], "a2", &[("pads", ints(&[1, 1, 1, 1])), ("group", AttrValue::Int(16))]),
        op("Relu", "r2", &["a2"], "b2", &[]),
        constant("up1_w", &[16, 8, 2, 2], 3),
        constant("up1_b", &[8], 4),
        op("ConvTranspose", "up1", &["b2", "up1_w", "up1_b"], "a3", &[("strides", ints(&[2, 2]))]),
        op("Relu", "r3", &["a3"], "b3", &[]),
        constant("up2_w", &[8, 4, 2, 2], 5),
        op("ConvTranspose", "up2", &["b3", "up2_w"], "a4", &[("strides", ints(&[2, 2])), ("group", AttrValue::Int(2))]),
        op("Relu", "r4", &["a4"], "b4", &[]),
        constant("head_w", &[1, 8, 1, 1], 6),
        op("Conv", "head", &["b4", "head_w"], "y", &[]),
    ];
    Model {
        ir_version: Some(8),
        opset_import: vec![OpsetId { domain: String::new(), version: 13 }],
        graph: g.with_nodes(nodes),
        opaque: vec![],
    }
}

/// Values of a Constant-node weight of a saved model.
fn weight(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let m = sparsify_onnx::load(path).unwrap();
    let id = m.graph.constant_source(name).unwrap();
    let t = m.graph.weight(&id).unwrap();
    (t.to_f32().unwrap().iter().copied().collect(), t.shape())
}

/// Non-zeros of every run of 4 input channels (within each conv group) of a ConvTranspose weight
/// `[C_in, C_out/g, kH, kW]`, for each output channel and kernel position.
fn convt_group_counts(w: &[f32], shape: &[usize], groups: usize) -> Vec<usize> {
    let (cin, cout_g, kpos) = (shape[0], shape[1], shape[2] * shape[3]);
    let per = cin / groups;
    let mut counts = Vec::new();
    for grp in 0..groups {
        for o in 0..cout_g {
            for k in 0..kpos {
                for start in (0..per).step_by(4) {
                    let c0 = grp * per + start;
                    counts.push((c0..c0 + 4).filter(|&c| w[(c * cout_g + o) * kpos + k] != 0.0).count());
                }
            }
        }
    }
    counts
}

fn check_json(path: &Path, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut args = vec!["check", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = run(&args);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", out_err(&o)));
    (o.status.code(), rows.as_array().unwrap().clone())
}

fn row<'a>(rows: &'a [serde_json::Value], tensor: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["tensor"] == tensor).unwrap_or_else(|| panic!("no row for {tensor}"))
}

const ALL_OPS: &str = "Conv|Gemm|MatMul|ConvTranspose";

#[test]
fn nm_legalize_output_passes_check_with_the_same_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let input = d.join("det.onnx");
    sparsify_onnx::save(&detector(), &input, &Default::default()).unwrap();

    // The dense model: the eligible Conv weights violate 2:4.
    let (code, rows) = check_json(&input, &[]);
    assert_eq!(code, Some(3));
    assert_eq!(row(&rows, "c1_w")["compliant"], false);
    let why = row(&rows, "up1_w")["reason"].as_str().unwrap().to_string();
    assert!(why.contains("ConvTranspose is not in ops=Conv|Gemm|MatMul"), "{why}");
    assert!(row(&rows, "dw_w")["reason"].as_str().unwrap().contains("depthwise"));

    // Default pipeline: ConvTranspose stays dense, and the default check passes the output.
    let a = d.join("a.onnx");
    let pipe = "score{method=l1},nm-legalize{n=2,m=4}";
    let o = run(&["run", input.to_str().unwrap(), "-o", a.to_str().unwrap(), "--pipeline", pipe, "--validate"]);
    assert_eq!(o.status.code(), Some(0), "{}", out_err(&o));
    assert!(!out_err(&o).contains("not validated"), "tract runs it: {}", out_err(&o));
    let o = run(&["check", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", out_err(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2:4 check: 2 eligible weights, 0 not compliant"),
        "{}",
        out_err(&o)
    );
    let (w, shape) = weight(&a, "up1_w");
    assert!(convt_group_counts(&w, &shape, 1).iter().all(|&c| c == 4), "left dense");
    // Asked about ConvTranspose too, check says what the pipeline did not do.
    let (code, rows) = check_json(&a, &["--ops", ALL_OPS]);
    assert_eq!(code, Some(3));
    assert_eq!(row(&rows, "up1_w")["compliant"], false);

    // With ConvTranspose in ops: 2:4 along C_in (per group), and check agrees with or without it.
    let b = d.join("b.onnx");
    let json = d.join("b.json");
    let pipe = format!("score{{method=l1}},nm-legalize{{n=2,m=4,ops={ALL_OPS}}}");
    let o = run(&[
        "run",
        input.to_str().unwrap(),
        "-o",
        b.to_str().unwrap(),
        "--pipeline",
        &pipe,
        "--validate",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", out_err(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["validation"]["status"], "Measured", "tract ran both models");
    let rel = r["validation"]["outputs"][0]["rel_l2_err"].as_f64().unwrap();
    assert!(rel.is_finite() && rel > 0.0, "{rel}");
    for (name, groups) in [("up1_w", 1usize), ("up2_w", 2)] {
        let (w0, shape) = weight(&input, name);
        assert!(convt_group_counts(&w0, &shape, groups).iter().all(|&c| c == 4));
        let (w1, _) = weight(&b, name);
        let counts = convt_group_counts(&w1, &shape, groups);
        assert!(counts.iter().all(|&c| c == 2), "{name}: {counts:?}");
    }
    let (code, rows) = check_json(&b, &["--ops", ALL_OPS]);
    assert_eq!(code, Some(0));
    for name in ["up1_w", "up2_w"] {
        let r = row(&rows, name);
        assert_eq!(
            (r["eligible"].clone(), r["axis"].clone(), r["compliant"].clone()),
            (true.into(), 0.into(), true.into())
        );
    }
    let o = run(&["check", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", out_err(&o));

    // inspect says which weights the default scope leaves out.
    let o = run(&["inspect", input.to_str().unwrap(), "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let note = row(rows.as_array().unwrap(), "up2_w")["note"].as_str().unwrap().to_string();
    assert!(note.contains("not pruned or checked by default"), "{note}");
}
