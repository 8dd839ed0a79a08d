//! `prune-heads`: remove whole attention heads, chosen on calibration data, with an optimal-brain-surgeon
//! repair of the output projection (issue 12 item 3).
//!
//! - **Pattern** (`pattern`): multi-head attention exported as projections → Reshape[.., H, dh] →
//!   Transpose → QKᵀ → (scale, mask) → Softmax → ·V → Transpose → Reshape[.., H·dh] → MatMul O. Separate
//!   query/key/value projections (BERT exports) and one fused qkv projection + 3-way `Split` (GPT-style
//!   exports) are recognised; shape constants may be whole (`[0, 0, H, dh]`, possibly shared by every
//!   layer) or built by `Concat` from `Shape` values and constants. Anything else — fused attention ops,
//!   rotary embeddings on the query/key path, grouped-query attention, per-head score biases, shared
//!   weights, tensors read elsewhere — is left unchanged with the reason in the notes.
//! - **Scores** (`score=obs`, default): the Gram H = XᵀX of O's input (the merged context) on the
//!   calibration set, λ = `damp` × mean diagonal; greedily remove the head whose dh rows B of O cost
//!   least, ΔE = tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B), update the kept rows W ← W − H⁻¹[:, B] (H⁻¹_BB)⁻¹ W_B and
//!   downdate H⁻¹ ([`crate::obs_removal`], shared with the calibrated channel masks), repeat. When O has a bias (a constant `Add` right after it),
//!   the constant 1 is one more input of the solve (Gram bordered by Σx and the row count), so the
//!   repair also moves the removed heads' mean contribution (e.g. their value bias) into O's bias. `score=norm`: a data-free baseline — the heads with the
//!   least ‖W_V[:, B]‖·‖W_O[B, :]‖ (value columns times output rows), no repair.
//! - **How many**: floor(`fraction` × H) heads per block, at least one kept. With `budget=global` the
//!   same total is spread across blocks by the greedy ΔE normalised by each block's tr(W H Wᵀ) (the
//!   block's output energy), at least one head kept per block.
//! - **Removal** (`remove=true`): the query/key/value output columns and biases of the removed heads
//!   (for a fused qkv: in each of the three segments, and the `Split` sizes), the head count in the
//!   head-split Reshape shapes and H·dh in the merge Reshape shape (a shape constant is cloned, never
//!   edited in place, so layers sharing it keep theirs), O's input rows; `value_info` of the block's
//!   inner tensors is dropped (their head axis changed). The attention scale 1/√dh is unchanged.
//!   `remove=false` only zeroes the removed heads (query/key/value columns and biases, O rows) and writes
//!   the repaired O: the removed model computes exactly what this masked model computes.
//! - Preconditions: calibration data for `score=obs`. Effects: weight values, weight shapes, topology
//!   (new shape constants). Not idempotent: each run removes `fraction` of the heads left.
//! - Counters: `blocks`, `heads_before`, `heads_removed`, `params_before/after`, `repair_cost` (Σ ΔE,
//!   relative to the blocks' output energy); notes: per block the heads removed and their ΔE.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `fraction` | `0.25` | heads removed per block (floor, at least one kept) |
//! | `score` | `obs` | `obs`: calibrated OBS cost with repair of O; `norm`: weight norms, no repair |
//! | `remove` | `true` | remove the heads for real (else zero them and write the repaired O) |
//! | `budget` | `block` | `block`: the fraction in every block; `global`: the same total, chosen across blocks |
//! | `damp` | `0.01` | λ as a fraction of the Gram's mean diagonal |

pub(crate) mod pattern;

use crate::channels::shapes::const_ints;
use crate::channels::slice::{float_tensor, replace, take};
use crate::dead_channel_elim::param_count;
use crate::obs_removal::{augment, output_energy, RowRemoval};
use pattern::{find_blocks, Block, IntSite, Source, SplitSizes};
use sparsify_ir::{AttrValue, DType, Graph, Model, Tensor, WeightId};
use sparsify_pm::{
    CalibRequest, CalibStat, Changed, Effects, FeatureAxis, OptionSpec, Options, Pass, PassCx, PassError, PassInfo,
    PipelineError,
};
use std::collections::BTreeMap;

const OPTIONS: [OptionSpec; 5] = [
    OptionSpec { name: "fraction", default: "0.25", help: "heads removed per attention block (floor, one kept)" },
    OptionSpec { name: "score", default: "obs", help: "obs: calibrated OBS cost + repair of O; norm: weight norms" },
    OptionSpec { name: "remove", default: "true", help: "remove heads for real (false: zero them, repaired O)" },
    OptionSpec { name: "budget", default: "block", help: "block: fraction per block; global: total across blocks" },
    OptionSpec { name: "damp", default: "0.01", help: "OBS damping λ as a fraction of the mean Gram diagonal" },
];

