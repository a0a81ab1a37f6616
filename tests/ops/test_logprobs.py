import math

import torch

from rlhf.ops.logprobs import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits


def test_logprobs_from_logits_matches_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    out = logprobs_from_logits(logits, torch.tensor([1]))
    assert torch.allclose(out, torch.tensor([math.log(0.75)]))


def test_chunked_hidden_path_equals_naive_log_softmax_values_and_grads():
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    naive = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    chunked = logprobs_from_hidden(hidden, weight, targets, chunk_size=5)
    assert torch.allclose(naive, chunked, atol=1e-6)
    g_naive = torch.autograd.grad(naive.sum(), (hidden, weight))
    g_chunk = torch.autograd.grad(chunked.sum(), (hidden, weight))
    for a, b in zip(g_naive, g_chunk):
        assert torch.allclose(a, b, atol=1e-5)


def test_entropy_uniform_and_peaked():
    assert torch.allclose(entropy_from_logits(torch.zeros(1, 4)), torch.tensor([math.log(4.0)]))
    assert entropy_from_logits(torch.tensor([[100.0, 0.0, 0.0]]))[0] < 1e-6
