#!/usr/bin/env bash
# Quick start: build dpcoord (cargo, through CMake), install it into ${PREFIX:-$PWD/_install},
# build the C++ demo (cpp_tests/example/demo.cpp) against the installed package, and run it.
#
#   scripts/demo.sh                      # installs into ./_install
#   PREFIX=/opt/dpcoord scripts/demo.sh
#
# Needs: Rust (cargo), CMake >= 3.16, a C++17 compiler. Build trees go to build/package and
# build/demo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-$PWD/_install}"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

banner() { printf '\n==== %s\n' "$*"; }

banner "build and install dpcoord into $PREFIX"
cmake -S "$ROOT" -B "$ROOT/build/package" -DCMAKE_INSTALL_PREFIX="$PREFIX"
cmake --build "$ROOT/build/package" -j "$JOBS"
cmake --install "$ROOT/build/package"

banner "build the demo against the installed package"
cmake -S "$ROOT/cpp_tests" -B "$ROOT/build/demo" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DDPCOORD_CPU_TESTS=OFF -DDPCOORD_GPU_TESTS=OFF
cmake --build "$ROOT/build/demo" --target dpcoord_demo -j "$JOBS"

banner "run it: build/demo/dpcoord_demo"
"$ROOT/build/demo/dpcoord_demo"
