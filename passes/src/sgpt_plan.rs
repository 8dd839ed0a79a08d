//! SparseGPT planning: for each selected weight, its 2-D view W [outputs, reduction·kernel], the
//! calibration requests that give its Hessian, the stages of the sequential mode, and the per-weight solve
//! (Hessian assembly, column permutation for Conv N:M, [`crate::obs::sparsegpt`], write-back values).

use crate::obs::{self, Pattern, Solved};
use sparsify_ir::{AttrValue, Graph, NodeId, WeightId, WeightInfo};
use sparsify_pm::{CalibRequest, CalibStat, FeatureAxis};
use std::collections::BTreeSet;

/// The pruning target of the pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Sparsity(f64),
    /// `n` kept of every `m` along the reduction axis.
    NM {
        n: usize,
        m: usize,
    },
}

/// One weight to prune.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: WeightId,
    pub shape: Vec<usize>,
    /// Rows of the 2-D view (outputs), over all groups.
    pub rows: usize,
    /// Columns of the 2-D view (reduction · kernel positions) of one group.
    pub cols: usize,
    /// Conv groups (1 otherwise); group g owns rows [g·rows/groups, (g+1)·rows/groups).
    pub groups: usize,
    /// Kernel positions per channel (1 for MatMul / Gemm).
    pub kpos: usize,
    /// The 2-D weight is stored [reduction, outputs] (MatMul `[K, N]`, Gemm transB=0).
    pub transposed: bool,
    /// One calibration request per use of the weight.
    pub requests: Vec<CalibRequest>,
    /// The consuming nodes.
    pub consumers: Vec<NodeId>,
    /// Nodes the weight's activations depend on (their producers and everything upstream).
    pub ancestors: BTreeSet<NodeId>,
}

/// Plan a weight, or say why it is skipped.
pub fn plan(g: &Graph, info: &WeightInfo, target: Target) -> Result<Plan, String> {
    if let Some(c) = &info.conflict {
        return Err(format!("skipped: consumers disagree on the axes ({c})"));
    }
    let t = g.weight(&info.id).ok_or("skipped: weight not found")?;
    let shape = t.shape();
    let mut requests = Vec::new();
    let mut consumers = Vec::new();
    let mut ancestors = BTreeSet::new();
    let (rows, cols, groups, kpos, transposed);
    match info.op() {
        "Conv" => {
            if (info.out_axis(), info.red_axis()) != (0, 1) || shape.len() < 3 {
                return Err("skipped: Conv weight not in [M, C/g, k...] layout".into());
            }
            groups = info.groups();
            kpos = shape[2..].iter().product();
            if groups == 0 || shape[0] % groups != 0 {
                return Err(format!("skipped: {} output channels do not split into {groups} groups", shape[0]));
            }
            (rows, cols, transposed) = (shape[0], shape[1] * kpos, false);
        }
        "Gemm" | "MatMul" => {
            if shape.len() != 2 {
                return Err(format!(
                    "skipped: {}-D {} weight (only 2-D weights are reconstructed)",
                    shape.len(),
                    info.op()
                ));
            }
            (groups, kpos) = (1, 1);
            transposed = info.red_axis() == 0;
            (rows, cols) = if transposed { (shape[1], shape[0]) } else { (shape[0], shape[1]) };
        }
        "ConvTranspose" => {
            return Err("skipped: ConvTranspose: the im2col Gram covers Conv inputs only (a transposed conv's \
                        output pixel reads a stride-dependent subset of its kernel); use score/mask or nm-legalize"
                .into())
        }
        op => return Err(format!("skipped: SparseGPT has no reconstruction for {op} weights")),
    }
    if let Target::NM { m, .. } = target {
        let red = cols / kpos;
        if red % m != 0 {
            return Err(format!("skipped: reduction dim {red} is not a multiple of m={m}"));
        }
    }
    for u in &info.uses {
        if u.slot != 1 || u.op != info.op() {
            return Err(format!(
                "skipped: '{}' reads the weight as input {} (only the weight input B / W is supported)",
                u.node_name, u.slot
            ));
        }
        let node = g.node(u.node);
        let act = node.inputs.first().filter(|a| !a.is_empty()).ok_or("skipped: consumer has no activation input")?;
        if g.constant_source(act).is_some() {
            return Err(format!("skipped: '{}' multiplies two constants", u.node_name));
        }
        let req = match u.op.as_str() {
            "Conv" => {
                let r = shape.len() - 2;
                let auto_pad = match node.attr("auto_pad") {
                    Some(AttrValue::String(s)) => String::from_utf8_lossy(s).into_owned(),
                    _ => "NOTSET".into(),
                };
                let ints = |name: &str, default: usize, len: usize| -> Vec<usize> {
                    node.attr_ints(name)
                        .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
                        .unwrap_or(vec![default; len])
                };
                let pads = match auto_pad.as_str() {
                    "NOTSET" => ints("pads", 0, 2 * r),
                    "VALID" => vec![0; 2 * r],
                    other => return Err(format!("skipped: Conv '{}' uses auto_pad={other}", u.node_name)),
                };
                CalibRequest::ConvGram {
                    tensor: act.clone(),
                    kernel: shape[2..].to_vec(),
                    strides: ints("strides", 1, r),
                    pads,
                    dilations: ints("dilations", 1, r),
                    groups,
                }
            }
            "Gemm" if node.attr_int("transA").unwrap_or(0) != 0 => {
                CalibRequest::Gram { tensor: act.clone(), axis: FeatureAxis::Index(0) }
            }
            _ => CalibRequest::Gram { tensor: act.clone(), axis: FeatureAxis::Last },
        };
        requests.push(req);
        consumers.push(u.node);
        if let Some(p) = g.producer_of(act) {
            collect_ancestors(g, p, &mut ancestors);
        }
    }
    Ok(Plan { id: info.id.clone(), shape, rows, cols, groups, kpos, transposed, requests, consumers, ancestors })
}

