"""Rollouts with a Hugging Face causal LM: our own sampling loop over the model's KV cache.

    rollout = HFRollout(model, tokenizer).generate(prompts, GenerationConfig(num_generations=4, seed=0))

Why not `model.generate`: we need the log-probs of the sampled tokens under the sampling
temperature (which PPO / GRPO use as `old_logprobs`), per-row masks that never come from pad
ids (pad == EOS in SmolLM2 and many checkpoints), stop strings that end the mask at the token
that completed them, and random numbers we own (per-prompt seeds, so a prompt's samples do not
depend on the batch it is sampled in) -- `generate` gives each only partly and differently
across versions.

The loop: one prefill forward over the left-padded prompts, then one forward per new token
with that token alone, the attention mask grown by one column and explicit position ids
(counting from each row's first real token, as the packed training rows do).
"""

from __future__ import annotations

import torch

from rlhf.data.tokenize import encode_text, render_chat
from rlhf.models.dropout import eval_mode
from rlhf.models.lora import hf_model, unwrap_model
from rlhf.ops.logprobs import entropy_from_logits

from .base import GenerationConfig, Rollout, sampling_temperature

# Tokens decoded (beyond the longest stop string's byte length) to look for a stop string
# that the newest token completed: a token decodes to at least one byte, except special
# tokens, which decoding skips.
_STOP_WINDOW_SLACK = 8


