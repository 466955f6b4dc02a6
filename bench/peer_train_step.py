#!/usr/bin/env python3
"""The PyTorch figure beside bench/train_step: the same shape (default DeepSeek-R1-Distill-Qwen-1.5B:
hidden 1536, intermediate 8960, 28 layers, 12 heads, 2 kv heads, vocab 151936, untied head) with
random weights, LoRA through peft (or full fine-tuning), SDPA attention, fused AdamW, bf16.

  python3 bench/peer_train_step.py --save DIR      # also writes the random model for anneal to load
  python3 bench/peer_train_step.py [--lora 16 --targets qv|all | --lora 0] [--seq 1024 --batch 8] [--compile] [--checkpointing]
  python3 bench/peer_train_step.py --load DIR --save-adapter ADIR --lr 1e-4 --losses   # loss curve from DIR's
        weights and the initial adapter saved in ADIR (bench/train_step DIR --adapter ADIR --losses compares)
  python3 bench/peer_train_step.py --load DIR --lora 0 --lr 1e-5 --losses --precision bf16
        full fine-tune under another precision policy (the loss-curve control, full fine-tune only):
        autocast (default): fp32 master weights, bf16 autocast (embeddings, norm weights and the
          residual stream stay fp32);
        bf16-norms: the same, but the RMSNorm weights enter the forward rounded to bf16;
        bf16: anneal's policy: forward and backward on a bf16 copy of the model (bf16 embeddings,
          norm weights and residual stream), fp32 master weights and moments in the optimizer.

Token ids are ((b * seq + t) * 2654435761) mod (vocab - 1), the same as bench/train_step.c.
"""
import argparse
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--lora", type=int, default=16)
    ap.add_argument("--targets", default="qv")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--load")
    ap.add_argument("--save-adapter")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--losses", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--precision", choices=["autocast", "bf16-norms", "bf16"], default="autocast")
    a = ap.parse_args()
    if a.lora and a.precision != "autocast":
        ap.error("--precision applies to the full fine-tune (--lora 0); LoRA runs the bf16 model as it is")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                   num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
                                   rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                   use_sliding_window=False)
    cfg._attn_implementation = "sdpa"
    if a.load:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.load, dtype=torch.bfloat16,
                                                                  attn_implementation="sdpa").cuda()
    else:
        with torch.device("cuda"):
            model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    if a.save:
        model.save_pretrained(a.save)
        print("saved", a.save)
        if a.steps == 0:
            return
    if a.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.lora:
        import peft
        targets = ["q_proj", "v_proj"] if a.targets == "qv" else "all-linear"
        model = peft.get_peft_model(model, peft.LoraConfig(r=a.lora, lora_alpha=2 * a.lora, lora_dropout=0.0,
                                                           target_modules=targets, task_type="CAUSAL_LM"))
        if a.save_adapter:
            model.save_pretrained(a.save_adapter)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    work = None  # --precision bf16: the bf16 parameters the forward uses; params are their fp32 masters
    if not a.lora:
        if a.precision == "bf16":
            work = params
            params = [p.detach().float().clone() for p in work]
        else:
            for p in params:
                p.data = p.data.float()  # fp32 master weights, bf16 autocast below
        if a.precision == "bf16-norms":
            for mod in model.modules():
                if type(mod).__name__.endswith("RMSNorm"):
                    mod.forward = rounded_norm_forward(mod)
    opt = torch.optim.AdamW(params, lr=a.lr, fused=True)
    fwd = torch.compile(model) if a.compile else model
    ids = ((torch.arange(a.batch * a.seq, dtype=torch.int64) * 2654435761) % (cfg.vocab_size - 1)).view(
        a.batch, a.seq).cuda()
    times = []
    torch.cuda.reset_peak_memory_stats()
    for s in range(a.steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not a.lora and work is None):
            loss = fwd(input_ids=ids, labels=ids).loss
        if a.losses:
            print(f"pytorch step {s} loss {loss.item():.6f}")
        loss.backward()
        if work is not None:
            for m, w in zip(params, work):
                m.grad = w.grad.float()
                w.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)
        if work is not None:
            with torch.no_grad():
                for m, w in zip(params, work):
                    w.copy_(m)  # round to nearest even, as anneal's optimizer writes its bf16 parameters
        torch.cuda.synchronize()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    tps = a.batch * a.seq * len(times) / sum(times)
    print(f"pytorch {torch.__version__} {'lora ' + a.targets if a.lora else 'full'} bf16 seq {a.seq} batch {a.batch}"
          f"{' compiled' if a.compile else ''}{' +ckpt' if a.checkpointing else ''}: {tps:.0f} tokens/s, {sum(times) / len(times):.3f} s/step, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
          f"{'' if a.lora or a.precision == 'autocast' else ' precision ' + a.precision}")


def rounded_norm_forward(mod):
    """Qwen2RMSNorm's forward with its (fp32 master) weight rounded to bf16 first."""
    def forward(hidden_states):
        dtype = hidden_states.dtype
        h = hidden_states.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon)
        return mod.weight.to(torch.bfloat16).to(torch.float32) * h.to(dtype)
    return forward


if __name__ == "__main__":
    main()
