//! Channel permutation: exactness, retained score, and refusals.

use super::*;

// ---------- channel permutation ----------

/// A tiny evaluator for 2-D graphs (Gemm, MatMul, BatchNormalization, Relu, Sigmoid, Add, Mul).
fn eval(m: &Model, x: &[f64], rows: usize) -> BTreeMap<String, Vec<f64>> {
    let g = &m.graph;
    let mut env: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new(); // values, columns
    env.insert("x".into(), (x.to_vec(), x.len() / rows));
    let konst = |name: &str| -> Vec<f64> { g.initializer(name).unwrap().to_f64().unwrap().iter().copied().collect() };
    for (_, n) in g.nodes() {
        let get = |i: usize| env.get(&n.inputs[i]).cloned();
        let (out, cols) = match n.op_type.as_str() {
            "Gemm" | "MatMul" => {
                let (a, k) = get(0).unwrap();
                let t = g.initializer(&n.inputs[1]).unwrap();
                let w = konst(&n.inputs[1]);
                let tb = n.attr_int("transB").unwrap_or(0) != 0;
                let nn = if tb { t.dims[0] as usize } else { t.dims[1] as usize };
                let mut y = vec![0.0; rows * nn];
                for r in 0..rows {
                    for j in 0..nn {
                        let mut acc = 0.0;
                        for kk in 0..k {
                            let wv = if tb { w[j * k + kk] } else { w[kk * nn + j] };
                            acc += a[r * k + kk] * wv;
                        }
                        y[r * nn + j] = acc + n.inputs.get(2).map_or(0.0, |b| konst(b)[j]);
                    }
                }
                (y, nn)
            }
            "BatchNormalization" => {
                let (a, c) = get(0).unwrap();
                let p: Vec<Vec<f64>> = (1..5).map(|i| konst(&n.inputs[i])).collect();
                let y = (0..a.len()).map(|i| {
                    let j = i % c;
                    (a[i] - p[2][j]) / (p[3][j] + 1e-5).sqrt() * p[0][j] + p[1][j]
                });
                (y.collect(), c)
            }
            "Relu" | "Sigmoid" => {
                let (a, c) = get(0).unwrap();
                let f = |v: f64| if n.op_type == "Relu" { v.max(0.0) } else { 1.0 / (1.0 + (-v).exp()) };
                (a.iter().map(|&v| f(v)).collect(), c)
            }
            "Add" | "Mul" => {
                let (a, c) = get(0).unwrap();
                let b: Vec<f64> = match get(1) {
                    Some((b, _)) => b,
                    None => konst(&n.inputs[1]),
                };
                let y = (0..a.len()).map(|i| {
                    let bv = if b.len() == a.len() { b[i] } else { b[i % c % b.len()] };
                    if n.op_type == "Add" {
                        a[i] + bv
                    } else {
                        a[i] * bv
                    }
                });
                (y.collect(), c)
            }
            op => panic!("eval: {op}"),
        };
        env.insert(n.outputs[0].clone(), (out, cols));
    }
    g.outputs.iter().map(|o| (o.name.clone(), env[&o.name].0.clone())).collect()
}

fn mlp(seed: u64) -> Model {
    let mut r = Rng(seed);
    let pos: Vec<f32> = r.vec(16).iter().map(|v| v.abs() + 0.5).collect();
    let inits = vec![
        f32t("w1", &[16, 8], &mut r),
        f32t("b1", &[16], &mut r),
        f32t("bn_s", &[16], &mut r),
        f32t("bn_b", &[16], &mut r),
        f32t("bn_m", &[16], &mut r),
        Tensor::from_f32("bn_v", vec![16], &pos).unwrap(),
        f32t("w2", &[12, 16], &mut r),
        f32t("b2", &[12], &mut r),
        f32t("w3", &[12, 8], &mut r),
        f32t("b3", &[8], &mut r),
        Tensor::from_f32("half", vec![], &[0.5]).unwrap(),
        f32t("w4", &[16, 8], &mut r),
    ];
    let t1 = [("transB", AttrValue::Int(1))];
    let nodes = vec![
        node("Gemm", "g1", &["x", "w1", "b1"], &["h1"], &t1),
        node("BatchNormalization", "bn", &["h1", "bn_s", "bn_b", "bn_m", "bn_v"], &["h2"], &[]),
        node("Relu", "relu", &["h2"], &["h3"], &[]),
        node("Gemm", "g2", &["h3", "w2", "b2"], &["h4"], &t1),
        node("MatMul", "mm4", &["h3", "w4"], &["y2"], &[]),
        node("Sigmoid", "sig", &["h4"], &["h5"], &[]),
        node("MatMul", "mm3", &["h5", "w3"], &["h6"], &[]),
        node("Add", "add3", &["h6", "b3"], &["h7"], &[]),
        node("Mul", "scale", &["h7", "half"], &["y1"], &[]),
    ];
    model(inits, nodes, &[("x", &[4, 8])], &["y1", "y2"])
}

