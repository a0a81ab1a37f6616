"""Several reward sources as one: a weighted sum.

    reward = WeightedSum([(correctness, 1.0), (length_penalty, 0.1)])
    reward(prompts, completions)           -> [1.0 * c_i + 0.1 * l_i, ...]
    reward.evaluate(prompts, completions)  -> (totals, {"correctness": [...], "length_penalty": [...]})

A None from any source makes that sample None: a skipped sample has no total. Each component
runs behind `checked_call` under its own name, so an error names the component that failed.
"""

from __future__ import annotations

import math
import numbers

from .base import CheckedReward, RewardError, source_name


class WeightedSum:
    """`sum_j weight_j * source_j(prompts, completions, **columns)`, None where any source gives None."""

    isolate_failures = False  # each component is isolated by its own checked_call

    def __init__(self, components, *, name: str | None = None):
        components = list(components)
        if not components:
            raise RewardError("WeightedSum needs at least one (source, weight) pair")
        self.components: list[tuple[CheckedReward, float]] = []
        for index, component in enumerate(components):
            if not isinstance(component, (tuple, list)) or len(component) != 2:
                raise RewardError(f"WeightedSum component {index}: expected a (source, weight) pair, got {component!r:.80}")
            source, weight = component
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise RewardError(f"WeightedSum component {index}: weight must be a finite number, got {weight!r}")
            checked = source if isinstance(source, CheckedReward) else CheckedReward(source, source_name(source))
            self.components.append((checked, float(weight)))
        self.name = name or " + ".join(f"{weight:g}*{source.name}" for source, weight in self.components)

    def evaluate(self, prompts: list, completions: list, **columns) -> tuple[list[float | None], dict[str, list]]:
        """(totals, each component's rewards by name): the components are worth logging apart."""
        parts: dict[str, list] = {}
        totals: list[float | None] = [0.0] * len(prompts)
        for source, weight in self.components:
            rewards = source(prompts, completions, **columns)
            key, n = source.name, 2
            while key in parts:  # the same spec twice (with different weights) keeps both
                key, n = f"{source.name} ({n})", n + 1
            parts[key] = rewards
            totals = [None if total is None or reward is None else total + weight * reward
                      for total, reward in zip(totals, rewards)]
        return totals, parts

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        return self.evaluate(prompts, completions, **columns)[0]

    def __repr__(self) -> str:
        return f"WeightedSum({self.name!r})"