pub const INFO: PassInfo = PassInfo {
    name: "prune-heads",
    description: "remove whole attention heads (calibrated OBS choice and repair of the output projection)",
    effects: Effects(Effects::WEIGHT_VALUES.0 | Effects::WEIGHT_SHAPES.0 | Effects::TOPOLOGY.0),
    options: &OPTIONS,
    build,
};

fn build(opts: &mut Options<'_>) -> Result<Box<dyn Pass>, PipelineError> {
    Ok(Box::new(PruneHeads {
        fraction: opts.take_range("fraction", 0.25, 0.0, 1.0)?,
        obs: opts.take_choice("score", &["obs", "norm"], "obs")? == "obs",
        remove: opts.take_bool("remove", true)?,
        global: opts.take_choice("budget", &["block", "global"], "block")? == "global",
        damp: opts.take_range("damp", 0.01, 0.0, 1.0)?,
    }))
}

pub struct PruneHeads {
    pub fraction: f64,
    /// `score=obs` (else `norm`).
    pub obs: bool,
    pub remove: bool,
    /// `budget=global` (else `block`).
    pub global: bool,
    pub damp: f64,
}

fn err(subject: &str, message: impl Into<String>) -> PassError {
    PassError::Invalid { subject: subject.into(), message: message.into() }
}

/// Float values of a weight as f64.
fn values(g: &Graph, id: &WeightId) -> Result<Vec<f64>, PassError> {
    Ok(g.weight_values_f64(id)?.iter().copied().collect())
}

/// Per block: the chosen heads (in removal order), their costs, and the repaired O (None = unchanged).
struct Choice {
    heads: Vec<usize>,
    costs: Vec<f64>,
    o: Option<Vec<f64>>,
    energy: f64,
}

impl Pass for PruneHeads {
    fn name(&self) -> &'static str {
        INFO.name
    }
    fn effects(&self) -> Effects {
        INFO.effects
    }
    fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("fraction", self.fraction.to_string()),
            ("score", if self.obs { "obs" } else { "norm" }.into()),
            ("remove", self.remove.to_string()),
            ("budget", if self.global { "global" } else { "block" }.into()),
            ("damp", self.damp.to_string()),
        ]
    }

    fn run(&self, model: &mut Model, cx: &mut PassCx<'_>) -> Result<Changed, PassError> {
        let (blocks, notes) = find_blocks(&model.graph);
        for (s, m) in notes {
            cx.note(s, m);
            cx.stat("blocks_unrecognised", 1.0);
        }
        if blocks.is_empty() {
            cx.note("prune-heads", "no multi-head attention block recognised: model unchanged");
            return Ok(Changed::No);
        }
        let params_before = param_count(&model.graph);
        cx.stat("blocks", blocks.len() as f64);
        cx.stat("heads_before", blocks.iter().map(|b| b.heads).sum::<usize>() as f64);
        let counts: Vec<usize> = blocks.iter().map(|b| self.per_block(b.heads)).collect();
        let choices = if self.obs {
            self.choose_obs(model, cx, &blocks, &counts)?
        } else {
            choose_norm(&model.graph, &blocks, &counts)?
        };
        let mut changed = Changed::No;
        let (mut total_cost, mut total_energy) = (0.0, 0.0);
        for (b, c) in blocks.iter().zip(&choices) {
            if c.heads.is_empty() {
                continue;
            }
            changed = Changed::Yes;
            total_cost += c.costs.iter().sum::<f64>();
            total_energy += c.energy;
            let mut sorted = c.heads.clone();
            sorted.sort_unstable();
            cx.note(
                b.name.clone(),
                format!(
                    "removed heads {sorted:?} of {} (dh {}){}",
                    b.heads,
                    b.dh,
                    if self.obs {
                        format!(
                            ", ΔE/energy {}",
                            c.costs
                                .iter()
                                .map(|x| format!("{:.3e}", x / c.energy.max(1e-300)))
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                    } else {
                        String::new()
                    }
                ),
            );
            cx.stat("heads_removed", c.heads.len() as f64);
            apply(&mut model.graph, b, &sorted, c.o.as_deref(), self.remove)?;
        }
        if self.obs && total_energy > 0.0 {
            cx.stat("repair_cost", total_cost / total_energy);
        }
        cx.stat("params_before", params_before as f64);
        cx.stat("params_after", param_count(&model.graph) as f64);
        Ok(changed)
    }
}

