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


def test_optimizer_is_fused_adamw_with_decay_only_on_matrices_and_matches_a_naive_update():
    import torch

    from rlhf.train.config import TrainConfig
    from rlhf.train.optim import build_optimizer

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    config = TrainConfig(lr=0.1, weight_decay=0.5, adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-6)
    opt = build_optimizer(layer.parameters(), config)
    assert opt.defaults["fused"] and [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer(torch.randn(5, 4)).square().sum().backward()
    gw, gb = layer.weight.grad.clone(), layer.bias.grad.clone()
    opt.step()

    def adamw_first_step(p, g, decay):  # Loshchilov & Hutter 2019, Algorithm 2, t = 1
        m, v = (1 - 0.8) * g / (1 - 0.8), (1 - 0.9) * g * g / (1 - 0.9)
        return p * (1 - 0.1 * decay) - 0.1 * m / (v.sqrt() + 1e-6)

    assert torch.allclose(layer.weight, adamw_first_step(w0, gw, 0.5), atol=1e-6)
    assert torch.allclose(layer.bias, adamw_first_step(b0, gb, 0.0), atol=1e-6)
