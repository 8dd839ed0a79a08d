# Shared by the bench scripts (sourced): a memory cgroup that is a child of this process's own, and
# timing helpers. The caller sets OUT (a folder for logs). cgroup v1 uses memory.limit_in_bytes /
# memory.max_usage_in_bytes, v2 memory.max / memory.peak; without a writable cgroup (not root, no
# delegation) CG stays empty and the caller skips its limited runs.

# --- memory cgroup: a child of our own --------------------------------------------------------------
CG=""
CGV=""
setup_cgroup() {
  local rel
  if rel=$(grep -E '^[0-9]+:([^:]*,)?memory(,[^:]*)?:' /proc/self/cgroup | head -1 | cut -d: -f3) && [ -n "$rel" ] \
     && [ -d "/sys/fs/cgroup/memory$rel" ]; then
    CG="/sys/fs/cgroup/memory$rel/scale-bench-$$"; CGV=1
  elif rel=$(grep -E '^0::' /proc/self/cgroup | cut -d: -f3) && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG="/sys/fs/cgroup$rel/scale-bench-$$"; CGV=2
  fi
  if [ -n "$CG" ] && mkdir "$CG" 2>/dev/null; then
    trap 'rmdir "$CG" 2>/dev/null || true' EXIT
  else
    echo "note: no writable memory cgroup; memory-limited runs skipped" >&2
    CG=""
  fi
}
# run_limited BYTES CMD...: run CMD in the child cgroup with the limit; prints "ok|killed(rc) peak_MiB wall_s"
run_limited() {
  local limit=$1; shift
  if [ "$CGV" = 1 ]; then
    echo 0 > "$CG/memory.max_usage_in_bytes" 2>/dev/null || true
    echo "$limit" > "$CG/memory.limit_in_bytes"
    echo "$limit" > "$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true
  else
    echo "$limit" > "$CG/memory.max"
    echo 0 > "$CG/memory.swap.max" 2>/dev/null || true
  fi
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" "$@" > "$OUT/limited.log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  local peak
  if [ "$CGV" = 1 ]; then peak=$(cat "$CG/memory.max_usage_in_bytes"); else peak=$(cat "$CG/memory.peak" 2>/dev/null || echo 0); fi
  local status=ok
  [ "$rc" = 0 ] || status="killed/failed(rc=$rc)"
  echo "$status $((peak >> 20)) $(echo "$t1 - $t0" | bc)"
}

# timed CMD...: wall seconds and peak RSS (MiB) of CMD
timed() {
  /usr/bin/time -f "%e %M" -o "$OUT/time.txt" "$@" > "$OUT/cmd.log" 2>&1 || { echo "FAILED: $*" >&2; cat "$OUT/cmd.log" >&2; return 1; }
  read -r wall kib < "$OUT/time.txt"
  echo "$wall $((kib >> 10))"
}

