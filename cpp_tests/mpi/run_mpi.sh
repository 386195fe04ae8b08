#!/usr/bin/env bash
# Starts an MPI program on this host under Open MPI's mpirun, with the flags a container or a
# CI machine needs (what ctest's mpi_ranks_N run):
#
#   run_mpi.sh <mpirun> <processes> <deadline seconds> <program> [args...]
#
#   --oversubscribe        more processes than cores (CI has 2)
#   --bind-to none         no core binding (cores are shared, and a container may hide them)
#   --mca pml ob1 --mca btl self,vader (self,sm from Open MPI 5)
#                          shared memory only: no network, no UCX or InfiniBand probing
#   --allow-run-as-root    only when run as root (CI, containers)
#   OMPI_MCA_btl_vader_single_copy_mechanism=none
#                          no cross-memory attach (needs ptrace rights containers often lack)
# The whole run is killed after the deadline (timeout), so a hung rank fails the test.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: run_mpi.sh <mpirun> <processes> <deadline seconds> <program> [args...]" >&2
  exit 2
fi
mpirun="$1" np="$2" deadline="$3"
shift 3

version="$("$mpirun" --version 2>&1 | head -n 1)"
if [[ "$version" != *"Open MPI"* && "$version" != *"OpenRTE"* ]]; then
  echo "run_mpi.sh: $mpirun is not Open MPI ($version): the flags below are Open MPI's" >&2
  exit 1
fi
major="$(sed -n 's/.*[^0-9]\([0-9][0-9]*\)\.[0-9][0-9]*\.[0-9][0-9]*.*/\1/p' <<<"$version")"
shm=vader
if [[ -n "$major" && "$major" -ge 5 ]]; then shm=sm; fi

flags=(-n "$np" --oversubscribe --bind-to none --mca pml ob1 --mca btl "self,$shm")
if [[ "$(id -u)" -eq 0 ]]; then flags+=(--allow-run-as-root); fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl_sm_single_copy_mechanism=none

echo "run_mpi.sh: $version: $mpirun ${flags[*]} $*"
exec timeout --kill-after=10 "$deadline" "$mpirun" "${flags[@]}" "$@"
