#!/usr/bin/env bash
# The GPU suite, on the GPU machine, from a prebuilt libdpcoord.so (that machine has no Rust).
#
#   scripts/gpu_suite.sh [path/to/libdpcoord.so]       (default: $DPCOORD_LIB, else
#                                                       target/release/libdpcoord.so)
#
# 1. installs the library with the root CMake project (-DDPCOORD_PREBUILT_LIBRARY);
# 2. builds cpp_tests' GPU targets against that prefix, the system CUDA ($CUDA_HOME, default
#    /usr/local/cuda) and the system NCCL;
# 3. runs ctest's gpu_ranks_2 and gpu_ranks_4, gpu_ranks_8 only with >= 8 GPUs (8 ranks sharing
#    fewer GPUs talk over loopback sockets: too slow for this suite's time budget), and the
#    examples (gpu_example_step_loop, and examples/' gpu_split_phase and gpu_dedicated_stream);
# 4. runs a representative subset with 2 ranks under compute-sanitizer, each tool separately
#    (memcheck, racecheck, initcheck, synccheck), every rank under the sanitizer, the
#    coordinator's fault tests included (DPCOORD_GPU_SANITIZER=1: their wall-clock bounds are
#    not asserted under a sanitizer's slowdown);
# 5. prints one summary line per run, e.g. "gpu_ranks_2: 12 passed, 0 failed, 1 skipped".
#
# Logs (build, ctest, per-rank output and GoogleTest XML) go to ${OUT:-./gpu-logs} (many files:
# on the device machine, whose $OUT returns at most 8 files, point OUT elsewhere and tar it into
# $OUT). Exit status: 0 when every run passed, 1 otherwise.
#
# Environment knobs: BUILD_DIR (default build/gpu-suite), CUDA_HOME, EXTRA_CMAKE_ARGS (for
# cpp_tests, e.g. -DNCCL_ROOT=... or -DDPCOORD_GPU_TEST_DEADLINE=<s per gpu_ranks_N run>),
# SKIP_BUILD=1 (reuse what an earlier run built in BUILD_DIR: steps 1-2 are skipped), RANKS
# (rank counts to run; default "2 4", plus 8 with >= 8 GPUs; "" runs none), EXAMPLES (ctest
# names of the examples to run; default all three; "" runs none), SANITIZERS (default
# "memcheck racecheck initcheck synccheck"; "" runs none), SANITIZER_FILTER (gtest filter of the
# sanitized subset), SANITIZER_TIMEOUT (seconds per tool, default 150),
# DPCOORD_GPU_SANITIZER_STEPS (random steps under a sanitizer, default 24), and the tests' own
# DPCOORD_GPU_* (seed, steps, repeat counts...: see cpp_tests/gpu/gpu_world.h).
# scripts/gpu_run.sh runs this script step by step, each under its own time limit.
#
# Seen on one H200 (ranks sharing it over loopback sockets; 2000 repeated calls, 10 000 reuse
# steps): 272-356 s in all, build included; gpu_ranks_4's reuse steps took 142 s of it (cap them
# with DPCOORD_GPU_REUSE_STEPS, as scripts/gpu_run.sh does), each sanitizer 10-25 s.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIB="${1:-${DPCOORD_LIB:-$ROOT/target/release/libdpcoord.so}}"
OUT="${OUT:-./gpu-logs}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/gpu-suite}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
SANITIZERS="${SANITIZERS-memcheck racecheck initcheck synccheck}"
SANITIZER_FILTER="${SANITIZER_FILTER:-Gpu.RandomStepsMatchHostDecision:Gpu.EdgeCasesAtFullRankCount:Gpu.DeviceArrayIsStreamOrderedForAKernelAfterTheCall:Gpu.StreamKinds:Gpu.InconsistentPadFlagsFailEveryRank:Gpu.InvalidRequestOnEveryRankFailsEveryRank:Gpu.ReleaseThenCallAgain:Gpu.Coordinator*:Gpu.TimeoutWhenARankNeverCalls:Gpu.WatchdogCancelsFirstCachedCallOnFreshCommunicator:Gpu.V2AndV1StepsMatchTheHostPathAt2And4Ranks:Gpu.V2StragglerReportIsFilled}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LIB="$(cd "$(dirname "$LIB")" 2>/dev/null && pwd)/$(basename "$LIB")"
PREFIX="$BUILD_DIR/install"
START=$SECONDS
SUMMARY=()
FAILED=0

