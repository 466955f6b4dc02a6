#!/usr/bin/env python3
"""The PyTorch figure beside bench/generate: transformers' model.generate on the same model
directory (made by `python3 bench/peer_train_step.py --save DIR --steps 0`, the random
DeepSeek-R1-Distill-Qwen-1.5B shape), greedy (do_sample=False), bf16, SDPA attention, and exactly
--new tokens per row (min_new_tokens = max_new_tokens, so no eos stops a row early).

  python3 bench/peer_generate.py MODEL_DIR [--batch 1] [--prompt 128] [--new 256]

Prompt ids are ((b * prompt + t) * 2654435761) mod (vocab - 1), the same as bench/generate.c.
One warm-up generation of 8 new tokens, then one timed generation; prints
  pytorch generate batch B: X tokens/s (new tokens over wall time incl. prefill)
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    a = ap.parse_args()
    if not os.path.isdir(a.model):  # the model-making code lives in peer_train_step.py
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "peer_train_step.py"), "--save",
                        a.model, "--steps", "0"], check=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16,
                                                              attn_implementation="sdpa").cuda().eval()
    vocab = model.config.vocab_size
    ids = ((torch.arange(a.batch * a.prompt, dtype=torch.int64) * 2654435761) % (vocab - 1)).view(
        a.batch, a.prompt).cuda()
    mask = torch.ones_like(ids)

    def generate(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=0)
        torch.cuda.synchronize()
        assert out.shape == (a.batch, a.prompt + n), out.shape
        return time.perf_counter() - t0

    generate(8)  # warm-up
    dt = generate(a.new)
    print(f"pytorch generate batch {a.batch}: {a.batch * a.new / dt:.1f} tokens/s (new tokens over wall time incl. "
          f"prefill), {dt / a.new * 1e3:.3f} ms per new token of a row (torch {torch.__version__}, transformers "
          f"{transformers.__version__}, prompt {a.prompt}, new {a.new})")


if __name__ == "__main__":
    main()
