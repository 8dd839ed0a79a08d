//! Importance math shared by the `score` pass, the `mask` pass and the seed API: magnitude and Wanda
//! scores over a weight in its own layout, and the axis arithmetic they need.
//!
//! Arrays are taken in standard (C) layout, as `Tensor::to_f32` returns them; a flat index `f` has
//! coordinate `(f / stride[a]) % shape[a]` along axis `a`.

use ndarray::ArrayD;

/// The score methods of design notes §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// |w|
    L1,
    /// w²
    L2,
    /// |w_ij| · ‖X_j‖₂
    Wanda,
    /// Relative importance and activations (`ria`).
    Ria,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::L1 => "l1",
            Method::L2 => "l2",
            Method::Wanda => "wanda",
            Method::Ria => "ria",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "l1" => Some(Method::L1),
            "l2" => Some(Method::L2),
            "wanda" => Some(Method::Wanda),
            "ria" => Some(Method::Ria),
            _ => None,
        }
    }
}

/// How the elements of a weight map to the input features of its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureMap {
    pub out_axis: usize,
    pub red_axis: usize,
    /// Conv `group`: the reduction index is the channel within the group of the output channel, so the
    /// feature is `group(o) · red_dim + j` with `group(o) = o / (out_dim / groups)`. 1 for every other op.
    pub conv_groups: usize,
}

impl FeatureMap {
    /// Number of input features the consumer's activation must have.
    pub fn features(&self, shape: &[usize]) -> usize {
        shape[self.red_axis] * self.conv_groups.max(1)
    }

    /// The feature index of every element, in flat (C) order.
    /// Whether the map fits `shape` (axes in range and distinct, output channels split into the groups).
    pub fn check(&self, shape: &[usize]) -> Result<(), String> {
        let rank = shape.len();
        if self.out_axis >= rank || self.red_axis >= rank || self.out_axis == self.red_axis {
            return Err(format!("axes out={} red={} do not fit shape {shape:?}", self.out_axis, self.red_axis));
        }
        let g = self.conv_groups.max(1);
        let out_dim = shape[self.out_axis];
        if g > 1 && !out_dim.is_multiple_of(g) {
            return Err(format!("{out_dim} output channels do not split into {g} groups"));
        }
        Ok(())
    }

    pub fn feature_of_each(&self, shape: &[usize]) -> Result<Vec<usize>, String> {
        self.check(shape)?;
        let g = self.conv_groups.max(1);
        let out_dim = shape[self.out_axis];
        let red_dim = shape[self.red_axis];
        let per_group = (out_dim / g).max(1);
        let so = stride(shape, self.out_axis);
        let sr = stride(shape, self.red_axis);
        let n: usize = shape.iter().product();
        Ok((0..n)
            .map(|f| {
                let j = (f / sr) % red_dim;
                if g > 1 {
                    ((f / so) % out_dim / per_group) * red_dim + j
                } else {
                    j
                }
            })
            .collect())
    }
}

/// Elements between consecutive indices along `axis` of a C-layout array of `shape`.
pub fn stride(shape: &[usize], axis: usize) -> usize {
    shape[axis + 1..].iter().product()
}

/// |w| (`squared = false`) or w².
pub fn magnitude(w: &ArrayD<f32>, squared: bool) -> ArrayD<f32> {
    if squared {
        w.mapv(|x| x * x)
    } else {
        w.mapv(f32::abs)
    }
}

/// The activation norms ‖X_j‖₂ fit the weight (one per reduced feature) and are finite and ≥ 0.
pub fn check_norms(map: &FeatureMap, shape: &[usize], norms: &[f64]) -> Result<(), String> {
    let want = map.features(shape);
    if norms.len() != want {
        return Err(format!("the activation has {} features but the weight reduces over {want}", norms.len()));
    }
    if let Some(bad) = norms.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(format!("activation norm of feature {bad} is {}", norms[bad]));
    }
    Ok(())
}

/// Wanda scores |w| · ‖X_j‖₂ given the feature norms ‖X_j‖₂ (not squared), computed in f64.
pub fn wanda(w: &ArrayD<f32>, map: &FeatureMap, norms: &[f64]) -> Result<ArrayD<f32>, String> {
    let shape = w.shape().to_vec();
    check_norms(map, &shape, norms)?;
    let feat = map.feature_of_each(&shape)?;
    let w = w.as_standard_layout();
    let vals: Vec<f32> = w.iter().zip(&feat).map(|(&x, &j)| ((x.abs() as f64) * norms[j]) as f32).collect();
    ArrayD::from_shape_vec(shape, vals).map_err(|e| e.to_string())
}

/// Output-channel index of every element (flat C order) along `out_axis`.
pub fn channel_of_each(shape: &[usize], out_axis: usize) -> Vec<usize> {
    let s = stride(shape, out_axis);
    let d = shape[out_axis].max(1);
    let n: usize = shape.iter().product();
    (0..n).map(|f| (f / s) % d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn grouped_conv_maps_to_the_group_input_channel() {
        // Conv weight [M=4, C/g=2, 1, 1], groups 2: out channels 0,1 read inputs 0,1; 2,3 read inputs 2,3.
        let map = FeatureMap { out_axis: 0, red_axis: 1, conv_groups: 2 };
        assert_eq!(map.feature_of_each(&[4, 2, 1, 1]).unwrap(), vec![0, 1, 0, 1, 2, 3, 2, 3]);
        let w = ArrayD::from_shape_vec(IxDyn(&[4, 2, 1, 1]), vec![1.0f32; 8]).unwrap();
        let s = wanda(&w, &map, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.as_slice().unwrap(), &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
        assert!(wanda(&w, &map, &[1.0, 2.0]).is_err());
    }

    #[test]
    fn matmul_reduces_over_axis_zero() {
        // MatMul W [K=2, N=3]: element (k, n) reads feature k.
        let map = FeatureMap { out_axis: 1, red_axis: 0, conv_groups: 1 };
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, -2.0, 0.0, 3.0, 1.0, -1.0]).unwrap();
        let s = wanda(&w, &map, &[10.0, 0.5]).unwrap();
        assert_eq!(s.as_slice().unwrap(), &[10.0, 20.0, 0.0, 1.5, 0.5, 0.5]);
        assert_eq!(channel_of_each(&[2, 3], 1), vec![0, 1, 2, 0, 1, 2]);
    }
}
