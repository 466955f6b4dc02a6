#!/usr/bin/env bash
# Every GPU test and benchmark in one invocation on a CUDA machine, with a short table last.
#   bash bench/gpu_all.sh BIN_DIR [PARTS]
# PARTS: a comma list of tests, kernels, train, generate, curves (default: all of them, about
# 600 s on an H100 before the generation rows became medians of three runs, which add about 80 s);
# a subset runs only those sections, e.g. to stay within a per-call time limit
# (the summary and the ratios then cover what ran; pairs not run print "missing").
# BIN_DIR holds the CUDA build's test_cuda* binaries, bench/train_step and bench/generate (as
# train_step and generate) and a lib/ with the shared libraries the machine lacks (see
# bench/pack_gpu.sh). Run from the repository root (the tests read tests/fixtures). Writes its log
# to ${OUT:-/tmp}/gpu_all.log. Each training run's row (measure's; not the generation medians')
# ends with its SM clock and power-cap share (nvidia-smi sampled while it ran,
# bench/clock_summary.py; the last run's samples stay in ${OUT:-/tmp}/gpu_all_clocks.csv).
set -uo pipefail
bin=$(cd "$1" && pwd)
parts=",${2:-tests,kernels,train,generate,curves},"
want() { [[ $parts == *",$1,"* ]]; }
# cuDNN (linked by every CUDA binary): the GPU machine has it only inside torch's environment
cudnn_lib=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null)
export LD_LIBRARY_PATH="$bin/lib:${cudnn_lib:+$cudnn_lib:}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu_all.log
: > "$log"
rows=()
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"

if want tests; then
  for t in "$bin"/test_cuda*; do
    name=$(basename "$t")
    out=$("$t" 2>&1); rc=$?
    echo "$out" >> "$log"
    rows+=("$(printf '%-28s %s' "$name" "$(echo "$out" | grep -E '^[0-9]+%: Checks' | tail -1) (rc $rc)")")
  done
fi

if want kernels; then
  echo "== memory-bound kernels (bench/kernels.c)" | tee -a "$log"
  "$bin/kernels" 2>&1 | tee -a "$log"
  echo "== optimizer step, 1.5B full fine-tune shape (bench/optim.c)" | tee -a "$log"
  "$bin/optim" 2>&1 | tee -a "$log"
  echo "== training attention on each path (bench/attention.c)" | tee -a "$log"
  "$bin/attention" 2>&1 | tee -a "$log"
fi

model=/tmp/anneal-bench-1.5b
if { want train || want generate || want curves; } && [ ! -d "$model" ]; then python3 bench/peer_train_step.py --save "$model" --steps 0 >> "$log" 2>&1; fi
# The clocks while a run goes: nvidia-smi samples every 200 ms (bench/clock_summary.py reads them).
# A training step runs at the card's power cap, so each training row carries its clock summary.
clock_reason=clocks_event_reasons.active
nvidia-smi --query-gpu=$clock_reason --format=csv > /dev/null 2>&1 || clock_reason=clocks_throttle_reasons.active
clock_log=${OUT:-/tmp}/gpu_all_clocks.csv
measure() { # label, command...
  local label=$1; shift
  : > "$clock_log"
  nvidia-smi --query-gpu=utilization.gpu,clocks.sm,power.draw,$clock_reason --format=csv,noheader,nounits \
    -lms 200 >> "$clock_log" 2>/dev/null &
  local sampler=$!
  local line; line=$("$@" 2>&1 | tee -a "$log" | grep -E '^(anneal|pytorch) .*tokens/s' | tail -1)
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  rows+=("$(printf '%-28s %s; %s' "$label" "${line:-failed (see log)}" "$(python3 bench/clock_summary.py "$clock_log")")")
  echo "${rows[-1]}" | tee -a "$log"
}
# The same over `runs` runs, keeping the run of median tokens/s: transformers' generate moved
# between 482 and 589 tokens/s at batch 32 from one call to the next, one run each.
# The chosen run's whole output stays in $median_out (the batch-1 bandwidth row reads it).
median_out=${OUT:-/tmp}/gpu_all_median.txt
measure_median() { # label, runs, command...
  local label=$1 runs=$2; shift 2
  local line i best=-1 rates=""
  for ((i = 0; i < runs; i++)); do
    "$@" > "$median_out.$i" 2>&1
    cat "$median_out.$i" >> "$log"
    line=$(grep -E '^(anneal|pytorch) .*tokens/s' "$median_out.$i" | tail -1 | grep -oE '[0-9.]+ tokens/s' | head -1)
    [ -n "$line" ] && rates+="${line% tokens/s} $i"$'\n'
  done
  best=$(printf '%s' "$rates" | sort -n | awk '{ r[NR] = $2 } END { print NR ? r[int((NR + 1) / 2)] : -1 }')
  line=""
  [ "$best" -ge 0 ] && line=$(grep -E '^(anneal|pytorch) .*tokens/s' "$median_out.$best" | tail -1)
  [ "$best" -ge 0 ] && cp "$median_out.$best" "$median_out" || : > "$median_out"
  rm -f "$median_out".[0-9]*
  rows+=("$(printf '%-28s %s' "$label" "${line:+$line (median of $runs runs)}")")
  [ -n "$line" ] || rows[-1]="$(printf '%-28s %s' "$label" "failed (see log)")"
  echo "${rows[-1]}"
}
peer() { python3 bench/peer_train_step.py --load "$model" --steps 4 "$@"; }
if want train; then
  measure "anneal lora q,v"          "$bin/train_step" "$model" --lora 16 --targets qv --steps 4
  measure "pytorch lora q,v"         peer --lora 16 --targets qv
  measure "pytorch lora q,v compiled" peer --lora 16 --targets qv --compile
  measure "anneal lora all"          "$bin/train_step" "$model" --lora 16 --targets all --steps 4
  measure "pytorch lora all"         peer --lora 16 --targets all
  measure "anneal lora all +ckpt"    "$bin/train_step" "$model" --lora 16 --targets all --checkpointing --steps 4
  measure "pytorch lora all +ckpt"   peer --lora 16 --targets all --checkpointing
  measure "anneal full"              "$bin/train_step" "$model" --lora 0 --steps 4
  # optimizer.update_in_backward (the peer steps after backward; both without clipping)
  measure "anneal full update in bwd" "$bin/train_step" "$model" --lora 0 --steps 4 --update-in-backward
  measure "pytorch full"             peer --lora 0
  measure "pytorch full compiled"    peer --lora 0 --compile
