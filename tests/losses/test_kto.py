import math

import pytest
import torch

from rlhf.losses.kto import kto_loss


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# rewards r = logprobs - ref_logprobs = [1, -1, 0, 2]; labels D, U, D, U
LOGPS = [-5.0, -7.0, -6.0, -4.0]
REF = [-6.0, -6.0, -6.0, -6.0]
DESIRABLE = [True, False, True, False]
# mismatched-pair log-ratios [0.5, 0.5, 1.0, 0.0] -> mean z0 = 0.5
KL = [-8.0, -9.0, -7.0, -8.0]
REF_KL = [-8.5, -9.5, -8.0, -8.0]


def t(v, grad=False):
    return torch.tensor(v, dtype=torch.float64, requires_grad=grad)


def call(logprobs=None, kl=None, ref_kl=None, **kw):
    kw.setdefault("beta", 0.1)
    return kto_loss(
        logprobs if logprobs is not None else t(LOGPS),
        t(REF),
        torch.tensor(DESIRABLE),
        kl if kl is not None else t(KL),
        t(ref_kl if ref_kl is not None else REF_KL),
        **kw,
    )


def test_kto_hand_values_and_metrics():
    beta, wd, wu, z0 = 0.1, 1.0, 1.5, 0.5
    out = call(beta=beta, desirable_weight=wd, undesirable_weight=wu)
    expected = (
        wd * (1 - sig(beta * (1 - z0)))
        + wu * (1 - sig(beta * (z0 - -1)))
        + wd * (1 - sig(beta * (0 - z0)))
        + wu * (1 - sig(beta * (z0 - 2)))
    )
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    m = out.metrics
    assert m["kl"].item() == pytest.approx(z0 * 4)  # / 4 samples gives back z0
    assert m["rewards/desirable_sum"].item() == pytest.approx(beta * (1 + 0))
    assert m["rewards/undesirable_sum"].item() == pytest.approx(beta * (-1 + 2))
    assert m["count/desirable"].item() == 2.0
    assert m["count/undesirable"].item() == 2.0
    assert not any(v.requires_grad for v in m.values())


def test_negative_kl_estimate_is_clamped_to_zero():
    # log-ratios [-1, -1, -1, -1] -> mean -1 -> z0 = 0
    out = call(ref_kl=[v + 1.0 for v in KL])
    expected = sum(
        (1 - sig(0.1 * r)) if d else (1 - sig(-0.1 * r))
        for r, d in zip([1.0, -1.0, 0.0, 2.0], DESIRABLE)
    )
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["kl"].item() == 0.0


def test_no_gradient_through_the_reference_point():
    kl = t(KL, grad=True)
    logprobs = t(LOGPS, grad=True)
    out = call(logprobs=logprobs, kl=kl)
    g_logprobs, g_kl = torch.autograd.grad(out.loss, (logprobs, kl), allow_unused=True)
    assert g_kl is None
    # desirable samples are pushed up, undesirable ones down
    assert (g_logprobs[torch.tensor(DESIRABLE)] < 0).all()
    assert (g_logprobs[~torch.tensor(DESIRABLE)] > 0).all()
    # d/dr of w (1 - sigmoid(beta (r - z0))) = -w beta s (1 - s)
    s = sig(0.1 * (1 - 0.5))
    assert g_logprobs[0].item() == pytest.approx(-0.1 * s * (1 - s), rel=1e-10)


def test_beta_to_zero_gives_half_weight_per_sample():
    out = call(beta=1e-12, desirable_weight=2.0, undesirable_weight=4.0)
    assert out.loss.item() == pytest.approx(2 * 0.5 * 2.0 + 2 * 0.5 * 4.0, rel=1e-9)


def test_single_class_batch_has_finite_zero_sums():
    out = kto_loss(t([-1.0, -2.0]), t([-1.5, -1.5]), torch.tensor([True, True]),
                   t([-3.0, -3.0]), t([-3.0, -3.0]), beta=0.1)
    assert torch.isfinite(out.loss)
    assert out.metrics["count/undesirable"].item() == 0.0
    assert out.metrics["rewards/undesirable_sum"].item() == 0.0
    expected = (1 - sig(0.1 * 0.5)) + (1 - sig(0.1 * -0.5))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_labels_may_be_given_as_ints():
    a = call()
    b = kto_loss(t(LOGPS), t(REF), torch.tensor([1, 0, 1, 0]), t(KL), t(REF_KL), beta=0.1)
    assert a.loss.item() == b.loss.item()
