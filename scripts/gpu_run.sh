#!/usr/bin/env bash
# The GPU machine's whole run in one command, well inside the device tool's 10 minutes: build the
# C++ side against the prebuilt library, the GPU suite at 2 and 4 ranks (8 with >= 8 GPUs), the
# four compute-sanitizer tools on the representative subset (the fault tests included), the
# examples, the GPU bench, and last, after every GPU run, the host group's bench against Open
# MPI. Each step runs under its own time limit, cut to what is left of the run's budget
# (BUDGET_S); a step that no longer fits is reported as not run. scripts/gpu_suite.sh does the
# suite's work (called once per step: the build first, then SKIP_BUILD=1).
#
# Through the device tool, from the repository root:
#   1. Here first (the GPU machine has no Rust):
#        cargo build --release -p dpcoord            # target/release/libdpcoord.so, no bench code
#        cargo build --release -p dpcoord-gpu-bench -p dpcoord-host-bench
#        mpicc -O2 host-bench/mpi_allgather.c -Iinclude -Ltarget/release -ldpcoord \
#          -o target/release/mpi_allgather            # optional: else built there with its mpicc
#   2. run(command="bash scripts/gpu_run.sh", timeout_s=600,
#          carry=["target/release/libdpcoord.so", "target/release/dpcoord-gpu-bench",
#                 "target/release/dpcoord-host-bench", "target/release/mpi_allgather"])
#      (the second cargo command leaves libdpcoord.so as the first built it).
#   3. Back under $OUT: summary.txt (one line per run: passed/failed/skipped counts, the bench
#      medians) and gpu-run-logs.tar.gz (every log: build, ctest, per-rank output and
#      GoogleTest XML, sanitizer reports, bench CSVs). The summary is also printed last.
#
#   bash scripts/gpu_run.sh --dry-run     # anywhere: prints the steps, limits and environment
#
# Exit status: 0 when every GPU run passed (the build, each suite, sanitizer and example run, the
# GPU bench); 1 when one failed, or did not run for lack of time or of a carried binary; 77 when
# there is no CUDA GPU (every GPU run skipped). The host bench's outcome is in the summary but
# does not change the status (it is no GPU run). summary.txt is written whatever happens.
#
# Environment: OUT (default build/gpu-run/out), WORK_DIR (logs while running, default
# build/gpu-run), BUILD_DIR (gpu_suite.sh's, default build/gpu-suite), BUDGET_S (the whole run,
# default 540), DPCOORD_LIB, GPU_BENCH_BIN, HOST_BENCH_BIN, MPI_ALLGATHER_BIN (default
# target/release/...), RANKS (default "2 4", plus 8 with >= 8 GPUs), SANITIZERS (default the
# four), SANITIZER_TIMEOUT (s per tool, default 100), BENCH_RANKS (GPU bench at several ranks
# under the launcher; default none: ranks sharing a GPU give no speed figure), HOST_RANKS
# (default "2 4 8"), HOST_ITERS (default 20000). When ranks share GPUs (loopback sockets, about
# 14 ms a step at 4 ranks) the suite's repeat counts are capped: DPCOORD_GPU_REPEAT and
# DPCOORD_GPU_REUSE_STEPS 2000 at 2 ranks, 1000 at 4, 500 above (SHARED_REPEAT_<n> overrides);
# with a GPU per rank the tests' own defaults hold. COMMIT names the commit in the summary (pass
# it through the device tool: the copy there may carry older git metadata than its files; the
# library's sha256 beside it is what identifies the code).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *)
    echo "usage: bash scripts/gpu_run.sh [--dry-run]" >&2
    exit 2
    ;;
esac