say() { printf 'gpu_suite: %s\n' "$*"; }
elapsed() { printf '%ds' $((SECONDS - START)); }
fail_setup() {
  say "FAILED: $1 (log: $2)"
  tail -n 30 "$2" | sed 's/^/    /'
  echo "gpu_suite: 0 passed, 1 failed"
  exit 1
}

if [ ! -f "$LIB" ]; then
  say "no library at $LIB (pass its path, or set DPCOORD_LIB)"
  exit 1
fi
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)

# Steps 1-2 set TESTS_BUILD (the cpp_tests build tree) and TESTS_BIN.
build_suite() {
  # 1. Install the prebuilt library as the dpcoord CMake package.
  say "installing $LIB into $PREFIX"
  {
    cmake -S "$ROOT" -B "$BUILD_DIR/lib" "${GEN[@]}" -DDPCOORD_PREBUILT_LIBRARY="$LIB" \
      -DCMAKE_INSTALL_PREFIX="$PREFIX" &&
      cmake --build "$BUILD_DIR/lib" &&
      cmake --install "$BUILD_DIR/lib"
  } >"$OUT/install.log" 2>&1 || fail_setup "installing the package" "$OUT/install.log"

  # 2. Build the GPU targets (the whole cpp_tests project when it configures, else the GPU
  #    suite alone, which is a project of its own too).
  TESTS_BUILD="$BUILD_DIR/tests"
  # shellcheck disable=SC2206 # EXTRA_CMAKE_ARGS is split on purpose
  local config=("${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$PREFIX"
    -DCUDAToolkit_ROOT="$CUDA_HOME" ${EXTRA_CMAKE_ARGS:-})
  say "building cpp_tests' GPU targets in $TESTS_BUILD ($(elapsed))"
  if ! cmake -S "$ROOT/cpp_tests" -B "$TESTS_BUILD" "${config[@]}" >"$OUT/build.log" 2>&1; then
    say "cpp_tests did not configure (see $OUT/build.log); building cpp_tests/gpu alone"
    TESTS_BUILD="$BUILD_DIR/tests-gpu-only"
    cmake -S "$ROOT/cpp_tests/gpu" -B "$TESTS_BUILD" "${config[@]}" >>"$OUT/build.log" 2>&1 ||
      fail_setup "configuring cpp_tests/gpu" "$OUT/build.log"
  fi
  cmake --build "$TESTS_BUILD" --target dpcoord_gpu_tests dpcoord_gpu_launcher \
    dpcoord_example_step_loop dpcoord_example_gpu_split_phase \
    dpcoord_example_gpu_dedicated_stream >>"$OUT/build.log" 2>&1 ||
    fail_setup "building" "$OUT/build.log"
  TESTS_BIN="$(find "$TESTS_BUILD" -type f -name dpcoord_gpu_tests -perm -u+x | head -n 1)"
}

if [ "${SKIP_BUILD:-0}" = 1 ]; then
  # Steps 1-2 were done by an earlier run into the same BUILD_DIR.
  TESTS_BIN="$(find "$BUILD_DIR" -type f -name dpcoord_gpu_tests -perm -u+x | head -n 1)"
  if [ -z "$TESTS_BIN" ]; then
    say "SKIP_BUILD=1, but no dpcoord_gpu_tests under $BUILD_DIR (run without SKIP_BUILD first)"
    echo "gpu_suite: 0 passed, 1 failed"
    exit 1
  fi
  TESTS_BUILD="$BUILD_DIR/tests"
  case "$TESTS_BIN" in "$BUILD_DIR/tests-gpu-only/"*) TESTS_BUILD="$BUILD_DIR/tests-gpu-only" ;; esac
  say "reusing the build in $TESTS_BUILD (SKIP_BUILD=1)"
else
  build_suite
fi
BIN_DIR="$(dirname "$TESTS_BIN")"
LAUNCHER="$BIN_DIR/dpcoord_gpu_launcher"

NGPUS="$("$LAUNCHER" --count-gpus 2>"$OUT/count-gpus.log")"
say "$NGPUS GPU(s); built in $(elapsed)"
nvidia-smi -L >"$OUT/nvidia-smi.txt" 2>&1 || true

# 3. The ranks suites and the example, through ctest.
if [ -n "${RANKS+set}" ]; then
  read -r -a RANK_COUNTS <<<"$RANKS"
