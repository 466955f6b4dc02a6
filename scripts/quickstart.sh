#!/usr/bin/env bash
# The quickstart (README's main job): installs what anneal needs, builds it for the CPU, and
# LoRA-tunes the small model shipped in checkpoints/tiny-qwen2-quickstart on the bundled weather
# forecast chats (data/quickstart), printing held-out loss and sample replies before and after.
# Extra arguments are recipe overrides, e.g.  bash scripts/quickstart.sh training.max_steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps
cmake -S . -B build-quickstart -DCMAKE_BUILD_TYPE=Release -DANNEAL_CUDA=OFF -DANNEAL_TESTS=OFF >/dev/null
cmake --build build-quickstart -j"$(nproc)" --target anneal >/dev/null
if [ -d checkpoints/runs/quickstart ]; then
  echo "removing the previous quickstart run (checkpoints/runs/quickstart) to start afresh"
  rm -rf checkpoints/runs/quickstart
fi
time ./build-quickstart/anneal run recipes/quickstart.yaml "$@"
