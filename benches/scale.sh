#!/usr/bin/env bash
# Large-model benchmark: sparsify-onnx vs `cp` of the same files vs the numpy peers, side by side in one
# run, with peak RSS, and the same pipelines under a memory limit (a child of this process's own memory
# cgroup). Models are generated (never committed) by ../shared/bench/make_synthetic.py.
#
#   benches/scale.sh                      # 1.5 GiB external-data and inline MLPs
#   MODELS=mlp_64m_ext benches/scale.sh   # a quick run on a small model
#
# Environment: MODELS (comma list, make_synthetic names), OUT (work folder, default target/scale-bench),
# SHARED (peer scripts, default ../shared/bench), VENV (python venv with numpy+onnx, created if missing,
# default target/bench-venv), BIN (tool binary; default: built with `cargo build --release --bin
# sparsify-onnx`), LIMIT_FRAC (memory limit as a fraction of the model size, default 0.3),
# REPS (runs per row, fastest reported, default 2), SETTLE (seconds to wait after `sync` before each
# timed run, default 2), REF_HASHES (file of "sha256  pipeline-tag/file" lines from a reference binary to compare outputs with).
#
# The memory limit needs a writable cgroup: run as root (or with a delegated cgroup). cgroup v2 uses
# memory.max / memory.peak, v1 memory.limit_in_bytes / memory.max_usage_in_bytes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODELS=${MODELS:-mlp_1536m_ext,mlp_1536m}
OUT=${OUT:-$ROOT/target/scale-bench}
SHARED=${SHARED:-$ROOT/../shared/bench}
VENV=${VENV:-$ROOT/target/bench-venv}
LIMIT_FRAC=${LIMIT_FRAC:-0.3}
PIPELINES=("score{method=l1},mask{sparsity=0.5}" "score{method=l1},nm-legalize{n=2,m=4}")

mkdir -p "$OUT/models" "$OUT/out"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy onnx
fi
PY="$VENV/bin/python"
if [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q --bin sparsify-onnx)
  BIN="$ROOT/target/release/sparsify-onnx"
fi

# shellcheck source=benches/cgroup.sh
. "$ROOT/benches/cgroup.sh"   # setup_cgroup, run_limited, timed (they write logs to $OUT)
setup_cgroup

# Earlier runs' writeback (and, on a `discard` mount, the trim of deleted outputs) must not land in the
# next measurement: flush and wait before every timed run.
quiesce() { sync; sleep "${SETTLE:-2}"; }
# best_of CLEAN CMD...: run CMD ${REPS:-2} times (CLEAN removes its outputs before each), print the
# fastest "wall rss" (every timed row below is a best-of).
best_of() {
  local clean=$1 b="" r=""; shift
  for _ in $(seq "${REPS:-2}"); do
    eval "$clean"; quiesce
    local out; out=$(timed "$@") || return 1
    read -r w k <<< "$out"
    if [ -z "$b" ] || [ "$(echo "$w < $b" | bc)" = 1 ]; then b=$w; r=$k; fi
  done
  echo "$b $r"
}

files_of() { local m=$1; ls "$m" "$m.data" 2>/dev/null || true; }
sha_of() { cat $(files_of "$1") | sha256sum | cut -c1-16; }