fi
if want generate; then
  # Greedy generation, prompt 128, 256 new tokens (bench/generate.c, bench/peer_generate.py).
  measure_median "anneal generate b1" 3 "$bin/generate" "$model" --batch 1
  # The issue states batch 1 against the memory-bandwidth limit: generate prints the share.
  rows+=("$(printf '%-28s %s' "anneal decode b1 bandwidth" \
    "$(grep -E 'batch 1 decode reaches' "$median_out" | tail -1 | sed -E 's/.*weight bytes per decode step/weight bytes per decode step/')")")
  measure_median "pytorch generate b1" 3 python3 bench/peer_generate.py "$model" --batch 1
  measure_median "anneal generate b32" 3 "$bin/generate" "$model" --batch 32
  measure_median "pytorch generate b32" 3 python3 bench/peer_generate.py "$model" --batch 32
fi

# Loss curves side by side: prints ten steps of ours against the peer's and adds a summary row that
# passes when every step is within one bf16 ulp of the loss (2^-8 relative) and all ten are there.
compare_curves() { # label, peer output file, our output file[, info: report the difference, no verdict]
  local curves
  curves=$(paste <(grep -E '^pytorch step' "$2" | awk '{print $3, $5}') <(grep -E '^anneal step' "$3" | awk '{print $5}'))
  cat "$2" "$3" >> "$log"
  echo "== loss curves ($1)"
  echo "$curves" | awk 'NF == 3 {printf "step %2d  pytorch %.5f  anneal %.5f  diff %+.5f\n", $1, $2, $3, $3 - $2}'
  rows+=("$(echo "$curves" | awk -v label="loss curve, $1" -v info="${4:-}" 'NF == 3 { n++; d = $3 - $2; if (d < 0) d = -d;
    r = d / ($2 < 0 ? -$2 : $2); if (r > worst) worst = r }
    END { if (info != "") printf "%-28s %d steps, worst |diff| %.2e of the loss (information, no bound)", label, n, worst;
          else printf "%-28s %d steps, worst |diff| %.2e of the loss (bound 2^-8 = 3.91e-03): %s", label, n, worst,
          n == 10 && worst <= 1 / 256 ? "PASS" : "FAIL" }')")
}
if want curves; then
  # LoRA q,v from the same weights and the same initial adapter (saved by peft), the same tokens,
  # lr 1e-4.
  adapter=/tmp/anneal-bench-adapter
  python3 bench/peer_train_step.py --load "$model" --lora 16 --targets qv --save-adapter "$adapter" --lr 1e-4 \
    --losses --steps 8 > /tmp/peer_losses.txt 2>&1
  "$bin/train_step" "$model" --adapter "$adapter" --lr 1e-4 --losses --steps 8 > /tmp/our_losses.txt 2>&1
  compare_curves "LoRA q,v" /tmp/peer_losses.txt /tmp/our_losses.txt
  # LoRA on every linear layer (o_proj and down_proj add their residual in the adapter op) the same way
  python3 bench/peer_train_step.py --load "$model" --lora 16 --targets all --save-adapter "$adapter-all" --lr 1e-4 \
    --losses --steps 8 > /tmp/peer_all_losses.txt 2>&1
  "$bin/train_step" "$model" --adapter "$adapter-all" --lr 1e-4 --losses --steps 8 > /tmp/our_all_losses.txt 2>&1
  compare_curves "LoRA all" /tmp/peer_all_losses.txt /tmp/our_all_losses.txt
  # Full fine-tune from the same weights and tokens at lr 1e-5 (the peer's default), against the peer
  # run under anneal's precision policy (--precision bf16: forward and backward in bf16, fp32 master
  # weights and moments; DESIGN.md), which must pass; and, for information, against the autocast peer
  # (fp32 embeddings, norm weights and residual stream), which ours follows only as closely as
  # PyTorch's own bf16-policy run does (docs/performance.md, "Full fine-tune loss curves and the
  # precision policy").
  python3 bench/peer_train_step.py --load "$model" --lora 0 --lr 1e-5 --losses --steps 8 --precision bf16 \
    > /tmp/peer_full_losses.txt 2>&1
  "$bin/train_step" "$model" --lora 0 --lr 1e-5 --losses --steps 8 > /tmp/our_full_losses.txt 2>&1
  compare_curves "full" /tmp/peer_full_losses.txt /tmp/our_full_losses.txt
  python3 bench/peer_train_step.py --load "$model" --lora 0 --lr 1e-5 --losses --steps 8 \
    > /tmp/peer_autocast_losses.txt 2>&1
  compare_curves "full vs autocast" /tmp/peer_autocast_losses.txt /tmp/our_full_losses.txt info
fi

echo "== summary"
printf '%s\n' "${rows[@]}"

# Ratios the issue's targets are stated in: ours over the peer named, tokens/s and peak memory.
echo "== ratios (anneal / peer)"
printf '%s\n' "${rows[@]}" | bash bench/ratios.sh
