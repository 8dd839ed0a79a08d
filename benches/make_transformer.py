#!/usr/bin/env python3
"""A BERT-like encoder with 36 weight MatMuls (6 layers x Q, K, V, O, FFN up, FFN down), for the
one-shot recipe bench (issue 15: "prunes a 36-MatMul transformer in under 30 s").

d=384, 12 heads, FFN 1536, vocab 8000, post-LayerNorm, GELU (Erf), attention mask input, mean-pooled
output `pooled` [B, 384] (masked) and `hidden` [B, S, 384] — the layout of MiniLM-L6 exports. Weights
are seeded normals scaled by 1/sqrt(fan_in); calibration and sample data are token ids with random
lengths 11-29 padded with 0 to 32, and the matching 0/1 attention mask.

Usage: make_transformer.py OUTDIR   (writes OUTDIR/model.onnx, OUTDIR/calib/*.npy, OUTDIR/sample/*.npy)

Other sizes through the environment: TF_D, TF_HEADS, TF_FFN, TF_LAYERS (defaults above), and
TF_EXTERNAL=1 to store the weights in OUTDIR/model.onnx.data. The issue-10 scale bench uses
TF_D=1024 TF_HEADS=16 TF_FFN=4096 TF_LAYERS=20 TF_EXTERNAL=1 (about 1 GiB of weights, 120 MatMuls).
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D = int(os.environ.get("TF_D", 384))
H = int(os.environ.get("TF_HEADS", 12))
F = int(os.environ.get("TF_FFN", 1536))
LAYERS = int(os.environ.get("TF_LAYERS", 6))
V, S = 8000, 32
EXTERNAL = os.environ.get("TF_EXTERNAL", "") == "1"


def main(out):
    rng = np.random.default_rng(1234)
    inits, nodes = [], []

    def w(name, shape, fan_in=None, scale=None):
        a = rng.standard_normal(shape).astype(np.float32)
        a *= scale if scale is not None else 1.0 / np.sqrt(fan_in)
        inits.append(numpy_helper.from_array(a, name))
        return name

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=outs[0], **kw))
        return outs[0]

    def linear(x, p, din, dout):
        mm = n("MatMul", [x, w(f"{p}.weight", [din, dout], fan_in=din)], [f"{p}/mm"])
        return n("Add", [mm, w(f"{p}.bias", [dout], scale=0.02)], [f"{p}/out"])

    def layernorm(x, p):
        g = c(f"{p}.gamma", np.ones(D, np.float32))
        b = c(f"{p}.beta", np.zeros(D, np.float32))
        return n("LayerNormalization", [x, g, b], [f"{p}/out"], axis=-1, epsilon=1e-12)

    c("heads_shape", np.array([0, 0, H, D // H], np.int64))
    c("merge_shape", np.array([0, 0, D], np.int64))
    c("scale", np.array(1.0 / np.sqrt(D // H), np.float32))
    c("one", np.array(1.0, np.float32))
    c("neg", np.array(-10000.0, np.float32))
    c("half", np.array(0.5, np.float32))
    c("rsqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))
    c("axes12", np.array([1, 2], np.int64))
    c("axis1", np.array([1], np.int64))

    tok = n("Gather", [w("emb.tokens", [V, D], scale=0.05), "input_ids"], ["emb/tok"])
    x = n("Add", [tok, w("emb.pos", [S, D], scale=0.02)], ["emb/sum"])
    x = layernorm(x, "emb.ln")
    maskf = n("Cast", ["attention_mask"], ["mask/f"], to=TensorProto.FLOAT)
    inv = n("Sub", ["one", maskf], ["mask/inv"])
    ext = n("Mul", [n("Unsqueeze", [inv, "axes12"], ["mask/ext"]), "neg"], ["mask/bias"])
    for i in range(LAYERS):
        p = f"l{i}"
        heads = []
        for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            y = linear(x, f"{p}.{t}", D, D)
            r = n("Reshape", [y, "heads_shape"], [f"{p}/{t}/split"])
            heads.append(n("Transpose", [r], [f"{p}/{t}/heads"], perm=perm))
        s = n("MatMul", [heads[0], heads[1]], [f"{p}/scores"])
        s = n("Add", [n("Mul", [s, "scale"], [f"{p}/scaled"]), ext], [f"{p}/masked"])
        pr = n("Softmax", [s], [f"{p}/probs"], axis=-1)
        ctx = n("MatMul", [pr, heads[2]], [f"{p}/ctx"])
        ctx = n("Transpose", [ctx], [f"{p}/ctx/t"], perm=[0, 2, 1, 3])
        ctx = n("Reshape", [ctx, "merge_shape"], [f"{p}/ctx/merged"])
        x = layernorm(n("Add", [x, linear(ctx, f"{p}.o", D, D)], [f"{p}/res1"]), f"{p}.ln1")
        h = linear(x, f"{p}.up", D, F)
        erf = n("Erf", [n("Mul", [h, "rsqrt2"], [f"{p}/gelu/s"])], [f"{p}/gelu/erf"])
        g = n("Mul", [n("Mul", [h, "half"], [f"{p}/gelu/h"]), n("Add", [erf, "one"], [f"{p}/gelu/e1"])], [f"{p}/gelu"])
        x = layernorm(n("Add", [x, linear(g, f"{p}.down", F, D)], [f"{p}/res2"]), f"{p}.ln2")
    n("Identity", [x], ["hidden"])
    c("axis_last", np.array([-1], np.int64))
    m3 = n("Unsqueeze", [maskf, "axis_last"], ["pool/m"])
    num = n("ReduceSum", [n("Mul", [x, m3], ["pool/xm"]), "axis1"], ["pool/num"], keepdims=0)
    den = n("ReduceSum", [m3, "axis1"], ["pool/den"], keepdims=0)
    n("Div", [num, den], ["pooled"])
    graph = helper.make_graph(
        nodes,
        "transformer36",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", S]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", S]),
        ],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", D]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", S, D]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_transformer.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(out, exist_ok=True)
    if EXTERNAL:
        onnx.save(model, os.path.join(out, "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save(model, os.path.join(out, "model.onnx"))
    for sub, rows in (("calib", 64), ("sample", 32)):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        lens = rng.integers(11, 30, size=rows)
        ids = np.zeros((rows, S), np.int64)
        mask = np.zeros((rows, S), np.int64)
        for r, l in enumerate(lens):
            ids[r, :l] = rng.integers(1, V, size=l)
            mask[r, :l] = 1
        np.save(os.path.join(out, sub, "input_0.npy"), ids)
        np.save(os.path.join(out, sub, "input_1.npy"), mask)
    print(f"wrote {out}/model.onnx ({sum(1 for x in nodes if x.op_type == 'MatMul')} MatMul nodes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-models/transformer36")
