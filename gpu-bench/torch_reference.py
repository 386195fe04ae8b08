#!/usr/bin/env python3
"""The PyTorch reference of docs/ARCHITECTURE.md ("Figures"): dpcoord's decision written the way vLLM
writes it, timed the same way as dpcoord-gpu-bench.

The decision (docs/ARCHITECTURE.md ("Semantics")) on torch.distributed: every rank fills its column of a
zero [5, dp_size] int32 tensor (on the GPU for NCCL, on the CPU for Gloo), all-reduces it
(sum), then post-processes with host reads: should_ubatch from all()/max()/min() .item(),
the pad flags from all()/any() .item(), the CUDA-graph mode as a min() .item(), and the
tokens-after-padding row as a tensor op followed by .cpu(). At one rank the exchange and
post-processing run anyway (no early exit), as the dpcoord side's forced exchange does, so
the result is checked against the multi-rank rules.

Usage:
    python3 gpu-bench/torch_reference.py --ranks N --backend nccl|gloo [--iters 1000]
                                     [--warmup 100] [--csv FILE] [--deadline-s 240]

The launcher spawns N rank processes of this script (file:// rendezvous in a temporary
directory), each rank on GPU rank % gpu_count; when ranks share a GPU each gets
NCCL_HOSTID=rank<R> and NCCL_SOCKET_IFNAME=lo (loopback sockets); NCCL_NVLS_ENABLE=0
always. Each call is timed with time.perf_counter_ns (host wall time); every result is
checked against a pure-Python oracle of docs/ARCHITECTURE.md ("Semantics") (a mismatch fails the run).
Variants (CSV `variant` column):
    torch_<backend>                  the whole decision (zeros, column writes, all_reduce,
                                     post-processing host reads)
    torch_<backend>_bare_allreduce   all_reduce of the preallocated [5, dp] tensor
                                     (+ torch.cuda.synchronize() for NCCL): the exchange alone
CSV rows (rank 0's samples; appended, header written when the file is new):
    ranks,variant,iters,median_us,p99_us,min_us,gpus,ranks_share_gpu
"""

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

CSV_HEADER = "ranks,variant,iters,median_us,p99_us,min_us,gpus,ranks_share_gpu"

PAD_POLICY_EXPLICIT = 0
PAD_POLICY_WHEN_CUDAGRAPH = 1
DECODE_TOKEN_THRESHOLD = 32
PREFILL_TOKEN_THRESHOLD = 512

M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------
# Requests: the same generator as gpu-bench/src/main.rs (splitmix64 over (step, rank))


