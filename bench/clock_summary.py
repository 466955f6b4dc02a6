#!/usr/bin/env python3
"""clock_summary.py: one line on the SM clock and power-cap state during a run.

Reads the samples that bench/gpu_all.sh's `measure` takes every 200 ms while a run goes:
nvidia-smi --query-gpu=utilization.gpu,clocks.sm,power.draw,clocks_event_reasons.active
--format=csv,noheader,nounits, one line a sample. Samples with utilization of at least 50% count as
busy. A step of the 1.5B model runs at the H100's 700 W cap (docs/performance.md,
twenty-third session), so its clocks are part of what a tokens/s figure means.

    python3 bench/clock_summary.py SAMPLES.csv
"""
import sys

SW_POWER_CAP = 0x4  # clocks_event_reasons bits (nvidia-smi): software power cap
HW_SLOWDOWN = 0x8 | 0x40 | 0x80  # hardware slowdown, thermal slowdown, power brake
SW_THERMAL = 0x20


def summary(lines):
    busy = []
    for line in lines:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            continue
        try:
            util, clock, power = float(fields[0]), float(fields[1]), float(fields[2])
            reasons = int(fields[3], 16)
        except ValueError:
            continue
        if util >= 50:
            busy.append((clock, power, reasons))
    if not busy:
        return "clocks: no busy samples"
    clocks = sorted(b[0] for b in busy)
    capped = sum(1 for b in busy if b[2] & SW_POWER_CAP)
    hw = sum(1 for b in busy if b[2] & (HW_SLOWDOWN | SW_THERMAL))
    line = "SM clock median %d MHz (%d-%d) over %d busy samples, power cap in %d%%, max %.0f W" % (
        clocks[len(clocks) // 2], clocks[0], clocks[-1], len(busy), round(100 * capped / len(busy)),
        max(b[1] for b in busy))
    if hw:
        line += ", thermal or hardware slowdown in %d%%" % round(100 * hw / len(busy))
    return line


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: clock_summary.py SAMPLES.csv")
    try:
        with open(sys.argv[1]) as f:
            print(summary(f.readlines()))
    except OSError as e:
        print("clocks: not sampled (%s)" % e.strerror)