OUT="${OUT:-$ROOT/build/gpu-run/out}"
WORK_DIR="${WORK_DIR:-$ROOT/build/gpu-run}"
LOGS="$WORK_DIR/logs"
export BUILD_DIR="${BUILD_DIR:-$ROOT/build/gpu-suite}"
BUDGET_S="${BUDGET_S:-540}"
LIB="${DPCOORD_LIB:-$ROOT/target/release/libdpcoord.so}"
GPU_BENCH_BIN="${GPU_BENCH_BIN:-$ROOT/target/release/dpcoord-gpu-bench}"
HOST_BENCH_BIN="${HOST_BENCH_BIN:-$ROOT/target/release/dpcoord-host-bench}"
MPI_ALLGATHER_BIN="${MPI_ALLGATHER_BIN:-$ROOT/target/release/mpi_allgather}"
SANITIZERS="${SANITIZERS-memcheck racecheck initcheck synccheck}"
SANITIZER_TIMEOUT="${SANITIZER_TIMEOUT:-100}"
BENCH_RANKS="${BENCH_RANKS:-}"
HOST_RANKS="${HOST_RANKS:-2 4 8}"
HOST_ITERS="${HOST_ITERS:-20000}"
SUITE_DEADLINE_S=150   # the launcher's deadline for one gpu_ranks_N run (it names hung ranks)
RESERVE_S=20           # kept back for the summary and the tarball
MIN_STEP_S=15          # a step with less left is not started
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 4)}"

START=$SECONDS
SUMMARY=()
FAILED=0
NGPUS=-1   # unknown until the build gave us the launcher
STEP_RC=0
STEP_S=0
STEP_LIMIT=0

say() { printf 'gpu_run: %s\n' "$*"; }
note() { SUMMARY+=("$*"); }

# The summary file: what ran where, then one line per run. Rewritten after every step, so a
# run killed from outside still leaves what it had.
write_summary() {
  [ "$DRY" = 1 ] && return
  {
    echo "gpu_run: $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START)) s of ${BUDGET_S} s"
    echo "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null |
      sort | uniq -c | sed 's/^ *//' | paste -sd';' -), $(nproc 2>/dev/null) cores"
    echo "commit: ${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}," \
      "libdpcoord.so sha256 $(sha256sum "$LIB" 2>/dev/null | cut -c1-12)"
    printf '%s\n' "${SUMMARY[@]}"
  } >"$OUT/summary.txt"
}

pack() {
  [ "$DRY" = 1 ] && return
  cp -f "$OUT/summary.txt" "$LOGS/summary.txt" 2>/dev/null
  tar -czf "$OUT/gpu-run-logs.tar.gz" -C "$WORK_DIR" logs 2>/dev/null ||
    note "tarball: FAILED (tar exit $?)"
}

finish() {
  local rc=$1
  write_summary
  pack
  if [ "$DRY" = 0 ]; then
    echo
    say "done in $((SECONDS - START)) s (exit $rc); summary and logs in $OUT"
    cat "$OUT/summary.txt"
  fi
  exit "$rc"
}
trap 'note "gpu_run: interrupted"; FAILED=1; finish 1' INT TERM

# run_step NAME NOMINAL_S CMD...: runs CMD (output in $LOGS/NAME.log) under the smaller of
# NOMINAL_S and what the budget leaves; sets STEP_RC (125: not started, out of time; 124 or 137:
# killed at its limit), STEP_S and STEP_LIMIT.
run_step() {
  local name=$1 nominal=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
  STEP_LIMIT=$((nominal < left ? nominal : left))
  STEP_S=0
  if [ "$DRY" = 1 ]; then
    printf '%-20s up to %4d s: %s\n' "$name" "$nominal" "$*"
    STEP_RC=0
    return
  fi
  if [ "$STEP_LIMIT" -lt "$MIN_STEP_S" ]; then
    say "$name: not started (${left} s left of the budget)"
    STEP_RC=125
    return
  fi
  say "$name: up to ${STEP_LIMIT} s ($((SECONDS - START)) s so far)"
  local t0=$SECONDS
  timeout -k 10 "$STEP_LIMIT" "$@" >"$LOGS/$name.log" 2>&1
  STEP_RC=$?
  STEP_S=$((SECONDS - t0))
}

