#!/usr/bin/env bash
# Builds bench/kernel_trace.c into OUT_DIR/libkernel_trace.so on a machine with CUDA's CUPTI (the
# GPU machine), naming the newest activity record structs its headers declare.
#   bash bench/kernel_trace.sh OUT_DIR
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
src=$(cd "$(dirname "$0")" && pwd)/kernel_trace.c
inc="" lib=""
for d in /usr/local/cuda/extras/CUPTI/include /usr/local/cuda/include; do [ -f "$d/cupti_activity.h" ] && inc=$d && break; done
for d in /usr/local/cuda/extras/CUPTI/lib64 /usr/local/cuda/lib64; do ls "$d"/libcupti.so* > /dev/null 2>&1 && lib=$d && break; done
[ -n "$inc" ] && [ -n "$lib" ] || { echo "kernel_trace.sh: no CUPTI headers or library under /usr/local/cuda" >&2; exit 2; }
headers=$(cat "$inc"/cupti_activity*.h)
newest() { echo "$headers" | grep -oE "$1[0-9]+\\b" | sort -V | tail -1; }
K=$(newest CUpti_ActivityKernel) M=$(newest CUpti_ActivityMemcpy) S=$(newest CUpti_ActivityMemset)
gcc -O2 -Wall -shared -fPIC -I"$inc" -I/usr/local/cuda/include -DKTYPE="$K" -DMTYPE="$M" -DSTYPE="$S" "$src" \
  -o "$out/libkernel_trace.so" -L"$lib" -lcupti -Wl,-rpath,"$lib"
echo "$out/libkernel_trace.so ($K, $M, $S)"
