//! Weights in their own dtype: f16, bf16 and f64 weights are scored and masked from their own bytes.
//! Checked against references written here: exact zero counts, the smallest magnitudes pruned (ties
//! keeping the lower index), N:M along the right axis, and every kept element bit-identical.

use half::{bf16, f16};
use sparsify_ir::{AttrValue, DType, Graph, Model, Node, Tensor, ValueInfo, WeightId};
use sparsify_passes::registry;
use sparsify_pm::{PassManager, RunEnv};

/// Deterministic values on a coarse grid (so ties happen), never exactly zero.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s % 61) as f64 - 30.0;
            (if v == 0.0 { 7.0 } else { v }) / 8.0
        })
        .collect()
}

fn encode(dtype: DType, vals: &[f64]) -> Vec<u8> {
    vals.iter()
        .flat_map(|&v| match dtype {
            DType::F16 => f16::from_f64(v).to_le_bytes().to_vec(),
            DType::BF16 => bf16::from_f64(v).to_le_bytes().to_vec(),
            DType::F64 => v.to_le_bytes().to_vec(),
            _ => (v as f32).to_le_bytes().to_vec(),
        })
        .collect()
}

/// One weight consumed by MatMul ([K, N], reduction axis 0) or Gemm transB=1 ([N, K], reduction axis 1).
fn model(dtype: DType, gemm: bool, dims: [i64; 2], seed: u64) -> Model {
    let n = (dims[0] * dims[1]) as usize;
    let w = Tensor::new("w", dtype, dims.to_vec(), encode(dtype, &values(n, seed)).into()).unwrap();
    let mut g = Graph::new();
    g.initializers.push(w);
    g.inputs.push(ValueInfo::tensor("x", dtype.code(), &[1, if gemm { dims[1] } else { dims[0] }]));
    g.outputs.push(ValueInfo::tensor("y", dtype.code(), &[]));
    let node = if gemm {
        let mut nd = Node::new("Gemm", "g", &["x", "w"], &["y"]);
        nd.set_attr("transB", AttrValue::Int(1));
        nd
    } else {
        Node::new("MatMul", "mm", &["x", "w"], &["y"])
    };
    let g = g.with_nodes(vec![node]);
    Model { ir_version: Some(8), opset_import: vec![], graph: g, opaque: vec![] }
}

fn run(m: &mut Model, pipeline: &str) {
    PassManager::parse(pipeline, &registry()).unwrap().run(m, RunEnv::default()).unwrap();
}

fn elem_size(dtype: DType) -> usize {
    dtype.size().unwrap()
}

/// (element bytes before, after) per element.
fn elements(before: &[u8], after: &[u8], size: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    before.chunks(size).zip(after.chunks(size)).map(|(a, b)| (a.to_vec(), b.to_vec())).collect()
}

#[test]
fn half_and_double_masks_prune_exact_counts_of_the_smallest_and_keep_bits() {
    for dtype in [DType::F16, DType::BF16, DType::F64, DType::F32] {
        let mut m = model(dtype, false, [24, 10], 3);
        let before = m.graph.weight(&WeightId::Init("w".into())).unwrap().bytes().to_vec();
        let vals = m.graph.weight(&WeightId::Init("w".into())).unwrap().to_f64().unwrap();
        let vals: Vec<f64> = vals.iter().copied().collect();
        run(&mut m, "score{method=l1},mask{sparsity=0.3}");
        let t = m.graph.weight(&WeightId::Init("w".into())).unwrap();
        assert_eq!(t.dtype, dtype, "dtype kept");
        let after = t.bytes().to_vec();
        // Reference: sort by (|w| as f32, index descending first among ties) and prune the first 72.
        let k = 240 * 3 / 10;
        let mut order: Vec<usize> = (0..vals.len()).collect();
        order.sort_by(|&a, &b| (vals[a].abs() as f32).total_cmp(&(vals[b].abs() as f32)).then(b.cmp(&a)));
        let pruned: std::collections::BTreeSet<usize> = order[..k].iter().copied().collect();
        for (i, (b, a)) in elements(&before, &after, elem_size(dtype)).into_iter().enumerate() {
            if pruned.contains(&i) {
                assert!(a.iter().all(|&x| x == 0), "{dtype:?}: element {i} should be +0");
            } else {
                assert_eq!(a, b, "{dtype:?}: kept element {i} must be bit-identical");
            }
        }
        assert_eq!(t.zero_count(), k, "{dtype:?}: exact count");
    }
}

#[test]
fn half_types_get_n_m_along_the_reduction_axis_with_kept_bits() {
    for dtype in [DType::F16, DType::BF16] {
        for gemm in [false, true] {
            // MatMul [K=16, N=6] groups along axis 0; Gemm transB [N=6, K=16] along axis 1.
            let dims = if gemm { [6, 16] } else { [16, 6] };
            let mut m = model(dtype, gemm, dims, 11);
            let before = m.graph.weight(&WeightId::Init("w".into())).unwrap().bytes().to_vec();
            let vals: Vec<f64> =
                m.graph.weight(&WeightId::Init("w".into())).unwrap().to_f64().unwrap().iter().copied().collect();
            run(&mut m, "score{method=l1},nm-legalize{n=2,m=4}");
            let t = m.graph.weight(&WeightId::Init("w".into())).unwrap();
            let after = t.bytes().to_vec();
            let els = elements(&before, &after, 2);
            let flat = |n: usize, k: usize| if gemm { n * 16 + k } else { k * 6 + n };
            for n in 0..6 {
                for g in 0..4 {
                    let idx: Vec<usize> = (0..4).map(|j| flat(n, g * 4 + j)).collect();
                    // Reference: keep the 2 largest |w| (f32 of the element), lower position first on ties.
                    let mut order: Vec<usize> = (0..4).collect();
                    order.sort_by(|&a, &b| {
                        (vals[idx[b]].abs() as f32).total_cmp(&(vals[idx[a]].abs() as f32)).then(a.cmp(&b))
                    });
                    for (rank, &j) in order.iter().enumerate() {
                        let (b, a) = &els[idx[j]];
                        if rank < 2 {
                            assert_eq!(a, b, "{dtype:?} gemm={gemm}: kept element must be bit-identical");
                        } else {
                            assert!(a.iter().all(|&x| x == 0), "{dtype:?} gemm={gemm}: group ({n},{g}) pos {j}");
                        }
                    }
                }
            }
            assert_eq!(t.zero_count(), 96 / 2);
        }
    }
}