fn collect_ancestors(g: &Graph, start: NodeId, out: &mut BTreeSet<NodeId>) {
    let producers = g.producers();
    let mut stack = vec![start];
    while let Some(n) = stack.pop() {
        if out.insert(n) {
            stack.extend(g.node(n).inputs.iter().filter_map(|i| producers.get(i.as_str()).copied()));
        }
    }
}

/// Sequential stages: each stage holds the weights (in graph order) whose activations depend on no
/// weight still to be pruned, so every weight is calibrated on a model whose upstream weights are done.
pub fn stages(plans: &[Plan]) -> Vec<Vec<usize>> {
    crate::calib_stats::ready_stages(plans.len(), |i, j| {
        plans[j].consumers.iter().any(|c| plans[i].ancestors.contains(c))
    })
}

/// The Hessians of a plan (one per group, row-major cols × cols, scaled 2/n) from its answered requests.
pub fn hessians(plan: &Plan, stats: &[&CalibStat]) -> Result<Vec<Vec<f64>>, String> {
    hessians_and_rows(plan, stats).map(|(h, _)| h)
}

/// [`hessians`] and the number of calibration rows they sum.
pub fn hessians_and_rows(plan: &Plan, stats: &[&CalibStat]) -> Result<(Vec<Vec<f64>>, u64), String> {
    let k = plan.cols;
    let mut sum = vec![vec![0.0; k * k]; plan.groups];
    let mut rows = 0u64;
    for s in stats {
        let (hs, sk, n): (Vec<&Vec<f64>>, usize, u64) = match s {
            CalibStat::Gram { h, k, rows } => (vec![h], *k, *rows),
            CalibStat::GroupGrams { h, k, rows } => (h.iter().collect(), *k, *rows),
            _ => return Err("calibrator answered with the wrong statistic".into()),
        };
        if sk != k || hs.len() != plan.groups || hs.iter().any(|h| h.len() != k * k) {
            return Err(format!("activation has {sk} features per group, the weight reduces over {k}"));
        }
        for (acc, h) in sum.iter_mut().zip(hs) {
            acc.iter_mut().zip(h).for_each(|(a, b)| *a += b);
        }
        rows += n;
    }
    if rows == 0 {
        return Err("no calibration rows reached this weight".into());
    }
    let scale = 2.0 / rows as f64;
    for h in &mut sum {
        h.iter_mut().for_each(|v| *v *= scale);
    }
    Ok((sum, rows))
}

/// Prune one weight: its values (C order, f64) in, new values out, with one [`Solved`] per group.
pub fn solve(
    plan: &Plan,
    values: &[f64],
    hs: Vec<Vec<f64>>,
    target: Target,
    blocksize: usize,
    damp: f64,
) -> Result<(Vec<f64>, Vec<Solved>), String> {
    let (rows, cols) = (plan.rows, plan.cols);
    // 2-D view, row-major [rows, cols].
    let mut w2 = if plan.transposed {
        let mut t = vec![0.0; rows * cols];
        for (r, trow) in t.chunks_mut(cols).enumerate() {
            for (c, v) in trow.iter_mut().enumerate() {
                *v = values[c * rows + r];
            }
        }
        t
    } else {
        values.to_vec()
    };
    // Conv N:M: groups run along channels at a fixed kernel position, so solve in (position, channel)
    // column order, where each group is m consecutive columns. perm[new] = old.
    let perm: Option<Vec<usize>> = match target {
        Target::NM { .. } if plan.kpos > 1 => {
            let ch = cols / plan.kpos;
            Some((0..cols).map(|new| (new % ch) * plan.kpos + new / ch).collect())
        }
        _ => None,
    };
    let rows_g = rows / plan.groups;
    let mut solved = Vec::with_capacity(plan.groups);
    for (gi, h) in hs.into_iter().enumerate() {
        let block = &mut w2[gi * rows_g * cols..(gi + 1) * rows_g * cols];
        let pattern = match target {
            Target::Sparsity(s) => Pattern::Unstructured { sparsity: s, offset: (gi * rows_g * cols) as u64 },
            Target::NM { n, m } => Pattern::NM { n, m },
        };
        let s = match &perm {
            None => obs::sparsegpt(block, rows_g, cols, h, pattern, blocksize, damp),
            Some(p) => {
                let mut wp: Vec<f64> = (0..rows_g * cols).map(|e| block[(e / cols) * cols + p[e % cols]]).collect();
                let hp: Vec<f64> = (0..cols * cols).map(|e| h[p[e / cols] * cols + p[e % cols]]).collect();
                drop(h);
                let s = obs::sparsegpt(&mut wp, rows_g, cols, hp, pattern, blocksize, damp);
                for (e, v) in wp.iter().enumerate() {
                    block[(e / cols) * cols + p[e % cols]] = *v;
                }
                s
            }
        }
        .map_err(|e| e.to_string())?;
        solved.push(s);
    }
    if w2.iter().any(|v| !v.is_finite()) {
        return Err("the reconstruction produced non-finite values; weight left unchanged".into());
    }
    let out = if plan.transposed {
        let mut t = vec![0.0; rows * cols];
        for (r, wrow) in w2.chunks(cols).enumerate() {
            for (c, v) in wrow.iter().enumerate() {
                t[c * rows + r] = *v;
            }
        }
        t
    } else {
        w2
    };
    Ok((out, solved))
}