class HFRollout:
    """`RolloutBackend` for a transformers causal LM (or a peft model around one).

    `eos_token_ids`: ids that end a completion; default the tokenizer's EOS plus every EOS id
    of the model's generation config (chat models often list several, e.g. <|eot_id|>).
    `generator`: the random stream sampling draws from; default a new one on the model's
    device, seeded from torch's global RNG (so `torch.manual_seed` makes runs repeatable).
    Save and restore it with `get_rng_state` / `set_rng_state` for exact resume.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, eos_token_ids: list[int] | None = None,
                 generator: torch.Generator | None = None):
        # DDP's forward broadcasts buffers: a collective per decoding step that ranks stopping
        # at different steps would deadlock on, so sample with the module inside it.
        self.model = unwrap_model(model)
        self.tokenizer = tokenizer
        if eos_token_ids is None:
            eos_token_ids = _eos_token_ids(self.model, tokenizer)
        self.eos_token_ids = sorted({int(i) for i in eos_token_ids})
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad)
        if generator is None:
            generator = torch.Generator(device=_device(self.model))
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.generator = generator

    def get_rng_state(self) -> torch.Tensor:
        """The sampling generator's state (a CPU byte tensor), to store in a checkpoint."""
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore a state from `get_rng_state`: the next rollouts continue the saved stream."""
        self.generator.set_state(state)

    @torch.no_grad()
    def generate(self, prompts: list, config: GenerationConfig | None = None, *,
                 generator: torch.Generator | None = None, seeds: list[int] | None = None) -> Rollout:
        """Sample G = config.num_generations completions of every prompt; rows are group-major.

        A prompt is a string (tokenised with the tokenizer's default special tokens), a list of
        chat messages (rendered with the chat template and its generation prompt) or a list of
        token ids. Randomness: `seeds` (one per prompt) gives each prompt its own stream, so its
        samples are the same whichever batch it is sampled in (up to float rounding of the
        logits); else `generator` (default: the backend's own), reseeded by config.seed if set.
        """
        config = config if config is not None else GenerationConfig()
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"generate got {len(seeds)} seeds for {len(prompts)} prompts")
        encoded = [self._encode(index, prompt) for index, prompt in enumerate(prompts)]
        uniforms = self._uniforms(len(prompts), config, generator, seeds)
        with eval_mode(self.model):  # dropout off: the log-probs must be those of the deterministic policy
            return self._generate(encoded, config, uniforms)

    def _uniforms(self, num_prompts: int, config: GenerationConfig, generator: torch.Generator | None,
                  seeds: list[int] | None) -> torch.Tensor:
        """(B, max_new_tokens) float64 uniforms in (0, 1], one per row and decoding step, on the CPU.

        Drawn up front so that a row's randomness depends on its own stream only, not on how many
        rows decode beside it or for how long.
        """
        shape = (config.num_generations, config.max_new_tokens)
        if seeds is not None:
            draws = [torch.rand(shape, generator=torch.Generator().manual_seed(int(seed) % 2**63), dtype=torch.float64)
                     for seed in seeds]
            return 1.0 - torch.cat(draws)
        generator = generator if generator is not None else self.generator
        if config.seed is not None:
            generator.manual_seed(config.seed)
        draws = torch.rand((num_prompts * shape[0], shape[1]), generator=generator, device=generator.device,
                           dtype=torch.float64)
        return 1.0 - draws.cpu()

    def _encode(self, index: int, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = encode_text(self.tokenizer, prompt, add_special_tokens=True)
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(f"prompt {index} is a list of chat messages but the tokenizer has no chat template")
            ids = render_chat(self.tokenizer, list(prompt), add_generation_prompt=True)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
        else:
            raise ValueError(f"prompt {index}: expected a string, a list of chat messages or a list of token ids, "
                             f"got {type(prompt).__name__}")
        if not ids:
            # Nothing would predict the first token: the first log-prob has no context.
            raise ValueError(f"prompt {index} tokenises to no tokens")
        return ids

    def _generate(self, encoded: list[list[int]], config: GenerationConfig, uniforms: torch.Tensor) -> Rollout:
        device = _device(self.model)
        uniforms = uniforms.to(device)  # (B, max_new_tokens)
        group = config.num_generations
        rows = [ids for ids in encoded for _ in range(group)]
        batch, width = len(rows), max(len(ids) for ids in rows)
        prompt_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)  # (B, P)
        prompt_mask = torch.zeros((batch, width), dtype=torch.long)  # (B, P)
        for b, ids in enumerate(rows):
            prompt_ids[b, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[b, width - len(ids):] = 1
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        prompt_lengths = prompt_mask.sum(-1)  # (B,)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)
        pad = torch.full((batch,), self.pad_token_id, dtype=torch.long, device=device)

        from transformers import DynamicCache

        cache = DynamicCache(config=hf_model(self.model).config)  # updated in place by every forward
        with_cache = {_cache_argument(self.model): cache, "use_cache": True}
        attention_mask = prompt_mask
        # Prefill each distinct prompt once (rows are group-major: G copies of every prompt), then
        # copy its KV cache to the G rows: 1/G of the prompt compute.
        unique = torch.arange(0, batch, group, device=device)  # (B / G,)
        position_ids = (prompt_mask[unique].cumsum(-1) - 1).clamp(min=0)  # (B / G, P); pads are masked anyway
        outputs = self.model(input_ids=prompt_ids[unique], attention_mask=prompt_mask[unique], position_ids=position_ids,
                             logits_to_keep=1, **with_cache)
        if group > 1:
            cache.batch_repeat_interleave(group)
        next_logits = outputs.logits[:, -1].float().repeat_interleave(group, dim=0)  # (B, V)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
        tokens, logprobs, entropies, masks = [], [], [], []
        history: list[list[int]] = [[] for _ in range(batch)]  # CPU copy, for stop strings only
        window = max((len(s.encode("utf-8")) for s in config.stop_strings), default=0) + _STOP_WINDOW_SLACK
        for step in range(config.max_new_tokens):
            logits = next_logits / sampling_temperature(config.temperature)  # the distribution sampled from
            token = _sample(logits, config, uniforms[:, step])  # (B,)
            # log-probs at the sampling temperature, as the training forward computes them (see Rollout)
            token_logprobs = logits.gather(-1, token.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            active = ~finished
            token = torch.where(active, token, pad)
            tokens.append(token)
            logprobs.append(torch.where(active, token_logprobs, torch.zeros_like(token_logprobs)))
            entropies.append(torch.where(active, entropy_from_logits(logits), torch.zeros_like(token_logprobs)))
            masks.append(active)
            finished = finished | (active & torch.isin(token, eos))
            if config.stop_strings:
                finished = self._stop_strings(token, active, finished, history, config.stop_strings, window)
            if _all_ranks_done(bool(finished.all()), device):
                break
            if step + 1 == config.max_new_tokens:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            outputs = self.model(input_ids=token.unsqueeze(-1), attention_mask=attention_mask,
                                 position_ids=(prompt_lengths + step).unsqueeze(-1),
                                 logits_to_keep=1, **with_cache)
            next_logits = outputs.logits[:, -1].float()  # (B, V)

        response_ids = torch.stack(tokens, dim=1)  # (B, T)
        response_mask = torch.stack(masks, dim=1).long()  # (B, T)
        completions = []
        for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
            text = self.tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            completions.append(_cut_at_stop(text, config.stop_strings))
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=torch.stack(logprobs, dim=1),
            truncated=~finished,
            completions=completions,
            prompt_index=torch.arange(len(encoded), device=device).repeat_interleave(group),
            entropy=torch.stack(entropies, dim=1),
        )

    def _stop_strings(self, token: torch.Tensor, active: torch.Tensor, finished: torch.Tensor,
                      history: list[list[int]], stop_strings: list[str], window: int) -> torch.Tensor:
        """Finish the rows whose newest token completed a stop string.

        Only the decoded tail is searched: any stop string it contains was completed by the newest
        token, since the tail one step earlier (which held every older occurrence) had none.
        """
        finished = finished.clone()
        for b, (t, was_active, done) in enumerate(zip(token.tolist(), active.tolist(), finished.tolist())):
            if not was_active:
                continue
            history[b].append(t)
            if done:
                continue
            tail = self.tokenizer.decode(history[b][-window:], skip_special_tokens=True)
            if any(stop in tail for stop in stop_strings):
                finished[b] = True
        return finished


def _sample(logits: torch.Tensor, config: GenerationConfig, uniforms: torch.Tensor) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V) already divided by the temperature: greedy at
    temperature 0, else top-k, then top-p, then a draw with `uniforms` (B,) in (0, 1].

    The processing order is transformers' (temperature, then top-k, then top-p); the nucleus is
    the smallest set of most probable tokens whose mass reaches top_p (Holtzman et al. 2019,
    arXiv 1904.09751, eqn. 2).
    """
    if config.temperature == 0:
        return logits.argmax(-1)
    scores = logits  # (B, V)
    if 0 < config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_scores, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the more probable tokens
        drop = mass_before >= config.top_p
        drop[:, 0] = False
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    return _draw(torch.softmax(scores, dim=-1), uniforms)


def _draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row (B,) from probs (B, V) by inverting the CDF at uniforms (B,) in (0, 1].

    `torch.multinomial` draws V exponentials per row (about 30 ms a step for 32 rows of a 49k
    vocabulary on this CPU, 12% of decoding); this takes one uniform per row. u > 0, so a token
    of probability 0 is never picked; the CDF is summed in float64 so rounding cannot bias it.
    """
    cdf = probs.double().cumsum(-1)  # (B, V)
    target = uniforms.to(device=probs.device, dtype=torch.float64).unsqueeze(-1) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _all_ranks_done(done: bool, device: torch.device) -> bool:
    """Whether every rank's rows have finished.

    Under FSDP every forward is a collective (parameter all-gathers), so all ranks decode the
    same number of steps: a rank whose rows are done keeps stepping until the others are.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return done
    flag = torch.tensor([int(done)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _cut_at_stop(text: str, stop_strings: list[str]) -> str:
    """The text before the first occurrence of any stop string."""
    cuts = [text.find(stop) for stop in stop_strings]
    cuts = [cut for cut in cuts if cut >= 0]
    return text[: min(cuts)] if cuts else text


def _eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    generation_config = getattr(hf_model(model), "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.extend([configured] if isinstance(configured, int) else list(configured))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token; "
                         "pass eos_token_ids=")
    return ids


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward keyword for a KV cache: `cache` in recent transformers (which deprecates
    `past_key_values`), `past_key_values` before."""
    import inspect

    parameters = inspect.signature(hf_model(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")
