import math

import pytest
import torch

from rlhf.losses.preference import (
    PREFERENCE_LOSSES,
    PairLogprobs,
    PreferenceLoss,
    _log1mexp,
    get_preference_loss,
    hinge_loss,
    ipo_loss,
    orpo_loss,
    robust_loss,
    sigmoid_loss,
    simpo_loss,
)

# Two pairs, worked by hand:
#   h_0 = (-10 - -11) - (-12 - -11.5) = 1 - (-0.5) = 1.5
#   h_1 = (-6 - -6.5) - (-5 - -5.5)   = 0.5 - 0.5  = 0.0
CHOSEN = [-10.0, -6.0]
REJECTED = [-12.0, -5.0]
REF_CHOSEN = [-11.0, -6.5]
REF_REJECTED = [-11.5, -5.5]
CHOSEN_TOKENS = [4, 3]
REJECTED_TOKENS = [5, 2]
H = [1.5, 0.0]


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x)) if x > -30 else -x


def make(requires_grad: bool = False, with_ref: bool = True, swap: bool = False) -> PairLogprobs:
    t = lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=requires_grad)  # noqa: E731
    c, r, rc, rr = CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED
    ct, rt = CHOSEN_TOKENS, REJECTED_TOKENS
    if swap:  # the same pairs with their labels flipped
        c, r, rc, rr, ct, rt = r, c, rr, rc, rt, ct
    return PairLogprobs(
        chosen=t(c),
        rejected=t(r),
        chosen_tokens=torch.tensor(ct),
        rejected_tokens=torch.tensor(rt),
        ref_chosen=torch.tensor(rc, dtype=torch.float64) if with_ref else None,
        ref_rejected=torch.tensor(rr, dtype=torch.float64) if with_ref else None,
    )


# ------------------------------------------------------------------ hand values


def test_sigmoid_dpo_hand_values_and_metrics():
    beta = 0.5
    out = sigmoid_loss(make(), beta=beta)
    assert out.loss.item() == pytest.approx(nls(0.75) + nls(0.0), rel=1e-12)
    m = out.metrics
    # rewards beta * (pi - ref): chosen [0.5, 0.25], rejected [-0.25, 0.25]
    assert m["rewards/chosen"].item() == pytest.approx(0.75)
    assert m["rewards/rejected"].item() == pytest.approx(0.0)
    assert m["rewards/margins"].item() == pytest.approx(0.75)
    assert m["rewards/accuracy"].item() == 1.0  # pair 1 is a tie: not counted
    assert m["logprobs/chosen"].item() == pytest.approx(-16.0)
    assert m["logprobs/rejected"].item() == pytest.approx(-17.0)


def test_cdpo_label_smoothing_hand_values():
    beta, eps = 0.5, 0.1
    out = sigmoid_loss(make(), beta=beta, label_smoothing=eps)
    expected = sum((1 - eps) * nls(beta * h) + eps * nls(-beta * h) for h in H)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_cdpo_half_smoothing_ignores_the_label():
    a = sigmoid_loss(make(), beta=0.5, label_smoothing=0.5).loss
    b = sigmoid_loss(make(swap=True), beta=0.5, label_smoothing=0.5).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        sigmoid_loss(make(), beta=0.5, label_smoothing=0.6)


def test_robust_hand_values():
    beta, eps = 0.5, 0.2
    out = robust_loss(make(), beta=beta, label_smoothing=eps)
    expected = sum(((1 - eps) * nls(beta * h) - eps * nls(-beta * h)) / (1 - 2 * eps) for h in H)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_robust_with_zero_flip_rate_is_dpo():
    a, b = make(requires_grad=True), make(requires_grad=True)
    la = robust_loss(a, beta=0.3, label_smoothing=0.0)
    lb = sigmoid_loss(b, beta=0.3)
    assert la.loss.item() == pytest.approx(lb.loss.item(), rel=1e-12)
    la.loss.backward()
    lb.loss.backward()
    assert torch.allclose(a.chosen.grad, b.chosen.grad)
    assert torch.allclose(a.rejected.grad, b.rejected.grad)