# What a step's rc adds to its summary line.
rc_note() {
  case "$STEP_RC" in
    0) echo "" ;;
    124 | 137) echo " [KILLED at its ${STEP_LIMIT} s limit]" ;;
    *) echo " [FAILED: exit $STEP_RC]" ;;
  esac
}

# suite_step NAME NOMINAL_S VAR=VALUE...: one scripts/gpu_suite.sh run, its logs in $LOGS/NAME;
# its summary lines (or why there are none) go into the summary.
suite_step() {
  local name=$1 nominal=$2
  shift 2
  run_step "$name" "$nominal" env OUT="$LOGS/$name" "$@" bash "$ROOT/scripts/gpu_suite.sh" "$LIB"
  [ "$DRY" = 1 ] && return
  if [ "$STEP_RC" = 125 ]; then
    note "$name: not run (out of time: $((BUDGET_S - (SECONDS - START))) s left of BUDGET_S," \
      "${RESERVE_S} s of it kept for the summary)"
    FAILED=1
    return
  fi
  [ "$STEP_RC" = 0 ] || FAILED=1
  local lines=() line
  if [ -s "$LOGS/$name/summary.txt" ]; then
    mapfile -t lines < <(grep -v '^$' "$LOGS/$name/summary.txt")
  fi
  if [ "${#lines[@]}" = 0 ]; then
    note "$name: no summary (${STEP_S} s; see logs/$name.log)$(rc_note)"
    return
  fi
  for line in "${lines[@]}"; do
    # gpu_suite.sh names a missing compute-sanitizer, not the tool this step was for.
    line="${line/#compute-sanitizer: not run/$name: not run: compute-sanitizer}"
    case "$line" in
      *"[ctest FAILED]"* | *"[FAILED:"*) note "$line (${STEP_S} s)" ;;
      *) note "$line (${STEP_S} s)$(rc_note)" ;;
    esac
  done
}

# The rows of a bench CSV (header: ranks,variant,iters,median_us,...) as "variant median".
csv_medians() {
  awk -F, 'NR > 1 && $4 != "" { printf "%s%s %s", sep, $2, $4; sep = ", " }' "$1" 2>/dev/null
}

if [ "$DRY" = 1 ]; then
  say "dry run: the steps, in order, each cut to what is left of BUDGET_S=${BUDGET_S} s"
else
  mkdir -p "$OUT" "$WORK_DIR"
  OUT="$(cd "$OUT" && pwd)"
  rm -rf "$LOGS"
  mkdir -p "$LOGS"
  rm -f "$OUT/summary.txt" "$OUT/gpu-run-logs.tar.gz"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    uname -a
    nvidia-smi 2>&1 | head -n 20
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1)"
    echo "nccl (system): $(find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name 'libnccl.so.2*' \
      2>/dev/null | paste -sd' ' -)"
    echo "compute-sanitizer: $(compute-sanitizer --version 2>/dev/null | tail -n 1)"
    echo "mpirun: $(mpirun --version 2>/dev/null | head -n 1)"
    echo "cmake: $(cmake --version 2>/dev/null | head -n 1)"
    ls -l "$LIB" "$GPU_BENCH_BIN" "$HOST_BENCH_BIN" "$MPI_ALLGATHER_BIN" 2>&1
  } >"$LOGS/machine.txt" 2>&1
fi

# 1. Build (installs the library, builds the GPU targets) and count the GPUs.
if [ "$DRY" = 0 ] && [ ! -f "$LIB" ]; then
  note "build: not run (no $LIB: build it here with cargo build --release -p dpcoord, carry it)"
  finish 1
fi
run_step build 300 env OUT="$LOGS/build" RANKS= SANITIZERS= EXAMPLES= \
  EXTRA_CMAKE_ARGS="-DDPCOORD_GPU_TEST_DEADLINE=$SUITE_DEADLINE_S ${EXTRA_CMAKE_ARGS:-}" \
  bash "$ROOT/scripts/gpu_suite.sh" "$LIB"
BUILT=0
LAUNCHER=""
if [ "$DRY" = 1 ]; then
  BUILT=1
  LAUNCHER="<dpcoord_gpu_launcher of the build>"
