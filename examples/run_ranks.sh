#!/usr/bin/env bash
# Starts one process per rank of an example and judges the run (what ctest runs; by hand, start
# the ranks yourself):
#
#   run_ranks.sh <ranks> <program> [args...]
#
# In the arguments, {rank} becomes the rank and {group} a name unique to this run. Each rank
# also gets DPCOORD_RANK, DPCOORD_NRANKS and DPCOORD_RENDEZVOUS (a fresh directory where the
# GPU examples' rank 0 leaves the NCCL id), NCCL_NVLS_ENABLE=0 and, when there are fewer GPUs
# than ranks, NCCL_HOSTID=rank<R> and NCCL_SOCKET_IFNAME=lo (NCCL then accepts several ranks on
# one GPU, over loopback sockets: correct, but slow).
#
# Exit status: 0 when every rank exited 0; 77 (ctest: skipped) when every rank exited 0 saying
# "no CUDA GPU"; 1 otherwise. Each rank runs at most DPCOORD_RANK_TIMEOUT seconds (120).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: run_ranks.sh <ranks> <program> [args...]" >&2
  exit 2
fi
ranks="$1"
shift
dir="$(mktemp -d "${TMPDIR:-/tmp}/dpcoord-ranks.XXXXXX")"
trap 'rm -rf "$dir"' EXIT

gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
pids=()
for ((r = 0; r < ranks; ++r)); do
  args=()
  for a in "$@"; do
    a="${a//\{rank\}/$r}"
    args+=("${a//\{group\}/example-$$}")
  done
  (
    export DPCOORD_RANK="$r" DPCOORD_NRANKS="$ranks" DPCOORD_RENDEZVOUS="$dir" NCCL_NVLS_ENABLE=0
    if [[ "${gpus:-0}" -lt "$ranks" ]]; then
      export NCCL_HOSTID="rank$r" NCCL_SOCKET_IFNAME=lo
    fi
    exec timeout --kill-after=5 "${DPCOORD_RANK_TIMEOUT:-120}" "${args[@]}"
  ) >"$dir/rank$r.log" 2>&1 &
  pids+=($!)
done

failed=0
no_gpu=0
for ((r = 0; r < ranks; ++r)); do
  code=0
  wait "${pids[$r]}" || code=$?
  sed "s/^/[rank $r] /" "$dir/rank$r.log"
  if [[ $code -ne 0 ]]; then
    echo "[rank $r] exited with status $code"
    failed=1
  elif grep -q "no CUDA GPU" "$dir/rank$r.log"; then
    no_gpu=$((no_gpu + 1))
  fi
done
if [[ $failed -ne 0 ]]; then exit 1; fi
if [[ $no_gpu -eq $ranks ]]; then
  echo "no CUDA GPU: skipped"
  exit 77
fi
echo "every rank of $ranks exited 0"
