"""``measure()``: UnitMem, ClassMem, SSLMem and LayerMem of every tapped layer of an encoder, in one pass."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_memloc.checks import check_candidate_ids, check_meta, check_reference, check_views_memory, unwrap_compiled
from lightning_memloc.measurement import Candidates, Measurement, check_models
from lightning_memloc.options import DEFAULT, MeasureOptions, options_doc
from lightning_memloc.reductions.precision import check_autocast
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.states.reference_cache import ReferenceCache
from lightning_memloc.taps.probe import model_device_dtype
from lightning_memloc.views.normalization import NormalizeSpec
from lightning_memloc.views.seeded import SeededViews


def measure(encoder: nn.Module, candidates: Union[Candidates, SeededViews], *, reference: Optional[nn.Module] = None,
            views: int = DEFAULT.views, transform: Optional[Callable] = None,
            layers: Union[str, Sequence[str]] = "auto", seed: int = DEFAULT.seed, batch_size: int = DEFAULT.batch_size,
            labels: Optional[Tensor] = None, pairing: str = DEFAULT.pairing, reduction: str = DEFAULT.reduction,
            negative: str = DEFAULT.negative, top_k: int = DEFAULT.top_k, candidate_ids: Optional[Tensor] = None,
            num_workers: int = DEFAULT.num_workers, progress: bool = DEFAULT.progress,
            state_dtype: torch.dtype = torch.float32, meta: Optional[Dict[str, Any]] = None,
            control: Optional[Candidates] = None, unseen: Optional[Candidates] = None,
            bootstrap: int = DEFAULT.bootstrap, confidence: float = DEFAULT.confidence, alpha: float = DEFAULT.alpha,
            reference_cache: Optional[ReferenceCache] = None, autocast: Optional[str] = DEFAULT.autocast,
            normalize: NormalizeSpec = DEFAULT.normalize) -> MemorizationReport:
    """Measure UnitMem (and ClassMem, SSLMem, LayerMem, ΔLayerMem) of every layer in one pass.

    Args:
        encoder: the SSL encoder ``f`` (trained on the candidates).
        candidates: images (N, C, H, W) (uint8 or float in [0, 1]), precomputed views (N, K, C, H, W)
            used as is, or a ``Dataset`` of images or ``(image, label)``.
        reference: encoder ``g`` of the same architecture trained without the candidates (SSLMem / LayerMem).
        transform: per-image view transform (torchvision / lightly), a batched augmentation, or ``None``:
            :class:`~lightning_memloc.views.seeded.BatchedSimCLRAugment`.
        layers: ``"auto"`` or module names as in ``named_modules()``.
        labels: (N,) class labels for ClassMem (also read from ``(image, label)`` datasets).
        candidate_ids: (N,) ids to report candidates by (default ``0..N-1``).
        meta: extra settings to record in the report (e.g. ``{"epoch": 3}``).
        control: images **both** encoders trained on, the null of LayerMem: the evidence gives the
            candidates' excess over it per layer, with interval and permutation test. Needs ``reference``.
        unseen: images from the candidates' distribution the encoder never trained on: UnitMem's
            argmax membership test, LayerMem candidates vs unseen and, with or without a reference,
            f's alignment gap (:mod:`lightning_memloc.report.evidence_free`).
        reference_cache: a :class:`~lightning_memloc.ReferenceCache` reusing a frozen ``reference``'s
            alignments across calls while its weights, the views, layers, pairing and ``autocast`` are the same.
<options>

    Control and unseen images share the candidates' views and pass, and leave the candidates'
    figures unchanged. ``meta`` records ``normalize`` and ``view_stats`` (per-channel view mean, std).

    Example:
        >>> import torch
        >>> from lightning_memloc import measure
        >>> from lightning_memloc.models import TinyCNN
        >>> _ = torch.manual_seed(0)
        >>> f, g = TinyCNN(), TinyCNN()
        >>> images = torch.rand(6, 3, 16, 16)
        >>> report = measure(f, images, reference=g, views=4, top_k=2)
        >>> len(report.layers), report.has_reference
        (3, True)
    """
    given = locals()  # the option keywords as passed: MeasureOptions validates them
    encoder, reference = unwrap_compiled(encoder), unwrap_compiled(reference)  # torch.compile: measure eagerly
    check_models(encoder, reference)
    options = MeasureOptions(**{k: given[k] for k in MeasureOptions.keywords()}, with_reference=reference is not None)
    if reference_cache is not None and not isinstance(reference_cache, ReferenceCache):
        raise TypeError("`reference_cache` must be a lightning_memloc.ReferenceCache or None, "
                        f"got {type(reference_cache).__name__}.")
    check_reference(encoder, reference)  # a copy of the encoder, or shared layers, would give LayerMem 0
    m = Measurement.prepare(candidates, options, transform=transform, labels=labels, control=control, unseen=unseen)
    ids = check_candidate_ids(candidate_ids, len(m.views))
    settings = check_meta(meta, {**m.meta(), "view_stats": None})  # view_stats: measured in the pass
    device, _ = model_device_dtype(encoder)
    check_autocast(options.autocast, encoder, reference)
    check_views_memory(options.batch_size, m.views.views, m.views.input_shape, device)
    m.probe(encoder, reference, layers, device)
    meter = m.run(encoder, reference, state_dtype=state_dtype, progress=options.progress,
                  epoch=(meta or {}).get("epoch"), reference_cache=reference_cache)
    return m.report(meter, ids, settings)


measure.__doc__ = (measure.__doc__ or "").replace("<options>", options_doc(8))  # the options, from their one source
