//! Operators that pass or merge a channel layout: element-wise unary and n-ary ops (with broadcast
//! constant operands) and pooling.

use super::graph::Builder;
use super::shapes::const_ints;
use super::{consts, IntTarget, Layout, Site, SliceRole};
use sparsify_ir::{NodeId, WeightId};

/// A constant operand of an element-wise op, as the op sees it, and where its values live.
struct ConstOperand {
    /// Shape and values as the op reads them.
    dims: Vec<usize>,
    vals: Vec<f64>,
    /// The stored tensor, its dims, and a Reshape shape constant in between (if any).
    src: WeightId,
    src_dims: Vec<usize>,
    shape_const: Option<WeightId>,
    mids: Vec<String>,
}

impl Builder<'_> {
    fn name(&self, id: NodeId) -> String {
        self.g.node(id).display_name()
    }

    pub(super) fn unary(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out) = (n.inputs[0].clone(), n.outputs[0].clone());
        let Some(xl) = self.layout(&x) else { return };
        let float_cast = n.attr_int("to").is_none_or(|t| matches!(t, 1 | 10 | 11 | 16));
        if n.op_type == "Cast" && !float_cast {
            return self.block_tensor(&x, format!("'{}' casts it to a non-float type", self.name(id)));
        }
        if n.op_type == "Dropout" && n.outputs.get(1).is_some_and(|m| !m.is_empty() && self.use_count(m) > 0) {
            return self.block_tensor(&x, format!("'{}' exposes its dropout mask", self.name(id)));
        }
        let mut clip = (None, None);
        if n.op_type == "Clip" {
            for (slot, dst) in [(1, &mut clip.0), (2, &mut clip.1)] {
                if let Some(b) = n.inputs.get(slot).filter(|s| !s.is_empty()) {
                    let v = self.g.constant_source(b).and_then(|s| self.g.weight(&s)).and_then(|t| t.to_f64().ok());
                    match v.filter(|v| v.len() == 1) {
                        Some(v) => *dst = v.iter().next().copied(),
                        None => return self.block_tensor(&x, format!("'{}' has a run-time bound", self.name(id))),
                    }
                }
            }
        }
        let c: Vec<Option<f64>> =
            self.consts_of(&x).iter().map(|k| k.and_then(|k| consts::unary(n, k, clip))).collect();
        self.set(&out, xl, c);
    }

    /// Activation `QuantizeLinear` / `DequantizeLinear` with one scale and zero point (per tensor):
    /// element-wise, so the layout passes through; a constant channel maps to its (de)quantized value,
    /// computed in `f32` as the ops do. Per-axis or run-time parameters block.
    pub(super) fn qdq(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), self.name(id));
        let Some(xl) = self.layout(&x) else { return };
        let param = |slot: usize| -> Result<Option<&sparsify_ir::Tensor>, ()> {
            match n.inputs.get(slot).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => self.g.constant_source(s).and_then(|i| self.g.weight(&i)).map(Some).ok_or(()),
            }
        };
        let (Ok(Some(st)), Ok(zt)) = (param(1), param(2)) else {
            return self.block_tensor(&x, format!("'{name}' has run-time quantization parameters"));
        };
        if st.numel() != Ok(1) || zt.is_some_and(|z| z.numel() != Ok(1)) || n.attr("output_dtype").is_some() {
            return self.block_tensor(&x, format!("'{name}' quantizes per axis"));
        }
        let s = st.to_f32().ok().and_then(|v| v.iter().next().copied()).filter(|s| s.is_finite() && *s > 0.0);
        let zp = match zt {
            Some(z) => sparsify_ir::quant::read_ints(z).ok().and_then(|v| v.first().copied()),
            None => Some(0),
        };
        let zdt = zt.map_or(sparsify_ir::DType::U8, |z| z.dtype);
        let range = match zdt {
            sparsify_ir::DType::U8 => Some((0.0f32, 255.0f32)),
            sparsify_ir::DType::I8 => Some((-128.0, 127.0)),
            _ => None,
        };
        let (Some(s), Some(zp)) = (s, zp) else {
            return self.block_tensor(&x, format!("'{name}' has an unusable scale or zero point"));
        };
        let quantize = n.op_type == "QuantizeLinear";
        let c: Vec<Option<f64>> = self
            .consts_of(&x)
            .iter()
            .map(|k| {
                let k = (*k)? as f32;
                if quantize {
                    let (lo, hi) = range?;
                    // Within a hair of a rounding tie, the runtime's arithmetic decides: not a known constant.
                    let r = f64::from(k) / f64::from(s);
                    if (r.abs().fract() - 0.5).abs() < 1e-4 {
                        return None;
                    }
                    Some(f64::from(((k / s).round_ties_even() + zp as f32).clamp(lo, hi)))
                } else {
                    Some(f64::from((k - zp as f32) * s))
                }
            })
            .collect();
        self.set(&out, xl, c);
    }

    /// The constant behind an op operand: a constant, or a Reshape/Unsqueeze of one.
    fn const_operand(&self, name: &str) -> Option<Result<ConstOperand, String>> {
        let direct = |nm: &str| {
            let id = self.g.constant_source(nm)?;
            let t = self.g.weight(&id)?;
            Some((id, t.shape(), t.to_f64().ok()))
        };
        if let Some((src, dims, vals)) = direct(name) {
            let vals = vals?.iter().copied().collect();
            return Some(Ok(ConstOperand {
                dims: dims.clone(),
                vals,
                src,
                src_dims: dims,
                shape_const: None,
                mids: vec![],
            }));
        }
        let p = self.g.node(self.g.producer_of(name)?);
        if !matches!(p.op_type.as_str(), "Reshape" | "Unsqueeze") || !p.is_onnx() {
            return None;
        }
        let (src, src_dims, vals) = direct(p.inputs.first()?)?;
        let vals: Vec<f64> = vals?.iter().copied().collect();
        let dims = self.shapes.get(name)?.iter().map(|d| d.map(|d| d as usize)).collect::<Option<Vec<_>>>();
        let Some(dims) = dims.filter(|d| d.iter().product::<usize>() == vals.len()) else {
            return Some(Err(format!("cannot tell the shape of '{name}'")));
        };
        let shape_const = match p.op_type.as_str() {
            "Reshape" => match self.g.constant_source(p.inputs.get(1)?) {
                Some(s) => Some(s),
                None => return Some(Err(format!("'{name}' is reshaped by a run-time shape"))),
            },
            _ => None,
        };
        if self.use_count(name) != 1
            || self.use_count(src.name()) != 1
            || shape_const.as_ref().is_some_and(|s| self.use_count(s.name()) != 1)
        {
            return Some(Err(format!("'{name}' or its shape is shared")));
        }
        Some(Ok(ConstOperand { dims, vals, src, src_dims, shape_const, mids: vec![name.to_string()] }))
    }

    pub(super) fn nary(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (op, out, name) = (n.op_type.clone(), n.outputs[0].clone(), n.display_name());
        let ins: Vec<String> = n.inputs.iter().filter(|s| !s.is_empty()).cloned().collect();
        let region: Vec<&String> = ins.iter().filter(|i| self.a.layouts.contains_key(*i)).collect();
        let first = self.layout(region[0]).expect("region operand");
        let (len, back) = (first.atoms.len(), first.back);
        let fail = |b: &mut Self, why: String| {
            for i in &ins {
                b.block_tensor(i, format!("'{name}' ({op}): {why}"));
            }
        };
        if region.iter().any(|r| self.a.layouts[*r].atoms.len() != len || self.a.layouts[*r].back != back) {
            return fail(self, "its operands disagree on the channel axis".into());
        }
        let mut rank = first.rank;
        // per operand: a value getter per position
        let mut vals: Vec<Vec<Option<f64>>> = Vec::new();
        let mut sites = Vec::new();
        for i in &ins {
            if let Some(l) = self.a.layouts.get(i) {
                rank = rank.zip(l.rank).map(|(a, b)| a.max(b));
                vals.push(self.consts_of(i));
                continue;
            }
            match self.const_operand(i) {
                Some(Ok(c)) => {
                    rank = rank.map(|r| r.max(c.dims.len()));
                    let e = c.dims.len();
                    let ax = (e > back).then(|| e - 1 - back);
                    let d = ax.map_or(1, |a| c.dims[a]);
                    if d == len && len > 1 {
                        let ax = ax.unwrap();
                        let uniform = c.dims.iter().enumerate().all(|(k, &x)| k == ax || x == 1);
                        vals.push((0..len).map(|p| uniform.then(|| c.vals[p])).collect());
                        let excl = if c.mids.is_empty() { self.exclusive(i).map(|_| ()) } else { Ok(()) };
                        let src_axis = if c.shape_const.is_none() && c.mids.is_empty() {
                            Some(ax)
                        } else {
                            let one = c.src_dims.iter().filter(|&&x| x != 1).count() == 1;
                            c.src_dims.iter().position(|&x| x == len).filter(|_| one)
                        };
                        match (excl, src_axis) {
                            (Ok(()), Some(sa)) => {
                                let role = if matches!(op.as_str(), "Add" | "Sub") {
                                    SliceRole::Bias
                                } else {
                                    SliceRole::Operand
                                };
                                sites.push(Site::Param {
                                    node: id,
                                    weight: c.src.clone(),
                                    axis: sa,
                                    atoms: first.atoms.clone(),
                                    role,
                                });
                                if let Some(s) = &c.shape_const {
                                    match const_ints(self.g, s.name()) {
                                        Some(v) if v.get(ax) == Some(&(len as i64)) => sites.push(Site::Int {
                                            target: IntTarget::Const(s.clone()),
                                            index: ax,
                                            atoms: first.atoms.clone(),
                                        }),
                                        _ => return fail(self, format!("cannot rewrite the shape of '{i}'")),
                                    }
                                }
                                self.a.intermediates.extend(c.mids.clone());
                            }
                            (Err(e), _) => return fail(self, e),
                            (_, None) => return fail(self, format!("cannot slice constant '{i}'")),
                        }
                    } else if d == 1 {
                        vals.push(vec![(c.vals.len() == 1).then(|| c.vals[0]); len]);
                    } else {
                        return fail(self, format!("constant '{i}' has {d} entries on the channel axis, not {len}"));
                    }
                }
                Some(Err(e)) => return fail(self, e),
                None => {
                    let sh = self.shapes.get(i.as_str());
                    let broadcast = sh.is_some_and(|s| s.len() <= back || s[s.len() - 1 - back] == Some(1));
                    if !broadcast {
                        return fail(self, format!("operand '{i}' is neither a constant nor from a channel producer"));
                    }
                    rank = rank.zip(sh.map(|s| s.len())).map(|(a, b)| a.max(b));
                    vals.push(vec![None; len]);
                }
            }
        }
        for r in region.iter().skip(1) {
            let atoms = self.a.layouts[*r].atoms.clone();
            for (p, &a) in atoms.iter().enumerate() {
                self.a.union(first.atoms[p], a);
            }
        }
        self.a.sites.extend(sites);
        let c = (0..len)
            .map(|p| {
                // 0 times anything (finite) is 0: a zero channel stays zero through a run-time rescale
                // (the `Cast → Mul` after an integer op).
                if op == "Mul" && vals.iter().any(|v| v[p] == Some(0.0)) {
                    return Some(0.0);
                }
                let v: Option<Vec<f64>> = vals.iter().map(|v| v[p]).collect();
                v.and_then(|v| consts::nary(&op, &v))
            })
            .collect();
        self.set(&out, Layout { atoms: first.atoms, back, rank }, c);
    }

    pub(super) fn pool(&mut self, id: NodeId) {
        let n = self.g.node(id);
        let (x, out, name) = (n.inputs[0].clone(), n.outputs[0].clone(), n.display_name());
        let Some(xl) = self.layout(&x) else { return };
        if xl.front() != Some(1) {
            return self.block_tensor(&x, format!("'{name}': pooling needs the channel axis at 1"));
        }
        if n.outputs.get(1).is_some_and(|o| !o.is_empty()) {
            return self.block_tensor(&x, format!("'{name}' also outputs indices"));
        }
        let c = self.consts_of(&x).iter().map(|k| k.and_then(|k| consts::pool(n, k))).collect();
        self.set(&out, xl, c);
    }
}
