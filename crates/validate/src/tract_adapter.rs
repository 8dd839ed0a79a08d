//! Running ONNX models with tract. Every tract API call of the crate lives in this file.
//!
//! A model is loaded as an `InferenceModel`, its outputs are set to the graph outputs followed
//! by any requested intermediate tensors (tract-onnx labels outlets with ONNX value names),
//! its input facts are made concrete from the feed (symbolic and `-1` dims are common), then it
//! is optimised (falling back to the decluttered typed model) and run. [`Runner`] keeps one
//! optimised plan per distinct input signature, so a last short calibration batch just works.

use std::path::Path;
use std::sync::{Arc, Mutex};

use half::f16;
use ndarray::ArrayD;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, IntoTValue, OutletId, TValue,
    TVec, Tensor, TractError, TypedRunnableModel,
};

use crate::array::Array;
use crate::{Feed, ValidateError};

/// Where a model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// A file; external data is resolved relative to the model's folder.
    Path(&'a Path),
    /// In-memory bytes of a self-contained model (no external data).
    Bytes(&'a [u8]),
}

/// Runs the model once on `feed`. Returns the graph outputs (graph-output order, named), then
/// the tensors named in `extra_outputs` (ONNX value names), in that order.
pub fn run_model(
    src: ModelSource,
    feed: &Feed,
    extra_outputs: &[String],
) -> Result<Vec<(String, Array)>, ValidateError> {
    Runner::new(src, Some(feed), extra_outputs)?.run(feed)
}

/// A loaded model prepared for running many feeds (calibration batches).
pub struct Runner {
    /// The model with its outputs selected, input facts still as declared.
    model: InferenceModel,
    /// Source-node name of each tract input, in tract input order.
    input_names: Vec<String>,
    /// Names of the selected outputs: graph outputs then extras.
    output_names: Vec<String>,
    /// Optimised plans keyed by the (dtype, shape) of each input.
    plans: Mutex<Vec<(Signature, Arc<TypedRunnableModel>)>>,
}

type Signature = Vec<(DatumType, Vec<usize>)>;

/// How many optimised plans (distinct input shapes) a [`Runner`] keeps.
const MAX_PLANS: usize = 4;

impl Runner {
    /// Loads the model and selects its outputs. With `input_shapes_hint`, the plan for those
    /// input shapes is built now (so errors surface here); other shapes are planned on first use.
    pub fn new(
        src: ModelSource,
        input_shapes_hint: Option<&Feed>,
        extra_outputs: &[String],
    ) -> Result<Self, ValidateError> {
        Runner::build(src, input_shapes_hint, extra_outputs, true)
    }

    /// Like [`Runner::new`] but [`Runner::run`] returns only the tensors named in `tensors`: the graph
    /// outputs are not selected, so the plan computes only what those tensors depend on (an early
    /// layer's activation costs a fraction of a full run).
    pub fn for_tensors(
        src: ModelSource,
        input_shapes_hint: Option<&Feed>,
        tensors: &[String],
    ) -> Result<Self, ValidateError> {
        Runner::build(src, input_shapes_hint, tensors, false)
    }

    fn build(
        src: ModelSource,
        input_shapes_hint: Option<&Feed>,
        extra_outputs: &[String],
        graph_outputs: bool,
    ) -> Result<Self, ValidateError> {
        let mut model = load(src)?;
        let mut outlets: Vec<OutletId> =
            if graph_outputs { model.output_outlets().map_err(tract("reading outputs"))?.to_vec() } else { Vec::new() };
        let mut output_names: Vec<String> = outlets.iter().map(|&o| outlet_name(&model, o)).collect();
        for name in extra_outputs {
            outlets.push(find_tensor(&model, name)?);
            output_names.push(name.clone());
        }
        model.select_output_outlets(&outlets).map_err(tract("selecting outputs"))?;
        let input_names = model
            .input_outlets()
            .map_err(tract("reading inputs"))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let runner = Runner { model, input_names, output_names, plans: Mutex::new(Vec::new()) };
        if let Some(feed) = input_shapes_hint {
            let inputs = runner.order_inputs(feed)?;
            runner.plan_for(&inputs)?;
        }
        Ok(runner)
    }

    /// Names of the outputs [`Runner::run`] returns: graph outputs then the requested extras.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs the model on `feed` (matched to model inputs by name, else by position).
    pub fn run(&self, feed: &Feed) -> Result<Vec<(String, Array)>, ValidateError> {
        self.run_inputs(&self.order_inputs(feed)?)
    }

    /// Names of the model inputs, in the order [`Runner::run_inputs`] takes them.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Runs the model on arrays given in [`Runner::input_names`] order (borrowed: a caller feeding the
    /// same large arrays to many runs copies nothing of its own).
    pub fn run_inputs(&self, inputs: &[&Array]) -> Result<Vec<(String, Array)>, ValidateError> {
        if inputs.len() != self.input_names.len() {
            return Err(ValidateError::feed(format!(
                "the model has {} inputs, {} arrays were given",
                self.input_names.len(),
                inputs.len()
            )));
        }
        let plan = self.plan_for(inputs)?;
        let values: TVec<TValue> =
            inputs.iter().map(|a| to_tensor(a).map(|t| t.into_tvalue())).collect::<Result<_, _>>()?;
        let outputs = guarded(|| plan.run(values))?.map_err(tract("running the model"))?;
        self.output_names
            .iter()
            .zip(outputs.iter())
            .map(|(name, t)| Ok((name.clone(), from_tensor(name, t)?)))
            .collect()
    }

    /// The feed's arrays in tract input order.
    fn order_inputs<'f>(&self, feed: &'f Feed) -> Result<Vec<&'f Array>, ValidateError> {
        let by_name: Option<Vec<&Array>> = self.input_names.iter().map(|n| feed.get(n)).collect();
        if let Some(v) = by_name {
            return Ok(v);
        }
        if feed.arrays.len() == self.input_names.len() {
            return Ok(feed.arrays.iter().map(|(_, a)| a).collect());
        }
        let missing: Vec<&str> =
            self.input_names.iter().filter(|n| feed.get(n).is_none()).map(|s| s.as_str()).collect();
        Err(ValidateError::feed(format!(
            "the model has inputs [{}] but the feed has no array for [{}]",
            self.input_names.join(", "),
            missing.join(", ")
        )))
    }

    /// The optimised plan for these input dtypes and shapes (built and cached on first use).
    fn plan_for(&self, inputs: &[&Array]) -> Result<Arc<TypedRunnableModel>, ValidateError> {
        let sig: Signature = inputs.iter().map(|a| (datum_type(a), a.shape().to_vec())).collect();
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, plan)) = plans.iter().find(|(s, _)| *s == sig) {
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        for (ix, (dt, shape)) in sig.iter().enumerate() {
            model
                .set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.as_slice()))
                .map_err(tract("setting input shapes"))?;
        }
        let plan = optimise(model)?;
        if plans.len() >= MAX_PLANS {
            plans.remove(0);
        }
        plans.push((sig, plan.clone()));
        Ok(plan)
    }
}

