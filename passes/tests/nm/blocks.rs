//! Block sparsity against a reference with edge blocks.

use super::*;

// ---------- block sparsity ----------

/// Reference block pruning on a 2-D view given as (rows, cols, flat index of each view cell).
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
    let mut blocks: Vec<(bool, f64, usize)> = Vec::new();
    for b in 0..nbr * nbc {
        let (r0, c0) = (b / nbc * br, b % nbc * bc);
        let mut sum = 0.0;
        let mut nz = false;
        for r in r0..(r0 + br).min(rows) {
            for c in c0..(c0 + bc).min(cols) {
                sum += w[at(r, c)].abs() as f64;
                nz |= w[at(r, c)] != 0.0;
            }
        }
        blocks.push((nz, sum, b));
    }
    blocks.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.partial_cmp(&b.1).unwrap()).then(b.2.cmp(&a.2)));
    let k = (s * (nbr * nbc) as f64 + 1e-9).floor() as usize;
    let mut out = w.to_vec();
    for &(_, _, b) in &blocks[..k] {
        let (r0, c0) = (b / nbc * br, b % nbc * bc);
        for r in r0..(r0 + br).min(rows) {
            for c in c0..(c0 + bc).min(cols) {
                out[at(r, c)] = 0.0;
            }
        }
    }
    out
}

#[test]
fn block_sparsify_matches_the_reference_with_edge_blocks() {
    let mut r = Rng(5);
    let conv = r.vec(6 * 3 * 2 * 2); // [M=6, C=3, 2, 2] -> view [6, 12]
    let kn = r.vec(10 * 7); // Gemm transB=0 [K=10, N=7] -> view [7, 10]
    let mm3 = r.vec(2 * 5 * 3); // MatMul [b=2, K=5, N=3] -> view [3, K·b = 10], columns (k, b)
    let mut m = model(
        vec![
            Tensor::from_f32("conv", vec![6, 3, 2, 2], &conv).unwrap(),
            Tensor::from_f32("kn", vec![10, 7], &kn).unwrap(),
            Tensor::from_f32("mm3", vec![2, 5, 3], &mm3).unwrap(),
        ],
        vec![
            node("Conv", "c", &["img", "conv"], &["y0"], &[]),
            node("Gemm", "g", &["x", "kn"], &["y1"], &[]),
            node("MatMul", "mm", &["x3", "mm3"], &["y2"], &[]),
        ],
        &[("img", &[1, 3, 4, 4]), ("x", &[1, 10]), ("x3", &[2, 1, 5])],
        &["y0", "y1", "y2"],
    );
    let rep = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5}");
    let conv_want = ref_blocks(&conv, 6, 12, &|r, c| r * 12 + c, 4, 4, 0.5);
    let kn_want = ref_blocks(&kn, 7, 10, &|r, c| c * 7 + r, 4, 4, 0.5);
    let mm3_want = ref_blocks(&mm3, 3, 10, &|r, c| (c % 2) * 15 + (c / 2) * 3 + r, 4, 4, 0.5);
    assert_eq!(values(&m, "conv"), conv_want);
    assert_eq!(values(&m, "kn"), kn_want);
    assert_eq!(values(&m, "mm3"), mm3_want);
    let c = &rep.passes[0].counters;
    // blocks: conv 2x3 = 6 -> 3; kn 2x3 = 6 -> 3; mm3 1x3 = 3 -> 1
    assert_eq!(c["blocks_total"], 15.0);
    assert_eq!(c["blocks_pruned"], 7.0);
    assert!(notes_for(&rep, "block-sparsify", "kn")[0].contains("block density 0.5000"));
    let snap = values(&m, "kn");
    let again = run(&mut m, "block-sparsify{block=4x4,sparsity=0.5}");
    assert_eq!(again.passes[0].counters["zeros_added"], 0.0);
    assert_eq!(values(&m, "kn"), snap);
    assert!(PassManager::parse("block-sparsify{block=4}", &registry()).is_err());
    assert!(PassManager::parse("block-sparsify{sparsity=1.5}", &registry()).is_err());
}
