"""Statistics over the valid (masked-in) entries of a tensor.

Convention for every function here: ``mask`` is 1 (or True) where an entry counts and 0
elsewhere; any dtype is accepted and nonzero means "counts" (it is a selector, not a weight).
Entries outside the mask are never read arithmetically: they are selected away with
``torch.where``, not multiplied by 0, so nan / inf at pad positions (e.g. ``exp`` of a
garbage log-ratio) cannot leak into a sum (nan * 0 = nan). ``mask`` broadcasts against ``x``.

An empty mask gives 0, never nan: a micro-batch whose completions are all empty must not
poison the step.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _select(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(x with masked-out entries set to 0, boolean mask broadcast to the same shape)."""
    m = mask if mask.dtype == torch.bool else mask != 0
    shape = torch.broadcast_shapes(x.shape, m.shape)
    m = m.expand(shape)
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)), m


def _count(m: Tensor, dim, keepdim: bool, dtype: torch.dtype) -> Tensor:
    return m.sum().to(dtype) if dim is None else m.sum(dim=dim, keepdim=keepdim).to(dtype)


def masked_sum(x: Tensor, mask: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """sum_i mask_i * x_i over ``dim`` (all dims if None). x: e.g. (B, T); mask: (B, T)."""
    xm, _ = _select(x, mask)
    return xm.sum() if dim is None else xm.sum(dim=dim, keepdim=keepdim)


def masked_mean(x: Tensor, mask: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """sum_i mask_i x_i / max(1, sum_i mask_i) over ``dim`` (all dims if None).

    x: (B, T); mask: (B, T). dim=None -> scalar over all valid tokens; dim=-1 -> (B,) the
    per-sequence token mean. A slice with no valid entry gives 0 (not 0/0 = nan).
    """
    xm, m = _select(x, mask)
    total = xm.sum() if dim is None else xm.sum(dim=dim, keepdim=keepdim)
    return total / _count(m, dim, keepdim, total.dtype).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True, dim=None) -> Tensor:
    """Variance of the valid entries: sum_i m_i (x_i - mu)^2 / (n - 1) (unbiased) or / n.

    mu = masked_mean(x, mask), n = sum_i m_i. Bessel's correction by default, as TRL's
    ``masked_var`` (which ``whiten`` mirrors, see below). n <= 1 gives 0 rather than nan
    or an error, so it never forces a host sync to check; a single value has no spread.
    """
    xm, m = _select(x, mask)
    keep = dim is not None
    mean = masked_mean(x, m, dim=dim, keepdim=keep)
    centred = torch.where(m, xm - mean, torch.zeros((), dtype=xm.dtype, device=xm.device))
    sq = centred.pow(2)
    total = sq.sum() if dim is None else sq.sum(dim=dim)
    n = _count(m, dim, False, total.dtype)
    denom = (n - 1.0) if unbiased else n
    return total / denom.clamp(min=1)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
           moments: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """(x - mu) / sqrt(sigma^2 + eps) over ALL valid entries of the batch; 0 where mask is 0.

    mu, sigma^2 = masked_mean, masked_var (unbiased) over every valid entry (global, not per
    row). With shift_mean=False the mean is added back (only the scale is normalised), as
    TRL's ``masked_whiten`` does for GAE advantages when ``shift_mean=False``. Used for PPO
    advantage normalisation ("The N implementation details of RLHF with PPO", Huang et al.
    2024) and REINFORCE++'s global batch normalisation (Hu 2025, arXiv 2501.03262).
    Masked-out positions are returned as 0 so downstream sums need no second mask.
    ``moments`` = (mu, sigma^2) computed elsewhere, e.g. over every micro-batch and rank of a
    step (``train.distributed.global_masked_moments``), replaces this batch's own.
    x: (B, T); mask: (B, T) -> (B, T).
    """
    _, m = _select(x, mask)
    if moments is None:
        mean, var = masked_mean(x, m), masked_var(x, m, unbiased=True)
    else:
        mean, var = (v.to(x.dtype) for v in moments)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))
