"""A synthetic preference with a known answer: completions that say 'good' beat ones that say 'bad'."""

import random

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple", "ocean", "pencil",
         "candle", "garden", "rocket", "silver", "window", "yellow", "forest", "button", "carpet", "dragon"]


def marker_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        rows.append({"prompt": f"{a} and {b}:", "chosen": f" {b} is good", "rejected": f" {b} is bad"})
    return rows


def marker_unpaired(n: int, seed: int) -> list[dict]:
    rows = []
    for i, pair in enumerate(marker_pairs(n, seed)):
        good = i % 2 == 0
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"] if good else pair["rejected"], "label": good})
    return rows