def mix(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def step_plan(step, n):
    """Every rank's record for `step`, plus the shared pad policy and num_ubatches."""
    h = mix((step ^ 0xD9C00D0000000000) & M64)
    ubatch_enabled = h % 4 != 0
    num_ubatches = 3 if (h >> 8) % 8 == 0 else 2
    allow_dp_padding = (h >> 16) % 3 != 0
    records = []
    for rank in range(n):
        g = mix(h ^ (((rank + 1) * 0xA24BAED4963EE407) & M64))
        kind = g % 16
        r = (g >> 8) & 0x7FFFFFFF
        if kind == 0:
            tokens, uniform_decode = 0, 1
        elif kind in (1, 2):
            tokens, uniform_decode = 64 + r % 4096, 0
        else:
            tokens, uniform_decode = 1 + r % 256, 1
        if uniform_decode == 1 and tokens > 0:
            padded = (tokens + 7) // 8 * 8
            mode = 1 if (g >> 40) % 10 == 0 else 2
        elif tokens == 0:
            padded, mode = tokens, 2
        else:
            padded, mode = tokens, (0 if tokens > 2048 else 1)
        allow_microbatching = (g >> 48) % 8 != 0
        threshold = DECODE_TOKEN_THRESHOLD if uniform_decode == 1 else PREFILL_TOKEN_THRESHOLD
        attempt_ubatch = int(allow_microbatching and ubatch_enabled and tokens >= threshold)
        records.append((tokens, padded, attempt_ubatch, int(allow_dp_padding), mode))
    return records, PAD_POLICY_EXPLICIT, (num_ubatches if ubatch_enabled else 2)


class Inconsistent(Exception):
    pass


def oracle(records, pad_policy, num_ubatches):
    """docs/ARCHITECTURE.md ("Semantics"), multi-rank rules, in plain Python."""
    unpadded = [r[0] for r in records]
    padded = [r[1] for r in records]
    synced_mode = min(r[4] for r in records)
    last_empty = (max(padded) // num_ubatches) * (num_ubatches - 1) >= min(unpadded)
    should_ubatch = all(r[2] == 1 for r in records) and not last_empty
    if pad_policy == PAD_POLICY_EXPLICIT:
        flags = {r[3] for r in records}
        if len(flags) > 1:
            raise Inconsistent("should_attempt_dp_pad differs across ranks")
        should_dp_pad = flags == {1}
    else:
        should_dp_pad = synced_mode != 0
    should_dp_pad = should_dp_pad or should_ubatch
    after = [max(padded)] * len(records) if should_dp_pad else list(padded)
    return should_ubatch, should_dp_pad, synced_mode, after


# ---------------------------------------------------------------------------------------
# The decision, vLLM style


def torch_coordinate(torch, dist, record, dp_size, dp_rank, device, pad_policy, num_ubatches):
    """One step: the exchange on a zero [5, dp_size] tensor, then host-side post-processing."""
    t = torch.zeros(5, dp_size, device=device, dtype=torch.int32)
    t[0][dp_rank] = record[0]  # num_tokens_unpadded
    t[1][dp_rank] = record[1]  # num_tokens_padded
    t[2][dp_rank] = record[2]  # should_attempt_ubatch
    t[3][dp_rank] = record[3]  # should_attempt_dp_pad
    t[4][dp_rank] = record[4]  # cudagraph_mode
    dist.all_reduce(t)

    num_tokens_unpadded = t[0]
    num_tokens_padded = t[1]
    # microbatching: every rank attempts it, and the last microbatch is not empty
    should_ubatch = bool(torch.all(t[2] == 1).item())
    if should_ubatch:
        max_padded = int(num_tokens_padded.max().item())
        min_unpadded = int(num_tokens_unpadded.min().item())
        if (max_padded // num_ubatches) * (num_ubatches - 1) >= min_unpadded:
            should_ubatch = False
    # CUDA-graph mode: the minimum across ranks
    synced_mode = int(t[4].min().item())
    # DP padding
    if pad_policy == PAD_POLICY_EXPLICIT:
        all_pad = bool(torch.all(t[3] == 1).item())
        any_pad = bool(torch.any(t[3] == 1).item())
        if all_pad != any_pad:
            raise Inconsistent("should_attempt_dp_pad differs across ranks")
        should_dp_pad = all_pad
    else:
        should_dp_pad = synced_mode != 0
    should_dp_pad = should_dp_pad or should_ubatch
    if should_dp_pad:
        after = num_tokens_padded.max().expand(dp_size)
    else:
        after = num_tokens_padded
    num_tokens_after_padding = after.cpu()
    return should_ubatch, should_dp_pad, synced_mode, num_tokens_after_padding


# ---------------------------------------------------------------------------------------
# One rank


def stats(samples):
    s = sorted(samples)
    n = len(s)
    p99 = min(max(int(math.ceil(0.99 * n)), 1), n) - 1
    return {"median": s[n // 2], "p99": s[p99], "min": s[0]}


def rank_main(args):
    rank, n = args.child_rank, args.ranks
    parent = os.getppid()

    def watchdog():
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                sys.stderr.write(f"torch_reference rank {rank}: launcher gone; exiting\n")
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    import torch
    import torch.distributed as dist

    if args.backend == "nccl":
        if not torch.cuda.is_available():
            raise SystemExit(f"rank {rank}: torch sees no CUDA device")
        gpu = rank % torch.cuda.device_count()
        torch.cuda.set_device(gpu)
        device = torch.device("cuda", gpu)
        sync = torch.cuda.synchronize
    else:
        gpu = None
        device = torch.device("cpu")

        def sync():
            pass

    dist.init_process_group(
        backend=args.backend,
        init_method=f"file://{args.init_file}",
        rank=rank,
        world_size=n,
        timeout=datetime.timedelta(seconds=max(30, args.deadline_s)),
    )
    results = {}
    try:
        # 1. The whole decision, vLLM style.
        name = f"torch_{args.backend}"
        samples = []
        base = (1 << 40) ^ (n << 56)
        for i in range(args.warmup + args.iters):
            step = base + i
            records, policy, nub = step_plan(step, n)
            t0 = time.perf_counter_ns()
            got = torch_coordinate(torch, dist, records[rank], n, rank, device, policy, nub)
            ns = time.perf_counter_ns() - t0
            want = oracle(records, policy, nub)
            got = (got[0], got[1], got[2], [int(x) for x in got[3].tolist()])
            if got != want:
                raise SystemExit(
                    f"WRONG RESULT: {name}, rank {rank}, step {step:#x}: got {got}, oracle {want}"
                )
            if i >= args.warmup:
                samples.append(ns)
        results[name] = stats(samples)

        # 2. The exchange alone: all_reduce of a preallocated [5, dp] tensor (+ sync).
        name = f"torch_{args.backend}_bare_allreduce"
        samples = []
        t = torch.zeros(5, n, device=device, dtype=torch.int32)
        base = (2 << 40) ^ (n << 56)
        for i in range(args.warmup + args.iters):
            step = base + i
            records, _, _ = step_plan(step, n)
            t.zero_()
            t[:, rank] = torch.tensor(records[rank], dtype=torch.int32, device=device)
            sync()
            t0 = time.perf_counter_ns()
            dist.all_reduce(t)
            sync()
            ns = time.perf_counter_ns() - t0
            got = t.cpu().tolist()
            want = [[records[r][k] for r in range(n)] for k in range(5)]
            if got != want:
                raise SystemExit(
                    f"WRONG RESULT: {name}, rank {rank}, step {step:#x}: got {got}, want {want}"
                )
            if i >= args.warmup:
                samples.append(ns)
        results[name] = stats(samples)
        if args.backend == "nccl":
            dist.barrier(device_ids=[gpu])
        else:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    tmp = os.path.join(args.result_dir, f"rank{rank}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f)
    os.replace(tmp, os.path.join(args.result_dir, f"rank{rank}.json"))


# ---------------------------------------------------------------------------------------
# Launcher


def gpu_count():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() not in ("", "-1")])
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        import torch

        return torch.cuda.device_count()


def launch(args):
    if args.backend == "nccl":
        gpus = gpu_count()
        if gpus < 1:
            sys.exit("torch_reference: no GPU found for the NCCL backend")
        share = args.ranks > gpus
        used = min(gpus, args.ranks)
    else:
        gpus, share, used = 0, False, 0
    work = tempfile.mkdtemp(prefix="dpcoord-torch-ref-")
    procs = []

    def kill_all():
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def on_signal(signum, _frame):
        kill_all()
        shutil.rmtree(work, ignore_errors=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"torch_reference: {args.ranks} rank(s), backend {args.backend}, "
        + (
            f"{used} GPU(s), "
            + ("ranks SHARE GPUs (NCCL_HOSTID per rank, loopback sockets)" if share else "one GPU per rank")
            if args.backend == "nccl"
            else "CPU tensors"
        )
        + f"; iters {args.iters}, warmup {args.warmup}",
        flush=True,
    )
    deadline = time.monotonic() + args.deadline_s
    ok = False
    try:
        for r in range(args.ranks):
            env = dict(os.environ)
            env.setdefault("NCCL_NVLS_ENABLE", "0")
            if share:
                env["NCCL_HOSTID"] = f"rank{r}"
                env.setdefault("NCCL_SOCKET_IFNAME", "lo")
            if args.backend == "gloo":
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--ranks", str(args.ranks),
                "--backend", args.backend,
                "--iters", str(args.iters),
                "--warmup", str(args.warmup),
                "--deadline-s", str(args.deadline_s),
                "--child-rank", str(r),
                "--init-file", os.path.join(work, "rendezvous"),
                "--result-dir", work,
            ]
            procs.append(subprocess.Popen(cmd, env=env))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                kill_all()
                sys.exit(f"torch_reference: rank {failed[0][0]} failed (exit {failed[0][1]}); killed every rank")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                kill_all()
                sys.exit(f"torch_reference: deadline ({args.deadline_s} s) passed; killed every rank")
            time.sleep(0.05)
        per_rank = []
        for r in range(args.ranks):
            with open(os.path.join(work, f"rank{r}.json")) as f:
                per_rank.append(json.load(f))
        ok = True
    finally:
        if not ok:
            kill_all()
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for variant, s in per_rank[0].items():
        medians = " ".join(f"{pr[variant]['median'] / 1e3:.2f}" for pr in per_rank)
        print(
            f"  {variant:<34} median {s['median'] / 1e3:>10.2f} us  p99 {s['p99'] / 1e3:>10.2f} us"
            f"  min {s['min'] / 1e3:>10.2f} us  per-rank medians {medians}"
        )
        rows.append(
            f"{args.ranks},{variant},{args.iters},{s['median'] / 1e3:.3f},{s['p99'] / 1e3:.3f},"
            f"{s['min'] / 1e3:.3f},{used},{int(share)}"
        )
    if args.csv:
        fresh = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
        with open(args.csv, "a") as f:
            if fresh:
                f.write(CSV_HEADER + "\n")
            for row in rows:
                f.write(row + "\n")
        print(f"appended {len(rows)} rows to {args.csv}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--backend", choices=["nccl", "gloo"], required=True)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--csv")
    ap.add_argument("--deadline-s", type=int, default=240)
    # internal: set by the launcher for the rank processes
    ap.add_argument("--child-rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--init-file", help=argparse.SUPPRESS)
    ap.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ranks < 1 or args.iters < 1 or args.warmup < 0:
        ap.error("--ranks and --iters must be >= 1, --warmup >= 0")
    if args.child_rank is None:
        launch(args)
    else:
        rank_main(args)


if __name__ == "__main__":
    main()
