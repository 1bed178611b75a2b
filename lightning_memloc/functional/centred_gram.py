"""All-pairs view distances from a float32 Gram of the normalised views, centred per candidate.

The all-pairs alignment (SSLMem, Wang et al., ICLR 2024) needs ``d_ab = ‖u_a − u_b‖`` for the
L2-normalised views ``u`` of a candidate. From a float32 Gram, ``d² = G_aa + G_bb − 2G_ab`` loses
~1e-7 · ‖u‖² to cancellation: ~3e-4 in ``d`` for nearly identical views. Distances do not change
when a common vector is subtracted, so the Gram is taken of ``v_a = u_a − mean_b u_b``, whose
entries are of the size of the views' spread: the cancellation becomes relative to the spread.

What is left (measured in docs/performance.md, "The float32 Gram"; ≤ 2e-7 per alignment for
at least :data:`MIN_FEATURES` features, the only ones the hook gives it):

* the rounding of ``u`` and of the norms (summed in float32 blocks of :data:`NORM_BLOCK`, then in
  float64): ~1e-7 relative in ``d``, ~1e-7 absolute as ``d → 0``;
* the float32 sums of ``V_ab`` (blocks of :data:`GRAM_BLOCK` features, blocks added in float64):
  ~3e-8 · (V_aa + V_bb) in ``d²``, large against ``d²`` only for a pair much closer than its
  candidate's spread (two equal views among others). :func:`centred_sq_distances` flags those
  candidates (``d² < TAU · (V_aa + V_bb)``) for the caller to recompute in float64.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["FLOAT64_NORMS", "GRAM_BLOCK", "MIN_FEATURES", "NORM_BLOCK", "TAU", "centred_gram", "centred_sq_distances", "view_norms"]

#: Features per float32 partial norm in :func:`view_norms` (their squares added in float64), and
#: below how many features the norms are taken in float64 outright (a float32 norm is ~1.5e-7 off).
NORM_BLOCK = 128
FLOAT64_NORMS = 1024

#: Features per float32 product of :func:`centred_gram` (partial Grams added in float64): float32
#: accumulation error grows with the length of a sum, ~1e-6 relative over 16,384 features, ~3e-8 over 256.
GRAM_BLOCK = 256

#: Fewer features than this: the float64 Gram costs no more than this one (measured on CPU), and a
#: float32 sum of few blocks is the least accurate (~4e-7 in ``d`` for 79 features): use float64.
MIN_FEATURES = 2048

#: A pair whose squared distance is below ``TAU`` times the squared norms of its centred views
#: (more than ~5.7x closer than the candidate's spread) is recomputed in float64.
TAU = 1.0 / 32.0


def view_norms(reps: Tensor) -> Tensor:
    """L2 norm of every view, ``(N, K, D)`` → ``(N, K)`` float64, accurate to ~1e-7 relative or better.

    ``torch.linalg.vector_norm`` of 16,384 float32 values is ~1e-6 off (relative, in the squared
    norm), which would be a 5e-7 relative error in every distance: the norms of blocks of
    :data:`NORM_BLOCK` features are taken in float32 (one pass, as fast) and their squares summed
    in float64; below :data:`FLOAT64_NORMS` features, in float64 outright.

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

    ``u_a = r_a / max(‖r_a‖, 1e-12)`` (``F.normalize``: an all-zero view stays zero),
    ``v_a = u_a − mean_b u_b``, ``V = v vᵀ``. ``D`` is read in chunks of at most ``chunk_bytes``
    (one buffer reused for every chunk: no temporary of the input's size), each cut into blocks
    of :data:`GRAM_BLOCK` features whose float32 Grams (one batched product per chunk) are added
    in float64. No gradient flows through it.

    Example:
        >>> reps = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # u = e1, e2; mean (0.5, 0.5)
        >>> centred_gram(reps, 1 << 20)
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
    """Squared pair distances from centred Gram matrices, and which candidates need float64.

    Args:
        gram: ``(..., K, K)`` from :func:`centred_gram`.
        tau: flag a candidate with a pair of ``d² < tau · (V_aa + V_bb)``.

    Returns:
        ``(d2, risky)``: ``d2`` ``(..., K(K−1)/2)`` float64 over the pairs ``a < b`` in
        ``torch.triu_indices`` order (clamped at 0); ``risky`` ``(...)`` bool.

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