impl PruneHeads {
    fn per_block(&self, heads: usize) -> usize {
        ((self.fraction * heads as f64 + 1e-9).floor() as usize).min(heads.saturating_sub(1))
    }

    fn choose_obs(
        &self,
        model: &Model,
        cx: &mut PassCx<'_>,
        blocks: &[Block],
        counts: &[usize],
    ) -> Result<Vec<Choice>, PassError> {
        let mut requests: Vec<CalibRequest> = Vec::new();
        for b in blocks {
            requests.push(CalibRequest::Gram { tensor: b.merged.clone(), axis: FeatureAxis::Last });
            requests.push(CalibRequest::FeatureSum { tensor: b.merged.clone(), axis: FeatureAxis::Last });
        }
        let stats = cx.calibrator()?.collect(model, &requests)?;
        cx.stat("calibration_runs", 1.0);
        let mut states = Vec::new();
        for (b, st) in blocks.iter().zip(stats.chunks(2)) {
            let CalibStat::Gram { h, k, rows } = &st[0] else {
                return Err(err(&b.merged, "calibrator gave no Gram"));
            };
            let w = values(&model.graph, &b.o_weight)?;
            let n = w.len() / k.max(&1);
            if *k != b.heads * b.dh || w.len() != k * n {
                return Err(err(&b.merged, format!("Gram of {k} features for {} heads × {}", b.heads, b.dh)));
            }
            // Output energy tr(Wᵀ H W) with the undamped Gram.
            let energy = output_energy(&w, *k, n, h);
            // With a bias, the constant 1 is one more input (row k of W = the bias, never removed): the
            // repair then also moves the removed heads' mean contribution into the bias.
            let obs = match (&b.o_bias, &st[1]) {
                (Some(bias), CalibStat::FeatureSum { sums, .. }) if sums.len() == *k => {
                    let mut wa = w;
                    wa.extend(values(&model.graph, bias)?);
                    RowRemoval::new(wa, k + 1, n, &augment(h, sums, *rows as f64), self.damp)
                }
                _ => RowRemoval::new(w, *k, n, h, self.damp),
            }
            .map_err(|why| err(&b.merged, format!("no repair of the output projection: {why}")))?;
            states.push((obs, energy));
        }
        let rows = |b: &Block, h: usize| -> Vec<usize> { (h * b.dh..(h + 1) * b.dh).collect() };
        let mut chosen: Vec<Vec<usize>> = vec![Vec::new(); blocks.len()];
        let mut costs: Vec<Vec<f64>> = vec![Vec::new(); blocks.len()];
        // The cheapest head of block i now: (head, ΔE).
        let best = |i: usize, st: &RowRemoval, chosen: &[usize]| -> Result<Option<(usize, f64)>, PassError> {
            let mut best: Option<(usize, f64)> = None;
            for h in 0..blocks[i].heads {
                if chosen.contains(&h) {
                    continue;
                }
                let c = st.cost(&rows(&blocks[i], h));
                if best.is_none_or(|(_, bc)| c < bc) {
                    best = Some((h, c));
                }
            }
            Ok(best)
        };
        if self.global {
            let total: usize = counts.iter().sum();
            for _ in 0..total {
                let mut pick: Option<(usize, usize, f64, f64)> = None;
                for i in 0..blocks.len() {
                    if chosen[i].len() + 1 >= blocks[i].heads {
                        continue;
                    }
                    if let Some((h, c)) = best(i, &states[i].0, &chosen[i])? {
                        let norm = c / states[i].1.max(1e-300);
                        if pick.is_none_or(|(_, _, _, pn)| norm < pn) {
                            pick = Some((i, h, c, norm));
                        }
                    }
                }
                let Some((i, h, c, _)) = pick else { break };
                states[i].0.remove(&rows(&blocks[i], h));
                chosen[i].push(h);
                costs[i].push(c);
            }
        } else {
            for i in 0..blocks.len() {
                for _ in 0..counts[i] {
                    let Some((h, c)) = best(i, &states[i].0, &chosen[i])? else { break };
                    states[i].0.remove(&rows(&blocks[i], h));
                    chosen[i].push(h);
                    costs[i].push(c);
                }
            }
        }
        Ok(states
            .into_iter()
            .zip(chosen.into_iter().zip(costs))
            .map(|((st, energy), (heads, costs))| Choice {
                o: (!heads.is_empty()).then(|| st.weights()),
                heads,
                costs,
                energy,
            })
            .collect())
    }
}

