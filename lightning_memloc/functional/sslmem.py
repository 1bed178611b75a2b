"""Alignment, SSLMem (Wang et al., ICLR 2024), LayerMem and ΔLayerMem (Wang et al., NeurIPS 2024, Sec. 3), and
memorization evidence from the encoder alone: the alignment gap of candidates against unseen images,
``E[SSLMem(C)] − E[SSLMem(U)] = E[d_f(U)] − E[d_f(C)]`` for any reference that saw neither (``DESIGN.md`` §8)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from lightning_memloc.checks import check_finite_tensor, check_float_tensor, check_int
from lightning_memloc.functional.statistics import welch_greater

#: Bytes of the largest temporary of :func:`pairwise_alignment`: on CPU small enough to stay in cache
#: (a fresh multi-MB temporary faults page by page), on GPU one or two slices per layer.
CHUNK_BYTES = {"cpu": 4 << 20, "other": 256 << 20}


def _slice_width(n: int, k: int, d: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, min(d, chunk_bytes // max(1, n * k * itemsize)))


def _explicit_alignment(reps: Tensor, anchor: Optional[Tensor], dtype: torch.dtype, chunk_bytes: int) -> Tensor:
    n, k, d = reps.shape
    item = torch.empty((), dtype=dtype).element_size()
    inv = torch.linalg.vector_norm(reps, dim=-1, dtype=dtype).clamp_min_(1e-12).reciprocal_().unsqueeze(-1)
    if anchor is not None:
        width = _slice_width(n, k + 2, d, item, chunk_bytes)
        inv_anchor = torch.linalg.vector_norm(anchor, dim=-1, dtype=dtype).clamp_min_(1e-12).reciprocal_().unsqueeze(-1)
        sq = reps.new_zeros((n, k), dtype=dtype)
        for start in range(0, d, width):
            r = torch.mul(reps[:, :, start:start + width], inv)  # promotes half to the dtype of `inv`
            a = torch.mul(anchor[:, start:start + width], inv_anchor).unsqueeze(1)
            sq += torch.linalg.vector_norm(r - a, dim=-1).square_()
        return sq.sqrt_().mean(dim=1)
    width = _slice_width(n, 2 * k, d, item, chunk_bytes)
    sq = reps.new_zeros((n, k, k), dtype=dtype)
    for start in range(0, d, width):
        r = torch.mul(reps[:, :, start:start + width], inv)
        for a in range(k - 1):
            sq[:, a, a + 1:] += torch.linalg.vector_norm(r[:, a + 1:] - r[:, a:a + 1], dim=-1).square_()
    upper = torch.triu_indices(k, k, 1, device=reps.device)
    return sq[:, upper[0], upper[1]].sqrt_().mean(dim=1)


def view_gram(reps: Tensor, chunk_bytes: int = 0) -> Tensor:
    """Float64 Gram matrix of each candidate's views: ``(N, K, D)`` → ``(N, K, K)``.

    Same slices as :func:`pairwise_alignment`, so ``alignment_from_gram`` of it equals its all-pairs result.
    """
    n, k, d = reps.shape
    chunk_bytes = chunk_bytes if chunk_bytes > 0 else CHUNK_BYTES["cpu" if reps.device.type == "cpu" else "other"]
    width = _slice_width(n, k, d, 8, chunk_bytes)
    gram = reps.new_zeros((n, k, k), dtype=torch.float64)
    for start in range(0, d, width):
        r = reps[:, :, start:start + width].to(torch.float64)
        gram.baddbmm_(r, r.transpose(1, 2))
    return gram


def sq_distances_from_gram(gram: Tensor) -> Tensor:
    """Squared distances of the L2-normalised views from raw Gram matrices: ``(..., K, K)`` → ``(..., K(K−1)/2)``.

    ``‖r_a − r_b‖² = Ĝ_aa + Ĝ_bb − 2Ĝ_ab`` of the normalised Gram Ĝ, pairs in ``torch.triu_indices`` order.
    """
    k = gram.shape[-1]
    # 1 / max(‖r‖, 1e-12) as F.normalize: an all-zero view stays zero (distance 1 to others, 0 to zeros)
    inv = gram.diagonal(dim1=-2, dim2=-1).sqrt().clamp_min(1e-12).reciprocal()
    gram = gram * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    sq = gram.diagonal(dim1=-2, dim2=-1)
    upper = torch.triu_indices(k, k, 1, device=gram.device)
    return (sq[..., upper[0]] + sq[..., upper[1]] - 2 * gram[..., upper[0], upper[1]]).clamp_min_(0)


def pairwise_alignment(reps: Tensor, anchor: Optional[Tensor] = None, chunk_bytes: Optional[int] = None) -> Tensor:
    """Unchecked core of :func:`alignment` (no validation, no device sync): ``(N, K, D)``, ``(N, D)`` → ``(N,)``.

    ``D`` is sliced to at most ``chunk_bytes``; non-finite views give a non-finite result (callers check it).
    """
    dtype = torch.promote_types(reps.dtype, torch.float32)  # half distances are too coarse for SSLMem differences
    chunk_bytes = CHUNK_BYTES["cpu" if reps.device.type == "cpu" else "other"] if chunk_bytes is None else chunk_bytes
    if anchor is None and dtype != torch.float64:
        # all pairs from a float64 Gram matrix: float32 products are exact there, so error ≤ ~3e-8
        return sq_distances_from_gram(view_gram(reps, chunk_bytes)).sqrt_().mean(dim=-1).to(dtype)
    return _explicit_alignment(reps, anchor, dtype, chunk_bytes)


def alignment(representations: Tensor, anchor: Optional[Tensor] = None) -> Tensor:
    """Alignment ``(N,)`` in ``[0, 2]``: mean ``‖r_a − r_b‖₂`` of L2-normalised views over all ``K(K−1)/2`` pairs.

    ``representations`` is ``(N, K, D)``; with an ``(N, D)`` ``anchor`` (the un-augmented image) the mean of
    ``‖r_k − r_anchor‖₂`` instead. Accurate to float32 rounding.

    Example:
        >>> alignment(torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]]))  # pairs: sqrt(2), 0, sqrt(2)
        tensor([0.9428])
    """
    reps = check_float_tensor("representations", representations, 3, "(N candidates, K views, D features)")
    n, k, d = reps.shape
    if anchor is None and k < 2:
        raise ValueError(f"`representations` needs K >= 2 views for all-pairs alignment, got K = {k}; generate "
                         "more views or pass `anchor` (the un-augmented image's representation).")
    if k < 1 or d < 1:
        raise ValueError(f"`representations` must have K >= 1 views and D >= 1 features, got {tuple(reps.shape)}.")
    anc = None
    if anchor is not None:
        anc = check_float_tensor("anchor", anchor, 2, "(N candidates, D features)")
        if tuple(anc.shape) != (n, d):
            raise ValueError(f"`anchor` must have shape (N, D) = ({n}, {d}) to match `representations`, got "
                             f"{tuple(anc.shape)}.")
        anc = anc.to(device=reps.device)
    # Check the output, not the input: an isfinite() mask of the input costs as much as the alignment.
    out = pairwise_alignment(reps, anc)
    if not bool(torch.isfinite(out).all()):
        check_finite_tensor("representations", reps)
        if anc is not None:
            check_finite_tensor("anchor", anc)
    return out


def sslmem(align_reference: Tensor, align_encoder: Tensor, normalize: bool = True) -> Tensor:
    """SSLMem ``(..., N)`` (Wang et al., ICLR 2024): ``m = align(g) − align(f)``, over ``max m − min m`` if ``normalize``.

    The range is over the last dimension; a zero range gives zeros.

    Example:
        >>> sslmem(torch.tensor([1.0, 1.0, 0.5]), torch.tensor([0.5, 1.0, 0.5]))
        tensor([1., 0., 0.])
    """
    if not isinstance(align_reference, Tensor) or not isinstance(align_encoder, Tensor):
        raise TypeError("`align_reference` and `align_encoder` must be torch.Tensor of shape (..., N).")
    if align_reference.shape != align_encoder.shape or align_reference.ndim < 1:
        raise ValueError("`align_reference` and `align_encoder` must have the same shape (..., N), got "
                         f"{tuple(align_reference.shape)} and {tuple(align_encoder.shape)}.")
    if align_reference.shape[-1] < 1:
        raise ValueError("`align_reference` and `align_encoder` need at least one candidate (N >= 1).")
    ref = check_float_tensor("align_reference", align_reference, align_reference.ndim, "(..., N)")
    enc = check_float_tensor("align_encoder", align_encoder, align_encoder.ndim, "(..., N)")
    check_finite_tensor("align_reference", ref)
    check_finite_tensor("align_encoder", enc)
    m = ref - enc
    if not normalize:
        return m
    span = m.amax(dim=-1, keepdim=True) - m.amin(dim=-1, keepdim=True)
    zero = span == 0
    return torch.where(zero, torch.zeros_like(m), m / torch.where(zero, torch.ones_like(span), span))


def layermem(sslmem: Tensor, subset: Optional[Tensor] = None) -> Tensor:
    """LayerMem ``(L,)`` (Wang et al., NeurIPS 2024): mean of ``(L, N)`` SSLMem over candidates (or ``subset`` positions).

    Example:
        >>> layermem(torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.4, 0.9]]), subset=torch.tensor([2]))
        tensor([1.0000, 0.9000])
    """
    s = check_float_tensor("sslmem", sslmem, 2, "(L layers, N candidates)")
    if s.shape[1] < 1:
        raise ValueError("`sslmem` needs at least one candidate (N >= 1 columns).")
    check_finite_tensor("sslmem", s)
    if subset is None:
        return s.mean(dim=1)
    if not isinstance(subset, Tensor) or subset.is_floating_point() or subset.ndim != 1:
        raise ValueError("`subset` must be a 1-D integer tensor of candidate positions.")
    if subset.numel() == 0:
        raise ValueError("`subset` is empty: pass at least one candidate position, or None for all.")
    if bool((subset < 0).any()) or bool((subset >= s.shape[1]).any()):
        raise ValueError(f"`subset` positions must lie in [0, N-1] = [0, {s.shape[1] - 1}], got {subset.tolist()}.")
    return s.index_select(1, subset.to(device=s.device, dtype=torch.long)).mean(dim=1)


def delta_layermem(layer_mem: Tensor) -> Tensor:
    """ΔLayerMem ``(L,)`` (Wang et al., NeurIPS 2024): ``LayerMem_l − LayerMem_{l−1}``, with ``ΔLayerMem_1 = LayerMem_1``.

    Example:
        >>> delta_layermem(torch.tensor([0.1, 0.3, 0.25]))
        tensor([ 0.1000,  0.2000, -0.0500])
    """
    lm = check_float_tensor("layer_mem", layer_mem, 1, "(L layers,)")
    check_finite_tensor("layer_mem", lm)
    return torch.diff(lm, prepend=lm.new_zeros(1))


def top_least_indices(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(top, least)``: positions of the ``min(k, N)`` highest and lowest scores, ties by position ("Top50"/"Least50").

    Example:
        >>> top_least_indices(torch.tensor([0.2, 0.9, 0.2, 0.5]), 2)
        (tensor([1, 3]), tensor([0, 2]))
    """
    k = check_int("k", k, 1)
    s = check_float_tensor("scores", scores, 1, "(N,)")
    check_finite_tensor("scores", s)
    kk = min(k, s.shape[0])
    return (torch.sort(s, descending=True, stable=True).indices[:kk],
            torch.sort(s, descending=False, stable=True).indices[:kk])


