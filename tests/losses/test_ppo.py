import math

import pytest
import torch

from rlhf.losses.ppo import clipped_surrogate, ppo_policy_loss, ppo_value_loss

D = torch.float64

# Four valid tokens + one masked, worked by hand with eps = 0.2 (old log-probs are 0):
#   ratio 1.5, A = +2: min(3.0, 1.2 * 2 = 2.4)   = 2.4   -> loss -2.4, clipped (grad 0)
#   ratio 1.5, A = -2: min(-3.0, 1.2 * -2 = -2.4) = -3.0 -> loss +3.0, not clipped
#   ratio 0.5, A = -2: min(-1.0, 0.8 * -2 = -1.6) = -1.6 -> loss +1.6, clipped (grad 0)
#   ratio 0.5, A = +2: min(1.0, 0.8 * 2 = 1.6)    = 1.0  -> loss -1.0, not clipped
#   masked token: ratio e^50, A = 1e6: must not count anywhere
RATIOS = [1.5, 1.5, 0.5, 0.5, math.exp(50.0)]
ADV = [2.0, -2.0, -2.0, 2.0, 1e6]
MASK = [1, 1, 1, 1, 0]


def policy_inputs():
    logprobs = torch.tensor([[math.log(r) for r in RATIOS]], dtype=D, requires_grad=True)
    old = torch.zeros(1, 5, dtype=D)
    return logprobs, old, torch.tensor([ADV], dtype=D), torch.tensor([MASK])


def test_policy_loss_hand_values_and_clipfrac():
    logprobs, old, adv, mask = policy_inputs()
    out = ppo_policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    assert out.loss.item() == pytest.approx(-2.4 + 3.0 + 1.6 - 1.0)
    assert out.metrics["clipfrac"].item() == 2.0
    assert out.metrics["ratio"].item() == pytest.approx(1.5 + 1.5 + 0.5 + 0.5)
    k3 = lambda r: (r - 1) - math.log(r)  # noqa: E731
    assert out.metrics["approx_kl"].item() == pytest.approx(2 * k3(1.5) + 2 * k3(0.5))
    assert all(not v.requires_grad for v in out.metrics.values())
    # d loss / d logp = -A * ratio on unclipped tokens, 0 on clipped and masked ones
    (g,) = torch.autograd.grad(out.loss, logprobs)
    assert g[0].tolist() == pytest.approx([0.0, 2.0 * 1.5, 0.0, -2.0 * 0.5, 0.0])


def test_clip_higher_decouples_the_upper_bound():
    logprobs, old, adv, mask = policy_inputs()
    out = ppo_policy_loss(logprobs, old, adv, mask, clip_range=0.2, clip_range_high=0.28)
    # only the first token changes: 1.28 * 2 = 2.56
    assert out.loss.item() == pytest.approx(-2.56 + 3.0 + 1.6 - 1.0)
    wide = ppo_policy_loss(logprobs, old, adv, mask, clip_range=0.2, clip_range_high=0.6)
    assert wide.metrics["clipfrac"].item() == 1.0  # ratio 1.5 < 1.6: no longer clipped
    assert wide.loss.item() == pytest.approx(-3.0 + 3.0 + 1.6 - 1.0)


def test_surrogate_is_identity_at_ratio_one():
    lp = torch.randn(3, 4, dtype=D)
    a = torch.randn(3, 4, dtype=D)
    s = clipped_surrogate(lp, lp.clone(), a, clip_range=0.2)
    assert torch.allclose(s.losses, -a)
    assert not s.clipped.any()
    assert torch.allclose(s.approx_kl, torch.zeros_like(lp))


def test_value_loss_hand_values():
    # eps_v = 0.2, old values 1.0
    values = torch.tensor([[1.5, 1.5, 1.1, 7.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=D)
    returns = torch.tensor([[2.0, 0.0, 3.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0]])
    out = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # t0: v_clip = 1.2: max((1.5-2)^2 = .25, (1.2-2)^2 = .64) = .64 (clipped branch)
    # t1: v_clip = 1.2: max(2.25, 1.44) = 2.25
    # t2: inside the range: (1.1 - 3)^2 = 3.61
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 2.25 + 3.61))
    assert out.metrics["value_clipfrac"].item() == 1.0
    assert out.metrics["values"].item() == pytest.approx(1.5 + 1.5 + 1.1)
    (g,) = torch.autograd.grad(out.loss, values)
    # t0 clipped: no gradient through the clamp; t1: v - R = 1.5; t2: 1.1 - 3 = -1.9
    assert g[0].tolist() == pytest.approx([0.0, 1.5, -1.9, 0.0])


def test_targets_are_detached():
    logprobs, old, adv, mask = policy_inputs()
    old.requires_grad_(True)
    adv.requires_grad_(True)
    out = ppo_policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    out.loss.backward()
    assert old.grad is None and adv.grad is None
