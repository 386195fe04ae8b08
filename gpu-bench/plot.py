#!/usr/bin/env python3
"""Table and plot of the GPU benchmark CSVs (dpcoord-gpu-bench and torch_reference.py).

Usage:
    python3 gpu-bench/plot.py bench-out/gpu_bench.csv bench-out/torch_reference.csv
            [--out gpu-bench/latency_vs_dp.png] [--table] [--no-plot]

Reads rows `ranks,variant,iters,median_us,p99_us,min_us,gpus,ranks_share_gpu` (rows with
empty figures are variants the device refused). `--table` prints, per rank count, every
variant and the ratios docs/ARCHITECTURE.md ("Figures") asks for: dpcoord - bare_allgather_sync
(us), dpcoord / bare_allgather_sync, torch / dpcoord. "dpcoord" is `dpcoord_forced_host_send`
at one rank (where `dp_coordinate_batch` takes the no-exchange early exit, so the exchange is
forced through the `testing` module) and `dp_coordinate_batch` above. The plot (median latency vs dp_size, log y, one line per
variant) needs matplotlib; the table does not.
"""

import argparse
import csv
import os
import sys
from collections import defaultdict


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("ranks") in (None, "", "ranks"):
                    continue
                fig = {}
                for key in ("median_us", "p99_us", "min_us"):
                    value = (row.get(key) or "").strip()
                    fig[key] = float(value) if value else None
                rows.append(
                    {
                        "ranks": int(row["ranks"]),
                        "variant": row["variant"],
                        "iters": int(row["iters"] or 0),
                        "gpus": int(row["gpus"] or 0),
                        "share": (row.get("ranks_share_gpu") or "0").strip() in ("1", "true", "yes"),
                        **fig,
                    }
                )
    return rows


def dpcoord_name(ranks):
    return "dpcoord_forced_host_send" if ranks == 1 else "dp_coordinate_batch"


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def print_table(rows):
    by_ranks = defaultdict(dict)
    share = {}
    for r in rows:
        by_ranks[r["ranks"]][r["variant"]] = r  # a later row of the same config wins
        if not r["variant"].startswith("torch_gloo"):
            share[r["ranks"]] = share.get(r["ranks"], False) or r["share"]
    for ranks in sorted(by_ranks):
        variants = by_ranks[ranks]
        gpus = max((v["gpus"] for v in variants.values()), default=0)
        print()
        print(
            f"== dp_size {ranks}: {gpus} GPU(s), "
            + ("ranks SHARE a GPU (NCCL over loopback sockets: correctness, not speed)" if share.get(ranks) else "one GPU per rank")
        )
        print(f"{'variant':<38} {'iters':>6} {'median_us':>11} {'p99_us':>11} {'min_us':>11}")
        for name, v in variants.items():
            if v["median_us"] is None:
                print(f"{name:<38} {v['iters']:>6} {'refused by the device':>35}")
            else:
                print(
                    f"{name:<38} {v['iters']:>6} {fmt(v['median_us']):>11} {fmt(v['p99_us']):>11} {fmt(v['min_us']):>11}"
                )
        med = lambda n: (variants.get(n) or {}).get("median_us")  # noqa: E731
        d_name = dpcoord_name(ranks)
        d, bare = med(d_name), med("bare_allgather_sync")
        if d is not None and bare is not None:
            target = (
                "ranks share a GPU: sockets dominate, the targets do not apply"
                if share.get(ranks)
                else ("target <= 8 us above" if ranks == 1 else "target ratio <= 1.25")
            )
            print(
                f"  {d_name} - bare_allgather_sync = {d - bare:+.2f} us; ratio {d / bare:.3f} ({target})"
            )
        for torch_name in ("torch_nccl", "torch_gloo"):
            t = med(torch_name)
            if d is not None and t is not None:
                print(f"  {torch_name} / {d_name} = {t / d:.1f}x (target >= 10x)")
        post_spin, post_sync, post_ev = (
            med("stage_post_kernel_spin"),
            med("stage_post_kernel_sync"),
            med("stage_post_kernel_event_sync"),
        )
        if None not in (post_spin, post_sync, post_ev):
            print(
                f"  wait: spin {post_spin:.2f} / stream sync {post_sync:.2f} / event sync {post_ev:.2f} us"
                " (post kernel alone)"
            )
        pk, pm, pb = med("stage_pack_kernel_sync"), med("stage_pack_memops_sync"), med("stage_pack_batch_memop_sync")
        if pk is not None:
            print(
                f"  pack: kernel {fmt(pk)} / 5 x writeValue32 {fmt(pm)} / batchMemOp {fmt(pb)} us (+ stream sync)"
            )


def plot(rows, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py: matplotlib is missing (python3 -m pip install matplotlib), or use --no-plot")
    series = defaultdict(dict)
    shared_ranks = set()
    for r in rows:
        if r["median_us"] is None:
            continue
        series[r["variant"]][r["ranks"]] = r["median_us"]
        if r["share"] and not r["variant"].startswith("torch_gloo"):
            shared_ranks.add(r["ranks"])
    if not series:
        sys.exit("plot.py: no rows with figures")
    fig, ax = plt.subplots(figsize=(12, 7))
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "v", "D", "x", "+", "*", "P", "h"]
    colors = plt.get_cmap("tab20").colors
    for i, name in enumerate(sorted(series)):
        pts = sorted(series[name].items())
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        width = 2.5 if name.startswith("dpcoord_") or name == "bare_allgather_sync" else 1.2
        ax.plot(
            xs,
            ys,
            linestyle=styles[i % len(styles)],
            marker=markers[i % len(markers)],
            linewidth=width,
            color=colors[i % len(colors)],
            label=name,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    all_ranks = sorted({r["ranks"] for r in rows})
    ax.set_xticks(all_ranks)
    ax.set_xticklabels(
        [f"{n}\n(shared GPU)" if n in shared_ranks else str(n) for n in all_ranks]
    )
    ax.set_xlabel("dp_size (ranks)")
    ax.set_ylabel("median host wall time per call (us, log)")
    ax.set_title("dpcoord GPU path vs bare collectives and the PyTorch (vLLM-style) reference")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", help="CSV files from the two benchmarks")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "latency_vs_dp.png"))
    ap.add_argument("--table", action="store_true", help="print the compact table")
    ap.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    args = ap.parse_args()
    paths = [p for p in args.csv if os.path.exists(p)]
    missing = [p for p in args.csv if not os.path.exists(p)]
    for p in missing:
        print(f"plot.py: {p} does not exist; skipped", file=sys.stderr)
    if not paths:
        sys.exit("plot.py: no CSV to read")
    rows = read_rows(paths)
    if args.table:
        print_table(rows)
    if not args.no_plot:
        plot(rows, args.out)


if __name__ == "__main__":
    main()