thread_local! {
    static IN_TRACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a guarded tract run: a panic there becomes an error (an embedding
/// binary's panic hook can stay quiet for it).
pub fn in_tract_run() -> bool {
    IN_TRACT.with(|c| c.get())
}

/// Run `f` (a tract call), turning a panic inside tract into an error: tract indexes without checks on
/// some inputs (a token id beyond an embedding table), which must fail the run, not abort the process.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, ValidateError> {
    IN_TRACT.with(|c| c.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_TRACT.with(|c| c.set(false));
    r.map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        ValidateError::Tract {
            msg: format!(
                "running the model: tract stopped on these inputs ({why}); check that they are valid for the \
                 model (e.g. token ids within the vocabulary)"
            ),
        }
    })
}

/// Wraps a tract error with what we were doing, as one line.
fn tract(context: &'static str) -> impl Fn(TractError) -> ValidateError {
    move |e| ValidateError::Tract { msg: format!("{context}: {}", one_line(&e)) }
}

fn one_line(e: &TractError) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn load(src: ModelSource) -> Result<InferenceModel, ValidateError> {
    // Declared output shapes and value_info can be stale after a transform or clash with the
    // concrete input shapes; tract infers them from the inputs anyway.
    let onnx = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_value_info(true);
    let res = match src {
        ModelSource::Path(p) => onnx.model_for_path(p),
        ModelSource::Bytes(b) => onnx.model_for_read(&mut &b[..]),
    };
    res.map_err(tract("loading the model"))
}

/// Optimised runnable plan; falls back to the decluttered typed model if optimisation fails.
fn optimise(model: InferenceModel) -> Result<Arc<TypedRunnableModel>, ValidateError> {
    let typed = model.into_typed().map_err(tract("typing the model"))?;
    let fallback = typed.clone();
    let optimised = typed.into_optimized().and_then(|m| m.into_runnable());
    match optimised {
        Ok(plan) => Ok(plan),
        Err(opt_err) => fallback.into_decluttered().and_then(|m| m.into_runnable()).map_err(|e| ValidateError::Tract {
            msg: format!("optimising the model: {}; decluttered fallback: {}", one_line(&opt_err), one_line(&e)),
        }),
    }
}

