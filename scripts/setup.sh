# shellcheck shell=bash
# Shared set-up of scripts/demo.sh and scripts/test.sh: sourced by them, never run alone.
#
#   source scripts/setup.sh
#   dp_setup demo     # what the demo needs: Rust, cmake, make, g++, ca-certificates
#   dp_setup test     # what every test needs: the above, rustfmt + clippy, git, GoogleTest,
#                     # pkg-config, binutils, Open MPI, python3 + pip, the pinned NVIDIA wheels
#
# What is missing is installed, never skipped:
#   - Debian packages with apt-get (one `apt-get update`, then one `apt-get install`) when run as
#     root; otherwise the exact command to run is printed and the script exits with status 1.
#   - rustfmt and clippy with `rustup component add` (test only).
#   - the pinned NVIDIA wheels (test only) with `pip install --target` into $DPCOORD_DEPS/pip
#     (default .deps/pip in the repository, ignored by git; re-used while the pins are
#     unchanged). They provide NVRTC 12.0.76 (the committed PTX is checked against it), the CUDA
#     runtime headers and libraries, and NCCL (the GPU suite builds everywhere and the real-NCCL
#     Rust tests run on the CPU). DPCOORD_NVRTC, DPCOORD_CUDA_ROOT and NCCL_ROOT, when all three
#     are set, are used instead and nothing is downloaded.
# Rust itself is never installed (the message says how): the scripts need only what rustup gives.
# A cargo or rustc older than Cargo.toml's rust-version stops the set-up, before anything is
# built, with the version needed and how to get it (`rustup update`).
#
# Exports: PATH (with ~/.cargo/bin when cargo was only there), DPCOORD_NVRTC, DPCOORD_CUDA_ROOT,
# NCCL_ROOT (test). Knobs: DPCOORD_DEPS (where the wheels go), DPCOORD_SETUP_DRY_RUN=1 (say
# what would be installed, install nothing, exit 1 when anything is missing), DPCOORD_SKIP_APT=1
# (not Debian: you installed the packages' equivalents yourself).

DP_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The Debian packages, by command that needs them.
DP_APT_DEMO=(ca-certificates cmake make g++)
DP_APT_TEST=("${DP_APT_DEMO[@]}" git libgtest-dev pkg-config binutils python3 python3-pip
  openmpi-bin libopenmpi-dev)

# One pip command for every wheel: a later `pip install --target` would replace the shared
# nvidia/ directory with only its own packages.
#   nvidia-cuda-nvrtc-cu12==12.0.76     the pinned PTX generator (tests/ptx.rs -> gen_ptx.py)
#   nvidia-cuda-runtime-cu12, nvidia-nccl-cu12   headers + libraries for the GPU suite and
#                                       the real-NCCL Rust tests
#   nvidia-cuda-nvcc-cu12, nvidia-cuda-cccl-cu12 only the headers cuda_runtime.h and nccl.h
#                                       include but the runtime wheel lacks: crt/*.h and
#                                       nv/target (cccl 12.4.99 does not ship it; 12.9.27 does)
DP_WHEELS=(
  nvidia-cuda-nvrtc-cu12==12.0.76
  nvidia-cuda-runtime-cu12==12.4.127
  nvidia-nccl-cu12==2.21.5
  nvidia-cuda-nvcc-cu12==12.4.131
  nvidia-cuda-cccl-cu12==12.9.27
)

dp_say() { printf 'setup: %s\n' "$*"; }
dp_banner() { printf '\n==================== %s ====================\n' "$*"; }

dp_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# The packages of "$@" that dpkg does not list as installed.
dp_apt_missing() {
  local pkg status
  for pkg in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then printf '%s\n' "$pkg"; fi
  done
}

