#!/usr/bin/env bash
# Quick start: set the machine up (scripts/setup.sh: cmake, make, g++ and ca-certificates from
# apt when missing, as root; otherwise it prints the command to run; and a Rust new enough for
# Cargo.toml's rust-version), build dpcoord (cargo, through CMake), install it into
# ${PREFIX:-$PWD/_install}, build the C++ demo (examples/demo.cpp) against the installed
# package, exactly as your project would, and run it.
#
#   scripts/demo.sh                      # installs into ./_install
#   PREFIX=/opt/dpcoord scripts/demo.sh
#
# Needs only Rust (cargo) and, on a fresh Debian machine, root for apt-get. Build trees go to
# build/package and build/demo. Only the demo target of the examples project is built (the
# other examples need MPI, CUDA and NCCL; scripts/test.sh builds them all).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
START=$SECONDS
dp_setup demo

PREFIX="${PREFIX:-$PWD/_install}"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
export CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
export CARGO="${CARGO:-$(command -v cargo)}"  # the cargo set-up checked (CMake builds with $CARGO)
cd "$ROOT"

dp_banner "build and install dpcoord into $PREFIX"
# The README's install commands (tests/readme.rs holds the README to this region).
# [readme:install]
cmake -S . -B build/package -DCMAKE_INSTALL_PREFIX="$PREFIX"
cmake --build build/package
cmake --install build/package
# [/readme:install]

dp_banner "build the demo against the installed package"
cmake -S examples -B build/demo -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DDPCOORD_EXAMPLE_MPI=OFF -DDPCOORD_EXAMPLE_GPU=OFF
cmake --build build/demo --target dpcoord_demo

dp_banner "run it: build/demo/dpcoord_demo"
build/demo/dpcoord_demo
printf '\ndemo.sh: done in %ds (installed in %s)\n' $((SECONDS - START)) "$PREFIX"