/// The ONNX name of an outlet: its label, else its node's name (with `:ix` past output 0).
fn outlet_name(model: &InferenceModel, o: OutletId) -> String {
    match model.outlet_label(o) {
        Some(l) => l.to_string(),
        None if o.slot == 0 => model.node(o.node).name.clone(),
        None => format!("{}:{}", model.node(o.node).name, o.slot),
    }
}

/// The outlet producing ONNX value `name` (an outlet label, else a node name such as a graph
/// input or an initializer).
fn find_tensor(model: &InferenceModel, name: &str) -> Result<OutletId, ValidateError> {
    if let Some(o) = model.find_outlet_label(name) {
        return Ok(o);
    }
    match model.node_id_by_name(name) {
        Ok(id) => Ok(OutletId::new(id, 0)),
        Err(_) => Err(ValidateError::UnknownTensor { name: name.to_string() }),
    }
}

fn datum_type(a: &Array) -> DatumType {
    match a {
        Array::F32(_) => DatumType::F32,
        Array::F64(_) => DatumType::F64,
        Array::F16(_) => DatumType::F16,
        Array::I64(_) => DatumType::I64,
        Array::I32(_) => DatumType::I32,
        Array::I16(_) => DatumType::I16,
        Array::I8(_) => DatumType::I8,
        Array::U8(_) => DatumType::U8,
        Array::U16(_) => DatumType::U16,
        Array::U32(_) => DatumType::U32,
        Array::U64(_) => DatumType::U64,
        Array::Bool(_) => DatumType::Bool,
    }
}

/// Inputs: one copy from the (borrowed, reused) feed into tract's aligned storage.
fn to_tensor(a: &Array) -> Result<Tensor, ValidateError> {
    fn conv<T: tract_onnx::prelude::Datum + Copy>(a: &ArrayD<T>) -> Result<Tensor, ValidateError> {
        let std = a.as_standard_layout();
        let data = std.as_slice().expect("standard layout is contiguous");
        Tensor::from_shape(a.shape(), data).map_err(tract("building an input tensor"))
    }
    match a {
        Array::F32(x) => conv(x),
        Array::F64(x) => conv(x),
        Array::F16(x) => conv(x),
        Array::I64(x) => conv(x),
        Array::I32(x) => conv(x),
        Array::I16(x) => conv(x),
        Array::I8(x) => conv(x),
        Array::U8(x) => conv(x),
        Array::U16(x) => conv(x),
        Array::U32(x) => conv(x),
        Array::U64(x) => conv(x),
        Array::Bool(x) => conv(x),
    }
}

/// Outputs: tract and this crate share one ndarray version, so tract's view of the output is copied once
/// straight into an owned array (tract's storage is its own aligned buffer, so it cannot be adopted).
fn from_tensor(name: &str, t: &Tensor) -> Result<Array, ValidateError> {
    fn conv<T: tract_onnx::prelude::Datum + Copy>(t: &Tensor) -> Result<ArrayD<T>, ValidateError> {
        Ok(t.to_plain_array_view::<T>().map_err(tract("reading an output tensor"))?.to_owned())
    }
    let arr = match t.datum_type() {
        DatumType::F32 => Array::F32(conv::<f32>(t)?),
        DatumType::F64 => Array::F64(conv::<f64>(t)?),
        DatumType::F16 => Array::F16(conv::<f16>(t)?),
        DatumType::I64 => Array::I64(conv::<i64>(t)?),
        DatumType::I32 => Array::I32(conv::<i32>(t)?),
        DatumType::I16 => Array::I16(conv::<i16>(t)?),
        DatumType::I8 => Array::I8(conv::<i8>(t)?),
        DatumType::U8 => Array::U8(conv::<u8>(t)?),
        DatumType::U16 => Array::U16(conv::<u16>(t)?),
        DatumType::U32 => Array::U32(conv::<u32>(t)?),
        DatumType::U64 => Array::U64(conv::<u64>(t)?),
        DatumType::Bool => Array::Bool(conv::<bool>(t)?),
        DatumType::TDim => {
            let cast = t.cast_to::<i64>().map_err(tract("casting a shape output to int64"))?;
            Array::I64(conv::<i64>(&cast)?)
        }
        other => {
            return Err(ValidateError::Tract { msg: format!("output `{name}` has unsupported element type {other:?}") })
        }
    };
    Ok(arr)
}
