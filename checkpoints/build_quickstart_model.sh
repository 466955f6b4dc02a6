#!/usr/bin/env bash
# Rebuilds checkpoints/tiny-qwen2-quickstart from nothing, the way it was made:
#   1. the corpus (data/quickstart/make_corpus.py, standard library only, CC0),
#   2. its byte-level BPE tokenizer (data/quickstart/make_tokenizer.py, needs `pip install tokenizers`),
#   3. a random 2.1M-parameter Qwen2 model (anneal init, data/quickstart/model_config.json),
#   4. pre-training it with anneal itself on the CPU (recipes/quickstart-pretrain.yaml, ~15-25 min on 2 cores),
#   5. the merged bf16 result copied to checkpoints/tiny-qwen2-quickstart.
# Run from the repository root after building (cmake --build build).
set -euo pipefail
anneal=${ANNEAL:-./build/anneal}
python3 data/quickstart/make_corpus.py
mkdir -p checkpoints/build
python3 data/quickstart/make_tokenizer.py checkpoints/build/tokenizer
rm -rf checkpoints/build/tiny-qwen2-init checkpoints/build/tiny-qwen2-pretrained checkpoints/runs/quickstart-pretrain
"$anneal" init data/quickstart/model_config.json checkpoints/build/tiny-qwen2-init --seed 0 --std 0.02 \
  --tokenizer checkpoints/build/tokenizer
"$anneal" run recipes/quickstart-pretrain.yaml "$@"
rm -rf checkpoints/tiny-qwen2-quickstart
cp -r checkpoints/build/tiny-qwen2-pretrained checkpoints/tiny-qwen2-quickstart
echo "checkpoints/tiny-qwen2-quickstart rebuilt"
