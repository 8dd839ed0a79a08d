//! Block sparsity against a reference with edge blocks.

use super::*;

// ---------- block sparsity ----------

/// Reference block pruning on a 2-D view given as (rows, cols, flat index of each view cell): blocks
/// ranked all-zero first, then by mean |w| per element, ties pruning the higher index first; as many as
/// bring the element sparsity closest to `s` (ties: fewer).
fn ref_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    at: &dyn Fn(usize, usize) -> usize,
    br: usize,
    bc: usize,
    s: f64,
) -> Vec<f32> {
    let (nbr, nbc) = (rows.div_ceil(br), cols.div_ceil(bc));
    let cells = |b: usize| {
        let (r0, c0) = (b / nbc * br, b % nbc * bc);
        let mut v = Vec::new();
        for r in r0..(r0 + br).min(rows) {
            for c in c0..(c0 + bc).min(cols) {
                v.push(at(r, c));
            }
        }
        v
    };
    // (any non-zero, mean, index, non-zeros)
    let mut blocks: Vec<(bool, f64, usize, usize)> = Vec::new();
    for b in 0..nbr * nbc {
        let c = cells(b);
        let sum: f64 = c.iter().map(|&i| w[i].abs() as f64).sum();
        let nz = c.iter().filter(|&&i| w[i] != 0.0).count();
        blocks.push((nz > 0, sum / c.len() as f64, b, nz));
    }
    blocks.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.partial_cmp(&b.1).unwrap()).then(b.2.cmp(&a.2)));
    let target = s * w.len() as f64;
    let mut zeros = w.iter().filter(|v| **v == 0.0).count();
    let (mut best, mut best_d) = (0, (zeros as f64 - target).abs());
    for (k, b) in blocks.iter().enumerate() {
        zeros += b.3;
        if (zeros as f64 - target).abs() < best_d - 1e-9 {
            (best, best_d) = (k + 1, (zeros as f64 - target).abs());
        }
    }
    let mut out = w.to_vec();
    for &(_, _, b, _) in &blocks[..best] {
        for i in cells(b) {
            out[i] = 0.0;
        }
    }
    out
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|x| **x == 0.0).count()
}

#[test]
fn block_sparsify_matches_the_reference_with_edge_blocks() {
    let mut r = Rng(5);
    let conv = r.vec(6 * 3 * 2 * 2); // [M=6, C=3, 2, 2] -> view [6, 12]
    let kn = r.vec(10 * 7); // Gemm transB=0 [K=10, N=7] -> view [7, 10]
    let mm3 = r.vec(2 * 5 * 3); // MatMul [b=2, K=5, N=3] -> view [3, K·b = 10], columns (k, b)
    let ct = r.vec(4 * 3 * 2 * 2); // ConvTranspose [C_in=4, C_out=3, 2, 2] -> view [3, C_in·4 = 16]
    let mut m = model(
        vec![
            Tensor::from_f32("conv", vec![6, 3, 2, 2], &conv).unwrap(),
            Tensor::from_f32("kn", vec![10, 7], &kn).unwrap(),
            Tensor::from_f32("mm3", vec![2, 5, 3], &mm3).unwrap(),
            Tensor::from_f32("ct", vec![4, 3, 2, 2], &ct).unwrap(),
        ],
        vec![
            node("Conv", "c", &["img", "conv"], &["y0"], &[]),
            node("Gemm", "g", &["x", "kn"], &["y1"], &[]),
            node("MatMul", "mm", &["x3", "mm3"], &["y2"], &[]),
            node("ConvTranspose", "ctr", &["img4", "ct"], &["y3"], &[]),
        ],
        &[("img", &[1, 3, 4, 4]), ("x", &[1, 10]), ("x3", &[2, 1, 5]), ("img4", &[1, 4, 3, 3])],
        &["y0", "y1", "y2", "y3"],
    );
    let rep = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5,ops=Conv|Gemm|MatMul|ConvTranspose}");
    let conv_want = ref_blocks(&conv, 6, 12, &|r, c| r * 12 + c, 4, 4, 0.5);
    let kn_want = ref_blocks(&kn, 7, 10, &|r, c| c * 7 + r, 4, 4, 0.5);
    let mm3_want = ref_blocks(&mm3, 3, 10, &|r, c| (c % 2) * 15 + (c / 2) * 3 + r, 4, 4, 0.5);
    let ct_want = ref_blocks(&ct, 3, 16, &|r, c| (c / 4) * 12 + r * 4 + c % 4, 4, 4, 0.5);
    assert_eq!(values(&m, "conv"), conv_want);
    assert_eq!(values(&m, "kn"), kn_want);
    assert_eq!(values(&m, "mm3"), mm3_want);
    assert_eq!(values(&m, "ct"), ct_want);
    let c = &rep.passes[0].counters;
    // blocks: conv 2x3 = 6; kn 2x3 = 6; mm3 1x3 = 3; ct 1x4 = 4
    assert_eq!(c["blocks_total"], 19.0);
    let want_zeros = zeros(&conv_want) + zeros(&kn_want) + zeros(&mm3_want) + zeros(&ct_want);
    assert_eq!(c["zero_elements_after"], want_zeros as f64);
    assert_eq!(c["elements_total"], (72 + 70 + 30 + 48) as f64);
    // Each weight within one block (16 elements) of 50%, and its note gives both sparsities.
    for (name, n) in [("conv", 72usize), ("kn", 70), ("mm3", 30), ("ct", 48)] {
        let z = zeros(&values(&m, name));
        assert!((z as f64 - 0.5 * n as f64).abs() <= 16.0, "{name}: {z} of {n}");
        let note = notes_for(&rep, "block-sparsify", name)[0];
        let want = format!("element sparsity {:.4}", z as f64 / n as f64);
        assert!(note.contains(&want) && note.contains("block sparsity"), "{name}: {note}");
    }
    let snap = values(&m, "kn");
    let again = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5,ops=Conv|Gemm|MatMul|ConvTranspose}");
    assert_eq!(again.passes[0].counters["zeros_added"], 0.0);
    assert_eq!(values(&m, "kn"), snap);
    assert!(PassManager::parse("block-sparsify{block=4}", &registry()).is_err());
    assert!(PassManager::parse("block-sparsify{sparsity=1.5}", &registry()).is_err());
}