elif [ "$STEP_RC" = 0 ]; then
  BUILT=1
  note "build: 1 passed, 0 failed (${STEP_S} s)"
  LAUNCHER="$(find "$BUILD_DIR" -type f -name dpcoord_gpu_launcher -perm -u+x | head -n 1)"
  NGPUS="$("$LAUNCHER" --count-gpus 2>>"$LOGS/machine.txt")"
  NGPUS="${NGPUS:-0}"
  say "$NGPUS GPU(s)"
else
  note "build: 0 passed, 1 failed (${STEP_S} s; logs/build/build.log)$(rc_note);" \
    "no suite run follows"
  FAILED=1
fi
write_summary

if [ "$BUILT" = 1 ]; then
  # 2. The suite, one rank count per step.
  if [ -n "${RANKS+set}" ]; then
    read -r -a RANK_COUNTS <<<"$RANKS"
  else
    RANK_COUNTS=(2 4)
    [ "$NGPUS" -ge 8 ] && RANK_COUNTS+=(8)
  fi
  for n in "${RANK_COUNTS[@]}"; do
    caps=()
    if [ "$DRY" = 1 ] || [ "$NGPUS" -lt "$n" ]; then  # ranks share GPUs: cap the repeat counts
      default_cap=500
      [ "$n" -le 4 ] && default_cap=1000
      [ "$n" -le 2 ] && default_cap=2000
      cap_var="SHARED_REPEAT_$n"
      cap="${!cap_var:-$default_cap}"
      caps=(DPCOORD_GPU_REPEAT="$cap" DPCOORD_GPU_REUSE_STEPS="$cap")
    fi
    suite_step "gpu_ranks_$n" $((SUITE_DEADLINE_S + 30)) RANKS="$n" SANITIZERS= EXAMPLES= \
      SKIP_BUILD=1 "${caps[@]}"
    write_summary
  done

  # 3. compute-sanitizer, one tool per step (2 ranks, gpu_suite.sh's SANITIZER_FILTER subset).
  for tool in $SANITIZERS; do
    suite_step "sanitizer_$tool" $((SANITIZER_TIMEOUT + 20)) RANKS= EXAMPLES= \
      SANITIZERS="$tool" SANITIZER_TIMEOUT="$SANITIZER_TIMEOUT" SKIP_BUILD=1
    write_summary
  done

  # 4. The examples.
  suite_step examples 150 RANKS= SANITIZERS= SKIP_BUILD=1
  write_summary
fi

# 5. The GPU bench (one rank; BENCH_RANKS adds runs under the launcher).
if [ "$DRY" = 0 ] && [ "$NGPUS" = 0 ]; then
  note "gpu_bench: not run (no CUDA GPU)"
elif [ "$DRY" = 0 ] && [ ! -x "$GPU_BENCH_BIN" ]; then
  note "gpu_bench: not run (no $GPU_BENCH_BIN: cargo build --release -p dpcoord-gpu-bench" \
    "here, carry it)"
  FAILED=1
else
  bench_env=(OUT="$LOGS/gpu_bench" BIN="$GPU_BENCH_BIN")
  if [ -n "$BENCH_RANKS" ] && [ -n "$LAUNCHER" ]; then
    bench_env+=(LAUNCHER="$LAUNCHER" RANKS="$BENCH_RANKS")
  fi
  run_step gpu_bench 200 env "${bench_env[@]}" bash "$ROOT/gpu-bench/run_gpu_bench.sh"
  if [ "$DRY" = 0 ]; then
    if [ "$STEP_RC" = 125 ]; then
      note "gpu_bench: not run (out of time: $((BUDGET_S - (SECONDS - START))) s left of BUDGET_S)"
      FAILED=1
    else
      [ "$STEP_RC" = 0 ] || FAILED=1
      verdict="1 passed, 0 failed"
      [ "$STEP_RC" = 0 ] || verdict="0 passed, 1 failed"
      note "gpu_bench: $verdict (${STEP_S} s)$(rc_note); median us, 1 rank:" \
        "$(csv_medians "$LOGS/gpu_bench/gpu_bench.csv")"
      note "torch_reference (nccl, 1 rank): median us:" \
        "$(csv_medians "$LOGS/gpu_bench/torch_reference.csv")"
      for r in $BENCH_RANKS; do
        note "gpu_bench ($r ranks): median us: $(csv_medians "$LOGS/gpu_bench/gpu_bench_$r.csv")"
      done
    fi
  fi
