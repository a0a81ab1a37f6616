import pytest
import torch

from rlhf.ops.advantages import (
    discounted_returns,
    gae,
    group_normalised_advantages,
    leave_one_out_advantages,
    reinforce_pp_advantages,
    rewards_from_scores,
)
from rlhf.ops.masked import masked_mean, masked_var

D = torch.float64


def naive_gae(rewards, values, mask, gamma, lam):
    """Double loop over the compacted valid tokens of each row: A_t = sum_l (g l)^l delta_{t+l}."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=D)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx] + [0.0]  # terminal after the last valid token
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(idx))]
        for k, t in enumerate(idx):
            adv[b, t] = sum((gamma * lam) ** l * deltas[k + l] for l in range(len(idx) - k))
    return adv


def ragged():
    torch.manual_seed(1)
    rewards = torch.randn(4, 6, dtype=D)
    values = torch.randn(4, 6, dtype=D)
    mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],  # full
            [1, 1, 1, 0, 0, 0],  # right padded
            [0, 0, 1, 1, 1, 0],  # leading prompt positions and padding
            [1, 1, 0, 1, 0, 0],  # a hole (e.g. a masked tool output) inside the response
        ]
    )
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (0.7, 1.0)])
def test_gae_matches_naive_double_loop_on_ragged_masks(gamma, lam):
    rewards, values, mask = ragged()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = naive_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-12)
    assert torch.allclose(ret, torch.where(mask.bool(), expected + values, 0.0), atol=1e-12)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_hand_values():
    # one row, 2 valid tokens then padding; V after token 1 is 0 (terminal)
    rewards = torch.tensor([[0.0, 1.0, 5.0]], dtype=D)  # the 5.0 is off-mask: ignored
    values = torch.tensor([[0.5, 0.25, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d1 = 1.0 - 0.25  # r_1 + 0 - V_1
    d0 = 0.0 + 0.9 * 0.25 - 0.5
    assert adv[0].tolist() == pytest.approx([d0 + 0.45 * d1, d1, 0.0])
    assert ret[0].tolist() == pytest.approx([d0 + 0.45 * d1 + 0.5, d1 + 0.25, 0.0])


def test_gae_lam_one_is_discounted_returns_minus_values():
    rewards, values, mask = ragged()
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    g = discounted_returns(rewards, mask, gamma=0.9)
    assert torch.allclose(adv, torch.where(mask.bool(), g - values, 0.0), atol=1e-12)
    assert torch.allclose(ret, g, atol=1e-12)


def test_discounted_returns_hand_values():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[1 + 0.5 * 2 + 0.25 * 3, 2 + 1.5, 3.0, 0.0]]


def test_advantages_carry_no_gradient():
    rewards, values, mask = ragged()
    values.requires_grad_(True)
    adv, ret = gae(rewards, values, mask, 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad


def test_rewards_from_scores_puts_score_on_last_valid_token():
    scores = torch.tensor([2.0, -1.0, 3.0], dtype=D)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [9.0, 0.3, 0.4], [1.0, 1.0, 1.0]], dtype=D)
    r = rewards_from_scores(scores, mask, kl=kl, kl_coef=0.5)
    expected = [[-0.05, -0.1 + 2.0, 0.0], [0.0, -0.15, -0.2 - 1.0], [0.0, 0.0, 0.0]]
    for row, want in zip(r.tolist(), expected):
        assert row == pytest.approx(want)


def test_group_normalised_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0], dtype=D)
    a = group_normalised_advantages(scores, 4, eps=0.0 + 1e-12)
    std = (4 * 0.25 / 3) ** 0.5  # unbiased std of [1, 0, 0, 1]
    assert a[:4].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert a[4:].tolist() == [0.0] * 4  # equal scores: no signal, not nan
    centred = group_normalised_advantages(scores, 4, scale=False)  # Dr. GRPO
    assert centred.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    assert group_normalised_advantages(scores, 1).tolist() == [0.0] * 8


def test_leave_one_out_by_hand():
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0], dtype=D)
    a = leave_one_out_advantages(scores, 3)
    assert a.tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0])
    with pytest.raises(ValueError):
        leave_one_out_advantages(scores, 1)


@pytest.mark.parametrize(
    "fn", [group_normalised_advantages, leave_one_out_advantages]
)
def test_batch_not_multiple_of_group_raises(fn):
    with pytest.raises(ValueError, match="groups of 4"):
        fn(torch.zeros(6), 4)


def test_reinforce_pp_returns_with_kl_then_global_whitening():
    scores = torch.tensor([1.0, -1.0], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 7.0]], dtype=D)
    a = reinforce_pp_advantages(scores, mask, kl=kl, kl_coef=1.0)
    # returns to go, by hand: score - sum_{i>=t} kl_i
    raw = torch.tensor([[1 - 0.6, 1 - 0.5, 1 - 0.3], [-1 - 0.9, -1 - 0.5, 0.0]], dtype=D)
    vals = raw[mask.bool()]
    expected = (raw - vals.mean()) / (vals.var(unbiased=True) + 1e-8).sqrt()
    assert torch.allclose(a, torch.where(mask.bool(), expected, 0.0), atol=1e-9)
    assert masked_mean(a, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(a, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_reinforce_pp_baseline_subtracts_group_mean_first():
    scores = torch.tensor([1.0, 3.0, 10.0, 14.0], dtype=D)
    mask = torch.ones(4, 2, dtype=torch.int64)
    a = reinforce_pp_advantages(scores, mask, group_size=2)
    b = reinforce_pp_advantages(torch.tensor([-1.0, 1.0, -2.0, 2.0], dtype=D), mask)
    assert torch.allclose(a, b)


def test_a_group_of_equal_scores_gets_exactly_zero_in_fp32():
    scores = torch.full((7,), 0.7, dtype=torch.float32)  # the fp32 mean of seven 0.7s is not 0.7
    assert (group_normalised_advantages(scores, 7) == 0).all()
    assert (group_normalised_advantages(scores, 7, scale=False) == 0).all()


def test_group_statistics_use_the_valid_members_only():
    scores = torch.tensor([1.0, 0.0, 123.0, -5.0], dtype=D)
    valid = torch.tensor([True, True, False, False])
    # mean 0.5 and Bessel std 0.7071 of {1, 0}: +-0.7071 (not +-1.22 from filling in with the mean)
    adv = group_normalised_advantages(scores, 4, valid=valid)
    assert adv.tolist() == pytest.approx([0.5 / 0.5**0.5, -0.5 / 0.5**0.5, 0.0, 0.0], abs=1e-5)
    # RLOO: each valid member's baseline is the other valid member
    assert leave_one_out_advantages(scores, 4, valid=valid).tolist() == [1.0, -1.0, 0.0, 0.0]
    # a single valid member has no baseline: 0
    lone = torch.tensor([True, False, False, False])
    assert leave_one_out_advantages(scores, 4, valid=lone).tolist() == [0.0] * 4
    assert group_normalised_advantages(scores, 4, valid=lone).tolist() == [0.0] * 4


def test_estimator_registry_matches_the_named_functions():
    from rlhf.ops.advantages import CRITIC_FREE_ESTIMATORS

    scores = torch.tensor([1.0, 2.0, 4.0, 0.0], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    valid = torch.ones(4, dtype=torch.bool)
    kl = torch.full((4, 3), 0.1, dtype=D)
    grpo = CRITIC_FREE_ESTIMATORS["grpo"].fn(scores, valid, mask, kl=None, kl_coef=0.0, group_size=4, scale=True)
    assert torch.allclose(grpo, torch.where(mask.bool(), group_normalised_advantages(scores, 4)[:, None], 0.0))
    rloo = CRITIC_FREE_ESTIMATORS["rloo"].fn(scores, valid, mask, kl=kl, kl_coef=0.5, group_size=4, scale=True)
    shaped = scores - 0.5 * (kl * mask).sum(1)
    assert torch.allclose(rloo, torch.where(mask.bool(), leave_one_out_advantages(shaped, 4)[:, None], 0.0))
    assert CRITIC_FREE_ESTIMATORS["reinforce_pp"].whiten and not CRITIC_FREE_ESTIMATORS["grpo"].whiten