def _rows(name: str, values: Tensor) -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"`{name}` must be a tensor (L, n) of alignments per layer and image, "
                         f"got {getattr(values, 'shape', type(values).__name__)}.")
    return values.detach().double().cpu()


def alignment_scale(candidates: Tensor, unseen: Tensor) -> Tensor:
    """Range (max − min) of both groups' alignments per layer: ``(L, 1)``.

    Example:
        >>> alignment_scale(torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 1.0]]))
        tensor([[0.8000]], dtype=torch.float64)
    """
    pooled = torch.cat([_rows("candidates", candidates), _rows("unseen", unseen)], dim=1)
    return pooled.amax(1, keepdim=True) - pooled.amin(1, keepdim=True)


def normalise(values: Tensor, scale: Tensor) -> Tensor:
    """``values / scale`` per row; 0 where the scale is 0 (both groups aligned identically)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, values.double() / safe, torch.zeros_like(values, dtype=torch.float64))


def alignment_gap(candidates: Tensor, unseen: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(gap, mean_candidates, mean_unseen)`` per layer from ``(L, N)`` and ``(L, M)`` raw alignments.

    ``gap = (mean d_f(U) − mean d_f(C)) / (max − min of d_f over C ∪ U)``; > 0 means memorization.

    Example:
        >>> [round(float(v), 4) for v in alignment_gap(torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 1.0]]))]
        [0.625, 0.3, 0.8]
    """
    c, u = _rows("candidates", candidates), _rows("unseen", unseen)
    if c.shape[0] != u.shape[0]:
        raise ValueError(f"`candidates` and `unseen` must have the same layers (rows), got {c.shape[0]} and {u.shape[0]}.")
    mean_c, mean_u = c.mean(1), u.mean(1)
    return normalise((mean_u - mean_c)[:, None], alignment_scale(c, u))[:, 0], mean_c, mean_u


