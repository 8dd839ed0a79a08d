//! Deciding which channel classes go: dead (every occurrence input-independent), not blocked, every
//! non-zero constant foldable into its consumers, equal counts per group of grouped convs, and never the
//! last channel of a tensor.

use super::{Analysis, Sink, SinkKind, Site};
use sparsify_ir::Graph;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Class roots to remove.
    pub remove: BTreeSet<usize>,
    /// Dead-channel candidates (a zero producer row) kept, with the reason.
    pub kept: BTreeMap<usize, String>,
}

/// Why a constant `v` reaching `sink` cannot be folded into its bias, if it cannot.
pub(crate) fn fold_blocker(g: &Graph, s: &Sink) -> Option<String> {
    let n = g.node(s.node);
    let name = n.display_name();
    let excl = |t: &str| g.consumers(t).len() == 1 && !g.is_output(t) && !g.inputs.iter().any(|i| i.name == t);
    if let Some(t) = g.weight(&s.weight).filter(|t| !t.dtype.is_prunable_float()) {
        return Some(format!(
            "'{}' is a quantized weight ({}): folding a constant through it into a bias is not supported",
            t.name,
            t.dtype.name()
        ));
    }
    match s.kind {
        SinkKind::Conv { exact: false } => {
            Some(format!("'{name}' is a padded Conv: the constant would meet its zero padding"))
        }
        SinkKind::Conv { .. } => match n.inputs.get(2).filter(|b| !b.is_empty()) {
            Some(b) if g.constant_source(b).is_none() || !excl(b) => {
                Some(format!("bias '{b}' of '{name}' is shared or computed"))
            }
            _ => None,
        },
        SinkKind::Gemm => {
            if n.attr_float("beta").unwrap_or(1.0) == 0.0 && n.inputs.get(2).is_some_and(|c| !c.is_empty()) {
                return Some(format!("'{name}' has beta = 0"));
            }
            let nn = g.weight(&s.weight).map(|t| t.shape()[s.out_axis]).unwrap_or(0);
            match n.inputs.get(2).filter(|c| !c.is_empty()) {
                Some(c) => {
                    let t = g.constant_source(c).and_then(|id| g.weight(&id));
                    let ok = t.is_some_and(|t| matches!(t.numel(), Ok(k) if k == nn || k == 1)) && excl(c);
                    (!ok).then(|| format!("C '{c}' of '{name}' is not a private per-output bias"))
                }
                None => None,
            }
        }
        SinkKind::MatMul => {
            let r = g.weight(&s.weight).map(|t| t.dims.len()).unwrap_or(0);
            (r != 2).then(|| format!("'{name}' has a batched weight"))
        }
    }
}

pub(crate) fn plan(g: &Graph, a: &Analysis, fold: bool) -> Plan {
    let blocks = a.class_blocks();
    let mut varies: BTreeMap<usize, String> = BTreeMap::new();
    for (t, cs) in &a.consts {
        let l = &a.layouts[t];
        for (p, c) in cs.iter().enumerate() {
            if c.is_none() {
                varies.entry(a.find(l.atoms[p])).or_insert_with(|| t.clone());
            }
        }
    }
    let mut p = Plan::default();
    let candidates: BTreeSet<usize> = a.zero.iter().map(|&x| a.find(x)).collect();
    for &r in &candidates {
        if let Some(b) = blocks.get(&r) {
            p.kept.insert(r, b.clone());
        } else if let Some(t) = varies.get(&r) {
            p.kept.insert(r, format!("not dead: its value at '{t}' depends on the input"));
        } else {
            p.remove.insert(r);
        }
    }
    for s in &a.sinks {
        let (l, cs) = (&a.layouts[&s.input], &a.consts[&s.input]);
        let blocker = if fold { fold_blocker(g, s) } else { Some("folding constants is off (fold=false)".into()) };
        let Some(why) = blocker else { continue };
        for (q, &atom) in l.atoms.iter().enumerate() {
            let r = a.find(atom);
            if p.remove.contains(&r) && cs[q].is_some_and(|v| v != s.zero) {
                p.remove.remove(&r);
                let zp = if s.zero != 0.0 { format!(" (its zero point is {})", s.zero) } else { String::new() };
                p.kept.insert(r, format!("outputs the constant {:.6}{zp} into '{}': {why}", cs[q].unwrap(), s.input));
            }
        }
    }
    // equal counts per conv group, and at least one channel left in every tensor
    loop {
        let mut changed = false;
        for site in &a.sites {
            let (atoms, groups) = match site {
                Site::Rows { atoms, groups, .. } | Site::Cols { atoms, groups, .. } if *groups > 1 => (atoms, *groups),
                _ => continue,
            };
            let per = atoms.len() / groups;
            let gone = |p: &Plan, k: usize| {
                atoms[k * per..(k + 1) * per].iter().filter(|&&x| p.remove.contains(&a.find(x))).count()
            };
            let target = (0..groups).map(|k| gone(&p, k)).min().unwrap_or(0);
            for k in 0..groups {
                for &x in atoms[k * per..(k + 1) * per].iter().rev() {
                    if gone(&p, k) <= target {
                        break;
                    }
                    let r = a.find(x);
                    if p.remove.remove(&r) {
                        p.kept.insert(
                            r,
                            format!("a grouped Conv ({groups} groups) may only lose equal counts per group"),
                        );
                        changed = true;
                    }
                }
            }
        }
        for (t, l) in &a.layouts {
            if !l.atoms.is_empty() && l.atoms.iter().all(|&x| p.remove.contains(&a.find(x))) {
                let r = a.find(l.atoms[0]);
                p.remove.remove(&r);
                p.kept.insert(r, format!("the last channel of '{t}' stays (a tensor cannot have zero channels)"));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    p
}
