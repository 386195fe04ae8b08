#!/usr/bin/env bash
# Runs every test: Rust formatting and lints, the header freshness check, the Rust tests,
# then installs the package into a temporary prefix and runs the C/C++ suite (header checks,
# CPU GoogleTest suite, package checks, demo, and the GPU suite, which builds everywhere and
# skips without a GPU) through ctest. Exits non-zero on any failure.
#
#   scripts/test.sh
#
# Needs: Rust with rustfmt and clippy, CMake >= 3.16, a C++17 compiler, GoogleTest, binutils,
# python3 with the pinned NVRTC (pip install nvidia-cuda-nvrtc-cu12==12.0.76, or
# DPCOORD_NVRTC=<path to libnvrtc.so.12>). To build the GPU suite against CUDA / NCCL outside
# the system paths: DPCOORD_CUDA_ROOT=<dir> NCCL_ROOT=<dir> (see cpp_tests/gpu/CMakeLists.txt);
# on a machine without CUDA/NCCL headers, DPCOORD_GPU_TESTS=OFF leaves the GPU suite out.
# DPCOORD_ALLOW_STALE_HEADER=1 turns a failed header check into a warning (not under CI).
# Under CI=true cargo runs with --locked. Build trees: target/ (cargo), build/test-package and
# build/test-cpp (CMake), reused across runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
LOCKED=()
if [[ "${CI:-}" == "true" ]]; then LOCKED=(--locked); fi

STEP="(setup)"
STEP_START=$SECONDS
START=$SECONDS
PREFIX=""
cleanup() {
  local rc=$?
  if [[ -n "$PREFIX" && -d "$PREFIX" ]]; then rm -rf "$PREFIX"; fi
  if [[ $rc -ne 0 ]]; then
    printf '\ntest.sh: FAILED in step "%s" (exit %d) after %ds\n' "$STEP" "$rc" \
      $((SECONDS - START)) >&2
  fi
}
trap cleanup EXIT

step() {
  if [[ "$STEP" != "(setup)" ]]; then
    printf -- '---- %s: done in %ds\n' "$STEP" $((SECONDS - STEP_START))
  fi
  STEP="$1"
  STEP_START=$SECONDS
  printf '\n==================== %s ====================\n' "$STEP"
}

step "cargo fmt --check"
"$CARGO" fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
"$CARGO" clippy "${LOCKED[@]}" --all-targets -- -D warnings

step "cargo build + header freshness (include/dpcoord.h)"
"$CARGO" build "${LOCKED[@]}"
# build.rs regenerated include/dpcoord.h; it must equal the committed one.
header_fresh=true
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "not a git checkout: cannot compare include/dpcoord.h with the committed header"
  header_fresh=false
else
  if ! git ls-files --error-unmatch include/dpcoord.h >/dev/null 2>&1; then
    echo "include/dpcoord.h is not tracked by git: commit it"
    header_fresh=false
  elif ! git diff --exit-code -- include/dpcoord.h; then
    echo "include/dpcoord.h differs from the committed header (diff above): commit the regenerated header"
    header_fresh=false
  fi
  untracked="$(git ls-files --others --exclude-standard -- include/)"
  if [[ -n "$untracked" ]]; then
    printf 'untracked files under include/ (generated, not committed):\n%s\n' "$untracked"
    header_fresh=false
  fi
fi
if [[ "$header_fresh" != true ]]; then
  if [[ "${DPCOORD_ALLOW_STALE_HEADER:-}" == "1" && "${CI:-}" != "true" ]]; then
    echo "WARNING: header check failed; continuing because DPCOORD_ALLOW_STALE_HEADER=1"
  else
    echo "header freshness check failed (a local run may set DPCOORD_ALLOW_STALE_HEADER=1 to go on)"
    exit 1
  fi
else
  echo "include/dpcoord.h is up to date"
fi

step "cargo test"
"$CARGO" test "${LOCKED[@]}" --all-targets
"$CARGO" test "${LOCKED[@]}" --doc
# The tests that need a real NCCL (ignored by default): CI always has one (NCCL_ROOT).
if [[ -n "${NCCL_ROOT:-}" ]]; then
  DPCOORD_TEST_NCCL_LIBRARY="$NCCL_ROOT/lib/libnccl.so.2" \
    "$CARGO" test "${LOCKED[@]}" --lib -- --ignored
elif [[ "${CI:-}" == "true" ]]; then
  echo "CI must set NCCL_ROOT so the real-NCCL tests run" >&2
  exit 1
else
  echo "NCCL_ROOT not set: the real-NCCL tests stay ignored (listed as ignored above)"
fi

step "install the package into a temporary prefix"
PREFIX="$(mktemp -d "${TMPDIR:-/tmp}/dpcoord-prefix.XXXXXX")"
cargo_args=""
if [[ ${#LOCKED[@]} -gt 0 ]]; then cargo_args="--locked"; fi
cmake -S "$ROOT" -B "$ROOT/build/test-package" -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DDPCOORD_CARGO="$(command -v "$CARGO")" -DDPCOORD_CARGO_ARGS="$cargo_args"
cmake --build "$ROOT/build/test-package" -j "$JOBS"
cmake --install "$ROOT/build/test-package"

step "build cpp_tests against the installed package"
cpp_args=(-DCMAKE_PREFIX_PATH="$PREFIX" -DDPCOORD_GPU_TESTS="${DPCOORD_GPU_TESTS:-ON}")
if [[ -n "${DPCOORD_CUDA_ROOT:-}" ]]; then cpp_args+=(-DDPCOORD_CUDA_ROOT="$DPCOORD_CUDA_ROOT"); fi
if [[ -n "${NCCL_ROOT:-}" ]]; then cpp_args+=(-DNCCL_ROOT="$NCCL_ROOT"); fi
# A fresh configure each run: the prefix is new, and no cached path may point at an old one.
rm -rf "$ROOT/build/test-cpp"
cmake -S "$ROOT/cpp_tests" -B "$ROOT/build/test-cpp" "${cpp_args[@]}"
cmake --build "$ROOT/build/test-cpp" -j "$JOBS"

step "ctest"
printf 'total so far: %ds\n' $((SECONDS - START))
cd "$ROOT/build/test-cpp"
ctest --output-on-failure -j "$JOBS"
