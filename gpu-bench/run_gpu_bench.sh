#!/usr/bin/env bash
# The GPU benchmark in one command, on the GPU machine, from the repository root:
#
#     bash gpu-bench/run_gpu_bench.sh     # needs target/release/dpcoord-gpu-bench (carried)
#
# 1. machine facts (GPU, driver, clocks, NCCL, torch) into $OUT/machine.txt;
# 2. dpcoord-gpu-bench on one rank (the one-H200 table: bare allgather + sync, the forced
#    one-rank exchange on both send paths, begin/end, the stage variants), CSV in
#    $OUT/gpu_bench.csv;
# 3. the PyTorch reference (torch_reference.py, NCCL, one rank) in the same run, CSV in
#    $OUT/torch_reference.csv;
# 4. with LAUNCHER=<path to dpcoord_gpu_launcher> and RANKS="2 4 ..." also several ranks,
#    under the GoogleTest suite's launcher (one process per rank; ranks sharing a GPU talk over
#    loopback sockets, so those figures are for correctness, not speed).
# Environment: OUT (default bench-out), BIN, ITERS (10000), WARMUP (1000), PYTHON, LAUNCHER,
# RANKS. Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

OUT=${OUT:-bench-out}
BIN=${BIN:-target/release/dpcoord-gpu-bench}
ITERS=${ITERS:-10000}
WARMUP=${WARMUP:-1000}
PYTHON=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
FAILED=0

[[ -x "$BIN" ]] || { echo "run_gpu_bench.sh: $BIN missing: cargo build --release --workspace, then carry it" >&2; exit 1; }
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv 2>&1
  echo "nccl (system): $(ls /usr/lib/x86_64-linux-gnu/libnccl.so.2* 2>/dev/null | tr '\n' ' ')"
  echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "nccl", ".".join(map(str, torch.cuda.nccl.version())))' 2>&1 | tail -1)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

timeout 120 "$BIN" --iters "$ITERS" --warmup "$WARMUP" --csv "$OUT/gpu_bench.csv" 2>&1 | tee "$OUT/gpu_bench.log" || FAILED=1
timeout 120 "$PYTHON" gpu-bench/torch_reference.py --ranks 1 --backend nccl --iters 1000 \
  --warmup 100 --csv "$OUT/torch_reference.csv" 2>&1 | tail -4 | tee "$OUT/torch_reference.log" || FAILED=1
if [[ -n "${LAUNCHER:-}" ]]; then
  for r in ${RANKS:-}; do
    timeout 300 "$LAUNCHER" --ranks "$r" --name "gpu_bench_$r" --timeout 280 -- \
      "$(realpath "$BIN")" --iters 2000 --warmup 200 --csv "$OUT/gpu_bench_$r.csv" 2>&1 |
      tee "$OUT/gpu_bench_$r.log" || FAILED=1
  done
fi
exit $FAILED
