"""The demo's movie-review prompts, shipped as examples/sentiment/{train,test}.jsonl.

The controlled-sentiment task of the DPO paper (sec. 6.1) asks a policy for positive movie
reviews. Here the prompts are written by templates over invented titles, genres and angles
(no dataset download), deterministically: rerunning this script reproduces the files byte for
byte. Titles are split between train and test, so a held-out prompt names a film the policy
never saw during training.

    python -m rlhf.demo.prompts examples/sentiment    # rewrites the shipped files
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

TITLES = [
    "The Glass Orchard", "Midnight at Pier Nine", "A Quiet Comet", "The Last Cartographer", "Salt and Thunder",
    "Paper Lanterns", "The Iron Meadow", "Letters to Oslo", "Hollow Creek", "The Clockmaker's Daughter",
    "Blue Monsoon", "Seven Small Fires", "The Velvet Signal", "North of Nowhere", "Echoes in Amber",
    "The Borrowed Summer", "Harbor Lights", "A Map of Strangers", "The Silent Conductor", "Copper Skies",
    "The Winter Apiary", "Dust on the Piano", "Marigold Station", "The Long Way Down", "Orbit of Two",
    "The Lantern Keeper", "Rust and Roses", "Under the Tin Moon", "The Forgotten Coast", "Static Hearts",
    "The Night Ferry", "Wildflower Protocol", "The Painted Desert Club", "Ghosts of Elm Street Diner",
    "The Tidal Archive", "Brass Knuckle Ballet", "The Second Sunrise", "A Garden in Exile", "Neon Pilgrims",
    "The Stone Violin", "Cold Harbor Heist", "The Feather Thief", "Granite Dreams", "Lullaby for a Robot",
    "The Crooked Lighthouse", "Saffron Road", "The Hundredth Door", "Echo Park Overture", "Frostbite Falls",
    "The Mapmaker's War", "Slow Rivers", "The Porcelain Detective", "Midsummer Static", "The Empty Stadium",
    "Carousel of Ash", "The Quiet Mutiny", "Lemon Tree Motel", "The Atlas Affair", "Skyline Sonata",
    "The Weaver's Gambit",
]
GENRES = ["drama", "comedy", "thriller", "science-fiction", "romance", "horror", "animated", "documentary",
          "western", "musical"]
ANGLES = [
    "the acting", "the story", "the soundtrack", "the ending", "the visuals", "the pacing", "the characters",
    "the dialogue", "the direction", "whether it is worth watching",
]
TEMPLATES = [
    "Write a short review of the {genre} film \"{title}\", focusing on {angle}.",
    "In two sentences, review the {genre} movie \"{title}\". Mention {angle}.",
    "You just watched \"{title}\", a {genre} film. Write a brief review about {angle}.",
    "Give your opinion of the {genre} movie \"{title}\" in a few sentences, including {angle}.",
]
TEST_TITLES = 15  # the last titles are held out
PER_TITLE = 8     # prompts per title


def prompts_for(titles: list[str], rng: random.Random) -> list[dict]:
    rows = []
    for title in titles:
        combos = list(itertools.product(GENRES, ANGLES, TEMPLATES))
        for genre, angle, template in rng.sample(combos, PER_TITLE):
            request = template.format(genre=genre, title=title, angle=angle)
            rows.append({"prompt": [{"role": "user", "content": request}]})  # a chat: the model is an instruct model
    rng.shuffle(rows)
    return rows


def splits() -> dict[str, list[dict]]:
    """{"train": rows, "test": rows}: the same rows on every call."""
    rng = random.Random(0)
    return {"train": prompts_for(TITLES[:-TEST_TITLES], rng), "test": prompts_for(TITLES[-TEST_TITLES:], rng)}


def write_splits(directory: str | Path) -> dict[str, Path]:
    """Write train.jsonl and test.jsonl into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in splits().items():
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


if __name__ == "__main__":
    import sys

    for name, path in write_splits(sys.argv[1] if len(sys.argv) > 1 else "examples/sentiment").items():
        print(f"{name}: {sum(1 for _ in open(path))} prompts -> {path}")
