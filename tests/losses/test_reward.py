import math

import pytest
import torch

from rlhf.losses.reward import bradley_terry_loss


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def test_bradley_terry_hand_values_and_metrics():
    c = torch.tensor([2.0, 0.5, -1.0])
    r = torch.tensor([1.0, 1.5, -1.0])
    out = bradley_terry_loss(c, r)
    expected = nls(1.0) + nls(-1.0) + nls(0.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    m = out.metrics
    assert m["accuracy"].item() == 1.0  # the tie counts as wrong
    assert m["margin"].item() == pytest.approx(0.0)
    assert m["chosen_score"].item() == pytest.approx(1.5)
    assert m["rejected_score"].item() == pytest.approx(1.5)


def test_margin_is_subtracted_before_the_sigmoid():
    c, r = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.0])
    out = bradley_terry_loss(c, r, margin=torch.tensor([0.5, 4.0]))
    assert out.loss.item() == pytest.approx(nls(0.5) + nls(-1.0), rel=1e-6)
    # the margin metric reports r_c - r_r, not the margin-shifted logit
    assert out.metrics["margin"].item() == pytest.approx(4.0)


def test_centering_adds_squared_pair_sum():
    c, r = torch.tensor([2.0]), torch.tensor([1.0])
    out = bradley_terry_loss(c, r, center_coef=0.01)
    assert out.loss.item() == pytest.approx(nls(1.0) + 0.01 * 9.0, rel=1e-6)


def test_loss_is_a_sum_over_pairs():
    c, r = torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.4])
    both = bradley_terry_loss(c, r)
    parts = [bradley_terry_loss(c[i : i + 1], r[i : i + 1]) for i in range(2)]
    assert both.loss.item() == pytest.approx(sum(p.loss.item() for p in parts), rel=1e-6)
    for k in both.metrics:
        assert both.metrics[k].item() == pytest.approx(sum(p.metrics[k].item() for p in parts))


def test_stable_for_huge_negative_margins():
    out = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))
    assert out.loss.item() == pytest.approx(200.0, rel=1e-6)


def test_gradient_raises_chosen_and_lowers_rejected():
    c = torch.tensor([0.2, -0.1], requires_grad=True)
    r = torch.tensor([0.4, -0.3], requires_grad=True)
    bradley_terry_loss(c, r).loss.backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()
    # d/dr_c of -log sigmoid(d) is -sigmoid(-d)
    assert c.grad[0].item() == pytest.approx(-1 / (1 + math.exp(-0.2)), rel=1e-5)


def test_centering_gradient_pulls_pair_sum_to_zero():
    c = torch.tensor([5.0], requires_grad=True)
    r = torch.tensor([5.0], requires_grad=True)
    out = bradley_terry_loss(c, r, center_coef=1.0)
    out.loss.backward()
    # BT part is +-0.5 at a tie; centring adds 2 * (c + r) = 20 to both
    assert c.grad.item() == pytest.approx(-0.5 + 20.0)
    assert r.grad.item() == pytest.approx(0.5 + 20.0)


def test_metrics_are_detached():
    c = torch.tensor([1.0], requires_grad=True)
    out = bradley_terry_loss(c, torch.tensor([0.0]))
    assert out.loss.requires_grad
    assert not any(v.requires_grad for v in out.metrics.values())
