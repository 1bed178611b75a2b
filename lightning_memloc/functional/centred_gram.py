"""All-pairs view distances from a float32 Gram of normalised views centred per candidate (docs/performance.md)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

#: Features per float32 partial norm in :func:`view_norms` (their squares added in float64), and
#: below how many features the norms are taken in float64 outright (a float32 norm is ~1.5e-7 off).
NORM_BLOCK = 128
FLOAT64_NORMS = 1024

#: Features per float32 product of :func:`centred_gram` (partial Grams added in float64).
GRAM_BLOCK = 256

#: Fewer features than this: use float64 (as fast, and more accurate for few blocks).
MIN_FEATURES = 2048

#: A pair with ``d² < TAU · (V_aa + V_bb)`` is recomputed in float64.
TAU = 1.0 / 32.0


def view_norms(reps: Tensor) -> Tensor:
    """L2 norm of every view, ``(N, K, D)`` → ``(N, K)`` float64 (float32 block norms summed in float64).

    Example:
        >>> view_norms(torch.tensor([[[3.0, 4.0], [0.0, 0.0]]]))
        tensor([[5., 0.]], dtype=torch.float64)
    """
    n, k, d = reps.shape
    if d < FLOAT64_NORMS:
        return torch.linalg.vector_norm(reps.to(torch.float64), dim=-1)
    main = d - d % NORM_BLOCK
    blocks = torch.linalg.vector_norm(reps[:, :, :main].reshape(n, k, main // NORM_BLOCK, NORM_BLOCK), dim=-1)
    sq = blocks.to(torch.float64).square_().sum(dim=-1)
    if main < d:
        sq += torch.linalg.vector_norm(reps[:, :, main:].to(torch.float64), dim=-1).square_()
    return sq.sqrt_()


def centred_gram(reps: Tensor, chunk_bytes: int) -> Tensor:
    """Gram of each candidate's normalised views minus their mean: ``(N, K, D)`` float32 → ``(N, K, K)`` float64.

    ``u_a = r_a / max(‖r_a‖, 1e-12)``, ``v_a = u_a − mean_b u_b``, ``V = v vᵀ``; ``D`` read in ``chunk_bytes`` chunks.

    Example:
        >>> centred_gram(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]), 1 << 20)  # u = e1, e2; mean (0.5, 0.5)
        tensor([[[ 0.5000, -0.5000],
                 [-0.5000,  0.5000]]], dtype=torch.float64)
    """
    reps = reps.detach()
    n, k, d = reps.shape
    inv = view_norms(reps).clamp_min_(1e-12).reciprocal_().to(reps.dtype)
    neg_mean = inv.div(-k).unsqueeze(1)  # (N, 1, K): bmm(neg_mean, r) = -(mean of the normalised views)
    gram = reps.new_zeros((n, k, k), dtype=torch.float64)
    block = min(GRAM_BLOCK, d)
    main = d - d % block
    per_chunk = max(1, min(main // block, chunk_bytes // max(1, n * k * block * reps.element_size())))
    buf = reps.new_empty((n, per_chunk, k, block))
    for start in range(0, main, per_chunk * block):
        blocks = min(per_chunk, (main - start) // block)
        x = reps[:, :, start:start + blocks * block]
        centre = torch.bmm(neg_mean, x).view(n, blocks, 1, block)
        v = buf[:, :blocks]  # (N, blocks, K, block): the chunk's centred views, block by block
        torch.addcmul(centre, x.unflatten(2, (blocks, block)).transpose(1, 2), inv.view(n, 1, k, 1), out=v)
        gram += torch.matmul(v, v.transpose(-1, -2)).sum(dim=1, dtype=torch.float64)
    if main < d:  # the last d % block features
        v = reps[:, :, main:] * inv.unsqueeze(-1)
        v -= v.mean(dim=1, keepdim=True)
        gram += torch.bmm(v, v.transpose(1, 2))
    return gram


def centred_sq_distances(gram: Tensor, tau: float = TAU) -> Tuple[Tensor, Tensor]:
    """``(d2, risky)``: squared pair distances ``(..., K(K−1)/2)`` of centred Grams ``(..., K, K)``, in
    ``torch.triu_indices`` order, and ``(...)`` candidates with a pair of ``d² < tau · (V_aa + V_bb)`` (need float64).

    Example:
        >>> d2, risky = centred_sq_distances(torch.tensor([[[0.5, -0.5], [-0.5, 0.5]]], dtype=torch.float64))
        >>> d2, risky
        (tensor([[2.]], dtype=torch.float64), tensor([False]))
    """
    k = gram.shape[-1]
    g = gram.to(torch.float64)
    sq = g.diagonal(dim1=-2, dim2=-1)
    upper = torch.triu_indices(k, k, 1, device=g.device)
    scale = sq[..., upper[0]] + sq[..., upper[1]]
    d2 = scale - 2 * g[..., upper[0], upper[1]]
    risky = (d2 < tau * scale).any(dim=-1)
    return d2.clamp_min_(0), risky
