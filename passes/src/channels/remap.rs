//! Layout remapping: Concat/Split/Slice offsets, Flatten/Reshape into features (channel c ↔
//! [c·HW, (c+1)·HW)), Transpose/Squeeze/Unsqueeze moving the channel axis, and `Shape` reads.

use super::graph::Builder;
use super::shapes::{self, const_ints, ints_input_or_attr, Sym};
use super::{IntTarget, Layout, Site};
use sparsify_ir::NodeId;

fn norm(a: i64, r: usize) -> Option<usize> {
    let a = if a < 0 { a + r as i64 } else { a };
    (0..r as i64).contains(&a).then_some(a as usize)
}

impl Builder<'_> {
    /// The axis an op attribute names, counted from the back, given a rank.
    fn back_of(&self, axis: i64, rank: Option<usize>) -> Option<usize> {
        if axis < 0 {
            Some((-axis - 1) as usize)
        } else {
            rank.and_then(|r| (r as i64 - 1 - axis).try_into().ok())
        }
    }

    pub(super) fn concat(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (out, name) = (n.outputs[0].clone(), n.display_name());
        let ins = n.inputs.clone();
        let first = ins.iter().find_map(|i| self.layout(i)).expect("region operand");
        let ab = self.back_of(n.attr_int("axis").unwrap_or(0), first.rank);
        if ab != Some(first.back) {
            let same = ins
                .iter()
                .all(|i| self.layout(i).is_some_and(|l| l.atoms.len() == first.atoms.len() && l.back == first.back));
            if !same || ab.is_none() {
                return self.block_inputs(id, format!("'{name}' concatenates along another axis with other tensors"));
            }
            let all: Vec<Vec<Option<f64>>> = ins.iter().map(|i| self.consts_of(i)).collect();
            for i in &ins {
                for (p, a) in self.layout(i).unwrap().atoms.into_iter().enumerate() {
                    self.a.union(first.atoms[p], a);
                }
            }
            let c = (0..first.atoms.len())
                .map(|p| all.iter().map(|v| v[p]).reduce(|a, b| if a == b { a } else { None }).flatten())
                .collect();
            return self.set(&out, first, c);
        }
        let (mut atoms, mut c) = (Vec::new(), Vec::new());
        for i in &ins {
            if let Some(l) = self.layout(i) {
                atoms.extend(l.atoms);
                c.extend(self.consts_of(i));
                continue;
            }
            let k = self.shapes.get(i).and_then(|s| s.len().checked_sub(first.back + 1).and_then(|a| s[a]));
            let Some(k) = k else {
                return self.block_inputs(id, format!("'{name}': size of '{i}' on the channel axis is unknown"));
            };
            let fresh = self.a.fresh(k as usize);
            self.a.block(&fresh, format!("'{name}' concatenates '{i}', which the analysis cannot resize"));
            atoms.extend(fresh);
            c.extend(vec![None; k as usize]);
        }
        self.set(&out, Layout { atoms, back: first.back, rank: first.rank }, c);
    }

    pub(super) fn split(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, name) = (n.inputs[0].clone(), n.display_name());
        let Some(xl) = self.layout(&x) else { return };
        let xc = self.consts_of(&x);
        let outs = n.outputs.clone();
        if self.back_of(n.attr_int("axis").unwrap_or(0), xl.rank) != Some(xl.back) {
            for o in outs.iter().filter(|o| !o.is_empty()) {
                self.set(o, xl.clone(), xc.clone());
            }
            return;
        }
        let (sizes, target) = match n.inputs.get(1).filter(|s| !s.is_empty()) {
            Some(s) => (const_ints(self.g, s), self.g.constant_source(s).map(IntTarget::Const)),
            None => (n.attr_ints("split").map(|v| v.to_vec()), Some(IntTarget::Attr(id, "split"))),
        };
        let shared = n.inputs.get(1).filter(|s| !s.is_empty()).is_some_and(|s| self.use_count(s) != 1);
        let (Some(sizes), Some(target)) = (sizes, target) else {
            return self.block_tensor(&x, format!("'{name}' splits the channels without explicit sizes"));
        };
        if shared || sizes.len() != outs.len() || sizes.iter().sum::<i64>() != xl.atoms.len() as i64 {
            return self.block_tensor(&x, format!("'{name}': split sizes are shared or do not add up"));
        }
        let mut start = 0usize;
        for (i, (o, &s)) in outs.iter().zip(&sizes).enumerate() {
            let atoms = xl.atoms[start..start + s as usize].to_vec();
            self.a.sites.push(Site::Int { target: target.clone(), index: i, atoms: atoms.clone() });
            let c = xc[start..start + s as usize].to_vec();
            start += s as usize;
            if !o.is_empty() {
                self.set(o, Layout { atoms, ..xl.clone() }, c);
            }
        }
    }

    pub(super) fn slice(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let Some(xl) = self.layout(&x) else { return };
        let (Some(r), Some(f)) = (xl.rank, xl.front()) else {
            return self
                .block_tensor(&x, format!("'{name}': the channel analysis does not know the rank of its input '{x}'"));
        };
        let starts = ints_input_or_attr(self.g, n, 1, "starts");
        let ends = ints_input_or_attr(self.g, n, 2, "ends");
        let axes = ints_input_or_attr(self.g, n, 3, "axes");
        let steps = if n.inputs.len() > 4 { const_ints(self.g, &n.inputs[4]) } else { None };
        let (Some(starts), Some(ends)) = (starts, ends) else {
            return self.block_tensor(&x, format!("'{name}' has run-time bounds"));
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let Some(k) = axes.iter().position(|&a| norm(a, r) == Some(f)) else {
            let c = self.consts_of(&x);
            return self.set(&out, xl, c);
        };
        let len = xl.atoms.len() as i64;
        let step = steps.as_ref().map_or(1, |s| s[k]);
        let inputs_form = n.inputs.len() > 2;
        let shared = inputs_form && (self.use_count(&n.inputs[1]) != 1 || self.use_count(&n.inputs[2]) != 1);
        if step != 1 || shared {
            return self.block_tensor(&x, format!("'{name}' slices the channels with a step or shared bounds"));
        }
        let cl = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
        let (s, e) = (cl(starts[k]), cl(ends[k]).max(cl(starts[k])));
        let tgt = |slot: usize, attr: &'static str| {
            if inputs_form {
                self.g.constant_source(&n.inputs[slot]).map(IntTarget::Const)
            } else {
                Some(IntTarget::Attr(id, attr))
            }
        };
        let (Some(ts), Some(te)) = (tgt(1, "starts"), tgt(2, "ends")) else {
            return self.block_tensor(&x, format!("'{name}': bounds are not constants"));
        };
        self.a.sites.push(Site::Int { target: ts, index: k, atoms: xl.atoms[..s].to_vec() });
        if ends[k] < len {
            self.a.sites.push(Site::Int { target: te, index: k, atoms: xl.atoms[..e].to_vec() });
        }
        let c = self.consts_of(&x)[s..e].to_vec();
        self.set(&out, Layout { atoms: xl.atoms[s..e].to_vec(), ..xl }, c);
    }

    /// Flatten, or a Reshape that flattens from the channel axis on: channel c ↔ features
    /// [c·HW, (c+1)·HW).
    pub(super) fn flatten(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let Some(xl) = self.layout(&x) else { return };
        let (Some(r), Some(f)) = (xl.rank, xl.front()) else {
            return self
                .block_tensor(&x, format!("'{name}': the channel analysis does not know the rank of its input '{x}'"));
        };
        let c = xl.atoms.len() as i64;
        let sh = self.shapes.get(&x).cloned();
        let trailing = sh
            .as_ref()
            .filter(|s| s.len() == r)
            .and_then(|s| s[f + 1..].iter().try_fold(1i64, |a, d| d.map(|d| a * d)));
        let mut fix = None;
        let hw = if n.op_type == "Flatten" {
            let axis = n.attr_int("axis").unwrap_or(1);
            if (if axis < 0 { axis + r as i64 } else { axis }) != f as i64 {
                return self.block_tensor(&x, format!("'{name}' does not flatten from the channel axis"));
            }
            let from_out =
                self.shapes.get(&out).and_then(|s| s.get(1).copied().flatten()).filter(|k| k % c == 0).map(|k| k / c);
            trailing.or(from_out)
        } else {
            let rank_of = |t: &str| self.rank_of(t);
            let Some(t) = shapes::eval_sym(self.g, &n.inputs[1], &rank_of, 0) else {
                return self.block_tensor(&x, format!("'{name}': cannot evaluate its target shape"));
            };
            let allowzero = n.attr_int("allowzero").unwrap_or(0) != 0;
            let lead_ok = t.len() == f + 1
                && t[..f].iter().enumerate().all(|(i, s)| match s {
                    Sym::DimOf(nm, a) => nm == &x && *a == i,
                    Sym::Lit(0, _) => !allowzero,
                    Sym::Lit(v, _) => sh.as_ref().is_some_and(|s| s.get(i) == Some(&Some(*v))),
                });
            match t.last() {
                Some(Sym::Lit(-1, _)) if lead_ok => trailing,
                Some(Sym::Lit(l, Some(src))) if lead_ok && l % c == 0 && self.use_count(src.0.name()) == 1 => {
                    fix = Some(src.clone());
                    Some(l / c)
                }
                _ => return self.block_tensor(&x, format!("'{name}' is not a flatten from the channel axis")),
            }
        };
        let Some(hw) = hw.filter(|&h| h > 0).map(|h| h as usize) else {
            return self.block_tensor(&x, format!("'{name}': the spatial size after the channel axis is unknown"));
        };
        let atoms: Vec<usize> = xl.atoms.iter().flat_map(|&a| std::iter::repeat_n(a, hw)).collect();
        if let Some((src, index)) = fix {
            self.a.sites.push(Site::Int { target: IntTarget::Const(src), index, atoms: atoms.clone() });
        }
        let cs = self.consts_of(&x).iter().flat_map(|&k| std::iter::repeat_n(k, hw)).collect();
        self.set(&out, Layout { atoms, back: 0, rank: Some(f + 1) }, cs);
    }

    pub(super) fn move_axis(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let Some(xl) = self.layout(&x) else { return };
        let (Some(r), Some(f)) = (xl.rank, xl.front()) else {
            return self
                .block_tensor(&x, format!("'{name}': the channel analysis does not know the rank of its input '{x}'"));
        };
        let new_front = match n.op_type.as_str() {
            "Transpose" => {
                let perm: Vec<i64> =
                    n.attr_ints("perm").map(|p| p.to_vec()).unwrap_or_else(|| (0..r as i64).rev().collect());
                perm.iter().position(|&p| p == f as i64).map(|p| (p, perm.len()))
            }
            op => ints_input_or_attr(self.g, n, 1, "axes").and_then(|axes| {
                if op == "Squeeze" {
                    let ax: Vec<usize> = axes.iter().map(|&a| norm(a, r)).collect::<Option<_>>()?;
                    (!ax.contains(&f)).then(|| (f - ax.iter().filter(|&&a| a < f).count(), r - ax.len()))
                } else {
                    let ro = r + axes.len();
                    let ax: Vec<usize> = axes.iter().map(|&a| norm(a, ro)).collect::<Option<_>>()?;
                    (0..ro).filter(|p| !ax.contains(p)).nth(f).map(|p| (p, ro))
                }
            }),
        };
        let Some((nf, nr)) = new_front else {
            return self.block_tensor(
                &x,
                format!("'{name}' moves or removes the channel axis in a way the analysis cannot follow"),
            );
        };
        let c = self.consts_of(&x);
        self.set(&out, Layout { atoms: xl.atoms, back: nr - 1 - nf, rank: Some(nr) }, c);
    }

    /// `Shape` of a layout tensor is fine if every use only reads other dims into Reshape targets.
    pub(super) fn shape_read(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, name) = (n.inputs[0].clone(), n.display_name());
        let f = self.layout(&x).and_then(|l| l.front());
        let mut stack = vec![n.outputs[0].clone()];
        let mut seen = 0;
        while let Some(t) = stack.pop() {
            seen += 1;
            if self.g.is_output(&t) || seen > 256 {
                return self.block_tensor(&x, format!("'{name}': its shape is a graph output or used too widely"));
            }
            for (c, slot) in self.g.consumers(&t) {
                let cn = self.g.node(c);
                match cn.op_type.as_str() {
                    "Cast" | "Slice" | "Gather" | "Concat" | "Unsqueeze" | "Squeeze" | "Identity"
                        if slot == 0 || cn.op_type == "Concat" =>
                    {
                        stack.push(cn.outputs[0].clone())
                    }
                    "Reshape" if slot == 1 => {
                        let rank_of = |t: &str| self.rank_of(t);
                        let sym = shapes::eval_sym(self.g, &t, &rank_of, 0);
                        let reads_c = sym.is_none_or(|v| {
                            v.iter().any(|s| matches!(s, Sym::DimOf(nm, a) if *nm == x && Some(*a) == f))
                        });
                        if reads_c || f.is_none() {
                            return self.block_tensor(
                                &x,
                                format!("'{name}': its channel count feeds '{}'", cn.display_name()),
                            );
                        }
                    }
                    _ => {
                        return self.block_tensor(
                            &x,
                            format!("'{name}': its shape feeds '{}' ({})", cn.display_name(), cn.op_type),
                        )
                    }
                }
            }
        }
    }
}