#[test]
fn partial_edge_blocks_are_not_pruned_for_their_size() {
    // The reported case: a [24, 1, 3, 3] Conv weight, view 24 x 9, 4x4 blocks: 12 full blocks of 16 and
    // 6 edge blocks of 4 (the last column). Every full element has |w| = 1, every edge element 1.01:
    // a sum rule would prune the six edge blocks first (sum 4.04 < 16); by the mean they go last.
    let w: Vec<f32> = (0..216).map(|i| if i % 9 == 8 { 1.01 } else { -1.0 }).collect();
    let mut m = model(
        vec![Tensor::from_f32("w", vec![24, 1, 3, 3], &w).unwrap()],
        vec![node("Conv", "c", &["img", "w"], &["y"], &[])],
        &[("img", &[1, 1, 5, 5])],
        &["y"],
    );
    let rep = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5}");
    let after = values(&m, "w");
    assert!((0..216).filter(|i| i % 9 == 8).all(|i| after[i] != 0.0), "an edge block was pruned");
    // 50% of 216 = 108: 7 full blocks (112) is the closest count; the sum rule reached 33%.
    assert_eq!(zeros(&after), 112);
    assert_eq!(after, ref_blocks(&w, 24, 9, &|r, c| r * 9 + c, 4, 4, 0.5));
    assert_eq!(rep.passes[0].counters["blocks_pruned"], 7.0);
    // Where the edge blocks do score lowest per element, they still go first.
    let w2: Vec<f32> = (0..216).map(|i| if i % 9 == 8 { 0.5 } else { 1.0 }).collect();
    let mut m = model(
        vec![Tensor::from_f32("w", vec![24, 1, 3, 3], &w2).unwrap()],
        vec![node("Conv", "c", &["img", "w"], &["y"], &[])],
        &[("img", &[1, 1, 5, 5])],
        &["y"],
    );
    run(&mut m, "block-sparsify{block=4x4,sparsity=0.5}");
    let after = values(&m, "w");
    assert!((0..216).filter(|i| i % 9 == 8).all(|i| after[i] == 0.0));
    assert_eq!(after, ref_blocks(&w2, 24, 9, &|r, c| r * 9 + c, 4, 4, 0.5));
}
