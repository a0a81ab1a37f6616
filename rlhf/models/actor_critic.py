"""Policy + critic as one module for PPO, so one DDP wrapper and one optimiser cover both.

Two layouts (PPO's `critic` option):
- `ActorCritic`: a separate value model (a one-label sequence-classification LM, usually the
  reward model), as in InstructGPT (Ouyang et al. 2022, sec. 3.5). Twice the weights and
  forward passes, no interference between the two losses.
- `SharedTrunkActorCritic`: a linear value head on the policy's own final hidden states, as in
  Ziegler et al. 2019 / Stiennon et al. 2020's shared variant: one backbone pass yields both
  log-probs and values; the value loss also trains the trunk (weighted by vf_coef).

Both return, for shifted labels (B, T), the (N,) log-probs and (N,) values V(s_t) at the N
labelled positions, i.e. the state before each response token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.models.forward import CausalLMLogprobs, at_labels, label_targets
from rlhf.models.lora import hf_model
from rlhf.models.reward import TokenValues
from rlhf.models.saving import save_pretrained_model

VALUE_HEAD_FILE = "value_head.safetensors"


class ActorCritic(torch.nn.Module):
    def __init__(self, policy: CausalLMLogprobs, critic: TokenValues):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, label_positions=None):
        inputs = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask, position_ids=position_ids,
                      label_positions=label_positions)
        return self.policy(**inputs), self.critic(**inputs)  # (N,), (N,)

    def critic_parameters(self):
        """The parameters that only the value loss trains (for the critic's own learning rate)."""
        return self.critic.parameters()

    def values(self, input_ids, labels, attention_mask=None, position_ids=None, label_positions=None) -> torch.Tensor:
        return self.critic(input_ids=input_ids, labels=labels, attention_mask=attention_mask, position_ids=position_ids,
                           label_positions=label_positions)

    def save_critic(self, path: Path, tokenizer) -> None:
        """The critic as a sequence-classification model directory (it loads as a reward model)."""
        save_pretrained_model(self.critic.model, tokenizer, path)


class SharedTrunkActorCritic(torch.nn.Module):
    def __init__(self, policy: CausalLMLogprobs):
        super().__init__()
        if not policy.uses_hidden_shortcut:
            raise ValueError("critic=shared needs a plain LM head (no bias, no logit scaling); use critic=separate")
        self.policy = policy
        hidden_size = hf_model(policy.model).config.hidden_size
        self.value_head = torch.nn.Linear(hidden_size, 1)
        # Zero init: every value starts at 0, so the first advantages are the returns themselves.
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(policy.parameters()))

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, label_positions=None):
        hidden = at_labels(self.policy.hidden_states(input_ids, attention_mask, position_ids), labels,
                           label_positions)  # (N, H)
        return self.policy.logprobs_from_hidden(hidden, label_targets(labels, label_positions)), self._head(hidden)

    def critic_parameters(self):
        """The value head; the trunk it reads belongs to the policy (and its learning rate)."""
        return self.value_head.parameters()

    def values(self, input_ids, labels, attention_mask=None, position_ids=None, label_positions=None) -> torch.Tensor:
        hidden = self.policy.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, H)
        return self._head(at_labels(hidden, labels, label_positions))

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()  # (N,)

    def save_critic(self, path: Path, tokenizer) -> None:
        """The value head alone (the trunk is the policy in final/), as safetensors."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(tensors, str(path / VALUE_HEAD_FILE))
