"""Synthetic rewards for RL tests (plain functions, as users write them)."""


def count_a(prompts, completions, **columns):
    """Fraction of the completion's characters that are the letter 'a'."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def skip_every_third(prompts, completions, **columns):
    return [None if i % 3 == 2 else float(len(c)) for i, c in enumerate(completions)]


def near_a(prompts, completions, **columns):
    """A dense reward: how close each character is to 'a' (1 for 'a', about 0.5 for a random byte)."""
    return [sum(1 - min(abs(ord(ch) - 97), 128) / 128 for ch in c) / max(len(c), 1) if c else 0.0 for c in completions]


def near_a_or_none(prompts, completions, **columns):
    """`near_a`, except None for completions that start with a byte below 'a' (a reward source that
    cannot score some samples)."""
    return [None if c[:1] < "a" and c else s for c, s in zip(completions, near_a(prompts, completions))]

