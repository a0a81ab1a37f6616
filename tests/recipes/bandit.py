"""A bandit with a known answer, for checking that the online and preference recipes optimise
the KL-regularised objective they claim to.

One prompt, and a policy whose every completion is a single token: an "arm". The reward is a
fixed table over four answer tokens (every other token gets OTHER_REWARD), the reference is a
tiny Llama whose next-token distribution after the prompt is set to REF_PROBS (nearly all its
mass on the answers, non-uniform). Then

    max_pi  E_pi[r] - beta * KL(pi || ref)   has the closed form   pi*(y) = ref(y) exp(r(y) / beta) / Z

(Rafailov et al. 2023, DPO eq. 4; Korbak et al. 2022). `reverse_kl_optimum` gives the optimum
of the other direction, E_pi[r] - beta * KL(ref || pi), which is where a sampled k3 penalty in
the loss leads.
"""

from __future__ import annotations

import math
import random

import torch

from rlhf.testing import tiny_causal_lm, tiny_tokenizer

PROMPT = "Pick a letter:"
ANSWERS = "ABCD"
REF_PROBS = [0.4, 0.3, 0.2, 0.1]  # the reference's probabilities of the answers (before OTHER_MASS)
REWARDS = [0.0, 0.5, 1.0, 1.5]
OTHER_REWARD = -1.0
OTHER_MASS = 1e-4  # the reference's total probability of every non-answer token
BETA = 0.5


def reward(prompts, completions, **columns):
    table = dict(zip(ANSWERS, REWARDS))
    return [table.get(c, OTHER_REWARD) for c in completions]


def answer_ids(tokenizer) -> list[int]:
    ids = [tokenizer.encode(a, add_special_tokens=False) for a in ANSWERS]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


def _prompt_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(PROMPT)])


def reference_logits(tokenizer) -> torch.Tensor:
    """(V,) the reference's next-token log-probs after PROMPT."""
    vocab = len(tokenizer)
    logits = torch.full((vocab,), math.log(OTHER_MASS / (vocab - len(ANSWERS))))
    logits[answer_ids(tokenizer)] = torch.log(torch.tensor(REF_PROBS) * (1 - OTHER_MASS))
    return logits


def rewards_vector(tokenizer) -> torch.Tensor:
    r = torch.full((len(tokenizer),), OTHER_REWARD)
    r[answer_ids(tokenizer)] = torch.tensor(REWARDS)
    return r


def bandit_model(tokenizer=None):
    """A tiny Llama whose next-token distribution after PROMPT is exactly the reference's: the LM
    head (untied) is set to the rank-one map that sends the prompt's final hidden state h to the
    reference logits, W = logits h^T / |h|^2. Everything stays trainable."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    model = tiny_causal_lm(tokenizer, seed=0, tie_word_embeddings=False)
    with torch.no_grad():
        h = model.model(input_ids=_prompt_ids(tokenizer)).last_hidden_state[0, -1]  # (d,)
        model.lm_head.weight.copy_(torch.outer(reference_logits(tokenizer), h) / (h @ h))
    return model


def save_bandit_model(path, tokenizer=None) -> str:
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    bandit_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@torch.no_grad()
def policy_probs(model, tokenizer) -> torch.Tensor:
    """(V,) the model's next-token distribution after PROMPT."""
    model.eval()
    return torch.softmax(model(input_ids=_prompt_ids(tokenizer)).logits[0, -1].float(), dim=-1)


def kl_optimum(tokenizer, beta: float = BETA) -> torch.Tensor:
    """pi* = ref exp(r / beta) / Z over the whole vocabulary."""
    return torch.softmax(reference_logits(tokenizer) + rewards_vector(tokenizer) / beta, dim=-1)


def reverse_kl_optimum(tokenizer, beta: float = BETA) -> torch.Tensor:
    """argmax_pi E_pi[r] - beta KL(ref || pi): stationarity gives pi(y) = beta ref(y) / (lam - r(y)),
    with lam > max r chosen (by bisection) so that pi sums to one."""
    ref, r = reference_logits(tokenizer).double().exp(), rewards_vector(tokenizer).double()
    lo, hi = float(r.max()) + 1e-12, float(r.max()) + 10 * beta + 10
    for _ in range(200):
        lam = (lo + hi) / 2
        lo, hi = (lam, hi) if float((beta * ref / (lam - r)).sum()) > 1 else (lo, lam)
    pi = beta * ref / (lam - r)
    return (pi / pi.sum()).float()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def bradley_terry_pairs(n: int, *, seed: int = 0) -> list[dict]:
    """n preference rows over random pairs of distinct answers, the winner drawn with
    P(a beats b) = sigmoid(r(a) - r(b)) (Bradley & Terry 1952) -- human-like labels from r."""
    rng = random.Random(seed)
    table = dict(zip(ANSWERS, REWARDS))
    rows = []
    for _ in range(n):
        a, b = rng.sample(ANSWERS, 2)
        a_wins = rng.random() < 1 / (1 + math.exp(table[b] - table[a]))
        chosen, rejected = (a, b) if a_wins else (b, a)
        rows.append({"prompt": PROMPT, "chosen": chosen, "rejected": rejected})
    return rows
