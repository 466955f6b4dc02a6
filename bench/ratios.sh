#!/usr/bin/env bash
# Reads bench/gpu_all.sh's summary rows on stdin ("<label>  <benchmark line>") and prints ours over
# the peer for each pair the issue's targets name: tokens/s and peak memory, and both sides' MFU
# where ours printed one (the peer's from its tokens/s: the same model FLOPs per token).
#   printf '%s\n' "${rows[@]}" | bash bench/ratios.sh
set -euo pipefail
awk '
  function tps(line,   m) { return match(line, /[0-9.]+ tokens\/s/) ? substr(line, RSTART, RLENGTH - 9) + 0 : 0 }
  function peak(line)   { return match(line, /peak [0-9.]+ GiB/) ? substr(line, RSTART + 5, RLENGTH - 9) + 0 : 0 }
  function mfu(line)    { return match(line, /MFU [0-9.]+%/) ? substr(line, RSTART + 4, RLENGTH - 5) + 0 : 0 }
  { label = substr($0, 1, 28); sub(/ +$/, "", label); rate[label] = tps($0); mem[label] = peak($0); util[label] = mfu($0) }
  function pair(ours, peer, what) {
    if (!rate[ours] || !rate[peer]) { printf "%-44s missing\n", what; return }
    printf "%-44s %.2fx tokens/s", what, rate[ours] / rate[peer]
    if (mem[ours] && mem[peer]) printf ", %.2fx peak memory", mem[ours] / mem[peer]
    if (util[ours]) printf ", MFU %.1f%% vs %.1f%%", util[ours], util[ours] * rate[peer] / rate[ours]
    printf "\n"
  }
  END {
    pair("anneal lora q,v", "pytorch lora q,v compiled", "LoRA q,v vs compiled (target >=1.4x, <=0.8x)")
    pair("anneal lora q,v", "pytorch lora q,v", "LoRA q,v vs eager")
    pair("anneal lora all", "pytorch lora all", "LoRA all vs eager (target >=2.0x)")
    pair("anneal lora all +ckpt", "pytorch lora all +ckpt", "LoRA all +ckpt vs eager (target >=2.0x)")
    pair("anneal full", "pytorch full compiled", "full vs compiled (target >=1.3x, <=0.8x)")
    pair("anneal full", "pytorch full", "full vs eager")
    pair("anneal full update in bwd", "pytorch full compiled", "full, update in backward, vs compiled")
    pair("anneal generate b1", "pytorch generate b1", "generate batch 1 vs HF generate")
    pair("anneal generate b32", "pytorch generate b32", "generate batch 32 vs HF (target >=25x)")
  }'
