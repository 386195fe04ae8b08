#!/usr/bin/env bash
# The GPU benchmark in one command, on the GPU machine, from the repository root:
#
#     bash gpu-bench/run_gpu_bench.sh            # needs target/release/dpcoord-gpu-bench (carried)
#
# Runs dpcoord-gpu-bench and gpu-bench/torch_reference.py (NCCL and Gloo) at 1, 2, 4 ranks (and
# 8 when the machine has >= 8 GPUs), most important first, writes CSVs and logs to
# ${OUT:-bench-out}, and prints a compact table at the end. With fewer GPUs than ranks the
# ranks share a GPU over loopback sockets (~5 ms / ~17 ms per tiny collective at 2 / 4
# ranks), so those configurations run few iterations; the table prints the counts.
#
# Budget: every step has its own timeout, and the whole script stops starting steps when
# BUDGET_S (default 330 s) is nearly spent. Exit status: 0 all steps passed, 1 some step
# failed or was skipped (the table still prints), 2 set-up problem.
# Environment: OUT, BIN (default target/release/dpcoord-gpu-bench), BUDGET_S, PYTHON.

set -euo pipefail

OUT=${OUT:-bench-out}
BIN=${BIN:-target/release/dpcoord-gpu-bench}
BUDGET_S=${BUDGET_S:-330}
PYTHON=${PYTHON:-python3}
START=$(date +%s)

export NCCL_NVLS_ENABLE=0

die() { echo "run_gpu_bench.sh: $*" >&2; exit 2; }

[[ -f gpu-bench/src/main.rs && -f gpu-bench/torch_reference.py ]] || die "run me from the repository root"
[[ -x "$BIN" ]] || die "$BIN is missing or not executable: build it with 'cargo build --release --bin dpcoord-gpu-bench' on the development machine and carry it"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this the GPU machine?"

mkdir -p "$OUT"
RUST_CSV="$OUT/gpu_bench.csv"
TORCH_CSV="$OUT/torch_reference.csv"
rm -f "$RUST_CSV" "$TORCH_CSV"

GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  GPUS=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c '[^[:space:]]' || true)
fi
[[ "$GPUS" -ge 1 ]] || die "nvidia-smi lists no GPU"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "gpus: $GPUS"
  nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv || true
  echo "nccl (system): $(ls /usr/lib/x86_64-linux-gnu/libnccl.so.2* 2>/dev/null | tr '\n' ' ')"
  echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "nccl", ".".join(map(str, torch.cuda.nccl.version())))' 2>&1 | tail -1)"
  echo "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

FAILED=()

# run_step NAME TIMEOUT_S COMMAND...: runs one step with a timeout bounded by the budget,
# logging to $OUT/NAME.log; a failure is recorded, never fatal.
run_step() {
  local name=$1 limit=$2
  shift 2
  local now left
  now=$(date +%s)
  left=$(( BUDGET_S - (now - START) ))
  if (( left < 25 )); then
    echo "== $name: SKIPPED (budget of ${BUDGET_S} s spent)"
    FAILED+=("$name(skipped)")
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (timeout ${limit} s): $*"
  local rc
  set +e
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  if (( rc == 0 )); then
    echo "== $name: ok ($(( $(date +%s) - now )) s)"
  else
    case $rc in
      124|137) why="timed out" ;;
      3) why="no CUDA driver / GPU / NCCL (DP_ERR_LIBRARY_UNAVAILABLE)" ;;
      *) why="exit $rc" ;;
    esac
    echo "== $name: FAILED ($why); log: $OUT/$name.log"
    FAILED+=("$name")
  fi
}

# rust_step RANKS ITERS WARMUP TIMEOUT
rust_step() {
  local r=$1 it=$2 wu=$3 limit=$4
  run_step "gpu_bench_r$r" "$limit" \
    "$BIN" --ranks "$r" --iters "$it" --warmup "$wu" --csv "$RUST_CSV" --deadline-s $(( limit - 5 ))
}

# torch_step RANKS BACKEND ITERS WARMUP TIMEOUT
torch_step() {
  local r=$1 be=$2 it=$3 wu=$4 limit=$5
  run_step "torch_${be}_r$r" "$limit" \
    "$PYTHON" gpu-bench/torch_reference.py --ranks "$r" --backend "$be" --iters "$it" --warmup "$wu" \
    --csv "$TORCH_CSV" --deadline-s $(( limit - 5 ))
}

# Iterations: many where each rank has its own GPU, few where ranks share one (sockets).
for r in 1 2 4 8; do
  if (( r == 8 && GPUS < 8 )); then
    echo "== dp_size 8: skipped (needs 8 GPUs, this machine has $GPUS)"
    continue
  fi
  if (( r <= GPUS )); then
    rust_step "$r" 10000 1000 90
    torch_step "$r" nccl 2000 200 90
    torch_step "$r" gloo 2000 200 60
  elif (( r == 2 )); then
    rust_step 2 300 30 90
    torch_step 2 nccl 300 30 90
    torch_step 2 gloo 1000 100 60
  else
    rust_step "$r" 100 10 120
    torch_step "$r" nccl 100 10 100
    torch_step "$r" gloo 1000 100 60
  fi
done

echo
echo "================ summary (median/p99/min: host wall time per call, rank 0) ================"
CSVS=()
[[ -s "$RUST_CSV" ]] && CSVS+=("$RUST_CSV")
[[ -s "$TORCH_CSV" ]] && CSVS+=("$TORCH_CSV")
if (( ${#CSVS[@]} > 0 )); then
  "$PYTHON" gpu-bench/plot.py "${CSVS[@]}" --table --no-plot | tee "$OUT/summary.txt" || true
  "$PYTHON" gpu-bench/plot.py "${CSVS[@]}" --out "$OUT/latency_vs_dp.png" >/dev/null 2>&1 \
    && echo "plot: $OUT/latency_vs_dp.png" || echo "plot: not drawn here (matplotlib?); run gpu-bench/plot.py on the CSVs"
else
  echo "no CSV rows were written"
fi
echo "elapsed: $(( $(date +%s) - START )) s; CSVs and logs in $OUT/"
if (( ${#FAILED[@]} > 0 )); then
  echo "FAILED or skipped steps: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
