#!/usr/bin/env bash
# Issue 15 bench: wall time of the one-shot recipes on a 36-MatMul BERT-like transformer
# (benches/make_transformer.py: 6 layers, d=384, 12 heads, FFN 1536; 64 calibration sequences of 32
# tokens with an attention mask), release build. Goal: the best-quality recipe in under 30 s.
#
#   benches/recipe.sh [PIPELINE ...]     (default: the README's recipes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${BENCH_DIR:-target/bench-transformer36}
[ -f "$DIR/model.onnx" ] || "$PY" benches/make_transformer.py "$DIR"
cargo build --release --workspace -q
BIN=target/release/sparsify-onnx
if [ $# -eq 0 ]; then
  set -- 'score{method=wanda},mask{sparsity=0.5}' 'sparsegpt{sparsity=0.5}' 'score{method=wanda},mask{sparsity=0.5},refine' \
    'sparsegpt{sparsity=0.5,damp=0.1},ls-correct' 'sparsegpt{n=2,m=4,damp=0.1},ls-correct'
fi
echo "| pipeline | seconds | peak RSS (MiB) |"
echo "|---|---|---|"
for p in "$@"; do
  /usr/bin/time -f "%e %M" -o target/recipe.time "$BIN" run "$DIR/model.onnx" -o target/recipe-out.onnx \
    --calib "$DIR/calib" --pipeline "$p" --quiet >/dev/null
  read -r secs kb < target/recipe.time
  echo "| \`$p\` | $secs | $((kb / 1024)) |"
done
rm -f target/recipe-out.onnx target/recipe.time