echo "# scale bench $(date -u +%FT%TZ) on $(nproc) cores; binary $BIN"
printf '| model | size MiB | what | wall s | peak RSS MiB | ×cp | output sha256 (16) |\n|---|---|---|---|---|---|---|\n'
IFS=, read -ra names <<< "$MODELS"
for name in "${names[@]}"; do
  src="$OUT/models/$name.onnx"
  [ -f "$src" ] || "$PY" "$SHARED/make_synthetic.py" --out "$OUT/models" --only "$name" > /dev/null
  size=$(cat $(files_of "$src") | wc -c)
  mib=$((size >> 20))
  # warm the page cache once (every tool below reads warm files)
  cat $(files_of "$src") > /dev/null
  # cp of the same files, and cp + sync: the tool syncs its outputs to disk before renaming them into
  # place (an atomic, durable save); cp does not. `cp` + `sync` of the copies is the like-for-like floor.
  clean_cp="rm -f '$OUT/out/cp.onnx' '$OUT/out/cp.onnx.data'"
  cp_cmd="cp '$src' '$OUT/out/cp.onnx'; [ ! -f '$src.data' ] || cp '$src.data' '$OUT/out/cp.onnx.data'"
  read -r cp_s cprss <<< "$(best_of "$clean_cp" sh -c "$cp_cmd")"
  printf '| %s | %s | cp | %s | %s | 1.0 | |\n' "$name" "$mib" "$cp_s" "$cprss"
  set -- $(best_of "$clean_cp" sh -c "$cp_cmd; sync '$OUT/out/cp.onnx'; [ ! -f '$OUT/out/cp.onnx.data' ] || sync '$OUT/out/cp.onnx.data'")
  printf '| %s | %s | cp + sync (durable copy) | %s | %s | %.1f | |\n' "$name" "$mib" "$1" "$2" "$(echo "$1 / $cp_s" | bc -l)"
  set -- $(best_of "rm -f '$OUT/out/none.onnx' '$OUT/out/none.onnx.data'" "$BIN" run "$src" -o "$OUT/out/none.onnx")
  printf '| %s | %s | sparsify-onnx, no passes | %s | %s | %.1f | %s |\n' "$name" "$mib" "$1" "$2" "$(echo "$1 / $cp_s" | bc -l)" "$(sha_of "$OUT/out/none.onnx")"
  i=0
  for p in "${PIPELINES[@]}"; do
    i=$((i + 1))
    o="$OUT/out/p$i.onnx"
    set -- $(best_of "rm -f '$o' '$o.data'" "$BIN" run "$src" -o "$o" --pipeline "$p")
    h=$(sha_of "$o")
    ref=""
    if [ -n "${REF_HASHES:-}" ]; then
      want=$(grep " $name/p$i\$" "$REF_HASHES" | cut -d' ' -f1 || true)
      if [ -n "$want" ]; then [ "$want" = "$h" ] && ref=" (= reference)" || ref=" (DIFFERS from reference $want)"; fi
    fi
    printf '| %s | %s | sparsify-onnx `%s` | %s | %s | %.1f | %s%s |\n' "$name" "$mib" "$p" "$1" "$2" "$(echo "$1 / $cp_s" | bc -l)" "$h" "$ref"
    echo "$h $name/p$i" >> "$OUT/hashes.txt"
    if [ -n "$CG" ]; then
      limit=$(echo "$size * $LIMIT_FRAC / 1" | bc)
      rm -f "$o" "$o.data"
      quiesce
      read -r st peak wall <<< "$(run_limited "$limit" "$BIN" run "$src" -o "$o" --pipeline "$p")"
      same=""
      [ "$st" != ok ] || { [ "$(sha_of "$o")" = "$h" ] && same="same output" || same="OUTPUT DIFFERS"; }
      printf '| %s | %s | same, memory limit %s MiB (%s× model) | %s | cgroup peak %s | %.1f | %s %s |\n' "$name" "$mib" "$((limit >> 20))" "$LIMIT_FRAC" "$wall" "$peak" "$(echo "$wall / $cp_s" | bc -l)" "$st" "$same"
    fi
  done
  set -- $(best_of "rm -f '$OUT/out/np.onnx' '$OUT/out/np.onnx.data'" "$PY" "$SHARED/np_magnitude.py" "$src" "$OUT/out/np.onnx" --sparsity 0.5)
  printf '| %s | %s | numpy np_magnitude.py 0.5 | %s | %s | %.1f | |\n' "$name" "$mib" "$1" "$2" "$(echo "$1 / $cp_s" | bc -l)"
  set -- $(best_of "rm -f '$OUT/out/np.onnx' '$OUT/out/np.onnx.data'" "$PY" "$SHARED/np_nm.py" "$src" "$OUT/out/np.onnx" --n 2 --m 4)
  printf '| %s | %s | numpy np_nm.py 2:4 | %s | %s | %.1f | |\n' "$name" "$mib" "$1" "$2" "$(echo "$1 / $cp_s" | bc -l)"
  rm -f "$OUT"/out/*.onnx "$OUT"/out/*.onnx.data
done