fi
write_summary

# 6. Last, after every GPU run: the host group against Open MPI (no GPU; the status ignores it).
HB_DIR="$WORK_DIR/host-bench-bin"
host_bench_ready() {
  rm -rf "$HB_DIR"
  mkdir -p "$HB_DIR"
  if [ ! -x "$HOST_BENCH_BIN" ]; then
    echo "no $HOST_BENCH_BIN (cargo build --release -p dpcoord-host-bench here, carry it)"
    return 1
  fi
  cp "$HOST_BENCH_BIN" "$LIB" "$HB_DIR/" || return 1
  local soname
  soname="$(readelf -d "$LIB" 2>/dev/null | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')"
  [ -n "$soname" ] && cp -f "$LIB" "$HB_DIR/$soname"
  if [ -x "$MPI_ALLGATHER_BIN" ]; then
    cp "$MPI_ALLGATHER_BIN" "$HB_DIR/mpi_allgather"
  elif command -v mpicc >/dev/null 2>&1; then
    mpicc -O2 "$ROOT/host-bench/mpi_allgather.c" -I"$ROOT/include" -L"$HB_DIR" -ldpcoord \
      -o "$HB_DIR/mpi_allgather" >>"$LOGS/host_bench_build.log" 2>&1 ||
      { echo "mpicc failed (logs/host_bench_build.log)"; return 1; }
  else
    echo "no $MPI_ALLGATHER_BIN and no mpicc"
    return 1
  fi
  command -v mpirun >/dev/null 2>&1 || { echo "no mpirun"; return 1; }
}
if [ "$DRY" = 1 ]; then
  run_step host_bench 60 env BIN_DIR="$HB_DIR" ITERS="$HOST_ITERS" bash "$ROOT/host-bench/run.sh" \
    "$HOST_RANKS"
elif ! why="$(host_bench_ready)"; then
  note "host_bench: not run ($why)"
else
  # shellcheck disable=SC2086 # HOST_RANKS is a list of rank counts
  run_step host_bench 60 env BIN_DIR="$HB_DIR" ITERS="$HOST_ITERS" \
    bash "$ROOT/host-bench/run.sh" $HOST_RANKS
  if [ "$STEP_RC" = 125 ]; then
    note "host_bench: not run (out of time: $((BUDGET_S - (SECONDS - START))) s left of BUDGET_S)"
  else
    verdict="1 passed, 0 failed"
    [ "$STEP_RC" = 0 ] || verdict="0 passed, 1 failed"
    note "host_bench: $verdict (${STEP_S} s)$(rc_note); median us by ranks:" \
      "hostgroup $(sed -n 's/^hostgroup ranks=\([0-9]*\) .*median_us=\([0-9.]*\).*/\1:\2/p' \
        "$LOGS/host_bench.log" | paste -sd' ' -)," \
      "mpi $(sed -n 's/^mpi ranks=\([0-9]*\) .*median_us=\([0-9.]*\).*/\1:\2/p' \
        "$LOGS/host_bench.log" | paste -sd' ' -)"
  fi
fi

if [ "$DRY" = 1 ]; then
  say "logs would go to $LOGS, then $OUT/summary.txt and $OUT/gpu-run-logs.tar.gz"
  exit 0
fi
if [ "$NGPUS" = 0 ] && [ "$FAILED" = 0 ]; then
  note "gpu_run: no CUDA GPU: every GPU run skipped (exit 77)"
  finish 77
fi
finish "$FAILED"
