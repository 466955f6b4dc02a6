#!/usr/bin/env python3
"""Generates the quickstart's text: everything here is produced by this script from its own word
lists, so the data carries no third-party licence (it is released with anneal, see LICENSE).

  python3 data/quickstart/make_corpus.py [--seed 1] [--out data/quickstart]

writes
  pretrain_text.jsonl, pretrain_chat.jsonl
                   general text ({"text": ...}) and small chats ({"messages": [...]}) that the
                   quickstart base model (checkpoints/tiny-qwen2-quickstart) was pretrained on
  train.jsonl      the "domain": chats in which an assistant gives weather forecasts for
                   invented towns in one fixed house style (the quickstart LoRA-tunes on it)
  heldout.jsonl    more forecast chats, for towns that never appear in train.jsonl
  tokenizer_corpus.txt  text the tokenizer is trained on (both kinds, plain)
Only the standard library is used; the same seed gives the same bytes.
"""
import argparse
import json
import os
import random

NAMES = ["Mia", "Noah", "Lena", "Omar", "Ava", "Ivan", "Zoe", "Kai", "Nora", "Leo", "Sara", "Tom", "Yuki", "Ben",
         "Ines", "Raj", "Ella", "Finn", "Maya", "Hugo"]
ANIMALS = ["cat", "dog", "fox", "owl", "horse", "rabbit", "goat", "duck", "bear", "mouse"]
PLURAL = {"fox": "foxes", "mouse": "mice"}
PLACES = ["the market", "the river", "the school", "the old bridge", "the garden", "the library", "the hill",
          "the harbour", "the forest", "the bakery", "the station", "the village square"]
OBJECTS = ["a red ball", "a small box", "an old map", "a basket of apples", "a blue kite", "a heavy book",
           "a wooden chair", "a warm coat", "a paper boat", "a bag of bread"]
ADJ = ["quiet", "busy", "bright", "cold", "warm", "green", "tiny", "long", "happy", "tired", "clever", "brave"]
VERBS_PAST = ["walked to", "ran to", "looked at", "painted", "visited", "left", "cleaned", "found"]
TIMES = ["In the morning", "After lunch", "Later that day", "At night", "On Sunday", "Before dinner",
         "Early on Monday", "One cold evening"]
FEEL = ["smiled", "laughed", "sighed", "waited", "sang a song", "sat down", "went home", "fell asleep"]


def sentence(r):
    n, a, p, o = r.choice(NAMES), r.choice(ANIMALS), r.choice(PLACES), r.choice(OBJECTS)
    forms = [
        f"{r.choice(TIMES)}, {n} {r.choice(VERBS_PAST)} {p}.",
        f"{n} had {o} and a {r.choice(ADJ)} {a}.",
        f"The {r.choice(ADJ)} {a} followed {n} to {p}.",
        f"{n} gave {o} to {r.choice(NAMES)}, who {r.choice(FEEL)}.",
        f"It was a {r.choice(ADJ)} day at {p}, and the {a} {r.choice(FEEL)}.",
        f"{n} counted {r.randint(2, 19)} birds near {p}.",
        f"There were {r.randint(2, 9)} {PLURAL.get(a, a + 's')} in {p}, and {n} watched them.",
    ]
    return r.choice(forms)


def story(r):
    return " ".join(sentence(r) for _ in range(r.randint(3, 7)))


def small_chat(r):
    n, p, o = r.choice(NAMES), r.choice(PLACES), r.choice(OBJECTS)
    q = r.choice([(f"Where did {n} go?", f"{n} went to {p}."),
                  (f"What did {n} carry?", f"{n} carried {o}."),
                  (f"Who was at {p}?", f"{n} and a {r.choice(ADJ)} {r.choice(ANIMALS)} were at {p}."),
                  (f"How many birds did {n} see?", f"{n} saw {r.randint(2, 19)} birds."),
                  ("Tell me a short story.", story(r))])
    return {"messages": [{"role": "user", "content": q[0]}, {"role": "assistant", "content": q[1]}]}


SYLL = ["bri", "ndl", "moor", "ash", "ford", "kel", "ven", "thal", "mar", "wick", "dun", "ler", "holt", "pen",
        "gar", "ton", "ril", "ow", "stan", "ber", "cas", "lin", "vale", "tor"]
SKY = ["clear skies", "light rain", "heavy showers", "patchy fog", "scattered clouds", "steady drizzle",
       "bright sunshine", "low cloud", "a chance of thunder", "snow flurries"]
LATER = ["clearing by afternoon", "turning wet by evening", "staying dry all day", "with gusts after noon",
         "brightening later", "becoming misty at dusk"]
DIRS = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]
DAYS = ["today", "tomorrow", "on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday",
        "on Sunday"]


def town(r):
    return "".join(r.choice(SYLL) for _ in range(r.randint(2, 3))).capitalize()


def forecast_chat(r, name):
    day = r.choice(DAYS)
    low = r.randint(-5, 15)
    high = low + r.randint(3, 12)
    ask = r.choice([f"What is the weather in {name} {day}?", f"Forecast for {name} {day}, please.",
                    f"Will it rain in {name} {day}?", f"How warm will {name} be {day}?"])
    answer = (f"Forecast for {name}, {day}: {r.choice(SKY)}, {r.choice(LATER)}. "
              f"High {high}°C, low {low}°C. Wind from the {r.choice(DIRS)} at {r.randint(3, 40)} km/h.")
    return {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--pretrain-docs", type=int, default=24000)
    args = ap.parse_args()
    r = random.Random(args.seed)
    towns = sorted({town(r) for _ in range(400)})
    r.shuffle(towns)
    train_towns, heldout_towns = towns[:len(towns) * 4 // 5], towns[len(towns) * 4 // 5:]

    def dump(name, records):
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    pre = [({"text": story(r)} if r.random() < 0.7 else small_chat(r)) for _ in range(args.pretrain_docs)]
    dump("pretrain_text.jsonl", [p for p in pre if "text" in p])    # one format per file
    dump("pretrain_chat.jsonl", [p for p in pre if "messages" in p])
    dump("train.jsonl", [forecast_chat(r, r.choice(train_towns)) for _ in range(1200)])
    dump("heldout.jsonl", [forecast_chat(r, r.choice(heldout_towns)) for _ in range(120)])
    with open(os.path.join(args.out, "tokenizer_corpus.txt"), "w", encoding="utf-8") as f:
        for rec in pre[:8000]:
            f.write((rec.get("text") or " ".join(m["content"] for m in rec["messages"])) + "\n")
        for _ in range(1500):
            f.write(" ".join(m["content"] for m in forecast_chat(r, r.choice(towns))["messages"]) + "\n")


if __name__ == "__main__":
    main()