/// The value projection's weight and its first column of the value segment.
fn value_proj(b: &Block) -> (&WeightId, usize) {
    match &b.source {
        Source::Separate(p) => (&p[2].weight, 0),
        Source::Fused { proj, offsets, .. } => (&proj.weight, offsets[2]),
    }
}

/// The data-free baseline: least ‖W_V[:, B]‖·‖W_O[B, :]‖ first, no repair.
fn choose_norm(g: &Graph, blocks: &[Block], counts: &[usize]) -> Result<Vec<Choice>, PassError> {
    let mut out = Vec::new();
    for (b, &count) in blocks.iter().zip(counts) {
        let o = values(g, &b.o_weight)?;
        let n = o.len() / (b.heads * b.dh);
        let (vid, off) = value_proj(b);
        let v = values(g, vid)?;
        let vt = g.weight(vid).ok_or_else(|| err(vid.name(), "not found"))?;
        let vc = vt.dims[1] as usize;
        let rows_in = vt.dims[0] as usize;
        let mut s: Vec<(f64, usize)> = (0..b.heads)
            .map(|h| {
                let (mut on, mut vn) = (0.0, 0.0);
                for r in h * b.dh..(h + 1) * b.dh {
                    on += (0..n).map(|c| o[r * n + c].powi(2)).sum::<f64>();
                    vn += (0..rows_in).map(|i| v[i * vc + off + r].powi(2)).sum::<f64>();
                }
                (on.sqrt() * vn.sqrt(), h)
            })
            .collect();
        s.sort_by(|a, c| a.0.total_cmp(&c.0).then(a.1.cmp(&c.1)));
        let heads: Vec<usize> = s.iter().take(count).map(|x| x.1).collect();
        out.push(Choice { costs: vec![0.0; heads.len()], heads, o: None, energy: 0.0 });
    }
    Ok(out)
}

/// A fresh tensor name based on `base`.
fn fresh_name(g: &Graph, base: &str) -> String {
    let taken = |n: &str| {
        g.initializers.iter().any(|t| t.name == n)
            || g.inputs.iter().any(|i| i.name == n)
            || g.nodes().any(|(_, x)| x.outputs.iter().any(|o| o == n))
    };
    if !taken(base) {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}_{i}")).find(|n| !taken(n)).unwrap_or_default()
}

/// Point `site` at a new constant holding `value` at its index (a clone of the old constant), and drop
/// the old constant when nothing reads it any more.
fn set_site(
    g: &mut Graph,
    site: &IntSite,
    value: i64,
    tag: &str,
    made: &mut BTreeMap<String, String>,
) -> Result<(), PassError> {
    if site.value == -1 {
        return Ok(());
    }
    let old = g.node(site.node).inputs[site.input].clone();
    let key = format!("{old}#{}", site.index);
    let new = match made.get(&key) {
        Some(n) => n.clone(),
        None => {
            let id = g.constant_source(&old).ok_or_else(|| err(&old, "shape constant vanished"))?;
            let t = g.weight(&id).ok_or_else(|| err(&old, "shape constant not found"))?.clone();
            let mut v = const_ints(g, &old).ok_or_else(|| err(&old, "not an integer constant"))?;
            v[site.index] = value;
            let name = fresh_name(g, &format!("{old}.{tag}"));
            let bytes: Vec<u8> = match t.dtype {
                DType::I64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
                d => return Err(err(&old, format!("shape constant of dtype {}", d.name()))),
            };
            g.initializers.push(Tensor::new(name.clone(), t.dtype, t.dims.clone(), bytes.into())?);
            made.insert(key, name.clone());
            name
        }
    };
    g.node_mut(site.node).inputs[site.input] = new;
    g.relink();
    drop_if_unused(g, &old);
    Ok(())
}

/// Remove a constant (initializer or Constant node) nobody reads.
fn drop_if_unused(g: &mut Graph, name: &str) {
    if !g.consumers(name).is_empty() || g.is_output(name) || g.used_in_subgraphs(name) {
        return;
    }
    if g.inputs.iter().any(|i| i.name == name) {
        return;
    }
    if let Some(i) = g.initializers.iter().position(|t| t.name == name) {
        g.initializers.remove(i);
    } else if let Some(p) = g.producer_of(name) {
        if g.node(p).op_type == "Constant" {
            g.remove_node(p);
        }
    }
}

