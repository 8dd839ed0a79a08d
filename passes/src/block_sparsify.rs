//! `block-sparsify`: zero whole R×C blocks of each weight's 2-D view (design notes §5).
//!
//! The view is `[output, reduction · spatial]`: the weight's output axis becomes the rows, and the
//! columns flatten the reduction axis first, then the remaining axes in their order (Conv
//! `[M, C/g, kH, kW]` → `[M, C/g·kH·kW]`, ConvTranspose `[C_in, C_out/g, kH, kW]` → `[C_out/g,
//! C_in·kH·kW]`, Gemm transB=0 `[K, N]` → `[N, K]`, MatMul `[b, K, N]` → `[N, K·b]`; embedding tables
//! `[V, D]` as they are). Blocks tile the view from the top-left; the blocks at the right and bottom
//! edges are smaller.
//!
//! The rule, per tensor:
//! - A block is ranked by the **mean** score of its elements (a preceding `score` pass, else |w|; zero
//!   elements score 0), so a partial edge block is not pruned first just for having fewer elements.
//!   Blocks already all zero come first (they count as pruned); ties prune the higher block index first
//!   (row-major block order), i.e. keep the lower.
//! - `sparsity` is the requested **element** sparsity. Blocks are pruned in that order, and the count is
//!   the one whose resulting element sparsity (zeros already there included) is closest to `sparsity`
//!   (ties: fewer blocks). The result is therefore within one block of the request (half a block when
//!   all blocks are full), unless the tensor already has more zeros than asked.
//! - Each weight's note gives the block sparsity (zero blocks / blocks) and element sparsity after.
//!
//! Skipped with a note: weights whose consumers disagree on the axes. Preconditions: none.
//! Effects: weight values (cached scores updated: pruned → 0, preserved). Idempotent: yes (pruned blocks
//! are all zero and rank first; the next block was not closer before and is not now).
//! Counters: `weights`, `blocks_total`, `blocks_pruned`, `zero_blocks_after`, `zeros_added`,
//! `elements_total`, `zero_elements_after`, `skipped`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `block` | `4x4` | block size `RxC` (rows × columns of the 2-D view) |
//! | `sparsity` | `0.5` | requested fraction of zero elements per tensor, reached with whole blocks |
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
    OptionSpec {
        name: "sparsity",
        default: "0.5",
        help: "fraction of zero elements per tensor, reached with whole blocks (closest block count)",
    },
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

/// One block of a weight's 2-D view.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BlockStat {
    /// Σ of the scores of its non-zero elements.
    pub score_sum: f64,
    /// Elements in the block (fewer for edge blocks).
    pub elements: usize,
    /// Non-zero elements.
    pub nonzero: usize,
}

impl BlockStat {
    /// Mean score per element (0 for an empty block).
    pub fn mean(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.score_sum / self.elements as f64
        }
    }
}

