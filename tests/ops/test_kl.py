import json
import math

import pytest
import torch

from rlhf.ops.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    get_kl_estimator,
    kl_k1,
    kl_k2,
    kl_k3,
)


def test_estimators_hand_values():
    # logp = log 0.5, ref = log 0.25: log-ratio logp - ref = log 2, r = ref/pi = 1/2
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25)]], dtype=torch.float64)
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))  # (r-1) - log r
    # and the other way round: r = 2
    assert kl_k1(ref, logp).item() == pytest.approx(-math.log(2))
    assert kl_k3(ref, logp).item() == pytest.approx(1 - math.log(2))
    # all zero at pi = pi_ref
    for e in KL_ESTIMATORS.values():
        assert e.fn(logp, logp).item() == 0.0


def test_k2_k3_nonnegative_k1_not():
    torch.manual_seed(0)
    logp, ref = torch.randn(50, 20) * 3, torch.randn(50, 20) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()
    assert [n for n, e in KL_ESTIMATORS.items() if e.nonnegative] == ["k2", "k3"]
    assert [n for n, e in KL_ESTIMATORS.items() if e.unbiased] == ["k1", "k3"]


def test_exact_expectation_under_pi_equals_kl_for_unbiased_estimators():
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    ref = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    true_kl = (pi * (pi.log() - ref.log())).sum()
    for name, est in KL_ESTIMATORS.items():
        expectation = (pi * est.fn(pi.log(), ref.log())).sum()
        if est.unbiased:
            assert expectation.item() == pytest.approx(true_kl.item(), rel=1e-12), name
        else:
            assert expectation.item() != pytest.approx(true_kl.item(), rel=1e-3), name


def test_k3_gradient_on_policy_is_forward_kl_gradient():
    # the docstring's claim: E_pi[d k3] = d KL(ref || pi); checked exactly on a categorical
    logits = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)
    pi = logp.exp().detach()
    (g_k3,) = torch.autograd.grad((pi * kl_k3(logp, ref.log())).sum(), logits)
    forward_kl = (ref * (ref.log() - torch.log_softmax(logits, -1))).sum()
    (g_fwd,) = torch.autograd.grad(forward_kl, logits)
    assert torch.allclose(g_k3, g_fwd)


def test_get_kl_estimator_errors_name_valid_ones():
    assert get_kl_estimator("k3").fn is kl_k3
    with pytest.raises(ValueError, match="k1, k2, k3"):
        get_kl_estimator("k4")


def test_fixed_controller():
    c = FixedKLController(0.05)
    assert c.update(10.0, 64) == 0.05 and c.value == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert c2.value == 0.05


def test_adaptive_controller_sequence_by_hand():
    c = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=100.0)
    # KL 9 > target: error = 9/6 - 1 = 0.5, clipped to 0.2; beta *= 1 + 0.2 * 10 / 100
    assert c.update(9.0, 10) == pytest.approx(0.1 * 1.02)
    # KL 6.6: error 0.1 (inside the clip); beta *= 1 + 0.1 * 10/100
    assert c.update(torch.tensor(6.6), 10) == pytest.approx(0.1 * 1.02 * 1.01)
    # KL 0: error -1 clipped to -0.2; 50 steps: beta *= 1 - 0.2 * 0.5
    assert c.update(0.0, 50) == pytest.approx(0.1 * 1.02 * 1.01 * 0.9)
    # exactly on target: unchanged
    before = c.value
    assert c.update(6.0, 10) == before


def test_adaptive_controller_state_round_trip_is_exact():
    a = AdaptiveKLController(0.2, target=1.5, horizon=37.0)
    for kl in (2.0, 0.3, 1.7, 1.9):
        a.update(kl, 7)
    state = json.loads(json.dumps(a.state_dict()))
    b = AdaptiveKLController(0.2, target=1.5, horizon=37.0)
    b.load_state_dict(state)
    assert b.value == a.value  # bit-exact
    for kl in (5.0, 0.1):
        assert a.update(kl, 7) == b.update(kl, 7)


def test_adaptive_controller_rejects_bad_input():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=1.0, horizon=0)
    c = AdaptiveKLController(0.1, target=1.0, horizon=10)
    with pytest.raises(ValueError, match="finite"):
        c.update(float("nan"), 1)
    assert c.value == 0.1
