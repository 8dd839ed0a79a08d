#!/usr/bin/env bash
# Issue 12: onnxruntime latency of structured outputs (FFN channels, attention heads, both) against the
# dense model, on each model's sample inputs. Needs a Python with numpy and onnxruntime (PYTHON=...);
# not a test dependency. Models are written by the release binary into target/structured-ort/.
#
#   PYTHON=/path/to/python scripts/structured_ort.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
cargo build --release --workspace -q
BIN=target/release/sparsify-onnx
OUT=target/structured-ort
mkdir -p "$OUT"
run() { # model-dir name pipeline
  "$BIN" run "$1/model.onnx" -o "$OUT/$2.onnx" --calib "$1/calib" --pipeline "$3" --quiet >/dev/null
}
C=tests/data/models/char_lm
M=../shared/models/paraphrase_minilm_l3_v2
FFN='mask{sparsity=0.5,granularity=coupled},dead-channel-elim'
HEADS='prune-heads{fraction=0.25}'
run $C char_lm.ffn "$FFN"; run $C char_lm.heads "$HEADS"; run $C char_lm.both "$FFN,$HEADS"
ARGS=("char_lm:$C:$C/model.onnx,$OUT/char_lm.ffn.onnx,$OUT/char_lm.heads.onnx,$OUT/char_lm.both.onnx")
if [ -f $M/model.onnx ]; then
  run $M l3.ffn "$FFN"; run $M l3.heads "$HEADS"; run $M l3.both "$FFN,$HEADS"
  ARGS+=("l3:$M:$M/model.onnx,$OUT/l3.ffn.onnx,$OUT/l3.heads.onnx,$OUT/l3.both.onnx")
fi
"$PY" - "${ARGS[@]}" <<'PYEOF'
import glob, json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort

def feeds(sess, folder):
    files = sorted(glob.glob(os.path.join(folder, "sample", "input_*.npy")))
    return {i.name: np.load(f) for i, f in zip(sess.get_inputs(), files)}

def medians_ms(paths, folder, threads, runs=30):
    """Median latency of each model; runs interleaved (one of each in turn) so that load from other
    processes falls on every variant alike."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in paths]
    fs = [feeds(s, folder) for s in sessions]
    for s, f in zip(sessions, fs):
        for _ in range(3):
            s.run(None, f)
    t = [[] for _ in paths]
    for _ in range(runs):
        for i, (s, f) in enumerate(zip(sessions, fs)):
            t0 = time.perf_counter(); s.run(None, f); t[i].append(time.perf_counter() - t0)
    return [statistics.median(x) * 1e3 for x in t]

print(f"onnxruntime {ort.__version__}; median of 30 interleaved runs on the sample inputs")
print("| model | variant | 1 thread (ms) | speed-up | 2 threads (ms) | speed-up |")
print("|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    name, folder, paths = arg.split(":", 2)
    paths = paths.split(",")
    r1, r2 = medians_ms(paths, folder, 1), medians_ms(paths, folder, 2)
    for i, label in enumerate(["dense", "FFN 50%", "heads 25%", "FFN 50% + heads 25%"]):
        print(f"| {name} | {label} | {r1[i]:.2f} | {r1[0]/r1[i]:.2f}x | {r2[i]:.2f} | {r2[0]/r2[i]:.2f}x |")
PYEOF
