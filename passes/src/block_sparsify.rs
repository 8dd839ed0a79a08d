//! `block-sparsify`: zero whole R×C blocks of each weight's 2-D view (design notes §5).
//!
//! The view is `[output, reduction · spatial]`: the weight's output axis becomes the rows, and the
//! columns flatten the reduction axis first, then the remaining axes in their order (Conv
//! `[M, C/g, kH, kW]` → `[M, C/g·kH·kW]`, Gemm transB=0 `[K, N]` → `[N, K]`, MatMul `[b, K, N]` →
//! `[N, K·b]`; embedding tables `[V, D]` as they are). Blocks tile the view from the top-left; the
//! blocks at the right and bottom edges are smaller and scored as they are. A block's score is the sum
//! of its elements' scores (a preceding `score` pass, else |w|; zero elements score 0). Exactly
//! `floor(sparsity · blocks)` blocks are zeroed per tensor: blocks already all zero first (they count
//! as pruned), then the lowest scores, ties keeping the lower block index (row-major block order).
//!
//! Skipped with a note: weights whose consumers disagree on the axes. Preconditions: none.
//! Effects: weight values (cached scores updated: pruned → 0, preserved). Idempotent: yes.
//! Counters: `weights`, `blocks_total`, `blocks_pruned`, `zero_blocks_after`, `zeros_added`, `skipped`;
//! each weight's block density goes in a note.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `block` | `4x4` | block size `RxC` (rows × columns of the 2-D view) |
//! | `sparsity` | `0.5` | fraction of blocks to zero, per tensor |
//! | `ops`, `names`, `exclude`, `embeddings` | see [`crate::scope`] | which weights |

use crate::permute::{weight_scores, WeightView};
use crate::scope::{Scope, SCOPE_OPTIONS};
use crate::score::ScoreRecipe;
use crate::scores::WeightScores;
use ndarray::{ArrayD, IxDyn};
use sparsify_ir::Model;
use sparsify_pm::{Changed, Effects, OptionSpec, Options, Pass, PassCx, PassError, PassInfo, PipelineError};

const OPTIONS: [OptionSpec; 6] = [
    OptionSpec { name: "block", default: "4x4", help: "block size RxC over the [output, reduction·spatial] view" },
    OptionSpec { name: "sparsity", default: "0.5", help: "fraction of blocks zeroed per tensor (floor)" },
    SCOPE_OPTIONS[0],
    SCOPE_OPTIONS[1],
    SCOPE_OPTIONS[2],
    SCOPE_OPTIONS[3],
];

pub const INFO: PassInfo = PassInfo {
    name: "block-sparsify",
    description: "zero the lowest-scoring RxC blocks of each weight's [output, reduction·spatial] view",
    effects: Effects::WEIGHT_VALUES,
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    let text = opts.take_str("block").unwrap_or_else(|| "4x4".into());
    let block = parse_block(&text).ok_or_else(|| {
        opts.error(
            (0, 0),
            format!("block-sparsify: option 'block' must be RxC with 1 ≤ R, C ≤ {MAX_BLOCK}, got '{text}'"),
        )
    })?;
    let sparsity = opts.take_range("sparsity", 0.5, 0.0, 1.0)?;
    Ok(Box::new(BlockSparsify { block, sparsity, scope: Scope::from_options(opts)? }))
}

/// The largest block side accepted (larger blocks are refused when the pipeline is parsed).
pub const MAX_BLOCK: usize = 1 << 16;

fn parse_block(text: &str) -> Option<(usize, usize)> {
    let (r, c) = text.trim().split_once(['x', 'X'])?;
    let (r, c) = (r.trim().parse::<usize>().ok()?, c.trim().parse::<usize>().ok()?);
    ((1..=MAX_BLOCK).contains(&r) && (1..=MAX_BLOCK).contains(&c)).then_some((r, c))
}

pub struct BlockSparsify {
    pub block: (usize, usize),
    pub sparsity: f64,
    pub scope: Scope,
}

/// The 2-D view of a weight: axis order (rows axis first) and its (rows, cols).
pub fn view_order(rank: usize, out_axis: usize, red_axis: usize) -> Vec<usize> {
    let mut order = vec![out_axis, red_axis];
    order.extend((0..rank).filter(|&a| a != out_axis && a != red_axis));
    order
}

/// Flat indices (standard layout of `shape`) in the row-major order of the 2-D view given by `order`.
pub fn view_indices(shape: &[usize], order: &[usize]) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let flat = ArrayD::from_shape_vec(IxDyn(shape), (0..n).collect::<Vec<usize>>()).expect("shape matches");
    flat.permuted_axes(IxDyn(order)).iter().copied().collect()
}

/// Which blocks to prune: `k = floor(sparsity · blocks)` (with 1e-9 slack against rounding) of them,
/// all-zero blocks first, then lowest score, ties pruning the higher index first.
pub fn blocks_to_prune(scores: &[f64], any_nonzero: &[bool], sparsity: f64) -> Vec<usize> {
    let k = ((sparsity * scores.len() as f64) + 1e-9).floor() as usize;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| any_nonzero[a].cmp(&any_nonzero[b]).then(scores[a].total_cmp(&scores[b])).then(b.cmp(&a)));
    order.truncate(k.min(scores.len()));
    order
}