fn assert_same_outputs(a: &Model, b: &Model) {
    let x: Vec<f64> = Rng(77).vec(32).iter().map(|&v| v as f64).collect();
    let (ya, yb) = (eval(a, &x, 4), eval(b, &x, 4));
    for (k, va) in &ya {
        let vb = &yb[k];
        let num: f64 = va.iter().zip(vb).map(|(p, q)| (p - q) * (p - q)).sum::<f64>().sqrt();
        let den: f64 = va.iter().map(|p| p * p).sum::<f64>().sqrt();
        assert!(num / den < 1e-12, "output {k}: rel L2 {}", num / den);
    }
}

#[test]
fn permutation_is_exact_and_keeps_more() {
    let orig = mlp(21);
    let mut m = orig.clone();
    let rep = run(&mut m, "permute-channels{n=2,m=4}");
    let c = &rep.passes[0].counters;
    assert_eq!(c["regions_permuted"], 2.0, "{:?}", rep.passes[0].notes);
    assert!(c["retained_score_permuted"] > c["retained_score_plain"], "{c:?}");
    assert!(notes_for(&rep, "permute-channels", "w1")[0].contains("graph input"));
    assert_ne!(values(&m, "w2"), values(&orig, "w2"));
    assert_ne!(values(&m, "bn_v"), values(&orig, "bn_v"));
    assert_same_outputs(&orig, &m);
    // the permuted weights are a permutation of the originals
    let mut a = values(&m, "w4");
    let mut b = values(&orig, "w4");
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    assert_eq!(a, b);
    // permute-then-legalize equals legalize{permute=true}; retained counters agree
    let mut both = orig.clone();
    let rep2 = run(&mut both, "nm-legalize{n=2,m=4,permute=true}");
    run(&mut m, "nm-legalize{n=2,m=4}");
    for t in &m.graph.initializers {
        assert_eq!(t.bytes(), both.graph.initializer(&t.name).unwrap().bytes(), "{}", t.name);
    }
    let c2 = &rep2.passes[0].counters;
    assert_eq!(c2["retained_score_permuted"], c["retained_score_permuted"]);
    assert!(all_compliant(&check_nm(&both, 2, 4, false)));
    // legalizing after the permutation keeps the retained score it promised
    let kept: f64 = ["w1", "w2", "w3", "w4"].iter().flat_map(|w| values(&both, w)).map(|v| v.abs() as f64).sum();
    assert!((kept - c2["retained_score_permuted"]).abs() < 1e-3, "{kept} vs {c2:?}");
    // idempotent
    let snap: Vec<Vec<u8>> = both.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    let again = run(&mut both, "nm-legalize{n=2,m=4,permute=true}");
    assert!(!again.passes[0].changed, "{:?}", again.passes[0].notes);
    let now: Vec<Vec<u8>> = both.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    assert_eq!(snap, now);
}

/// x -> Gemm(w1) -> <between> -> Gemm(w2) -> y, for refusal cases.
fn refusal_case(
    between: Vec<Node>,
    last_in: &str,
    extra_out: Option<&str>,
    extra_inits: Vec<Tensor>,
) -> (Model, RunReport) {
    let mut r = Rng(4);
    let mut inits = vec![f32t("w1", &[8, 8], &mut r), f32t("w2", &[4, 8], &mut r)];
    inits.extend(extra_inits);
    let t1 = [("transB", AttrValue::Int(1))];
    let mut nodes = vec![node("Gemm", "g1", &["x", "w1"], &["h"], &t1)];
    nodes.extend(between);
    nodes.push(node("Gemm", "g2", &[last_in, "w2"], &["y"], &t1));
    let mut outs = vec!["y"];
    outs.extend(extra_out);
    let mut m = model(inits, nodes, &[("x", &[2, 8]), ("x2", &[2, 8])], &outs);
    let before: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    let rep = run(&mut m, "permute-channels");
    let after: Vec<Vec<u8>> = m.graph.initializers.iter().map(|t| t.bytes().to_vec()).collect();
    assert_eq!(before, after, "a refused region must stay untouched");
    (m, rep)
}

