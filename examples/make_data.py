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


def wrong_answer(question: str, answer: str, rng: random.Random) -> str:
    """A dispreferred answer: wrong, or right but rambling and unsure."""
    if rng.random() < 0.5:
        words = answer.rstrip(".").split()
        for i in range(len(words) - 1, -1, -1):
            if words[i].isdigit():
                words[i] = str(int(words[i]) + rng.choice([-3, -1, 1, 2, 10]))
                return " ".join(words) + "."
        return "I am not sure, maybe it is something else."
    return "Hmm, well, that is a tricky one and I am not completely sure, but I think " + answer[0].lower() + answer[1:]


def preference_rows(rng: random.Random) -> list[dict]:
    rows = []
    for question, answer in examples(rng):
        rows.append({"prompt": [{"role": "user", "content": question}], "chosen": answer,
                     "rejected": wrong_answer(question, answer, rng)})
    return rows


def prompt_rows(rng: random.Random) -> list[dict]:
    """Prompts for online RL, with the expected answer as an extra column for the reward function."""
    rows = []
    for question, answer in examples(rng):
        words = answer.rstrip(".").split()
        expected = words[-1] if words[-1].isdigit() else answer.rstrip(".").split(" is ")[-1]
        rows.append({"prompt": [{"role": "user", "content": question}], "answer": expected})
    return rows


def write(out: Path, name: str, rows: list[dict]) -> None:
    (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out / name}")


def main() -> None:
    rng = random.Random(0)
    rows = [as_row(i, q, a) for i, (q, a) in enumerate(examples(rng))]
    out = Path(__file__).parent / "data"
    out.mkdir(exist_ok=True)
    split = len(rows) - 8
    write(out, "sft_train.jsonl", rows[:split])
    write(out, "sft_eval.jsonl", rows[split:])
    pairs = preference_rows(random.Random(1))
    write(out, "pairs_train.jsonl", pairs[:-8])
    write(out, "pairs_eval.jsonl", pairs[-8:])
    # unpaired thumbs up / down for KTO: each pair gives one of its two sides
    unpaired = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
                for i, p in enumerate(pairs[:-8])]
    write(out, "feedback_train.jsonl", unpaired)
    write(out, "prompts_train.jsonl", prompt_rows(random.Random(2)))


if __name__ == "__main__":
    main()
