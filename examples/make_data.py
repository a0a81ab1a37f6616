"""Regenerate the small example datasets in examples/data/ (deterministic; no downloads).

    python examples/make_data.py

The SFT set teaches one house style: a short, complete sentence that restates the question.
"""

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Canada": "Ottawa", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens", "Chile": "Santiago",
    "Spain": "Madrid", "India": "New Delhi", "Poland": "Warsaw", "Ghana": "Accra", "Cuba": "Havana",
    "Austria": "Vienna",
}
COLOURS = {"grass": "green", "the sky on a clear day": "blue", "snow": "white", "a ripe banana": "yellow",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a plum": "purple"}


def examples(rng: random.Random) -> list[dict]:
    rows = []
    for country, city in CAPITALS.items():
        rows.append(("What is the capital of " + country + "?", f"The capital of {country} is {city}."))
    for thing, colour in COLOURS.items():
        rows.append((f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}."))
    for _ in range(24):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        rows.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    for _ in range(16):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        rows.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    rng.shuffle(rows)
    return rows


def as_row(i: int, question: str, answer: str) -> dict:
    # Half chat messages, half prompt/completion, so both formats are exercised.
    if i % 2 == 0:
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    return {"prompt": [{"role": "user", "content": question}], "completion": [{"role": "assistant", "content": answer}]}


def main() -> None:
    rng = random.Random(0)
    rows = [as_row(i, q, a) for i, (q, a) in enumerate(examples(rng))]
    out = Path(__file__).parent / "data"
    out.mkdir(exist_ok=True)
    split = len(rows) - 8
    for name, part in [("sft_train.jsonl", rows[:split]), ("sft_eval.jsonl", rows[split:])]:
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"wrote {len(part)} rows to {out / name}")


if __name__ == "__main__":
    main()
