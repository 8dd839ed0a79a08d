#!/usr/bin/env python3
"""Quantized copies of the bundled models, made once with onnxruntime's quantizer (issue 14).

Writes tests/data/quant/*.onnx from tests/data/models/<name>/model.onnx and its calib/ inputs. The tests
read the committed files and need no Python. Run from the repository root:

    python3 -m venv /tmp/qenv && /tmp/qenv/bin/pip install onnxruntime onnx numpy
    /tmp/qenv/bin/python scripts/make_quant_fixtures.py

Fixtures (onnxruntime 1.32, onnx 1.23.2):
- digits_mlp_qdq_s8.onnx    static QDQ, int8 weights per tensor (DequantizeLinear -> Gemm)
- digits_cnn_qdq_u8pc.onnx  static QDQ, uint8 weights per channel, asymmetric (DequantizeLinear(axis=0) -> Conv)
- char_lm_dyn_s8.onnx       dynamic: DynamicQuantizeLinear + MatMulInteger, int8 weights per tensor
- digits_cnn_qop.onnx       QOperator: QLinearConv (int8 per channel) + com.microsoft.QGemm
- char_lm_qop.onnx          QOperator: QLinearMatMul (int8 per tensor)
"""
import json
import os
import sys

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = os.path.join(ROOT, "tests", "data", "models")
OUT = os.path.join(ROOT, "tests", "data", "quant")


class Reader(CalibrationDataReader):
    def __init__(self, name, batch=16):
        calib = os.path.join(MODELS, name, "calib")
        meta = json.load(open(os.path.join(calib, "calib.json")))
        inp = meta["inputs"][0]
        x = np.load(os.path.join(calib, inp["file"]))
        self.feeds = iter([{inp["name"]: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.feeds, None)


def static(name, out, fmt, per_channel, wtype, extra=None, ops=None):
    quantize_static(os.path.join(MODELS, name, "model.onnx"), os.path.join(OUT, out), Reader(name),
                    quant_format=fmt, per_channel=per_channel, weight_type=wtype,
                    activation_type=QuantType.QUInt8, op_types_to_quantize=ops, extra_options=extra or {})


def main():
    os.makedirs(OUT, exist_ok=True)
    static("digits_mlp", "digits_mlp_qdq_s8.onnx", QuantFormat.QDQ, False, QuantType.QInt8)
    static("digits_cnn", "digits_cnn_qdq_u8pc.onnx", QuantFormat.QDQ, True, QuantType.QUInt8,
           {"ActivationSymmetric": False, "WeightSymmetric": False})
    quantize_dynamic(os.path.join(MODELS, "char_lm", "model.onnx"), os.path.join(OUT, "char_lm_dyn_s8.onnx"),
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    static("digits_cnn", "digits_cnn_qop.onnx", QuantFormat.QOperator, True, QuantType.QInt8)
    static("char_lm", "char_lm_qop.onnx", QuantFormat.QOperator, False, QuantType.QInt8, ops=["MatMul"])
    for f in sorted(os.listdir(OUT)):
        if f.endswith(".onnx"):
            m = onnx.load(os.path.join(OUT, f))
            ops = sorted({(n.domain or "ai.onnx") + ":" + n.op_type for n in m.graph.node})
            print(f, os.path.getsize(os.path.join(OUT, f)), ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