def test_robust_is_unbiased_under_label_flips():
    # E over a flip with probability eps of the rDPO loss == clean DPO loss (the paper's point)
    beta, eps = 0.5, 0.3
    kept = robust_loss(make(), beta=beta, label_smoothing=eps).loss
    flipped = robust_loss(make(swap=True), beta=beta, label_smoothing=eps).loss
    clean = sigmoid_loss(make(), beta=beta).loss
    assert ((1 - eps) * kept + eps * flipped).item() == pytest.approx(clean.item(), rel=1e-10)


def test_robust_rejects_flip_rate_of_one_half():
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_loss(make(), beta=0.1, label_smoothing=0.5)


def test_ipo_hand_values():
    # target 1 / (2 * 0.5) = 1: (1.5 - 1)^2 + (0 - 1)^2
    out = ipo_loss(make(), beta=0.5)
    assert out.loss.item() == pytest.approx(0.25 + 1.0, rel=1e-12)
    with pytest.raises(ValueError, match="beta"):
        ipo_loss(make(), beta=0.0)


def test_ipo_pulls_back_overshooting_pairs():
    logprobs = make(requires_grad=True)
    ipo_loss(logprobs, beta=2.0).loss.backward()  # target 0.25; pair 0 has h = 1.5 > target
    assert logprobs.chosen.grad[0].item() == pytest.approx(2 * (1.5 - 0.25))  # > 0: lowers chosen
    assert logprobs.chosen.grad[1].item() == pytest.approx(2 * (0.0 - 0.25))  # < 0: raises chosen


def test_hinge_hand_values_and_flat_region():
    logprobs = make(requires_grad=True)
    out = hinge_loss(logprobs, beta=0.5)
    assert out.loss.item() == pytest.approx(max(0.0, 1 - 0.75) + max(0.0, 1 - 0.0), rel=1e-12)
    logprobs2 = make(requires_grad=True)
    hinge_loss(logprobs2, beta=1.0).loss.backward()  # pair 0: 1 - 1.5 < 0, past the margin
    assert logprobs2.chosen.grad[0].item() == 0.0
    assert logprobs2.chosen.grad[1].item() == -1.0


def test_simpo_hand_values_and_metrics():
    beta, gamma = 2.0, 0.5
    out = simpo_loss(make(with_ref=False), beta=beta, simpo_gamma=gamma)
    avg_c = [c / n for c, n in zip(CHOSEN, CHOSEN_TOKENS)]  # [-2.5, -2.0]
    avg_r = [r / n for r, n in zip(REJECTED, REJECTED_TOKENS)]  # [-2.4, -2.5]
    expected = sum(nls(beta * a - beta * b - gamma) for a, b in zip(avg_c, avg_r))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(beta * (-4.5))
    assert out.metrics["rewards/rejected"].item() == pytest.approx(beta * (-4.9))
    assert out.metrics["rewards/accuracy"].item() == 1.0  # only pair 1 (-4 > -5)


def test_simpo_ignores_reference_and_default_gamma():
    a = simpo_loss(make(with_ref=True), beta=2.0).loss
    b = simpo_loss(make(with_ref=False), beta=2.0, simpo_gamma=0.5).loss
    assert a.item() == b.item()


def test_orpo_hand_values_and_metrics():
    lam = 0.1
    out = orpo_loss(make(with_ref=False), beta=lam)
    expected, lors = 0.0, 0.0
    for c, r, nc, nr in zip(CHOSEN, REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS):
        a, b = c / nc, r / nr
        lo_c = a - math.log(1 - math.exp(a))  # log(p / (1 - p)) with p = exp(a)
        lo_r = b - math.log(1 - math.exp(b))
        expected += -a + lam * nls(lo_c - lo_r)
        lors += lo_c - lo_r
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["nll"].item() == pytest.approx(2.5 + 2.0)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(lors, rel=1e-12)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(lam * (-4.5))


def test_orpo_finite_when_the_policy_is_certain():
    # fp32 log_softmax can round a near-certain token to exactly 0: odds would be infinite
    chosen = torch.tensor([0.0, -1e-9, -80.0], requires_grad=True)
    rejected = torch.tensor([0.0, -3.0, -1e-12], requires_grad=True)
    ones = torch.ones(3, dtype=torch.long)
    out = orpo_loss(PairLogprobs(chosen, rejected, ones, ones), beta=0.1)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("x", [-1e-12, -1e-6, -0.3, -math.log(2), -0.9, -5.0, -40.0])
