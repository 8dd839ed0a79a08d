//! Real-token calibration statistics: which calibration positions are padding.
//!
//! Transformer calibration batches are padded to a common length; the model's attention mask input says
//! which positions hold real tokens (1) and which are padding (0). Statistics over padded positions
//! describe activations the model never uses, so when a mask is in force the calibrator counts only the
//! real positions in every per-position statistic of a MatMul / Gemm input (Wanda norms, SparseGPT Gram
//! matrices, bias-correction means).
//!
//! - Gram matrices and feature means count the real positions only when they number at least twice the
//!   features; otherwise every position counts for both (a Gram from fewer rows than features is
//!   singular and its solves overfit; means follow so that solves combining the two see one set of rows).
//!   The calibrator accumulates the padded rows apart and decides when a sweep ends.
//! - [`TokenMask::Auto`] (the default): a calibration input whose name contains `mask` (any case, e.g.
//!   `attention_mask`, `input_mask`) is used when it holds only 0/1 values and another calibration input
//!   has exactly its shape (the token ids). At most one such input may qualify; otherwise nothing is used
//!   and the notes say why.
//! - [`TokenMask::Input`]: the named input, which must exist and hold only 0/1 values (an error otherwise).
//! - [`TokenMask::Off`]: every position counts, as before.
//!
//! Mapping a mask onto an activation: the activation's features are on its last axis and its leading axes
//! are the positions. The mask applies when the leading axes equal the mask's shape (`[batch, seq, F]`
//! against a `[batch, seq]` mask) or when there is one leading axis of the mask's element count (`[batch·seq,
//! F]` after a Reshape). Anything else (attention scores `[batch, heads, seq, seq]`, a pooled `[batch, F]`,
//! Conv inputs, Gemm `transA=1`) counts every position: those axes are not the token positions.

use sparsify_validate::{Array, Feed};

/// How the calibration notes about the token mask begin.
pub const NOTE_PREFIX: &str = "token mask: ";

/// Which calibration input marks the real tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TokenMask {
    /// Detect an attention-mask input (see the module notes).
    #[default]
    Auto,
    /// Count every position.
    Off,
    /// This input is the mask.
    Input(String),
}

impl TokenMask {
    /// Parse the command line's `--calib-mask` value: `auto`, `none` / `off`, or an input name.
    pub fn parse(s: &str) -> TokenMask {
        match s {
            "auto" => TokenMask::Auto,
            "none" | "off" => TokenMask::Off,
            name => TokenMask::Input(name.to_string()),
        }
    }
}

/// The mask input chosen for `batches` (`None`: every position counts) and a note saying what was
/// decided and why.
pub fn resolve(choice: &TokenMask, batches: &[Feed]) -> Result<(Option<String>, Option<String>), String> {
    let Some(first) = batches.first() else { return Ok((None, None)) };
    match choice {
        TokenMask::Off => Ok((None, None)),
        TokenMask::Input(name) => {
            if first.get(name).is_none() {
                let have: Vec<&str> = first.arrays.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "calibration mask input '{name}' is not in the calibration data (inputs: {have:?})"
                ));
            }
            if let Some(bad) = batches.iter().find_map(|b| b.get(name).filter(|a| !is_zero_one(a))) {
                return Err(format!(
                    "calibration mask input '{name}' holds values other than 0 and 1 ({} {:?})",
                    bad.dtype_name(),
                    bad.shape()
                ));
            }
            Ok((Some(name.clone()), Some(real_note(name, batches))))
        }
        TokenMask::Auto => {
            let candidates: Vec<&str> = first
                .arrays
                .iter()
                .filter(|(n, a)| {
                    n.to_ascii_lowercase().contains("mask")
                        && a.shape().len() >= 2
                        && first.arrays.iter().any(|(m, b)| m != n && b.shape() == a.shape())
                })
                .map(|(n, _)| n.as_str())
                .filter(|n| batches.iter().all(|b| b.get(n).is_some_and(is_zero_one)))
                .collect();
            match candidates.as_slice() {
                [] => Ok((None, None)),
                [name] => Ok((
                    Some(name.to_string()),
                    Some(format!("{} (detected; turn off with --calib-mask none)", real_note(name, batches))),
                )),
                many => Ok((
                    None,
                    Some(format!(
                        "{NOTE_PREFIX}several inputs look like attention masks ({many:?}): every position counts; name one with --calib-mask"
                    )),
                )),
            }
        }
    }
}