else
  RANK_COUNTS=(2 4)
  if [ "${NGPUS:-0}" -ge 8 ]; then
    RANK_COUNTS+=(8)
  else
    SUMMARY+=("gpu_ranks_8: not run ($NGPUS GPU(s) < 8: 8 ranks over loopback sockets are too slow here)")
  fi
fi
for n in "${RANK_COUNTS[@]}"; do
  name="gpu_ranks_$n"
  say "ctest $name ($(elapsed))"
  (cd "$TESTS_BUILD" && ctest -R "^${name}\$" --output-on-failure) >"$OUT/$name.log" 2>&1
  rc=$?
  rm -rf "${OUT:?}/$name"
  cp -r "$BIN_DIR/$name" "$OUT/$name" 2>/dev/null
  line="$(cat "$OUT/$name/summary.txt" 2>/dev/null || echo "$name: no summary (see $OUT/$name.log)")"
  if [ $rc -ne 0 ]; then
    FAILED=1
    line="$line [ctest FAILED]"
  fi
  SUMMARY+=("$line")
done
read -r -a EXAMPLE_NAMES <<<"${EXAMPLES-gpu_example_step_loop gpu_example_gpu_split_phase gpu_example_gpu_dedicated_stream}"
for ex in "${EXAMPLE_NAMES[@]}"; do
  say "ctest $ex ($(elapsed))"
  if (cd "$TESTS_BUILD" && ctest -R "^${ex}\$" --output-on-failure) >"$OUT/$ex.log" 2>&1; then
    if grep -q 'Skipped' "$OUT/$ex.log"; then
      SUMMARY+=("$ex: 0 passed, 0 failed, 1 skipped")
    else
      SUMMARY+=("$ex: 1 passed, 0 failed")
    fi
  else
    FAILED=1
    SUMMARY+=("$ex: 0 passed, 1 failed")
  fi
done

# 4. compute-sanitizer, one tool per run, 2 ranks, a representative subset, small counts.
SANITIZER="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
if [ -n "$SANITIZERS" ] && [ ! -x "$SANITIZER" ]; then
  SUMMARY+=("compute-sanitizer: not run (not found)")
  SANITIZERS=""
fi
# Per tool: NCCL's own kernels are not ours to check (and cost most of the time), so they run
# uninstrumented, except under initcheck, which must see NCCL write the allgather's output (else
# our kernel's reads of it are reported as uninitialized). memcheck's API-error reports are off:
# NCCL's initialization probes kernels with calls that fail by design
# (cudaFuncGetAttributes: no kernel image for this device), and dpcoord's own failing calls
# are checked by the tests.
EXCLUDE_NCCL=""
if [ -n "$SANITIZERS" ] && "$SANITIZER" --help 2>/dev/null | grep -q -- '--kernel-name-exclude'; then
  EXCLUDE_NCCL="--kernel-name-exclude kns=nccl"
fi
tool_options() {
  case "$1" in
    memcheck) echo "--report-api-errors no $EXCLUDE_NCCL" ;;
    initcheck) echo "" ;;
    *) echo "$EXCLUDE_NCCL" ;;
  esac
}
for tool in $SANITIZERS; do
  name="sanitizer_$tool"
  say "$name ($(elapsed))"
  DPCOORD_GPU_SANITIZER=1 DPCOORD_GPU_STEPS="${DPCOORD_GPU_SANITIZER_STEPS:-24}" DPCOORD_GPU_REPEAT=20 \
    "$LAUNCHER" --ranks 2 --name "$name" --timeout "${SANITIZER_TIMEOUT:-150}" \
    --out "$OUT/$name" --gtest-xml \
    --wrap "$SANITIZER --tool $tool --error-exitcode 1 $(tool_options "$tool")" \
    -- "$TESTS_BIN" --gtest_filter="$SANITIZER_FILTER" >"$OUT/$name.log" 2>&1
  rc=$?
  line="$(cat "$OUT/$name/summary.txt" 2>/dev/null || echo "$name: no summary (see $OUT/$name.log)")"
  if [ $rc -ne 0 ]; then
    FAILED=1
    line="$line [FAILED: exit $rc; sanitizer reports in $OUT/$name/rank*.log]"
  fi
  SUMMARY+=("$line")
done

# 5. Summary.
echo
say "done in $(elapsed); logs in $OUT"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $FAILED
