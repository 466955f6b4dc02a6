#!/usr/bin/env python3
"""Trains the quickstart model's tokenizer: byte-level BPE in the DeepSeek-R1-Distill-Qwen layout
(NFC, the Qwen2 pre-split regex, ByteLevel, DeepSeek's added tokens with the same special flags,
a bos-prepending post-processor) with a 2048-entry vocabulary, on tokenizer_corpus.txt from
make_corpus.py.

  pip install tokenizers
  python3 data/quickstart/make_tokenizer.py OUT_DIR     # writes tokenizer.json, tokenizer_config.json
"""
import json
import os
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
ADDED = [(EOS, True), ("<｜User｜>", False), ("<｜Assistant｜>", False), (BOS, True), ("<|EOT|>", False),
         ("<think>", False), ("</think>", False)]
VOCAB = 2048


def main(out):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(ADDED), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([os.path.join(HERE, "tokenizer_corpus.txt")], trainer=trainer)
    for content, special in ADDED:
        if special:
            tok.add_special_tokens([AddedToken(content, normalized=False, special=True)])
        else:
            tok.add_tokens([AddedToken(content, normalized=False, special=False)])
    tok.post_processor = processors.TemplateProcessing(single=BOS + " $A", pair=BOS + " $A " + BOS + " $B:1",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    os.makedirs(out, exist_ok=True)
    data = json.loads(tok.to_str())
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
              "model_max_length": 4096, "tokenizer_class": "LlamaTokenizerFast", "legacy": True,
              "clean_up_tokenization_spaces": False, "unk_token": None,
              "generator": f"data/quickstart/make_tokenizer.py with tokenizers {tokenizers.__version__}"}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    print("vocab", tok.get_vocab_size(), "bos", tok.token_to_id(BOS), "eos", tok.token_to_id(EOS))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "checkpoints", "tiny-qwen2-quickstart"))