impl Pass for BlockSparsify {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        let mut v =
            vec![("block", format!("{}x{}", self.block.0, self.block.1)), ("sparsity", self.sparsity.to_string())];
        v.extend(self.scope.options());
        v
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let (br, bc) = self.block;
        if br == 0 || bc == 0 || !(0.0..=1.0).contains(&self.sparsity) {
            return Err(PassError::Invalid {
                subject: "block-sparsify".into(),
                message: format!(
                    "need blocks of at least 1x1 and sparsity in [0, 1], got {br}x{bc}, {}",
                    self.sparsity
                ),
            });
        }
        let mut changed = false;
        for sel in self.scope.select(&model.graph) {
            let name = sel.id.name().to_string();
            let (out_axis, red_axis) = match &sel.info {
                Some(info) if info.conflict.is_some() => {
                    cx.note(&name, format!("skipped: axis conflict: {}", info.conflict.as_deref().unwrap_or("")));
                    cx.stat("skipped", 1.0);
                    continue;
                }
                Some(info) => (info.out_axis(), info.red_axis()),
                None => (0, 1),
            };
            let cache = cx.analyses.get::<WeightScores>();
            let WeightView { scores, nonzero, shape } = weight_scores(&model.graph, cache, &sel.id)?;
            if out_axis >= shape.len() || red_axis >= shape.len() || out_axis == red_axis {
                cx.note(
                    &name,
                    format!("skipped: axes (out {out_axis}, reduction {red_axis}) do not fit shape {shape:?}"),
                );
                cx.stat("skipped", 1.0);
                continue;
            }
            let order = view_order(shape.len(), out_axis, red_axis);
            let idx = view_indices(&shape, &order);
            let rows = shape[out_axis];
            let cols = idx.len().checked_div(rows).unwrap_or(0);
            let (nbr, nbc) = (rows.div_ceil(br), cols.div_ceil(bc));
            let mut bscore = vec![0f64; nbr * nbc];
            let mut bnz = vec![false; nbr * nbc];
            for (p, &i) in idx.iter().enumerate() {
                let b = (p / cols / br) * nbc + (p % cols) / bc;
                if nonzero[i] {
                    bscore[b] += scores[i] as f64;
                    bnz[b] = true;
                }
            }
            let pruned = blocks_to_prune(&bscore, &bnz, self.sparsity);
            let mut cut = vec![false; nbr * nbc];
            for &b in &pruned {
                cut[b] = true;
            }
            let mut keep = vec![true; idx.len()];
            for (p, &i) in idx.iter().enumerate() {
                keep[i] = !cut[(p / cols / br) * nbc + (p % cols) / bc];
            }
            let t = model
                .graph
                .weight_mut(&sel.id)
                .ok_or_else(|| PassError::Invalid { subject: name.clone(), message: "weight not found".into() })?;
            let z = t.zero_where(&keep)?;
            changed |= z > 0;
            if let Some(s) = cx.analyses.get_mut::<WeightScores>().and_then(|s| s.scores.get_mut(&sel.id)) {
                for (v, k) in s.iter_mut().zip(&keep) {
                    if !k {
                        *v = 0.0;
                    }
                }
            }
            let zero_after = (0..nbr * nbc).filter(|&b| cut[b] || !bnz[b]).count();
            let nb = nbr * nbc;
            let density = if nb == 0 { 0.0 } else { 1.0 - zero_after as f64 / nb as f64 };
            cx.note(
                &name,
                format!(
                    "{br}x{bc} blocks over a {rows}x{cols} view: zeroed {} of {nb} blocks ({z} elements); {zero_after} zero blocks, block density {density:.4}",
                    pruned.len()
                ),
            );
            cx.stat("weights", 1.0);
            cx.stat("blocks_total", nb as f64);
            cx.stat("blocks_pruned", pruned.len() as f64);
            cx.stat("zero_blocks_after", zero_after as f64);
            cx.stat("zeros_added", z as f64);
        }
        if changed {
            cx.preserve::<WeightScores>();
            cx.preserve::<ScoreRecipe>();
        }
        Ok(if changed { Changed::Yes } else { Changed::No })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_puts_output_rows_then_reduction_then_rest() {
        // [b=2, K=3, N=2] MatMul weight: out axis 2, reduction axis 1 -> view [N, K·b], columns (k, b)
        let order = view_order(3, 2, 1);
        assert_eq!(order, vec![2, 1, 0]);
        let idx = view_indices(&[2, 3, 2], &order);
        // row n=0: (k=0,b=0)=0, (k=0,b=1)=6, (k=1,b=0)=2, ...
        assert_eq!(&idx[..6], &[0, 6, 2, 8, 4, 10]);
    }

    #[test]
    fn prune_order_is_zero_blocks_then_score_then_higher_index() {
        let pruned = blocks_to_prune(&[1.0, 1.0, 0.0, 5.0], &[true, true, false, true], 0.75);
        assert_eq!(pruned, vec![2, 1, 0]);
        let pruned = blocks_to_prune(&[1.0, 1.0, 3.0], &[true; 3], 0.34);
        assert_eq!(pruned, vec![1]);
        assert!(parse_block("4x0").is_none() && parse_block("2x8") == Some((2, 8)));
    }
}
