#!/usr/bin/env python3
"""Run pruned quantized fixtures in onnxruntime (issue 14): the formats tract cannot run (com.microsoft.QGemm)
and a cross-check of the others. Prints max |Δ logits| and relative L2 against the quantized dense model on
the bundled sample, and digits test accuracy; then dead-channel-elim after a 25% channel mask against the
masked model (QOperator, dynamic and QDQ fixtures), and bias-correct after magnitude 50% on the QOperator
fixtures (calibration in tract: a model tract cannot run reports the failure).

    cargo build && /tmp/qenv/bin/python scripts/quant_ort_check.py   # onnxruntime, onnx, numpy
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "debug", "sparsify-onnx"))
FIXTURES = [("digits_mlp_qdq_s8", "digits_mlp"), ("digits_cnn_qdq_u8pc", "digits_cnn"),
            ("char_lm_dyn_s8", "char_lm"), ("digits_cnn_qop", "digits_cnn"), ("char_lm_qop", "char_lm")]
PIPELINES = ["score{method=l1},mask{sparsity=0.5}", "nm-legalize{n=2,m=4}"]


def run(path, feed):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def main():
    tmp = tempfile.mkdtemp()
    for fx, model in FIXTURES:
        mdir = os.path.join(ROOT, "tests", "data", "models", model)
        meta = json.load(open(os.path.join(mdir, "sample", "sample.json")))
        inp = meta["inputs"][0]
        feed = {inp["name"]: np.load(os.path.join(mdir, "sample", inp.get("file", "input_0.npy")))}
        src = os.path.join(ROOT, "tests", "data", "quant", fx + ".onnx")
        dense = run(src, feed)
        for p in PIPELINES:
            out = os.path.join(tmp, fx + ".onnx")
            subprocess.run([BIN, "run", src, "-o", out, "-q", "--pipeline", p], check=True, stdout=subprocess.DEVNULL)
            pruned = run(out, feed)
            d = pruned.astype(np.float64) - dense
            rel = np.linalg.norm(d) / np.linalg.norm(dense)
            line = f"{fx:22s} {p:40s} max|d| {np.abs(d).max():.4f}  rel L2 {rel:.4f}"
            if model.startswith("digits"):
                x, y = np.load(os.path.join(mdir, "test_x.npy")), np.load(os.path.join(mdir, "test_y.npy"))
                acc = lambda path: float((run(path, {inp["name"]: x}).argmax(1) == y).mean())
                line += f"  test acc {acc(src):.4f} -> {acc(out):.4f}"
            print(line)
    # dead-channel-elim after a 25% channel mask: the eliminated model must compute what the masked one does.
    for fx, model in [("char_lm_qop", "char_lm"), ("char_lm_dyn_s8", "char_lm"), ("digits_cnn_qop", "digits_cnn"),
                      ("digits_cnn_qdq_u8pc", "digits_cnn"), ("digits_mlp_qdq_s8", "digits_mlp")]:
        mdir, feed = sample(fx, model)
        src = os.path.join(ROOT, "tests", "data", "quant", fx + ".onnx")
        masked, dce = os.path.join(tmp, fx + ".masked.onnx"), os.path.join(tmp, fx + ".dce.onnx")
        subprocess.run([BIN, "run", src, "-o", masked, "-q", "--pipeline", "mask{granularity=channel,sparsity=0.25}"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([BIN, "run", masked, "-o", dce, "-q", "--pipeline", "dead-channel-elim"], check=True,
                       stdout=subprocess.DEVNULL)
        a, b = run(masked, feed), run(dce, feed)
        size = lambda path: sum(int(np.prod(t.dims)) for t in onnx.load(path).graph.initializer
                                if t.data_type in (2, 3) and len(t.dims) >= 2)  # int8 / uint8 weights
        line = (f"{fx:22s} dead-channel-elim vs masked: max|d| {np.abs(a.astype(np.float64) - b).max():.3e} "
                f"(max|out| {np.abs(a).max():.3f}); 8-bit weight elements {size(masked)} -> {size(dce)}")
        if fx == "digits_cnn_qop":
            # onnxruntime's u8s8 kernels are not exact integer arithmetic (they saturate pairs of products);
            # an exact integer reference of the whole model decides.
            ra, rb = reference_digits_qop(masked, feed), reference_digits_qop(dce, feed)
            line += f"; exact integer reference: max|d| {np.abs(ra - rb).max():.3e}, ort vs reference {np.abs(a - ra).max():.3e}"
        print(line)
    # bias-correct after magnitude 50% (calibration on the model's calib/ set, in tract).
    for fx, model in [("char_lm_qop", "char_lm"), ("digits_cnn_qop", "digits_cnn")]:
        mdir, feed = sample(fx, model)
        src = os.path.join(ROOT, "tests", "data", "quant", fx + ".onnx")
        dense = run(src, feed).astype(np.float64)
        for p in ["score{method=l1},mask{sparsity=0.5}", "score{method=l1},mask{sparsity=0.5},bias-correct"]:
            out = os.path.join(tmp, fx + ".bc.onnx")
            r = subprocess.run([BIN, "run", src, "-o", out, "-q", "--calib", os.path.join(mdir, "calib"),
                                "--pipeline", p], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                print(f"{fx:22s} {p:52s} failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
            d = run(out, feed).astype(np.float64) - dense
            line = f"{fx:22s} {p:52s} rel L2 {np.linalg.norm(d) / np.linalg.norm(dense):.4f}"
            if model.startswith("digits"):
                x, y = np.load(os.path.join(mdir, "test_x.npy")), np.load(os.path.join(mdir, "test_y.npy"))
                name = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()[0].name
                acc = lambda path: float((run(path, {name: x}).argmax(1) == y).mean())
                line += f"  test acc {acc(src):.4f} -> {acc(out):.4f}"
            print(line)
    return 0


def reference_digits_qop(path, feed):
    """digits_cnn_qop (QuantizeLinear → QLinearConv ×2 → MaxPool → Flatten → QGemm → DequantizeLinear) in exact
    integer arithmetic, requantized in float32 with round-half-even as the ONNX spec says."""
    from onnx import numpy_helper
    m = onnx.load(path)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    val = lambda n: init[n]
    env = {}
    (x,) = feed.values()
    sat = lambda v, z: np.clip(v, 0, 255).astype(np.int64) if z.dtype == np.uint8 else np.clip(v, -128, 127).astype(np.int64)
    for n in m.graph.node:
        i = list(n.input)
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "QuantizeLinear":
            s, z = val(i[1]), val(i[2])
            y = sat(np.rint(x / s) + z.astype(np.int64), z)
        elif n.op_type == "QLinearConv":
            xq, xs, xz, w, ws, wz, ys, yz = env[i[0]], *[val(k) for k in i[1:8]]
            b = val(i[8]) if len(i) > 8 and i[8] else np.zeros(w.shape[0], np.int32)
            p = at.get("pads", [0, 0, 0, 0])
            xp = np.pad(xq - xz.astype(np.int64), ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
            W = w.astype(np.int64) - wz.astype(np.int64).reshape(-1, 1, 1, 1)
            kh, kw = W.shape[2:]
            H, Wd = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
            acc = sum(np.einsum("nchw,mc->nmhw", xp[:, :, a:a + H, c:c + Wd], W[:, :, a, c])
                      for a in range(kh) for c in range(kw)) + b.reshape(1, -1, 1, 1)
            mult = (np.float32(xs) * ws.astype(np.float32) / np.float32(ys)).astype(np.float32)
            y = sat(np.rint(acc.astype(np.float32) * mult.reshape(1, -1, 1, 1)) + int(yz), yz)
        elif n.op_type == "MaxPool":
            v = env[i[0]]
            k = at["kernel_shape"]
            y = v.reshape(v.shape[0], v.shape[1], v.shape[2] // k[0], k[0], v.shape[3] // k[1], k[1]).max((3, 5))
        elif n.op_type == "Flatten":
            y = env[i[0]].reshape(env[i[0]].shape[0], -1)
        elif n.op_type == "QGemm":
            a, as_, az, bq, bs, bz, c, ys, yz = env[i[0]], *[val(k) for k in i[1:9]]
            B = bq.astype(np.int64) - bz.astype(np.int64).reshape(-1, 1)
            acc = (a - az.astype(np.int64)) @ (B.T if at.get("transB", 0) else B) + c
            mult = (np.float32(at.get("alpha", 1.0)) * np.float32(as_) * bs.astype(np.float32) / np.float32(ys))
            y = sat(np.rint(acc.astype(np.float32) * mult.astype(np.float32)) + int(yz), yz)
        elif n.op_type == "DequantizeLinear":
            y = ((env[i[0]] - val(i[2]).astype(np.int64)).astype(np.float32) * val(i[1])).astype(np.float32)
        else:
            raise SystemExit(f"reference_digits_qop: unexpected {n.op_type}")
        env[n.output[0]] = y
    return env[m.graph.output[0].name]


def sample(fx, model):
    mdir = os.path.join(ROOT, "tests", "data", "models", model)
    meta = json.load(open(os.path.join(mdir, "sample", "sample.json")))
    inp = meta["inputs"][0]
    return mdir, {inp["name"]: np.load(os.path.join(mdir, "sample", inp.get("file", "input_0.npy")))}


if __name__ == "__main__":
    sys.exit(main())