/// Which blocks to prune for a requested element sparsity: blocks ranked all-zero first, then by mean
/// score, ties pruning the higher index first; the prefix of that order whose element sparsity is
/// closest to `sparsity` (ties: the shorter prefix).
pub fn blocks_to_prune(blocks: &[BlockStat], sparsity: f64) -> Vec<usize> {
    let total: usize = blocks.iter().map(|b| b.elements).sum();
    let mut zeros: usize = total - blocks.iter().map(|b| b.nonzero).sum::<usize>();
    let target = sparsity * total as f64;
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&blocks[a], &blocks[b]);
        (x.nonzero > 0).cmp(&(y.nonzero > 0)).then(x.mean().total_cmp(&y.mean())).then(b.cmp(&a))
    });
    let (mut best_k, mut best_d) = (0usize, (zeros as f64 - target).abs());
    for (k, &b) in order.iter().enumerate() {
        zeros += blocks[b].nonzero;
        let d = (zeros as f64 - target).abs();
        if d < best_d - 1e-9 {
            (best_k, best_d) = (k + 1, d);
        }
    }
    order.truncate(best_k);
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
            let mut stats = vec![BlockStat::default(); nbr * nbc];
            for (p, &i) in idx.iter().enumerate() {
                let b = &mut stats[(p / cols / br) * nbc + (p % cols) / bc];
                b.elements += 1;
                if nonzero[i] {
                    b.score_sum += scores[i] as f64;
                    b.nonzero += 1;
                }
            }
            let pruned = blocks_to_prune(&stats, self.sparsity);
            let mut cut = vec![false; nbr * nbc];
            for &b in &pruned {
                cut[b] = true;
            }
            let mut keep = vec![true; idx.len()];
            for (p, &i) in idx.iter().enumerate() {
                keep[i] = !cut[(p / cols / br) * nbc + (p % cols) / bc];
            }
            let z = model.graph.zero_weight_where(&sel.id, &keep)?;
            if z > 0 {
                if let Some(t) = model.graph.weight_mut(&sel.id) {
                    cx.settle(t)?;
                }
            }
            changed |= z > 0;
            if let Some(s) = cx.analyses.get_mut::<WeightScores>().and_then(|s| s.scores.get_mut(&sel.id)) {
                for (v, k) in s.iter_mut().zip(&keep) {
                    if !k {
                        *v = 0.0;
                    }
                }
            }
            let zero_after = (0..nbr * nbc).filter(|&b| cut[b] || stats[b].nonzero == 0).count();
            let nb = nbr * nbc;
            let elements = idx.len();
            let zero_elements = stats
                .iter()
                .zip(&cut)
                .map(|(b, &c)| if c { b.elements } else { b.elements - b.nonzero })
                .sum::<usize>();
            let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            cx.note(
                &name,
                format!(
                    "{br}x{bc} blocks over a {rows}x{cols} view: zeroed {} of {nb} blocks ({z} elements); block sparsity {:.4} ({zero_after} zero blocks), element sparsity {:.4} (requested {})",
                    pruned.len(),
                    frac(zero_after, nb),
                    frac(zero_elements, elements),
                    self.sparsity
                ),
            );
            cx.stat("weights", 1.0);
            cx.stat("blocks_total", nb as f64);
            cx.stat("blocks_pruned", pruned.len() as f64);
            cx.stat("zero_blocks_after", zero_after as f64);
            cx.stat("zeros_added", z as f64);
            cx.stat("elements_total", elements as f64);
            cx.stat("zero_elements_after", zero_elements as f64);
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
    fn prune_order_is_zero_blocks_then_mean_then_higher_index() {
        let full = |s: f64| BlockStat { score_sum: s, elements: 4, nonzero: 4 };
        // block 2 is all zero; blocks 0 and 1 tie; 25% + 25% + 25% of 16 elements = 12 = 75%
        let zero = BlockStat { score_sum: 0.0, elements: 4, nonzero: 0 };
        let pruned = blocks_to_prune(&[full(1.0), full(1.0), zero, full(5.0)], 0.75);
        assert_eq!(pruned, vec![2, 1, 0]);
        // 12 elements, 34% asks for 4.08 zeros: one block of 4 is closest
        assert_eq!(blocks_to_prune(&[full(1.0), full(1.0), full(3.0)], 0.34), vec![1]);
        assert!(parse_block("4x0").is_none() && parse_block("2x8") == Some((2, 8)));
    }

    #[test]
    fn an_edge_block_goes_by_its_mean_and_the_count_aims_at_elements() {
        // A full block with mean 1.0 and an edge block of 2 elements with mean 1.5 (sum 3 < 16).
        let blocks = [
            BlockStat { score_sum: 16.0, elements: 16, nonzero: 16 },
            BlockStat { score_sum: 3.0, elements: 2, nonzero: 2 },
            BlockStat { score_sum: 40.0, elements: 16, nonzero: 16 },
        ];
        // 34 elements, 50% = 17: the full low block (16) is closest, the edge block is not preferred.
        assert_eq!(blocks_to_prune(&blocks, 0.5), vec![0]);
        // 60% = 20.4: 16 + 2 = 18 is closer than 16 or 34.
        assert_eq!(blocks_to_prune(&blocks, 0.6), vec![0, 1]);
        assert!(blocks_to_prune(&blocks, 0.0).is_empty());
        assert_eq!(blocks_to_prune(&blocks, 1.0).len(), 3);
    }
}
