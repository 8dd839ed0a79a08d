#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60), one process at a time:
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: model pipeline calib graphs (default: all)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Inputs found go to
# fuzz/corpus/<target> (ignored by git); the committed seeds are fuzz/seeds/<target>. A crash stops the
# script with libFuzzer's report and the input in fuzz/artifacts/<target>/: fix it and copy the input to
# tests/data/fuzz/<target>/ so the normal suite keeps checking it (tests/fuzz_regressions.rs).
# FUZZ_NO_TRACT=1 builds without tract (only `model` and `pipeline` exist then; a much shorter build).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  if [ "${FUZZ_NO_TRACT:-0}" = 1 ]; then targets=(model pipeline); else targets=(model pipeline calib graphs); fi
fi
features=()
if [ "${FUZZ_NO_TRACT:-0}" = 1 ]; then features=(--no-default-features); fi
# No sanitizer: the fuzzed code is safe Rust (the one unsafe block is checked under Miri); libFuzzer's
# coverage, debug assertions and overflow checks stay on. 16 codegen units keep the build affordable.
opts=(-s none --codegen-units 16 "${features[@]}")
cargo +nightly fuzz build "${opts[@]}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dict=()
  if [ -f "dict/$t.dict" ]; then dict=(-dict="dict/$t.dict"); fi
  echo "== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "${opts[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 "${dict[@]}"
done
