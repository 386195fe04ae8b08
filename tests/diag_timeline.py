#!/usr/bin/env python3
"""Usage: diag_timeline.py report.sqlite (from `nsys export --type sqlite`).

Prints what an nsys report shows of dpcoord: NVTX domains, ranges per
name, and one step of one rank as a text timeline with the CUDA kernels beside it."""
import re, sqlite3, statistics, sys

db = sqlite3.connect(sys.argv[1])
tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
print("tables:", ", ".join(sorted(t for t in tables if "NVTX" in t or "KERNEL" in t or t == "StringIds")))
cols = [r[1] for r in db.execute("pragma table_info(NVTX_EVENTS)")]
print("NVTX_EVENTS columns:", cols)
strings = dict(db.execute("select id, value from StringIds"))
rows = db.execute("select start, end, eventType, text, textId, domainId, globalTid from NVTX_EVENTS").fetchall()
def text(r):
    return r[3] if r[3] is not None else strings.get(r[4], "?")
domains = {r[5]: text(r) for r in rows if r[2] == 75}
print("domains:", domains)
ranges = [r for r in rows if r[1] is not None and r[2] != 75]
by_name = {}
for r in ranges:
    key = (domains.get(r[5], "default"), re.sub(r"\d+", "N", text(r)))
    by_name.setdefault(key, []).append((r[1] - r[0]) / 1000)
print("\nranges per name (domain, name, count, median us, max us):")
for (dom, name), d in sorted(by_name.items()):
    print(f"  {dom:10} {name:55} {len(d):6} {statistics.median(d):10.2f} {max(d):10.2f}")
kern = []
if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
    kern = db.execute("select start, end, shortName, globalPid from CUPTI_ACTIVITY_KIND_KERNEL").fetchall()
    names = {}
    for k in kern:
        names.setdefault(strings.get(k[2], "?"), []).append((k[1] - k[0]) / 1000)
    print("\nkernels (name, count, median us):")
    for n, d in sorted(names.items()):
        print(f"  {n:60} {len(d):6} {statistics.median(d):10.2f}")
pid = lambda gtid: (gtid >> 24) & 0xFFFFFF
marks = sorted(r for r in ranges if text(r).startswith("dp_decide_batch rank 0"))
if len(marks) > 12:
    t0, t1, proc = marks[10][0], marks[11][0], pid(marks[10][6])
    print(f"\none step of rank 0 (pid {proc}), times in us from its dp_decide_batch:")
    ev = [(r[0], r[1], f"NVTX {domains.get(r[5], 'default')}: {text(r)}", r[6] & 0xFFFFFF)
          for r in ranges if pid(r[6]) == proc and t0 <= r[0] < t1]
    ev += [(k[0], k[1], f"kernel {strings.get(k[2], '?')[:60]}", "gpu") for k in kern
           if pid(k[3]) == proc and t0 <= k[0] < t1]
    for s, e, what, tid in sorted(ev):
        print(f"  {(s - t0) / 1000:10.1f} +{(e - s) / 1000:9.1f}  [{tid}] {what}")