def test_log1mexp_matches_math(x):
    got = _log1mexp(torch.tensor(x, dtype=torch.float64)).item()
    assert got == pytest.approx(math.log(-math.expm1(x)), rel=1e-12)


def test_log1mexp_gradient_is_finite_on_both_branches():
    x = torch.tensor([-1e-6, -0.5, -2.0, -60.0], dtype=torch.float64, requires_grad=True)
    _log1mexp(x).sum().backward()
    expected = [-math.exp(v) / (1 - math.exp(v)) for v in x.tolist()]  # d/dx log(1 - e^x)
    assert x.grad.tolist() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ edges and gradients


def test_dpo_beta_to_zero_gives_log2_and_vanishing_gradient():
    logprobs = make(requires_grad=True)
    out = sigmoid_loss(logprobs, beta=1e-9)
    assert out.loss.item() == pytest.approx(2 * math.log(2.0), rel=1e-8)
    out.loss.backward()
    assert logprobs.chosen.grad.abs().max().item() < 1e-8


def test_hinge_beta_to_zero_is_one_per_pair():
    assert hinge_loss(make(), beta=1e-12).loss.item() == pytest.approx(2.0)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    # beta small enough that IPO's target 1 / (2 beta) = 5 exceeds every h, and the
    # hinge is inside its margin; eps < 0.5 keeps robust DPO pointing the right way
    logprobs = make(requires_grad=True)
    out = PREFERENCE_LOSSES[name].fn(logprobs, beta=0.1, label_smoothing=0.1)
    out.loss.backward()
    assert (logprobs.chosen.grad < 0).all(), name
    assert (logprobs.rejected.grad > 0).all(), name


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_loss_and_metrics_are_sums_over_pairs(name):
    fn = PREFERENCE_LOSSES[name].fn
    whole = fn(make(), beta=0.5)
    def pair(i: int) -> PairLogprobs:
        return PairLogprobs(*(None if v is None else v[i : i + 1] for v in make()))

    parts = [fn(pair(i), beta=0.5) for i in range(2)]
    assert whole.loss.item() == pytest.approx(sum(p.loss.item() for p in parts), rel=1e-12)
    for k, v in whole.metrics.items():
        assert v.item() == pytest.approx(sum(p.metrics[k].item() for p in parts), rel=1e-12), k
        assert not v.requires_grad


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_one_hparam_dict_serves_every_variant(name):
    hparams = {"label_smoothing": 0.1, "simpo_gamma": 1.0, "unused_by_all": 3}
    out = get_preference_loss(name).fn(make(), beta=0.5, **hparams)
    assert torch.isfinite(out.loss)


# ------------------------------------------------------------------ registry


def test_registry_properties():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "robust", "ipo", "hinge", "simpo", "orpo"}
    needs_ref = {k for k, v in PREFERENCE_LOSSES.items() if v.needs_reference}
    normalised = {k for k, v in PREFERENCE_LOSSES.items() if v.length_normalised}
    assert needs_ref == {"sigmoid", "robust", "ipo", "hinge"}
    assert normalised == {"simpo", "orpo"}
    assert all(isinstance(v, PreferenceLoss) for v in PREFERENCE_LOSSES.values())
    assert get_preference_loss("sigmoid").fn is sigmoid_loss
    assert get_preference_loss("simpo").hparams == ("simpo_gamma",)
    assert {k for k, v in PREFERENCE_LOSSES.items() if v.uses_label_smoothing} == {"sigmoid", "robust"}


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        get_preference_loss("dpo")
    for name in PREFERENCE_LOSSES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", [k for k, v in PREFERENCE_LOSSES.items() if v.needs_reference])
def test_reference_losses_refuse_missing_reference(name):
    with pytest.raises(ValueError, match="reference"):
        PREFERENCE_LOSSES[name].fn(make(with_ref=False), beta=0.1)
    half = make()._replace(ref_rejected=None)
    with pytest.raises(ValueError, match="reference"):
        PREFERENCE_LOSSES[name].fn(half, beta=0.1)


@pytest.mark.parametrize("name", [k for k, v in PREFERENCE_LOSSES.items() if not v.needs_reference])
def test_reference_free_losses_run_without_reference(name):
    a = PREFERENCE_LOSSES[name].fn(make(with_ref=False), beta=0.5).loss
    b = PREFERENCE_LOSSES[name].fn(make(with_ref=True), beta=0.5).loss
    assert a.item() == b.item()
