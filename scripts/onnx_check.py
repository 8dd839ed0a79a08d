#!/usr/bin/env python3
"""Run the ONNX checker's full check (with strict shape inference) on each model given.

Used by .ci/run on models the tool wrote; needs the `onnx` package (pip install onnx).
Exit code 0 when every model passes, 1 otherwise.
"""
import sys

import onnx


def main(paths):
    failed = 0
    for p in paths:
        try:
            onnx.checker.check_model(p, full_check=True)
            print(f"onnx checker (full): ok   {p}")
        except Exception as e:  # noqa: BLE001 - report any checker failure
            failed += 1
            print(f"onnx checker (full): FAIL {p}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
