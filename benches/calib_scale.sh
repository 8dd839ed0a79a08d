#!/usr/bin/env bash
# Calibrated passes at scale (issue 10 item 4): Wanda and SparseGPT on a generated ~1 GiB transformer
# with external data (benches/make_transformer.py: 20 layers, d=1024, FFN 4096, 120 weight MatMuls),
# calibrated stage by stage in tract (`--calib-stage-mib`, default 256), each run once without a limit
# (wall time, peak RSS) and once under a memory limit of LIMIT_FRAC × the model size in a child of this
# process's memory cgroup (benches/cgroup.sh). The staged outputs are compared (sha256) with a run that
# calibrates the whole model at once (`--calib-stage-mib 0`, no limit).
#
#   benches/calib_scale.sh          # Environment: OUT, PYTHON (with numpy+onnx), LIMIT_FRAC (default 1.0),
#                                   # STAGE_MIB (default 64), PIPELINES (;-separated)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/calib-scale}
PY=${PYTHON:-python3}
LIMIT_FRAC=${LIMIT_FRAC:-1.0}
STAGE_MIB=${STAGE_MIB:-64}
DEFAULT_PIPES='score{method=wanda},mask{sparsity=0.5};sparsegpt{sparsity=0.5}'
IFS=';' read -r -a PIPES <<< "${PIPELINES:-$DEFAULT_PIPES}"
M=$OUT/tf1g
mkdir -p "$OUT/out/staged" "$OUT/out/whole"
[ -f "$M/model.onnx" ] || TF_D=1024 TF_HEADS=16 TF_FFN=4096 TF_LAYERS=20 TF_EXTERNAL=1 "$PY" "$ROOT/benches/make_transformer.py" "$M"
(cd "$ROOT" && cargo build --release -q --workspace)
BIN=$ROOT/target/release/sparsify-onnx
# shellcheck source=benches/cgroup.sh
. "$ROOT/benches/cgroup.sh"
setup_cgroup
size=$(( $(stat -c %s "$M/model.onnx") + $(stat -c %s "$M/model.onnx.data") ))
limit=$(echo "$size * $LIMIT_FRAC / 1" | bc)
sha() { cat "$1" "$1.data" 2>/dev/null | sha256sum | cut -c1-16; }
echo "# calibrated scale bench $(date -u +%FT%TZ), $(nproc) cores, model $((size >> 20)) MiB, stage budget $STAGE_MIB MiB"
echo "| pipeline | run | wall s | peak MiB | output sha256 |"
echo "|---|---|---|---|---|"
for p in "${PIPES[@]}"; do
  o=$OUT/out/staged/model.onnx   # same file names, so the hashes compare the contents
  read -r wall peak <<< "$(timed "$BIN" run "$M/model.onnx" -o "$o" --calib "$M/calib" --pipeline "$p" --calib-stage-mib "$STAGE_MIB" --quiet)"
  staged=$(sha "$o")
  echo "| \`$p\` | staged, no limit | $wall | RSS $peak | $staged |"
  if [ -n "$CG" ]; then
    rm -f "$o" "$o.data"
    read -r st cpeak cwall <<< "$(run_limited "$limit" "$BIN" run "$M/model.onnx" -o "$o" --calib "$M/calib" --pipeline "$p" --calib-stage-mib "$STAGE_MIB" --quiet)"
    echo "| \`$p\` | staged, limit $((limit >> 20)) MiB ($LIMIT_FRAC×) | $cwall | cgroup $cpeak ($st) | $( [ "$st" = ok ] && sha "$o" || echo -) |"
  fi
  w=$OUT/out/whole/model.onnx
  read -r wall peak <<< "$(timed "$BIN" run "$M/model.onnx" -o "$w" --calib "$M/calib" --pipeline "$p" --calib-stage-mib 0 --quiet)"
  echo "| \`$p\` | whole model in tract, no limit | $wall | RSS $peak | $(sha "$w") |"
  rm -f "$o" "$o.data" "$w" "$w.data"
done
