#!/usr/bin/env bash
# The host group against Open MPI's MPI_Allgather of the slot + dp_decide_slots (the host path
# on the same checked slot), side by side in one run:
# for each rank count, both benchmarks, one after the other, on the same machine.
#
#   host-bench/run.sh [ranks...]        (default: 2 4 8)
#
# Builds libdpcoord (release), dpcoord-host-bench and mpi_allgather unless BIN_DIR names a
# folder that already holds dpcoord-host-bench, mpi_allgather and libdpcoord.so*. ITERS and
# WARMUP set the calls per rank (default 20000 and 2000). Ranks are pinned one per core
# (--pin, mpirun --bind-to core) when the machine has a core per rank, else left to the
# scheduler (--oversubscribe for Open MPI).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
ranks=("${@:-2 4 8}")
ranks=(${ranks[*]})
iters="${ITERS:-20000}"
warmup="${WARMUP:-2000}"

if [[ -z "${BIN_DIR:-}" ]]; then
  BIN_DIR="$root/target/release"
  (cd "$root" && cargo build --release --lib -p dpcoord && cargo build --release -p dpcoord-host-bench)
  mpicc -O2 "$here/mpi_allgather.c" -I"$root/include" -L"$BIN_DIR" -ldpcoord -Wl,-rpath,"$BIN_DIR" \
    -o "$BIN_DIR/mpi_allgather"
  # The library's SONAME (libdpcoord.so.0.x), as the loader looks for it.
  soname="$(readelf -d "$BIN_DIR/libdpcoord.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')"
  cp -f "$BIN_DIR/libdpcoord.so" "$BIN_DIR/$soname"
fi
export LD_LIBRARY_PATH="$BIN_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cores="$(nproc)"
echo "machine: $(uname -m), $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r)"
echo "open mpi: $(mpirun --version 2>/dev/null | head -1)"
for n in "${ranks[@]}"; do
  if (( n <= cores )); then
    pin=(--pin); bind=(--bind-to core)
  else
    pin=(); bind=(--oversubscribe --bind-to none)
  fi
  "$BIN_DIR/dpcoord-host-bench" --ranks "$n" --iters "$iters" --warmup "$warmup" "${pin[@]}"
  mpirun --allow-run-as-root -np "$n" "${bind[@]}" --mca pml ob1 --mca btl self,vader \
    "$BIN_DIR/mpi_allgather" "$iters" "$warmup"
done
