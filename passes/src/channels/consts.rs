//! Constant propagation for dead channels: the value a channel takes everywhere when it does not depend
//! on the input (a zero producer row gives its bias; BatchNorm, activations and elementwise ops with
//! constant operands map that value). Evaluated in `f64`; a non-finite result counts as "not constant".

use sparsify_ir::Node;

/// Element-wise unary operators the analysis passes channels through.
pub(crate) const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softsign",
    "Erf",
    "Gelu",
    "Mish",
    "Clip",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Identity",
    "Dropout",
    "Cast",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "ThresholdedRelu",
    "Sin",
    "Cos",
];

/// Element-wise operators over several operands (numpy broadcasting), coupling their channels.
pub(crate) const NARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where"];

/// Pooling over spatial axes (channel axis 1 passes through).
pub(crate) const POOL: &[&str] =
    &["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"];

fn erf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse (1e-7); use the series / continued fraction split.
    if x.abs() < 2.5 {
        // Maclaurin series, converges fast for |x| < 2.5.
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), accurate for |x| ≥ 2.5.
        let ax = x.abs();
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 / 2.0;
            d = 1.0 / (ax + a * d);
            c = ax + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}

fn attr_f(n: &Node, name: &str, default: f64) -> f64 {
    n.attr_float(name).map(f64::from).unwrap_or(default)
}

/// `f(x)` for a unary op; `clip` carries Clip's (min, max) when given as inputs.
pub(crate) fn unary(n: &Node, x: f64, clip: (Option<f64>, Option<f64>)) -> Option<f64> {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let y = match n.op_type.as_str() {
        "Relu" => x.max(0.0),
        "LeakyRelu" => {
            if x < 0.0 {
                attr_f(n, "alpha", 0.01) * x
            } else {
                x
            }
        }
        "Elu" => {
            if x < 0.0 {
                attr_f(n, "alpha", 1.0) * (x.exp() - 1.0)
            } else {
                x
            }
        }
        "Celu" => {
            let a = attr_f(n, "alpha", 1.0);
            x.max(0.0) + (a * ((x / a).exp() - 1.0)).min(0.0)
        }
        "Selu" => {
            let (a, g) = (attr_f(n, "alpha", 1.673_263_192_176_818_8), attr_f(n, "gamma", 1.050_701_022_148_132_3));
            g * if x <= 0.0 { a * (x.exp() - 1.0) } else { x }
        }
        "Sigmoid" => sig(x),
        "HardSigmoid" => (attr_f(n, "alpha", 0.2) * x + attr_f(n, "beta", 0.5)).clamp(0.0, 1.0),
        "HardSwish" => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        "Tanh" => x.tanh(),
        "Softplus" => x.exp().ln_1p(),
        "Softsign" => x / (1.0 + x.abs()),
        "Erf" => erf(x),
        "Gelu" => match n.attr("approximate") {
            Some(sparsify_ir::AttrValue::String(s)) if s == b"tanh" => {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }
            _ => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        },
        "Mish" => x * x.exp().ln_1p().tanh(),
        "Clip" => {
            let lo = clip.0.or(n.attr_float("min").map(f64::from)).unwrap_or(f64::NEG_INFINITY);
            let hi = clip.1.or(n.attr_float("max").map(f64::from)).unwrap_or(f64::INFINITY);
            x.max(lo).min(hi)
        }
        "Neg" => -x,
        "Abs" => x.abs(),
        "Exp" => x.exp(),
        "Log" => x.ln(),
        "Sqrt" => x.sqrt(),
        "Reciprocal" => 1.0 / x,
        "Identity" | "Dropout" | "Cast" => x,
        "Floor" => x.floor(),
        "Ceil" => x.ceil(),
        "Round" => x.round_ties_even(),
        "Sign" => {
            if x == 0.0 {
                0.0
            } else {
                x.signum()
            }
        }
        "ThresholdedRelu" => {
            if x > attr_f(n, "alpha", 1.0) {
                x
            } else {
                0.0
            }
        }
        "Sin" => x.sin(),
        "Cos" => x.cos(),
        _ => return None,
    };
    y.is_finite().then_some(y)
}

/// The result of an n-ary element-wise op on constant operands (in input order).
pub(crate) fn nary(op: &str, v: &[f64]) -> Option<f64> {
    let y = match (op, v) {
        ("Add", [a, b]) => a + b,
        ("Sub", [a, b]) => a - b,
        ("Mul", [a, b]) => a * b,
        ("Div", [a, b]) => a / b,
        ("Pow", [a, b]) => a.powf(*b),
        ("PRelu", [x, s]) => {
            if *x < 0.0 {
                s * x
            } else {
                *x
            }
        }
        ("Where", [c, x, y]) => {
            if *c != 0.0 {
                *x
            } else {
                *y
            }
        }
        ("Max", v) if !v.is_empty() => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ("Min", v) if !v.is_empty() => v.iter().copied().fold(f64::INFINITY, f64::min),
        ("Sum", v) if !v.is_empty() => v.iter().sum(),
        ("Mean", v) if !v.is_empty() => v.iter().sum::<f64>() / v.len() as f64,
        _ => return None,
    };
    y.is_finite().then_some(y)
}

/// Whether a pooling op maps a constant channel `k` to `k` (it does unless padding is averaged in or
/// the op is a p-norm, where only 0 is preserved).
pub(crate) fn pool(n: &Node, k: f64) -> Option<f64> {
    let padded = n.attr_ints("pads").is_some_and(|p| p.iter().any(|&x| x != 0))
        || matches!(n.attr("auto_pad"), Some(sparsify_ir::AttrValue::String(s)) if s.starts_with(b"SAME"));
    match n.op_type.as_str() {
        "MaxPool" | "GlobalMaxPool" | "GlobalAveragePool" => Some(k),
        "AveragePool" if !(padded && n.attr_int("count_include_pad").unwrap_or(0) != 0) => Some(k),
        _ => (k == 0.0).then_some(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        for (x, want) in
            [(0.0, 0.0), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (3.0, 0.999_977_909_503_001_4)]
        {
            assert!((erf(x) - want).abs() < 1e-13, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-13);
        }
    }

    #[test]
    fn hardswish_and_clip() {
        let hs = Node::new("HardSwish", "h", &["x"], &["y"]);
        assert_eq!(unary(&hs, 3.0, (None, None)), Some(3.0));
        assert_eq!(unary(&hs, -4.0, (None, None)), Some(-0.0));
        let clip = Node::new("Clip", "c", &["x"], &["y"]);
        assert_eq!(unary(&clip, 7.0, (Some(0.0), Some(6.0))), Some(6.0));
        assert_eq!(nary("Div", &[1.0, 0.0]), None);
    }
}
