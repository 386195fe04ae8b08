#!/usr/bin/env bash
# Quick start: set the machine up (scripts/setup.sh: cmake, make, g++ and ca-certificates from
# apt when missing, as root; otherwise it prints the command to run), build dpcoord (cargo,
# through CMake), install it into ${PREFIX:-$PWD/_install}, build the C++ demo
# (examples/demo.cpp) against the installed package, exactly as your project would, and run it.
#
#   scripts/demo.sh                      # installs into ./_install
#   PREFIX=/opt/dpcoord scripts/demo.sh
#
# Needs only Rust (cargo) and, on a fresh Debian machine, root for apt-get. Build trees go to
# build/package and build/demo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
START=$SECONDS
dp_setup demo

PREFIX="${PREFIX:-$PWD/_install}"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

dp_banner "build and install dpcoord into $PREFIX"
cmake -S "$ROOT" -B "$ROOT/build/package" -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DDPCOORD_CARGO="$(command -v cargo)"
cmake --build "$ROOT/build/package" -j "$JOBS"
cmake --install "$ROOT/build/package"

dp_banner "build the demo against the installed package"
cmake -S "$ROOT/examples" -B "$ROOT/build/demo" -DCMAKE_PREFIX_PATH="$PREFIX"
cmake --build "$ROOT/build/demo" --target dpcoord_demo -j "$JOBS"

dp_banner "run it: build/demo/dpcoord_demo"
"$ROOT/build/demo/dpcoord_demo"
printf '\ndemo.sh: done in %ds (installed in %s)\n' $((SECONDS - START)) "$PREFIX"