/// Zero or remove the heads `gone` (sorted) of block `b`; `o` is the repaired O [H·dh, N] (None: keep).
fn apply(g: &mut Graph, b: &Block, gone: &[usize], o: Option<&[f64]>, remove: bool) -> Result<(), PassError> {
    let dh = b.dh;
    let k = b.heads * dh;
    let keep_heads: Vec<usize> = (0..b.heads).filter(|h| !gone.contains(h)).collect();
    let keep_k: Vec<usize> = keep_heads.iter().flat_map(|&h| h * dh..(h + 1) * dh).collect();
    // Projection columns: per segment offset, the kept / dropped columns.
    let (projs, offsets): (Vec<&pattern::Proj>, Vec<usize>) = match &b.source {
        Source::Separate(p) => (p.iter().collect(), vec![0]),
        Source::Fused { proj, offsets, .. } => {
            let mut o = offsets.to_vec();
            o.sort_unstable();
            (vec![proj], o)
        }
    };
    for p in projs {
        let keep_cols: Vec<usize> = if offsets.len() == 1 {
            keep_k.clone()
        } else {
            // Columns outside the three segments cannot exist (sizes sum to the width); keep segment order.
            offsets.iter().flat_map(|&off| keep_k.iter().map(move |&c| off + c)).collect()
        };
        let cols = p.cols;
        let dead: Vec<bool> = {
            let mut d = vec![true; cols];
            for &c in &keep_cols {
                d[c] = false;
            }
            d
        };
        if remove {
            let w = g.weight(&p.weight).ok_or_else(|| err(p.weight.name(), "not found"))?.clone();
            replace(g, &p.weight, take(&w, 1, &keep_cols)?)?;
            if let Some(bias) = &p.bias {
                let t = g.weight(bias).ok_or_else(|| err(bias.name(), "not found"))?.clone();
                replace(g, bias, take(&t, 0, &keep_cols)?)?;
            }
        } else {
            let t = g.weight_mut(&p.weight).ok_or_else(|| err(p.weight.name(), "not found"))?;
            t.zero_by(|i| dead[i % cols])?;
            if let Some(bias) = &p.bias {
                let t = g.weight_mut(bias).ok_or_else(|| err(bias.name(), "not found"))?;
                t.zero_by(|i| dead[i])?;
            }
        }
    }
    // O: repaired values, then rows.
    let ot = g.weight(&b.o_weight).ok_or_else(|| err(b.o_weight.name(), "not found"))?.clone();
    let n = ot.dims[1] as usize;
    // A repaired O with one more row carries the repaired bias.
    let o = match (o, &b.o_bias) {
        (Some(vals), Some(bias)) if vals.len() == (k + 1) * n => {
            let bt = g.weight(bias).ok_or_else(|| err(bias.name(), "not found"))?.clone();
            let mut nb = float_tensor(&bt.name, bt.dtype, bt.dims.clone(), &vals[k * n..])?;
            nb.storage = bt.storage.clone();
            nb.opaque = bt.opaque.clone();
            nb.modified = true;
            replace(g, bias, nb)?;
            Some(&vals[..k * n])
        }
        _ => o,
    };
    let mut ot = match o {
        Some(vals) => {
            let mut t = float_tensor(&ot.name, ot.dtype, ot.dims.clone(), vals)?;
            t.storage = ot.storage.clone();
            t.opaque = ot.opaque.clone();
            t.modified = true;
            t
        }
        None => ot,
    };
    if remove {
        ot = take(&ot, 0, &keep_k)?;
    } else {
        let mut dead = vec![true; k];
        for &r in &keep_k {
            dead[r] = false;
        }
        ot.zero_by(|i| dead[i / n])?;
    }
    replace(g, &b.o_weight, ot)?;
    if !remove {
        return Ok(());
    }
    let h2 = keep_heads.len() as i64;
    let mut made = BTreeMap::new();
    for s in &b.split_sites {
        set_site(g, s, h2, "heads", &mut made)?;
    }
    set_site(g, &b.merge_site, h2 * dh as i64, "width", &mut made)?;
    if let Source::Fused { split, sizes, .. } = &b.source {
        let part = (keep_heads.len() * dh) as i64;
        match sizes {
            SplitSizes::Equal => {}
            SplitSizes::Attr(_) => g.node_mut(*split).set_attr("split", AttrValue::Ints(vec![part; 3])),
            SplitSizes::Input(_) => {
                let site = IntSite { node: *split, input: 1, index: 0, value: 0 };
                let old = g.node(*split).inputs[1].clone();
                let name = fresh_name(g, &format!("{old}.heads"));
                g.initializers.push(Tensor::new(
                    name.clone(),
                    DType::I64,
                    vec![3],
                    [part; 3].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
                )?);
                g.node_mut(site.node).inputs[1] = name;
                g.relink();
                drop_if_unused(g, &old);
            }
        }
    }
    g.value_info.retain(|v| !b.region.contains(&v.name));
    Ok(())
}
