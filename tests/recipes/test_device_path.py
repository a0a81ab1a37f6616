"""The tensor path after sampling (masks, KL, advantages, statistics, losses) keeps every tensor on
the rollout's device. On PyTorch's `meta` device any CPU tensor mixed in raises, so this proves the
GPU path without a GPU; with RLHF_TEST_DEVICE=cuda it also runs for real on the GPU."""

import pytest
import torch

from rlhf.losses.policy_gradient import grpo_loss
from rlhf.losses.ppo import ppo_policy_loss, ppo_value_loss
from rlhf.recipes._online import rollout_stats
from rlhf.recipes.grpo import GRPOConfig, advantages_and_kl
from rlhf.recipes.ppo import PPOConfig, advantages_and_returns, explained_variance
from rlhf.rollout import Rollout
from rlhf.train.distributed import DistContext

B, G, T, P = 8, 4, 5, 3


def _rollout(device) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    """A rollout, its scores (B,) and validity (B,), built on the CPU then moved, so the values are real."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2, 5, 3])
    response_mask = (torch.arange(T) < lengths.unsqueeze(1)).long()
    rollout = Rollout(
        prompt_ids=torch.randint(0, 50, (B, P), generator=gen), prompt_mask=torch.ones(B, P, dtype=torch.long),
        response_ids=torch.randint(0, 50, (B, T), generator=gen), response_mask=response_mask,
        logprobs=-torch.rand(B, T, generator=gen) * response_mask, truncated=lengths == T,
        completions=["x"] * B, prompt_index=torch.arange(B // G).repeat_interleave(G),
        entropy=torch.rand(B, T, generator=gen) * response_mask)
    scores = torch.randn(B, generator=gen)
    valid = torch.tensor([True, True, False, True, True, True, True, False])
    moved = Rollout(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(rollout).items()})
    return moved, scores.to(device), valid.to(device)


def _devices():
    from tests.conftest import TEST_DEVICE

    return ["meta"] + ([str(TEST_DEVICE)] if TEST_DEVICE.type != "cpu" else ["cpu"])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("estimator, kl_penalty", [("grpo", "loss"), ("grpo", "reward"), ("rloo", "auto"),
                                                   ("reinforce_pp", "auto")])
def test_grpo_tensor_path_stays_on_the_rollout_device(device, estimator, kl_penalty):
    rollout, scores, valid = _rollout(device)
    mask = rollout.response_mask * valid.unsqueeze(1).to(rollout.response_mask.dtype)
    rollout.response_mask = mask
    ref_logprobs = rollout.logprobs - 0.1 * mask
    config = GRPOConfig(num_generations=G, estimator=estimator, kl_penalty=kl_penalty)
    advantages, kl = advantages_and_kl(config, scores, valid, mask, rollout.logprobs, ref_logprobs, DistContext())
    policy_logprobs = (rollout.logprobs * mask).clone().requires_grad_()
    out = grpo_loss(policy_logprobs, None, advantages, mask, clip_range=0.2, beta=0.04, ref_logprobs=ref_logprobs)
    out.loss.backward()
    stats = rollout_stats(rollout, scores, valid)
    for tensor in [advantages, kl, out.loss, *[v for pair in stats.values() for v in pair if torch.is_tensor(v)]]:
        assert tensor.device.type == torch.device(device).type


@pytest.mark.parametrize("device", _devices())
def test_ppo_tensor_path_stays_on_the_rollout_device(device):
    rollout, scores, valid = _rollout(device)
    mask = rollout.response_mask * valid.unsqueeze(1).to(rollout.response_mask.dtype)
    values = torch.zeros(B, T, device=device) + 0.5 * mask
    ref_logprobs = rollout.logprobs - 0.1 * mask
    advantages, returns, kl = advantages_and_returns(PPOConfig(), scores, mask, rollout.logprobs * mask, ref_logprobs,
                                                     values, 0.05, DistContext())
    new_logprobs = (rollout.logprobs * mask).clone().requires_grad_()
    new_values = values.clone().requires_grad_()
    loss = (ppo_policy_loss(new_logprobs, rollout.logprobs * mask, advantages, mask, clip_range=0.2).loss
            + ppo_value_loss(new_values, values, returns, mask, clip_range_value=0.2).loss)
    loss.backward()
    explained, _ = explained_variance(returns, values, mask, DistContext())
    for tensor in [advantages, returns, kl, loss, explained, new_logprobs.grad]:
        assert tensor.device.type == torch.device(device).type


@pytest.mark.parametrize("device", _devices())
def test_scores_arrive_on_the_rollout_device(device):
    from rlhf.recipes._online import score

    examples = [{"prompt": "p", "columns": {"answer": i}} for i in range(2)]
    scores, valid = score(lambda prompts, completions, answer: [None, 1.0, 2.0, 3.0], examples, ["a"] * 4, 2,
                          torch.device(device))
    assert scores.device.type == valid.device.type == torch.device(device).type
    if device != "meta":
        assert scores.tolist() == [0.0, 1.0, 2.0, 3.0] and valid.tolist() == [False, True, True, True]
