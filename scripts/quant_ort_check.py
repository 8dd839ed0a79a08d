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
        size = lambda path: sum(t.size for t in __import__("onnx").load(path).graph.initializer
                                if t.data_type in (2, 3))  # int8 / uint8 weights
        print(f"{fx:22s} dead-channel-elim vs masked: max|d| {np.abs(a.astype(np.float64) - b).max():.3e} "
              f"(max|out| {np.abs(a).max():.3f}); int8 weight elements {size(masked)} -> {size(dce)}")
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


def sample(fx, model):
    mdir = os.path.join(ROOT, "tests", "data", "models", model)
    meta = json.load(open(os.path.join(mdir, "sample", "sample.json")))
    inp = meta["inputs"][0]
    return mdir, {inp["name"]: np.load(os.path.join(mdir, "sample", inp.get("file", "input_0.npy")))}


if __name__ == "__main__":
    sys.exit(main())
