"""The update in backward's timeline from bench/kernel_trace.c's CSV: per step (cut at the
forward's first kernel, MARKER), when the main stream's last kernel and the side stream's last
AdamW block end, the kernel time of each, and the main stream's time in the kernels it names.

    python3 bench/trace_side.py TRACE.csv [--marker shift_ids] [--kernel wgmma_gemm::kernel ...]
"""
import argparse
import collections

from trace_summary import read_trace


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--marker", default="shift_ids")
    p.add_argument("--kernel", action="append", default=[])
    a = p.parse_args()
    rows = read_trace(a.trace)
    starts = [r[0] for r in rows if a.marker in r[4]]
    side_streams = {r[2] for r in rows if "adamw_side" in r[4]}
    if len(starts) < 2 or not side_streams:
        raise SystemExit(f"{a.trace}: fewer than two '{a.marker}' records or no adamw_side kernel")
    for i in range(1, len(starts) + 1):
        lo, hi = starts[i - 1], starts[i] if i < len(starts) else None
        step = [r for r in rows if r[0] >= lo and (hi is None or r[0] < hi)]
        main = [r for r in step if r[2] not in side_streams]
        side = [r for r in step if r[2] in side_streams]
        if not side:
            continue
        named = collections.Counter()
        for r in main:
            for k in a.kernel:
                if k in r[4]:
                    named[k] += r[1] - r[0]
        print(f"step {i}: main ends {(max(r[1] for r in main) - lo) / 1e6:.2f} ms "
              f"(kernels {sum(r[1] - r[0] for r in main) / 1e6:.2f}), side from {(side[0][0] - lo) / 1e6:.2f} "
              f"to {(max(r[1] for r in side) - lo) / 1e6:.2f} ms ({len(side)} launches)"
              + "".join(f", {k} {t / 1e6:.2f} ms" for k, t in named.items()))


if __name__ == "__main__":
    main()