def membership_scores(candidates: Tensor, unseen: Tensor) -> Tensor:
    """``(L, N)`` share of unseen images aligned worse than each candidate: ``s(c) = (#{d(u) > d(c)} + ½ #{d(u) = d(c)}) / M``.

    (Uniform on ``[0, 1]`` under the null; its mean over candidates is the AUC.)

    Example:
        >>> membership_scores(torch.tensor([[0.1, 0.5, 0.9]]), torch.tensor([[0.2, 0.5, 0.7, 0.8]]))
        tensor([[1.0000, 0.6250, 0.0000]], dtype=torch.float64)
    """
    c, u = _rows("candidates", candidates), _rows("unseen", unseen)
    ordered, query, m = u.sort(dim=1).values.contiguous(), c.contiguous(), u.shape[1]
    below = torch.searchsorted(ordered, query, right=False)  # unseen < candidate
    at_or_below = torch.searchsorted(ordered, query, right=True)  # unseen <= candidate
    return ((m - at_or_below) + 0.5 * (at_or_below - below)).double() / m


def gap_greater(candidates: Tensor, unseen: Tensor) -> float:
    """Welch's one-sided p of ``mean d_f(U) > mean d_f(C)`` for one layer; NaN when a group has < 2 images.

    Example:
        >>> round(gap_greater(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.1, 0.2, 0.3])), 6)
        0.5
    """
    return welch_greater(unseen, candidates)[2]