dp_ensure_apt() {
  if [[ "${DPCOORD_SKIP_APT:-}" == "1" ]]; then
    dp_say "DPCOORD_SKIP_APT=1: not checking the Debian packages ($*)"
    return 0
  fi
  if ! command -v dpkg-query >/dev/null 2>&1; then
    dp_say "not a Debian system (no dpkg-query): install the equivalents of: $*"
    dp_say "then run again with DPCOORD_SKIP_APT=1"
    exit 1
  fi
  local missing
  mapfile -t missing < <(dp_apt_missing "$@")
  if [[ ${#missing[@]} -eq 0 ]]; then
    dp_say "Debian packages present: $*"
    return 0
  fi
  local cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  if [[ "${DPCOORD_SETUP_DRY_RUN:-}" == "1" ]]; then
    dp_say "missing Debian packages: ${missing[*]} (would run: $cmd)"
    DP_SETUP_MISSING=1
    return 0
  fi
  if ! dp_is_root; then
    dp_say "missing Debian packages: ${missing[*]}. Run this as root, then this script again:"
    if command -v sudo >/dev/null 2>&1; then
      printf '\n    sudo sh -c "%s"\n\n' "$cmd"
    else
      printf '\n    %s\n\n' "$cmd"
    fi
    exit 1
  fi
  dp_say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  mapfile -t missing < <(dp_apt_missing "$@")
  if [[ ${#missing[@]} -gt 0 ]]; then
    dp_say "still missing after apt-get install: ${missing[*]}"
    exit 1
  fi
}

# "X.Y.Z" of a `cargo --version` / `rustc --version` line ("cargo 1.95.0 (...)").
dp_tool_version() { "$@" --version 2>/dev/null | sed -n 's/^[a-z]* \([0-9][0-9.]*\).*/\1/p' | head -n 1; }

# 0 when version $1 >= version $2 (dotted numbers; missing parts count as 0).
dp_version_at_least() {
  local -a have want
  IFS=. read -r -a have <<<"$1"
  IFS=. read -r -a want <<<"$2"
  local i
  for i in 0 1 2; do
    if ((${have[i]:-0} != ${want[i]:-0})); then ((${have[i]:-0} > ${want[i]:-0})); return; fi
  done
}

# Stops when cargo or rustc is older than Cargo.toml's rust-version (the build would fail later,
# inside cargo or CMake, without saying which Rust is needed).
dp_check_rust_version() {
  local need have tool
  need="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$DP_REPO_ROOT/Cargo.toml")"
  if [[ -z "$need" ]]; then
    dp_say "no rust-version in $DP_REPO_ROOT/Cargo.toml"
    exit 1
  fi
  for tool in "${CARGO:-cargo}" rustc; do
    have="$(dp_tool_version "$tool" || true)"
    if [[ -z "$have" ]] || ! dp_version_at_least "$have" "$need"; then
      dp_say "dpcoord needs Rust $need or newer (rust-version in Cargo.toml); $tool is ${have:-missing or unreadable}."
      dp_say "Update it, then run this again:"
      printf '\n    rustup update\n\n'
      dp_say "(a default toolchain pinned to an older release: also \`rustup default stable\`;"
      dp_say "without rustup: install Rust $need or newer from https://rustup.rs)"
      exit 1
    fi
  done
}

dp_ensure_rust() {
  local lints="$1"
  if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    dp_say "cargo not found (on PATH or in ~/.cargo/bin). Install Rust, then run this again:"
    printf '\n    curl --proto =https -sSf https://sh.rustup.rs | sh -s -- -y --component rustfmt,clippy\n\n'
    exit 1
  fi
  dp_check_rust_version
  if [[ "$lints" == "lints" ]] && \
     { ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; }; then
    if [[ "${DPCOORD_SETUP_DRY_RUN:-}" == "1" ]]; then
      dp_say "missing rustfmt/clippy (would run: rustup component add rustfmt clippy)"
      DP_SETUP_MISSING=1
    elif command -v rustup >/dev/null 2>&1 && rustup component add rustfmt clippy; then
      dp_say "installed rustfmt and clippy"
    else
      dp_say "rustfmt or clippy missing and \`rustup component add rustfmt clippy\` failed:"
      dp_say "run it (as the owner of the Rust toolchain), then this script again"
      exit 1
    fi
  fi
  dp_say "$(cargo --version)"
  if [[ "$lints" == "lints" && "${DP_SETUP_MISSING:-}" != "1" ]]; then
    dp_say "$(cargo fmt --version), $(cargo clippy --version)"
  fi
}

# The pinned wheels into $DPCOORD_DEPS/pip; exports DPCOORD_NVRTC, DPCOORD_CUDA_ROOT, NCCL_ROOT.
dp_ensure_wheels() {
  if [[ -n "${DPCOORD_NVRTC:-}" && -n "${DPCOORD_CUDA_ROOT:-}" && -n "${NCCL_ROOT:-}" ]]; then
    dp_say "using DPCOORD_NVRTC, DPCOORD_CUDA_ROOT and NCCL_ROOT from the environment (no wheels)"
  else
    local deps="${DPCOORD_DEPS:-$DP_REPO_ROOT/.deps}"
    local target="$deps/pip"
    local stamp="$target/.dpcoord-wheels"
    local want
    want="$(printf '%s\n' "${DP_WHEELS[@]}")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
      dp_say "pinned NVIDIA wheels present in $target"
    elif [[ "${DPCOORD_SETUP_DRY_RUN:-}" == "1" ]]; then
      dp_say "missing the pinned NVIDIA wheels (would pip install --target $target ${DP_WHEELS[*]})"
      DP_SETUP_MISSING=1
      return 0
    else
      dp_say "installing the pinned NVIDIA wheels into $target"
      rm -rf "$target"
      mkdir -p "$deps"
      # --target installs outside every site-packages (so it is allowed on Debian's externally
      # managed Python, and needs no root).
      python3 -m pip install --disable-pip-version-check --no-input --no-deps \
        --no-warn-script-location --target "$target" "${DP_WHEELS[@]}"
      printf '%s\n' "$want" >"$stamp"
    fi
    export DPCOORD_NVRTC="${DPCOORD_NVRTC:-$target/nvidia/cuda_nvrtc/lib/libnvrtc.so.12}"
    export DPCOORD_CUDA_ROOT="${DPCOORD_CUDA_ROOT:-$target/nvidia/cuda_runtime}"
    export NCCL_ROOT="${NCCL_ROOT:-$target/nvidia/nccl}"
  fi
  local check var f
  for check in DPCOORD_NVRTC: DPCOORD_CUDA_ROOT:/include/cuda_runtime.h \
               NCCL_ROOT:/include/nccl.h NCCL_ROOT:/lib/libnccl.so.2; do
    var="${check%%:*}"
    f="${!var}${check#*:}"
    if [[ ! -e "$f" ]]; then
      dp_say "missing: $f ($var=${!var}; for the wheels' copy, remove \
${DPCOORD_DEPS:-$DP_REPO_ROOT/.deps}/pip to reinstall them)"
      exit 1
    fi
  done
  dp_say "DPCOORD_NVRTC=$DPCOORD_NVRTC"
  dp_say "DPCOORD_CUDA_ROOT=$DPCOORD_CUDA_ROOT"
  dp_say "NCCL_ROOT=$NCCL_ROOT"
}

# dp_setup demo|test
dp_setup() {
  local what="$1" start=$SECONDS
  DP_SETUP_MISSING=0
  dp_banner "set-up ($what)"
  case "$what" in
    demo)
      dp_ensure_apt "${DP_APT_DEMO[@]}"
      dp_ensure_rust nolints
      ;;
    test)
      dp_ensure_apt "${DP_APT_TEST[@]}"
      dp_ensure_rust lints
      dp_ensure_wheels
      ;;
    *)
      dp_say "dp_setup: unknown set-up '$what' (demo or test)"
      exit 2
      ;;
  esac
  if [[ "$DP_SETUP_MISSING" == "1" ]]; then
    dp_say "dry run: something is missing (above)"
    exit 1
  fi
  dp_say "set-up took $((SECONDS - start))s"
}
