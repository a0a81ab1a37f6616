import math

import pytest
import torch

from rlhf.losses.policy_gradient import LOSS_AGGREGATIONS, get_loss_aggregation, grpo_loss

D = torch.float64

# Two sequences of different lengths, clip wide enough never to bind, old log-probs 0:
#   seq 0: 2 tokens, A = +1, ratios [1, 2]          -> token losses [-1, -2]      sum -3
#   seq 1: 4 tokens, A = -2, ratios [1, 0.5, 2, 1]  -> token losses [2, 1, 4, 2]  sum  9
# seq 0's two pad positions hold garbage that must not count.
LOG_RATIOS = [[0.0, math.log(2), 50.0, 50.0], [0.0, math.log(0.5), math.log(2), 0.0]]
MASK = [[1, 1, 0, 0], [1, 1, 1, 1]]
ADV = [1.0, -2.0]


def inputs():
    logprobs = torch.tensor(LOG_RATIOS, dtype=D, requires_grad=True)
    return logprobs, torch.zeros(2, 4, dtype=D), torch.tensor(ADV, dtype=D), torch.tensor(MASK)


@pytest.mark.parametrize(
    "aggregation,expected,unit,units",
    [
        ("grpo", -3 / 2 + 9 / 4, "sequences", 2),  # token mean per sequence, summed
        ("dr_grpo", (-3 + 9) / 5, "sequences", 2),  # token sum / L_max (= 5), summed
        ("dapo", -3 + 9, "tokens", 6),  # token sum
    ],
)
def test_aggregations_by_hand(aggregation, expected, unit, units):
    logprobs, old, adv, mask = inputs()
    out = grpo_loss(
        logprobs, old, adv, mask, clip_range=10.0, aggregation=aggregation, max_response_length=5
    )
    assert out.loss.item() == pytest.approx(expected)
    agg = LOSS_AGGREGATIONS[aggregation]
    assert agg.unit == unit
    assert agg.count_units(mask) == units
    assert out.metrics["clipfrac"].item() == 0.0


def test_metrics_follow_the_loss_unit():
    logprobs, old, adv, mask = inputs()
    per_seq = grpo_loss(logprobs, old, adv, mask, clip_range=10.0, aggregation="grpo")
    per_tok = grpo_loss(logprobs, old, adv, mask, clip_range=10.0, aggregation="dapo")
    # ratios: seq 0 mean (1 + 2)/2 = 1.5, seq 1 mean (1 + .5 + 2 + 1)/4 = 1.125
    assert per_seq.metrics["ratio"].item() == pytest.approx(1.5 + 1.125)
    assert per_tok.metrics["ratio"].item() == pytest.approx(3.0 + 4.5)
    assert "kl_k3" not in per_tok.metrics


def test_clipping_and_clipfrac():
    logprobs, old, adv, mask = inputs()
    # eps = 0.2: seq 0 token 1 (ratio 2, A>0) clipped to 1.2; seq 1 token 1 (ratio .5, A<0)
    # clipped to 0.8; seq 1 token 2 (ratio 2, A<0) is not clipped (min takes 2 * -2)
    out = grpo_loss(logprobs, old, adv, mask, clip_range=0.2, aggregation="dapo")
    assert out.loss.item() == pytest.approx((-1 - 1.2) + (2 + 1.6 + 4 + 2))
    assert out.metrics["clipfrac"].item() == 2.0
    out = grpo_loss(logprobs, old, adv, mask, clip_range=0.2, aggregation="grpo")
    assert out.metrics["clipfrac"].item() == pytest.approx(1 / 2 + 1 / 4)


def test_kl_penalty_is_beta_k3_aggregated_like_the_loss():
    logprobs, old, adv, mask = inputs()
    # ref = logp - log 2 on valid tokens: r = pi_ref / pi = 1/2, k3 = (1/2 - 1) + log 2
    ref = (logprobs - math.log(2)).detach()
    k3 = math.log(2) - 0.5
    base = grpo_loss(logprobs, old, adv, mask, clip_range=10.0, aggregation="grpo")
    out = grpo_loss(
        logprobs, old, adv, mask, clip_range=10.0, beta=0.1, ref_logprobs=ref, aggregation="grpo"
    )
    assert out.loss.item() == pytest.approx(base.loss.item() + 0.1 * 2 * k3)  # 2 sequences
    assert out.metrics["kl_k3"].item() == pytest.approx(2 * k3)
    dapo = grpo_loss(
        logprobs, old, adv, mask, clip_range=10.0, beta=0.1, ref_logprobs=ref, aggregation="dapo"
    )
    assert dapo.loss.item() == pytest.approx(6.0 + 0.1 * 6 * k3)
    assert dapo.metrics["kl_k3"].item() == pytest.approx(6 * k3)


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_on_policy_gradient_is_reinforce(aggregation):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=D, requires_grad=True)
    tokens = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 1, 0]])
    adv = torch.tensor([0.7, -1.3, 2.0], dtype=D)
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)
    out = grpo_loss(
        logprobs, None, adv, mask, clip_range=0.2, aggregation=aggregation, max_response_length=5
    )
    (g,) = torch.autograd.grad(out.loss, logits, retain_graph=True)
    # REINFORCE: -A_i grad log pi, weighted per token as the aggregation weighs tokens
    m = mask.to(D)
    weight = {"grpo": m / m.sum(-1, keepdim=True), "dapo": m, "dr_grpo": m / 5}[aggregation]
    reinforce = -(adv[:, None] * weight * logprobs).sum()
    (g_ref,) = torch.autograd.grad(reinforce, logits)
    assert torch.allclose(g, g_ref, atol=1e-12)
    assert out.metrics["ratio"].item() == pytest.approx(
        {"grpo": 3.0, "dapo": 10.0, "dr_grpo": 3.0}[aggregation]
    )


def test_per_token_advantages_are_accepted():
    logprobs, old, adv, mask = inputs()
    per_token = adv[:, None].expand(2, 4)
    a = grpo_loss(logprobs, old, adv, mask, clip_range=0.2)
    b = grpo_loss(logprobs, old, per_token, mask, clip_range=0.2)
    assert a.loss.item() == pytest.approx(b.loss.item())


def test_errors():
    logprobs, old, adv, mask = inputs()
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logprobs, old, adv, mask, clip_range=0.2, beta=0.1)
    with pytest.raises(ValueError, match="max_response_length"):
        grpo_loss(logprobs, old, adv, mask, clip_range=0.2, aggregation="dr_grpo")
    with pytest.raises(ValueError, match="dapo, dr_grpo, grpo"):
        get_loss_aggregation("seq-mean")
