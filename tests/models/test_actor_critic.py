import torch

from rlhf.models.actor_critic import SharedTrunkActorCritic
from rlhf.models.forward import CausalLMLogprobs
from rlhf.testing import tiny_causal_lm, tiny_tokenizer


def test_shared_trunk_gives_the_policy_logprobs_and_a_head_on_the_same_hidden_states():
    tok = tiny_tokenizer()
    policy = CausalLMLogprobs(tiny_causal_lm(tok, seed=1))
    actor_critic = SharedTrunkActorCritic(policy)
    torch.nn.init.normal_(actor_critic.value_head.weight)
    input_ids = torch.randint(0, 256, (2, 7))
    labels = torch.full_like(input_ids, -100)
    labels[0, 3:6], labels[1, 1:6] = input_ids[0, 4:7], input_ids[1, 2:7]
    logprobs, values = actor_critic(input_ids, labels)
    assert torch.allclose(logprobs, policy(input_ids, labels), atol=1e-6)
    hidden = policy.model.model(input_ids=input_ids).last_hidden_state[labels != -100]  # (N, H)
    assert torch.allclose(values, actor_critic.value_head(hidden).squeeze(-1), atol=1e-6)
    assert torch.allclose(actor_critic.values(input_ids, labels), values, atol=1e-6)
    # one optimiser over the module reaches the trunk from the value loss too
    values.sum().backward()
    assert policy.model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_value_head_starts_at_zero():
    tok = tiny_tokenizer()
    actor_critic = SharedTrunkActorCritic(CausalLMLogprobs(tiny_causal_lm(tok)))
    input_ids = torch.randint(0, 256, (1, 5))
    assert actor_critic.values(input_ids, input_ids).abs().max() == 0