fn real_note(name: &str, batches: &[Feed]) -> String {
    let (mut real, mut total) = (0usize, 0usize);
    for a in batches.iter().filter_map(|b| b.get(name)) {
        let v = a.to_f64_vec();
        total += v.len();
        real += v.iter().filter(|&&x| x != 0.0).count();
    }
    format!("{NOTE_PREFIX}statistics count only real tokens, '{name}' ≠ 0: {real} of {total} positions")
}

fn is_zero_one(a: &Array) -> bool {
    a.to_f64_vec().iter().all(|&x| x == 0.0 || x == 1.0)
}

/// Which rows (positions) of an activation of shape `act` with features on its last axis are real
/// tokens under `mask`; `None` when the mask does not line up with the activation's positions.
pub fn real_rows(mask: &Array, act: &[usize]) -> Option<Vec<bool>> {
    let (lead, m) = (act.split_last()?.1, mask.shape());
    let lines_up = lead == m || (lead.len() == 1 && lead[0] == mask.len() && !mask.is_empty());
    lines_up.then(|| mask.to_f64_vec().iter().map(|&x| x != 0.0).collect())
}

/// The rows of `act` (features on its last axis) whose entry of `real` ([`real_rows`]) equals `want`,
/// as a `[rows, features]` array: the real-token positions (`want = true`) or the padding.
pub fn positions(act: &Array, real: &[bool], want: bool) -> Option<Array> {
    let keep: Vec<bool> = real.iter().map(|&r| r == want).collect();
    act.select_rows(*act.shape().last()?, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn i64s(shape: &[usize], v: Vec<i64>) -> Array {
        Array::I64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }

    fn feed(mask: Array) -> Feed {
        let ids = i64s(mask.shape(), vec![7; mask.len()]);
        Feed { arrays: vec![("input_ids".into(), ids), ("attention_mask".into(), mask)] }
    }

    #[test]
    fn detects_a_zero_one_mask_shaped_like_the_tokens() {
        let f = feed(i64s(&[2, 3], vec![1, 1, 0, 1, 0, 0]));
        let (name, note) = resolve(&TokenMask::Auto, std::slice::from_ref(&f)).unwrap();
        assert_eq!(name.as_deref(), Some("attention_mask"));
        assert!(note.unwrap().contains("3 of 6 positions"));
        assert_eq!(resolve(&TokenMask::Off, std::slice::from_ref(&f)).unwrap().0, None);
    }

    #[test]
    fn ignores_masks_that_are_not_zero_one_or_not_token_shaped() {
        let f = feed(i64s(&[2, 3], vec![1, 2, 0, 1, 0, 0]));
        assert_eq!(resolve(&TokenMask::Auto, std::slice::from_ref(&f)).unwrap().0, None);
        assert!(resolve(&TokenMask::Input("attention_mask".into()), std::slice::from_ref(&f)).is_err());
        assert!(resolve(&TokenMask::Input("nope".into()), std::slice::from_ref(&f)).is_err());
        let lonely = Feed { arrays: vec![("attention_mask".into(), i64s(&[2, 3], vec![1; 6]))] };
        assert_eq!(resolve(&TokenMask::Auto, &[lonely]).unwrap().0, None);
    }

    #[test]
    fn selects_real_positions_of_3d_and_flattened_activations() {
        let mask = i64s(&[2, 2], vec![1, 0, 1, 1]);
        let act = Array::F32(ArrayD::from_shape_vec(IxDyn(&[2, 2, 2]), (0..8).map(|x| x as f32).collect()).unwrap());
        let keep = real_rows(&mask, act.shape()).expect("the mask applies");
        let Some(Array::F32(r)) = positions(&act, &keep, true) else { panic!("same dtype") };
        assert_eq!(r.shape(), &[3, 2]);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![0., 1., 4., 5., 6., 7.]);
        let flat = Array::F32(ArrayD::from_shape_vec(IxDyn(&[4, 2]), (0..8).map(|x| x as f32).collect()).unwrap());
        let keep = real_rows(&mask, flat.shape()).expect("a flattened [batch·seq] axis");
        assert_eq!(positions(&flat, &keep, true).unwrap().shape(), &[3, 2]);
        assert_eq!(positions(&flat, &keep, false).unwrap().shape(), &[1, 2]);
        let scores = Array::F32(ArrayD::zeros(IxDyn(&[2, 4, 2, 2])));
        assert!(real_rows(&mask, scores.shape()).is_none());
        let pooled = Array::F32(ArrayD::zeros(IxDyn(&[2, 2])));
        assert!(real_rows(&mask, pooled.shape()).is_none());
    }
}
