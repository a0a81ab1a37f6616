import math

import pytest
import torch

from rlhf.ops.masked import masked_mean, masked_sum, masked_var, whiten

X = [[1.0, 2.0, 3.0, 4.0], [10.0, -2.0, 7.0, 5.0], [0.5, 0.5, 0.5, 0.5]]
M = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]


def naive_valid(x, m):
    return [x[i][j] for i in range(len(x)) for j in range(len(x[0])) if m[i][j]]


def naive_var(vals, unbiased):
    mu = sum(vals) / len(vals)
    return sum((v - mu) ** 2 for v in vals) / (len(vals) - (1 if unbiased else 0))


def t(v, dtype=torch.float64):
    return torch.tensor(v, dtype=dtype)


def test_masked_sum_and_mean_against_loops():
    x, m = t(X), t(M, torch.int64)
    vals = naive_valid(X, M)
    assert masked_sum(x, m).item() == pytest.approx(sum(vals))
    assert masked_mean(x, m).item() == pytest.approx(sum(vals) / len(vals))
    rows = masked_mean(x, m, dim=-1)
    for i in range(3):
        row = [X[i][j] for j in range(4) if M[i][j]]
        expected = sum(row) / len(row) if row else 0.0  # an empty row is 0, not nan
        assert rows[i].item() == pytest.approx(expected)
    assert masked_sum(x, m, dim=-1).tolist() == pytest.approx([3.0, 20.0, 0.0])


def test_mask_dtypes_agree_and_garbage_off_mask_does_not_leak():
    x = t(X)
    x[0, 3] = float("nan")  # off-mask garbage, e.g. exp of a pad log-ratio
    x[2, 0] = float("inf")
    for m in (t(M, torch.int64), t(M), t(M, torch.int64).bool()):
        assert math.isfinite(masked_sum(x, m).item())
        assert masked_mean(x, m).item() == pytest.approx(sum(naive_valid(X, M)) / 6)
        assert math.isfinite(masked_var(x, m).item())
        assert torch.isfinite(whiten(x, m)).all()


def test_empty_mask_gives_zero_not_nan():
    x = torch.randn(2, 3)
    z = torch.zeros(2, 3)
    assert masked_sum(x, z).item() == 0.0
    assert masked_mean(x, z).item() == 0.0
    assert masked_var(x, z).item() == 0.0
    assert torch.equal(whiten(x, z), torch.zeros(2, 3))


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_against_loop(unbiased):
    vals = naive_valid(X, M)
    got = masked_var(t(X), t(M), unbiased=unbiased).item()
    assert got == pytest.approx(naive_var(vals, unbiased))
    single = masked_var(t([[3.0, 9.0]]), t([[0, 1]]), unbiased=unbiased)
    assert single.item() == 0.0


def test_masked_var_per_row():
    got = masked_var(t(X), t(M), dim=-1)
    assert got[0].item() == pytest.approx(naive_var([1.0, 2.0], True))
    assert got[1].item() == pytest.approx(naive_var(X[1], True))
    assert got[2].item() == 0.0


def test_whiten_mean_zero_var_one_on_mask_and_zero_off_mask():
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64) * 3 + 5
    m = torch.rand(4, 7) > 0.4
    w = whiten(x, m)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~m] == 0).all()
    # shift_mean=False only rescales: the mean is kept
    w2 = whiten(x, m, shift_mean=False)
    mu = masked_mean(x, m)
    assert masked_mean(w2, m).item() == pytest.approx(mu.item(), rel=1e-9)
    assert masked_var(w2, m).item() == pytest.approx(1.0, abs=1e-6)
