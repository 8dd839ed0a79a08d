//! Metrics of `compare_outputs` on small hand-computed examples.

use ndarray::{ArrayD, IxDyn};
use sparsify_validate::{compare_outputs, Array, Status, Thresholds};

fn f32s(shape: &[usize], v: &[f32]) -> Array {
    Array::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn named(a: Array) -> Vec<(String, Array)> {
    vec![("y".to_string(), a)]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn hand_computed_metrics() {
    // a = [3, 4, 0, 0], b = [3, 4, 0, 1]: ‖a‖ = 5, ‖a-b‖ = 1, a·b = 25, ‖b‖ = √26.
    let a = f32s(&[2, 2], &[3.0, 4.0, 0.0, 0.0]);
    let b = f32s(&[2, 2], &[3.0, 4.0, 0.0, 1.0]);
    let r = compare_outputs(&named(a), &named(b), &Thresholds::default());
    let o = &r.outputs[0];
    assert_eq!(r.status, Status::OverThreshold);
    assert_eq!((o.name.as_str(), o.dtype.as_str(), o.shape.as_slice()), ("y", "float32", &[2usize, 2][..]));
    assert!(close(o.max_abs_err, 1.0));
    assert!(close(o.rel_l2_err, 0.2));
    assert!(close(o.cosine, 25.0 / (5.0 * 26f64.sqrt())));
    // Rows: argmax(3,4)=1 vs 1; argmax(0,0)=0 vs argmax(0,1)=1 → 1/2.
    assert_eq!(o.top1_agreement, Some(0.5));
    assert!(!o.bit_identical && !o.within_threshold);
    // Loose thresholds accept it unless max_abs is set below 1.
    let loose = Thresholds { max_rel_l2: 0.25, min_cosine: 0.9, max_abs: None };
    let r = compare_outputs(&named(f32s(&[4], &[3., 4., 0., 0.])), &named(f32s(&[4], &[3., 4., 0., 1.])), &loose);
    assert_eq!(r.status, Status::Passed);
    assert_eq!(r.outputs[0].top1_agreement, None, "rank 1: no top-1");
    let strict_abs = Thresholds { max_abs: Some(0.5), ..loose };
    let r = compare_outputs(&named(f32s(&[4], &[3., 4., 0., 0.])), &named(f32s(&[4], &[3., 4., 0., 1.])), &strict_abs);
    assert_eq!(r.status, Status::OverThreshold);
}

#[test]
fn identical_zero_nan_shape_and_int_cases() {
    let th = Thresholds::default();
    let a = f32s(&[3], &[1.0, -2.0, 0.5]);
    let r = compare_outputs(&named(a.clone()), &named(a.clone()), &th);
    assert_eq!(r.status, Status::Passed);
    let o = &r.outputs[0];
    assert!(o.bit_identical && o.within_threshold);
    assert_eq!((o.max_abs_err, o.rel_l2_err, o.cosine), (0.0, 0.0, 1.0));
    // Both zero → rel 0, cosine 1; one zero → cosine 0.
    let z = f32s(&[2], &[0.0, 0.0]);
    let o = &compare_outputs(&named(z.clone()), &named(z.clone()), &th).outputs[0];
    assert_eq!((o.rel_l2_err, o.cosine), (0.0, 1.0));
    let o = &compare_outputs(&named(z), &named(f32s(&[2], &[0.0, 1.0])), &th).outputs[0];
    assert_eq!(o.cosine, 0.0);
    assert!(o.rel_l2_err > 1e100);
    // NaN anywhere → not within threshold, even bit-identical.
    let n = f32s(&[2], &[f32::NAN, 1.0]);
    let r = compare_outputs(&named(n.clone()), &named(n), &th);
    assert!(r.outputs[0].bit_identical && !r.outputs[0].within_threshold);
    assert_eq!(r.status, Status::OverThreshold);
    // Shape mismatch.
    let o = &compare_outputs(&named(f32s(&[2], &[1.0, 2.0])), &named(f32s(&[1, 2], &[1.0, 2.0])), &th).outputs[0];
    assert!(o.rel_l2_err.is_infinite() && !o.within_threshold && !o.bit_identical);
    // Integers compare as f64; no top-1 for ints; dtype differences are never bit-identical.
    let i = Array::I64(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1, 2]).unwrap());
    let o = &compare_outputs(&named(i.clone()), &named(f32s(&[1, 2], &[1.0, 2.0])), &th).outputs[0];
    assert!(o.within_threshold && !o.bit_identical && o.top1_agreement.is_none());
    // Output count mismatch → over threshold, the missing output reported.
    let r = compare_outputs(&[("a".into(), i.clone()), ("b".into(), i.clone())], &named(i), &th);
    assert_eq!((r.status, r.outputs.len()), (Status::OverThreshold, 2));
    // Nothing to compare.
    assert!(matches!(compare_outputs(&[], &[], &th).status, Status::NotValidated { .. }));
}

#[test]
fn report_serialises_to_json() {
    let a = f32s(&[1, 2], &[1.0, 2.0]);
    let r = compare_outputs(&named(a.clone()), &named(a), &Thresholds::default());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "Passed");
    assert_eq!(json["outputs"][0]["top1_agreement"], 1.0);
}
