#!/bin/sh
# Output error of pruned quantized models vs the quantized dense model (docs/results.md, "Quantized
# models"). Fixtures: tests/data/quant (scripts/make_quant_fixtures.py). Run from the repository root
# after `cargo build`; BIN overrides the binary.
set -e
BIN=${BIN:-target/debug/sparsify-onnx}
D=tests/data/models
OUT=$(mktemp -d)
for f in digits_mlp_qdq_s8:digits_mlp digits_cnn_qdq_u8pc:digits_cnn char_lm_dyn_s8:char_lm char_lm_qop:char_lm; do
  fx=${f%%:*}; m=${f##*:}
  for p in 'score{method=l1},mask{sparsity=0.5}' 'score{method=wanda},mask{sparsity=0.5}' \
           'score{method=wanda},nm-legalize{n=2,m=4}' 'sparsegpt{sparsity=0.5}'; do
    echo "== $fx  $p"
    "$BIN" run "tests/data/quant/$fx.onnx" -o "$OUT/o.onnx" -q --calib "$D/$m/calib" --validate \
      --inputs "$D/$m/sample" --pipeline "$p" | sed -n '/^output /,/^$/p' | sed -n 3p
  done
done
rm -rf "$OUT"
