import math

import pytest

from rlhf.train.optim import lr_factor


def test_warmup_then_linear_decay():
    f = [lr_factor(s, total_steps=10, warmup_steps=2, kind="linear") for s in range(10)]
    assert f[:2] == [0.5, 1.0]
    assert f[2] == 1.0 and f[6] == pytest.approx(0.5) and f[9] == pytest.approx(1 / 8)


def test_cosine_and_constant():
    assert lr_factor(5, total_steps=10, warmup_steps=0, kind="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(7, total_steps=10, warmup_steps=0, kind="constant") == 1.0
    with pytest.raises(ValueError, match="lr_scheduler"):
        lr_factor(0, total_steps=1, warmup_steps=0, kind="step")