#[test]
fn permutation_refuses_what_it_cannot_prove() {
    let shape = Tensor::new(
        "shape",
        DType::I64,
        vec![2],
        [2i64, 8].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    )
    .unwrap();
    let cases: Vec<(Vec<Node>, &str, Option<&str>, Vec<Tensor>, &str)> = vec![
        (
            vec![node("Reshape", "rs", &["h", "shape"], &["h2"], &[])],
            "h2",
            None,
            vec![shape],
            "Reshape 'rs' is not known",
        ),
        (vec![node("Relu", "relu", &["h"], &["h2"], &[])], "h2", Some("h2"), vec![], "graph output"),
        (vec![node("Softmax", "sm", &["h"], &["h2"], &[])], "h2", None, vec![], "Softmax 'sm'"),
        (vec![node("Add", "res", &["h", "x2"], &["h2"], &[])], "h2", None, vec![], "'x2' is a graph input"),
        (
            vec![
                node("Gemm", "g1b", &["x", "w1"], &["hb"], &[("transB", AttrValue::Int(1))]),
                node("Add", "a", &["h", "hb"], &["h2"], &[]),
            ],
            "h2",
            None,
            vec![],
            "shared by 2 consumers",
        ),
    ];
    for (between, last, out, inits, want) in cases {
        let (_, rep) = refusal_case(between, last, out, inits);
        let notes = notes_for(&rep, "permute-channels", "w2");
        assert!(notes.iter().any(|n| n.starts_with("not permuted") && n.contains(want)), "{want}: {notes:?}");
    }
}

#[test]
fn conv_region_spans_bn_depthwise_pooling_siblings_and_reshaped_constants() {
    let mut r = Rng(8);
    let bias_shape = Tensor::new(
        "bshape",
        DType::I64,
        vec![4],
        [1i64, 8, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
    )
    .unwrap();
    let inits = vec![
        f32t("c1", &[8, 3, 3, 3], &mut r),
        f32t("c1b", &[8], &mut r),
        f32t("s", &[8], &mut r),
        f32t("b", &[8], &mut r),
        f32t("mu", &[8], &mut r),
        f32t("var", &[8], &mut r),
        f32t("vec", &[8], &mut r),
        bias_shape,
        Tensor::from_f32("six", vec![], &[6.0]).unwrap(),
        f32t("dw", &[8, 1, 3, 3], &mut r),
        f32t("dwb", &[8], &mut r),
        f32t("c2", &[4, 8, 1, 1], &mut r),
        f32t("c3", &[6, 8, 3, 3], &mut r),
        f32t("gc", &[4, 4, 1, 1], &mut r),
    ];
    let nodes = vec![
        node("Conv", "conv1", &["img", "c1", "c1b"], &["a"], &[]),
        node("BatchNormalization", "bn", &["a", "s", "b", "mu", "var"], &["b1"], &[]),
        node("Reshape", "rs", &["vec", "bshape"], &["vec4"], &[]),
        node("Add", "addv", &["b1", "vec4"], &["b2"], &[]),
        node("Div", "div", &["b2", "six"], &["b3"], &[]),
        node("Conv", "dwconv", &["b3", "dw", "dwb"], &["d"], &[("group", AttrValue::Int(8))]),
        node("Relu", "relu", &["d"], &["e"], &[]),
        node("GlobalAveragePool", "gap", &["e"], &["p"], &[]),
        node("Conv", "conv2", &["p", "c2"], &["y1"], &[]),
        node("MaxPool", "mp", &["e"], &["q"], &[("kernel_shape", ints(&[2, 2]))]),
        node("Conv", "conv3", &["q", "c3"], &["y2"], &[]),
        node("Conv", "gconv", &["q", "gc"], &["y3"], &[("group", AttrValue::Int(2))]),
    ];
    let m = model(inits, nodes, &[("img", &[1, 3, 8, 8])], &["y1", "y2", "y3"]);
    let g = &m.graph;
    let idx = WeightIndex::new(g);
    let conv2 = g.nodes().find(|(_, n)| n.display_name() == "conv2").unwrap().0;
    // The grouped conv sibling makes the region unprovable ...
    let err = find_region(g, &idx, conv2).unwrap_err();
    assert!(err.contains("grouped conv"), "{err}");
    // ... without it the region is complete.
    let mut m2 = m.clone();
    let gid = m2.graph.nodes().find(|(_, n)| n.display_name() == "gconv").unwrap().0;
    m2.graph.remove_node(gid);
    m2.graph.outputs.retain(|o| o.name != "y3");
    let g = &m2.graph;
    let idx = WeightIndex::new(g);
    let conv2 = g.nodes().find(|(_, n)| n.display_name() == "conv2").unwrap().0;
    let reg = find_region(g, &idx, conv2).unwrap();
    assert_eq!(reg.width, 8);
    let cons: Vec<&str> = reg.consumers.iter().map(|(_, t)| t.id.name()).collect();
    assert_eq!(cons, vec!["c2", "c3"]);
    let mut edits: Vec<(String, usize)> = reg.edits.iter().map(|t| (t.id.name().to_string(), t.axis)).collect();
    edits.sort();
    let want: Vec<(String, usize)> =
        [("b", 0), ("c1", 0), ("c1b", 0), ("dw", 0), ("dwb", 0), ("mu", 0), ("s", 0), ("var", 0), ("vec", 0)]
            .iter()
            .map(|(n, a)| (n.to_string(), *a))
            .collect();
    assert_eq!(edits, want);
}
