"""Alignment, SSLMem and LayerMem.

SSLMem is defined in Wang et al., *Memorization in Self-Supervised Learning Improves Downstream
Generalization* (ICLR 2024); its per-layer version, LayerMem, and ΔLayerMem in Wang et al.,
*Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024), Sec. 3:

* ``align_l(x_i)``: mean L2 distance between the L2-normalised layer-``l`` representations of
  pairs of augmented views of ``x_i`` (lower = better aligned);
* ``m_l(x_i) = align_l(x_i; g) − align_l(x_i; f)`` for the encoder ``f`` trained on ``x_i`` and a
  reference ``g`` that never saw it, normalised by the range of ``m_l`` over the candidates;
* ``LayerMem_l`` = mean of the normalised SSLMem over the candidates,
  ``ΔLayerMem_l = LayerMem_l − LayerMem_{l−1}``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lightning_memloc.checks import check_finite_tensor, check_float_tensor

__all__ = ["alignment", "delta_layermem", "layermem", "pairwise_alignment", "sslmem", "top_least_indices"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """At least float32: half/bfloat16 distances are too coarse for SSLMem differences."""
    return torch.promote_types(x.dtype, torch.float32)


#: Bytes of the largest temporary (one slice of ``D``) that :func:`pairwise_alignment` makes: on
#: CPU small enough to stay in cache and in the allocator's heap (a fresh multi-MB temporary
#: costs a page fault per 4 KiB), on GPU large enough for one or two slices per layer.
CHUNK_BYTES = {"cpu": 4 << 20, "other": 256 << 20}


def _slice_width(n: int, k: int, d: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, min(d, chunk_bytes // max(1, n * k * itemsize)))


def _explicit_alignment(reps: Tensor, anchor: Optional[Tensor], dtype: torch.dtype, chunk_bytes: int) -> Tensor:
    """Squared distances accumulated from explicit differences of normalised slices."""
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


def _gram_alignment(reps: Tensor, dtype: torch.dtype, chunk_bytes: int) -> Tensor:
    """All-pairs distances from the per-candidate Gram matrix accumulated in float64.

    Products of float32 (or half) values are exact in float64 and the sums carry ~1e-16 relative
    error, so ``‖r_a − r_b‖² = Ĝ_aa + Ĝ_bb − 2Ĝ_ab`` of the normalised Gram ``Ĝ`` loses at most
    ~1e-15 to cancellation: a distance is off by at most ~3e-8 even between identical views
    (before the float32 rounding of the result), where float32 explicit differences reach
    ~2e-7 and a float32 Gram matrix ~1e-3; two operations per slice (cast, ``baddbmm``)
    instead of ``3(K−1)``.
    """
    n, k, d = reps.shape
    width = _slice_width(n, k, d, 8, chunk_bytes)
    gram = reps.new_zeros((n, k, k), dtype=torch.float64)
    for start in range(0, d, width):
        r = reps[:, :, start:start + width].to(torch.float64)
        gram.baddbmm_(r, r.transpose(1, 2))
    # 1 / max(‖r‖, 1e-12) as F.normalize: an all-zero view stays zero (distance 1 to others, 0 to zeros)
    inv = gram.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-12).reciprocal()
    gram = gram * inv.unsqueeze(2) * inv.unsqueeze(1)
    sq = gram.diagonal(dim1=1, dim2=2)
    upper = torch.triu_indices(k, k, 1, device=reps.device)
    d2 = (sq[:, upper[0]] + sq[:, upper[1]] - 2 * gram[:, upper[0], upper[1]]).clamp_min_(0)
    return d2.sqrt_().mean(dim=1).to(dtype)


def pairwise_alignment(reps: Tensor, anchor: Optional[Tensor] = None, chunk_bytes: Optional[int] = None) -> Tensor:
    """Unchecked core of :func:`alignment` for the measurement hot path (no validation, no sync).

    ``reps`` is ``(N, K, D)`` (raw, not normalised), ``anchor`` ``(N, D)`` or ``None``; any
    floating dtype, any strides. ``D`` is processed in slices so that no temporary of the input's
    size is made (at most ``chunk_bytes``, default :data:`CHUNK_BYTES`):

    * all pairs, float32/half input: the per-candidate Gram matrix of the views accumulated in
      float64 (two operations per slice; error ~3e-8 at most, see :func:`_gram_alignment`);
    * float64 input, or ``anchor``: explicit differences of the normalised slices, accumulated
      as squared distances (exact to the input precision).

    NaN or inf in a candidate's views gives a non-finite result for it: callers check the
    output (:func:`~lightning_memloc.measurement.run_pass` once per batch), so no device sync is
    made here. Returns ``(N,)`` in the input dtype promoted to at least float32.
    """
    n, k, d = reps.shape
    dtype = _compute_dtype(reps)
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES["cpu" if reps.device.type == "cpu" else "other"]
    if anchor is None and dtype != torch.float64:
        return _gram_alignment(reps, dtype, chunk_bytes)
    return _explicit_alignment(reps, anchor, dtype, chunk_bytes)


def alignment(representations: Tensor, anchor: Optional[Tensor] = None) -> Tensor:
    """Alignment of each candidate: mean distance between its L2-normalised view representations.

    Without ``anchor`` (the SSLMem definition, Wang et al., ICLR 2024): the mean of
    ``‖r_a − r_b‖₂`` over all ``K(K−1)/2`` pairs of views. With ``anchor`` (what the authors' code
    did): the mean over the ``K`` views of ``‖r_k − r_anchor‖₂``, ``r_anchor`` being the
    representation of the un-augmented image.

    Results are accurate to their float32 rounding (~1e-7) even for nearly identical views: all
    pairs come from a Gram matrix accumulated in float64 (float32 products are exact there, so
    the ``‖a‖² + ‖b‖² − 2ab`` cancellation that ruins a float32 Gram matrix costs ~1e-15);
    float64 inputs and the anchor pairing use explicit differences. ``D`` is processed slice by
    slice, so no temporary of the input's size is made (see :func:`pairwise_alignment`, the
    unchecked core that :func:`~lightning_memloc.measure` calls).

    Args:
        representations: ``(N, K, D)`` flattened layer outputs of ``K`` views of ``N`` candidates
            (flatten a conv map with ``x.flatten(2)`` first). ``K >= 2`` without anchor.
        anchor: optional ``(N, D)`` representation of each candidate's un-augmented image;
            ``K >= 1`` then.

    Returns:
        ``Tensor[N]`` in ``[0, 2]``, in the input dtype promoted to at least float32.

    Raises:
        ValueError: wrong shapes, ``K < 2`` without anchor, NaN/inf values.

    Example:
        >>> reps = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
        >>> alignment(reps)  # pairs: sqrt(2), 0, sqrt(2)
        tensor([0.9428])
        >>> alignment(reps, anchor=torch.tensor([[5.0, 0.0]]))
        tensor([0.4714])
    """
    reps = check_float_tensor("representations", representations, 3, "(N candidates, K views, D features)")
    n, k, d = reps.shape
    if anchor is None and k < 2:
        raise ValueError(
            f"`representations` needs K >= 2 views for all-pairs alignment, got K = {k}; generate "
            "more views or pass `anchor` (the un-augmented image's representation)."
        )
    if k < 1 or d < 1:
        raise ValueError(f"`representations` must have K >= 1 views and D >= 1 features, got {tuple(reps.shape)}.")
    anc = None
    if anchor is not None:
        anc = check_float_tensor("anchor", anchor, 2, "(N candidates, D features)")
        if tuple(anc.shape) != (n, d):
            raise ValueError(
                f"`anchor` must have shape (N, D) = ({n}, {d}) to match `representations`, got "
                f"{tuple(anc.shape)}."
            )
        anc = anc.to(device=reps.device)
    # Measured on ResNet9 (width 64) outputs of 32 candidates x 10 views, one CPU thread: ~0.27 s for
    # all 8 layers; the former loop over full-size (N, D) pair differences after a normalised
    # copy took several times that with 2 threads, and an isfinite() mask of the input alone
    # ~0.2 s for the largest layer (fresh full-size temporaries fault in page by page).
    out = pairwise_alignment(reps, anc)
    if not bool(torch.isfinite(out).all()):
        check_finite_tensor("representations", reps)
        if anc is not None:
            check_finite_tensor("anchor", anc)
    return out


def sslmem(align_reference: Tensor, align_encoder: Tensor, normalize: bool = True) -> Tensor:
    """SSLMem of each candidate (Wang et al., ICLR 2024): ``m = align(g) − align(f)``.

    With ``normalize`` (as in the authors' code) ``m`` is divided by its range over the candidates,
    ``max_j m_j − min_j m_j``; a zero range gives zeros, never NaN. Inputs may carry leading
    dimensions, e.g. ``(L, N)`` for ``L`` layers: the range is taken over the last dimension.

    Args:
        align_reference: ``(..., N)`` alignment under the reference encoder ``g``.
        align_encoder: ``(..., N)`` alignment under the encoder ``f``, same shape.
        normalize: divide by the range over the candidates.

    Returns:
        ``Tensor[..., N]``: positive where ``f`` aligns the views better than ``g``.

    Example:
        >>> sslmem(torch.tensor([1.0, 1.0, 0.5]), torch.tensor([0.5, 1.0, 0.5]))
        tensor([1., 0., 0.])
        >>> sslmem(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5]))  # zero range
        tensor([0., 0.])
    """
    if not isinstance(align_reference, Tensor) or not isinstance(align_encoder, Tensor):
        raise TypeError("`align_reference` and `align_encoder` must be torch.Tensor of shape (..., N).")
    if align_reference.shape != align_encoder.shape or align_reference.ndim < 1:
        raise ValueError(
            "`align_reference` and `align_encoder` must have the same shape (..., N), got "
            f"{tuple(align_reference.shape)} and {tuple(align_encoder.shape)}."
        )
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
    """LayerMem of each layer (Wang et al., NeurIPS 2024): mean SSLMem over the candidates.

    Args:
        sslmem: ``(L, N)`` normalised SSLMem per layer and candidate.
        subset: optional ``LongTensor`` of candidate positions (``0 .. N-1``) to average over,
            e.g. the top-k of :func:`top_least_indices` (the paper's "Top50"/"Least50").

    Returns:
        ``Tensor[L]``.

    Example:
        >>> s = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.4, 0.9]])
        >>> layermem(s)
        tensor([0.5000, 0.5000])
        >>> layermem(s, subset=torch.tensor([2]))
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
    """ΔLayerMem (Wang et al., NeurIPS 2024): ``LayerMem_l − LayerMem_{l−1}`` in layer order.

    For the first layer the increase is over the input, where ``f`` and ``g`` see identical data
    and SSLMem is 0, so ``ΔLayerMem_1 = LayerMem_1``.

    Args:
        layer_mem: ``(L,)`` LayerMem per layer, in forward order.

    Returns:
        ``Tensor[L]``.

    Example:
        >>> delta_layermem(torch.tensor([0.1, 0.3, 0.25]))
        tensor([ 0.1000,  0.2000, -0.0500])
    """
    lm = check_float_tensor("layer_mem", layer_mem, 1, "(L layers,)")
    check_finite_tensor("layer_mem", lm)
    return torch.diff(lm, prepend=lm.new_zeros(1))


def top_least_indices(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Positions of the ``k`` highest and ``k`` lowest scores (ties broken by position).

    Used for the paper's "Top50"/"Least50" LayerMem (candidates ranked by SSLMem at the last
    layer; Wang et al., NeurIPS 2024, Table 1).

    Args:
        scores: ``(N,)`` scores, e.g. SSLMem at the last layer.
        k: how many; ``k' = min(k, N)`` are returned.

    Returns:
        ``(top, least)``: ``LongTensor[k']`` each, ``top`` in decreasing score order and ``least``
        in increasing order; among equal scores the earlier position comes first.

    Example:
        >>> top_least_indices(torch.tensor([0.2, 0.9, 0.2, 0.5]), 2)
        (tensor([1, 3]), tensor([0, 2]))
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int >= 1, got {k!r}.")
    s = check_float_tensor("scores", scores, 1, "(N,)")
    check_finite_tensor("scores", s)
    kk = min(k, s.shape[0])
    top = torch.sort(s, descending=True, stable=True).indices[:kk]
    least = torch.sort(s, descending=False, stable=True).indices[:kk]
    return top, least
