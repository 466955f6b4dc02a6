"""A step's GPU timeline from bench/kernel_trace.c's CSV.

    python3 bench/trace_summary.py TRACE.csv [--marker adamw_multi] [--top 40] [--layer KERNEL]

A step is the span between the ends of two consecutive marker kernels (the optimizer's update by
default); the summary takes the step with the most records among the last three, prints its
span, the sum of its kernel times and the idle time between them, the kernels by total time
(count and mean), the largest gaps, and with --layer the sequence of records from one occurrence
of KERNEL to the next (a layer's kernels in order, gap and duration in us).
"""
import argparse
import collections
import re


def short(name):
    name = name.split("(")[0]
    return re.sub(r"_ZN\d+_GLOBAL__N__\w+?_\d+_(\w+?)_cu_\w{8}", r"\1::", name)[:100]


def read_trace(path):
    """The trace's records (start_ns, end_ns, stream, kind, name), in start order."""
    rows = []
    with open(path) as f:
        for line in f:
            start, end, stream, kind, name = line.rstrip("\n").split(",", 4)
            rows.append((int(start), int(end), int(stream), kind, name))
    rows.sort()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--marker", default="adamw_multi")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--layer", default=None)
    a = p.parse_args()
    rows = read_trace(a.trace)
    ends = [r[1] for r in rows if a.marker in r[4]]
    if len(ends) < 2:
        raise SystemExit(f"{a.trace}: fewer than two '{a.marker}' records: no whole step")
    steps = [[r for r in rows if ends[i - 1] <= r[0] < ends[i]] for i in range(1, len(ends))]
    step = max(steps[-3:], key=len)
    span = step[-1][1] - step[0][0]
    busy = collections.defaultdict(lambda: [0, 0])
    for start, end, _, _, name in step:
        t = busy[short(name)]
        t[0] += end - start
        t[1] += 1
    total = sum(v[0] for v in busy.values())
    gaps, last_end = [], None
    for r in step:
        if last_end is not None and r[0] > last_end[0]:
            gaps.append((r[0] - last_end[0], last_end[1], short(r[4])))
        if last_end is None or r[1] > last_end[0]:
            last_end = (r[1], short(r[4]))
    print(f"step: span {span / 1e6:.3f} ms, kernels {total / 1e6:.3f} ms, {len(step)} records, "
          f"gaps {sum(g[0] for g in gaps) / 1e6:.3f} ms in {len(gaps)}")
    print("    ms  count   mean us  kernel")
    for name, (t, c) in sorted(busy.items(), key=lambda x: -x[1][0])[:a.top]:
        print(f"{t / 1e6:7.3f} {c:6d} {t / c / 1e3:9.1f}  {name}")
    print("largest gaps (us, after, before):")
    for g in sorted(gaps, reverse=True)[:8]:
        print(f"  {g[0] / 1e3:8.1f}  {g[1][:50]}  {g[2][:50]}")
    if a.layer:
        idx = [i for i, r in enumerate(step) if a.layer in r[4]]
        if len(idx) >= 2:
            first, last = idx[len(idx) // 2 - 1], idx[len(idx) // 2]
            prev = step[first][0]
            print(f"one layer, from one '{a.layer}' to the next (gap us, duration us, kernel):")
            for r in step[first:last]:
                print(f"  {(r[0] - prev) / 1e3:6.1f} {(r[1] - r[0]) / 1e3:8.1f}  {short(r[4])}")
                prev = r[1]


if __name__ == "__main__":
    main()
