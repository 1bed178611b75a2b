"""One measurement pass: UnitMem, ClassMem, SSLMem and LayerMem of every tapped layer at once.

For every batch of candidates the same K seeded views go through the encoder ``f`` and the
reference ``g``; forward hooks reduce each tapped layer *inside the hook* to per-unit means over
the views and to per-candidate view alignment, then the activations are dropped. One pass
therefore costs about one batched forward of the views through each encoder, and memory stays
O(N·U) (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024; SSLMem:
Wang et al., *Memorization in Self-Supervised Learning Improves Downstream Generalization*,
ICLR 2024).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

from lightning_memloc.augment import BatchedSimCLRAugment
from lightning_memloc.checks import (check_candidate_ids, check_dense, check_has_weights, check_image_layout,
                                    check_image_range, check_meta, check_reference, check_views_memory, unwrap_compiled)
from lightning_memloc.distributed import is_distributed, max_across_ranks
from lightning_memloc.data.datasets import CheckedImages
from lightning_memloc.errors import NonFiniteActivationError
from lightning_memloc.meter import MemorizationMeter
from lightning_memloc.normalization import NormalizeSpec, resolve_normalize
from lightning_memloc.options import MeasureOptions
from lightning_memloc.precision import check_autocast
from lightning_memloc.probe import eval_mode, model_device_dtype, probe_layers  # re-exported: measure's public helpers
from lightning_memloc.reductions import forward_reduce
from lightning_memloc.reference_cache import ReferenceCache
from lightning_memloc.report import MemorizationReport
from lightning_memloc.taps import LayerSpec
from lightning_memloc.views import SeededViews

Candidates = Union[Tensor, Dataset]


def check_models(encoder: nn.Module, reference: Optional[nn.Module]) -> None:
    """``encoder`` and ``reference`` are modules, and not one module (before any work).

    Raises:
        TypeError: either is not an ``nn.Module`` (``reference`` may be ``None``).
        ValueError: ``reference`` is ``encoder`` itself (SSLMem would be 0 everywhere).
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"`encoder` must be a torch.nn.Module, got {type(encoder).__name__}.")
    if reference is not None and not isinstance(reference, nn.Module):
        raise TypeError(
            f"`reference` must be a torch.nn.Module or None, got {type(reference).__name__} "
            "(load checkpoints with `lightning_memloc.load_encoder`)."
        )
    if reference is encoder:
        raise ValueError("`reference` is the encoder itself: pass an encoder trained without the candidates.")
    check_has_weights(encoder, "encoder")
    if reference is not None:
        check_has_weights(reference, "reference")


def build_views(
    candidates: Union[Candidates, SeededViews], views: int, transform: Optional[Callable], seed: int, labels: Optional[Tensor],
    normalize: NormalizeSpec = None,
) -> SeededViews:
    """Wrap ``candidates`` into a :class:`~lightning_memloc.views.SeededViews` (validated).

    Explicit labels are checked for ClassMem here, before any forward pass: class ids >= 0 and at
    least 2 classes (labels read from dataset items are checked as the pass streams them).
    """
    if isinstance(candidates, SeededViews):
        view_set = candidates
        if normalize is not None and view_set.normalization != resolve_normalize(normalize):
            raise ValueError(f"`normalize`={normalize!r} but the SeededViews given as `candidates` normalise with "
                             f"{view_set.normalization}: pass normalize= to the SeededViews only.")
    else:
        if isinstance(candidates, Tensor) and candidates.ndim in (3, 5):
            views = None  # precomputed views (N, K, ...) are used as they are
        view_set = SeededViews(candidates, views=views, transform=transform, seed=seed, labels=labels, normalize=normalize)
    if view_set.labels is not None and len(view_set) >= 2:  # checked here, before any forward pass
        classes = torch.unique(view_set.labels)
        if bool((classes < 0).any()):
            raise ValueError(
                f"`labels` must be class ids >= 0 for ClassMem, got {classes[classes < 0].tolist()} "
                "(-1 means 'no label'): drop unlabelled candidates, or pass labels=None to skip ClassMem."
            )
        if classes.numel() < 2:
            raise ValueError(
                f"`labels` hold a single class {classes.tolist()}: ClassMem compares a class with the others and "
                "needs at least 2 classes; pass labels of 2 or more classes, or labels=None to skip ClassMem."
            )
    return view_set


def pin_memory_for(device: Union[torch.device, str]) -> bool:
    """Whether the views' loader pins its batches: for a CUDA model (fast, non-blocking host-to-device copies)."""
    return torch.device(device).type == "cuda"


def run_pass(
    encoder: nn.Module,
    reference: Optional[nn.Module],
    views: SeededViews,
    specs: Sequence[LayerSpec],
    meter: MemorizationMeter,
    *,
    batch_size: int,
    pairing: str = "all",
    num_workers: int = 0,
    sampler: Optional[Sampler] = None,
    progress: bool = False,
    desc: str = "memloc",
    epoch: Optional[int] = None,
    world_size: int = 1,
    reference_cache: Optional[ReferenceCache] = None,
    autocast: Optional[str] = None,
) -> None:
    """Stream the views of every candidate through ``encoder`` (and ``reference``) into ``meter``.

    The encoder's alignments are computed only when the meter needs them (a reference, or the
    reference-free evidence: :attr:`~lightning_memloc.meter.MemorizationMeter.needs_alignment`).

    Both models run in eval mode under ``no_grad`` and get their previous modes back, also on
    error or ``KeyboardInterrupt``; hooks are always removed. With ``reference_cache`` (a frozen
    reference only), the reference's alignments of unchanged batches are reused, not recomputed.
    With ``autocast`` (``"bf16"`` / ``"fp16"``) the forwards run under ``torch.autocast``
    (:mod:`lightning_memloc.precision`; checked first), the reductions in float32. For a CUDA
    model the views' loader pins its batches and copies to the device are non-blocking.
    """
    names = [spec.name for spec in specs]
    dtype = check_autocast(autocast, encoder, reference)  # before any work
    cache = reference_cache if reference is not None else None
    if cache is not None:
        cache.bind(reference, names, pairing, autocast=autocast)  # type: ignore[arg-type]
    device = meter.device  # metric states are not registered buffers: meter.buffers() is empty
    anchor = pairing == "anchor"
    distributed = is_distributed(world_size)
    loader = views.dataloader(batch_size=batch_size, num_workers=num_workers, sampler=sampler,
                              pin_memory=pin_memory_for(device))
    # nonfinite[0][i] / nonfinite[1][i]: layer names[i] gave NaN/inf in the encoder / the reference.
    nonfinite = torch.zeros(2, len(names), dtype=torch.uint8)
    iterator: Any = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
    with eval_mode(encoder, reference), torch.no_grad():
        for index, x, label in iterator:
            index = torch.as_tensor(index, dtype=torch.long)
            label = torch.as_tensor(label, dtype=torch.long)
            batch_views = views.finalize(x, index, device)
            b, k = batch_views.shape[:2]
            inputs = batch_views.reshape(b * k, *batch_views.shape[2:])
            if anchor:
                inputs = torch.cat([inputs, views.anchors(index).to(inputs)])
            units, align_f = forward_reduce(encoder, inputs, names, b, k, units=True,
                                            align=meter.needs_alignment, anchor=anchor, autocast=dtype)
            align_g = None
            key = None if cache is None else cache.batch_key(index, inputs)
            if cache is not None:
                align_g = cache.get(key, device)  # type: ignore[arg-type]
            if reference is not None and align_g is None:
                _, align_g = forward_reduce(reference, inputs, names, b, k, units=False, align=True, anchor=anchor,
                                            autocast=dtype)
                align_g = {n: a.to(device) for n, a in align_g.items()}
                if cache is not None:
                    cache.put(key, align_g)  # type: ignore[arg-type]
            # NaN/inf anywhere in a layer's output reaches its reductions: check those (small), with
            # one device sync per batch, and never feed a non-finite batch to the metrics.
            finite = torch.ones(2, len(names), dtype=torch.bool, device=device)
            for i, n in enumerate(names):
                finite[0, i] = torch.isfinite(units[n]).all().to(device)
                if align_f:
                    finite[0, i] &= torch.isfinite(align_f[n]).all().to(device)
                if align_g is not None:
                    finite[1, i] = torch.isfinite(align_g[n]).all()
            finite = finite.cpu()
            if not bool(finite.all()):
                nonfinite |= (~finite).to(torch.uint8)
                if not distributed:
                    break  # a single process can stop at once
                continue  # under DDP every rank must finish the pass and agree before raising
            labels = label.to(device, non_blocking=True) if meter.has_labels else None
            meter.update_views(index, batch_views)
            meter.update(index.to(device, non_blocking=True), {n: u.to(device) for n, u in units.items()},
                         {n: a.to(device) for n, a in align_f.items()} if align_f else None, align_g, labels)
    if distributed:
        # Every rank must agree before raising, or the healthy ranks would wait forever in compute().
        nonfinite = max_across_ranks(nonfinite.to(device), world_size).cpu()
    if bool(nonfinite.any()):
        where = "" if epoch is None else f" at epoch {epoch}"
        parts = [f"{model} layers {[n for i, n in enumerate(names) if nonfinite[row, i]]}"
                 for row, model in ((0, "encoder"), (1, "reference")) if bool(nonfinite[row].any())]
        raise NonFiniteActivationError(
            f"NaN or inf activations{where} in {' and '.join(parts)}: the model has diverged or the candidates are not "
            "finite; check the loss, learning rate and input data, or exclude these layers with `layers=[...]`."
            + (f" Under autocast={autocast!r} values beyond the dtype's range overflow to inf: try autocast='bf16' "
               "(float32's range) or autocast=None." if autocast == "fp16" else "")
        )


def measure(
    encoder: nn.Module,
    candidates: Union[Candidates, SeededViews],
    *,
    reference: Optional[nn.Module] = None,
    views: int = 10,
    transform: Optional[Callable] = None,
    layers: Union[str, Sequence[str]] = "auto",
    seed: int = 0,
    batch_size: int = 32,
    labels: Optional[Tensor] = None,
    pairing: str = "all",
    reduction: str = "mean",
    negative: str = "clamp",
    top_k: int = 50,
    candidate_ids: Optional[Tensor] = None,
    num_workers: int = 0,
    progress: bool = False,
    state_dtype: torch.dtype = torch.float32,
    meta: Optional[Dict[str, Any]] = None,
    control: Optional[Candidates] = None,
    unseen: Optional[Candidates] = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    reference_cache: Optional[ReferenceCache] = None,
    autocast: Optional[str] = None,
    normalize: NormalizeSpec = None,
) -> MemorizationReport:
    """Measure UnitMem (and ClassMem, SSLMem, LayerMem, ΔLayerMem) of every layer in one pass.

    Args:
        encoder: the SSL encoder ``f`` (trained on the candidates).
        candidates: images (N, C, H, W) (uint8 or float in [0, 1]), precomputed views
            (N, K, C, H, W) used as is, or a ``Dataset`` of images or ``(image, label)``.
        reference: encoder ``g`` of the same architecture trained without the candidates;
            enables SSLMem / LayerMem.
        views: K, augmented views per candidate (ignored for precomputed views).
        transform: per-image view transform (torchvision / lightly), a batched augmentation
            (:class:`~lightning_memloc.views.BatchedSimCLRAugment`), or ``None`` for the default
            batched SimCLR augmentation.
        layers: ``"auto"`` or module names as in ``named_modules()``.
        seed: view seed; the same seed gives the same views on every call, batch size and device.
        batch_size: candidates per step (each contributes K views to the forward batch).
        labels: (N,) class labels for ClassMem (also read from ``(image, label)`` datasets).
        pairing: ``"all"`` view pairs (SSLMem's definition) or ``"anchor"`` (views vs the
            un-augmented image, as in the authors' code).
        reduction: μ-max over the other candidates, ``"mean"`` (paper) or ``"median"`` (authors' code).
        negative: policy for negative activations: ``"clamp"``, ``"shift"`` or ``"error"``.
        top_k: size of the top-k / least-k candidate groups for LayerMem.
        candidate_ids: (N,) ids to report candidates by (default ``0..N-1``).
        num_workers: DataLoader workers generating views.
        progress: show a progress bar.
        state_dtype: dtype of the accumulated metric states.
        meta: extra settings to record in the report (e.g. ``{"epoch": 3}``).
        control: images **both** encoders trained on (e.g. drawn from the shared part with
            :func:`~lightning_memloc.data.split_candidates` ``control=``): the null of LayerMem.
            The report's evidence gives the candidates' *excess* over the control per layer
            with its interval and a one-sided permutation test (in the overall verdict). Needs ``reference``.
        unseen: images the encoder never trained on (a test split, or the reference's
            independent part when co-training): UnitMem of candidates vs unseen images and the
            argmax membership test (are units' μmax images training images more often than
            chance?), LayerMem candidates vs unseen, and, **with or without a reference**, the
            alignment gap under ``f`` alone per layer (``align_gap``: interval, one-sided
            permutation test in the overall verdict, per-candidate membership scores;
            :mod:`lightning_memloc.evidence_free`). Unseen images must come from the candidates'
            distribution.
        bootstrap: resamples for the intervals and permutations for the tests (0: none; otherwise >= 200).
        confidence: coverage of the intervals.
        alpha: significance level of the Holm-corrected tests (verdicts in the summary).
        reference_cache: a :class:`~lightning_memloc.ReferenceCache` shared by several calls
            against one frozen ``reference``: its alignments are computed once and reused while
            g's weights, the views, the layers, the pairing and ``autocast`` stay the same (exact key).
        autocast: ``None`` (float32, the default), ``"bf16"`` or ``"fp16"``: run the forwards of
            ``f`` and ``g`` under ``torch.autocast`` on the models' device; views and reductions
            stay float32. Refused before any work on a device (or a non-float32 model) that
            cannot run it. Measured error of bf16 on CPU: docs/performance.md, §4.
        normalize: ``None``, a preset (``"imagenet"``, ``"cifar10"``) or a ``(mean, std)`` pair:
            ``(x − mean) / std`` per channel on every view after ``transform``, before the encoder.
            Measure with what the encoder was trained on: lightly's ``SimCLRTransform``
            normalises with ImageNet statistics by default (docs/definitions.md, "Views").

    The report's ``meta`` records ``normalize`` and ``view_stats``, the per-channel mean and std
    of every view the encoder received.

    Control and unseen images go through the same views (transform, K, seed) in the same pass;
    the candidates' own figures are the same as without them.

    Returns:
        A :class:`~lightning_memloc.MemorizationReport`.

    Example:
        >>> import torch
        >>> from lightning_memloc import measure
        >>> from lightning_memloc.models import TinyCNN
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> f, g = TinyCNN(), TinyCNN()
        >>> images = torch.rand(6, 3, 16, 16)
        >>> report = measure(f, images, reference=g, views=4, top_k=2)
        >>> len(report.layers), report.has_reference
        (3, True)
    """
    encoder, reference = unwrap_compiled(encoder), unwrap_compiled(reference)  # torch.compile: measure eagerly
    check_models(encoder, reference)
    options = MeasureOptions(views=views, seed=seed, batch_size=batch_size, pairing=pairing, reduction=reduction,
                             negative=negative, top_k=top_k, num_workers=num_workers, progress=progress,
                             bootstrap=bootstrap, confidence=confidence, alpha=alpha, autocast=autocast,
                             normalize=normalize, with_reference=reference is not None)
    if reference_cache is not None and not isinstance(reference_cache, ReferenceCache):
        raise TypeError(f"`reference_cache` must be a lightning_memloc.ReferenceCache or None, got {type(reference_cache).__name__}.")
    check_reference(encoder, reference)  # a copy of the encoder, or shared layers, would give LayerMem 0
    view_set, sizes, pool = prepare_views(candidates, options, transform=transform, labels=labels, control=control,
                                          unseen=unseen)
    n = len(view_set)
    ids = check_candidate_ids(candidate_ids, n)
    settings = check_meta(meta, {**options.meta(views=view_set.views, seed=view_set.seed, num_candidates=n, groups=sizes),
                                 "view_stats": None})  # measured in the pass
    device, _ = model_device_dtype(encoder)
    check_autocast(options.autocast, encoder, reference)
    check_views_memory(options.batch_size, view_set.views, view_set.input_shape, device)
    example = view_set.example_batch(device)
    specs, num_units = probe_layers(encoder, reference, layers, example)
    meter = MemorizationMeter(specs, num_units, n, reference=reference is not None, labels=view_set.has_labels,
                              state_dtype=state_dtype, groups=sizes, view_shape=view_set.view_shape, alignment=keeps_alignment(sizes, view_set.views, options.pairing),
                              **options.meter_kwargs()).to(device)
    run_pass(encoder, reference, pool, specs, meter, progress=options.progress,
             epoch=(meta or {}).get("epoch"), reference_cache=reference_cache, **options.pass_kwargs())
    return meter.compute_report(ids, settings, evidence=options.evidence)


def keeps_alignment(groups: Mapping[str, int], views: int, pairing: str) -> bool:
    """Whether a pass keeps the encoder's own alignments for the reference-free evidence: with an
    unseen set, and views that have an alignment (``views`` >= 2, or ``pairing="anchor"``).

    Example:
        >>> keeps_alignment({"unseen": 40}, 10, "all"), keeps_alignment({"unseen": 40}, 1, "all"), keeps_alignment({}, 10, "all")
        (True, False, False)
    """
    return "unseen" in groups and (pairing == "anchor" or views >= 2)


def prepare_views(
    candidates: Union[Candidates, SeededViews],
    options: MeasureOptions,
    *,
    transform: Optional[Callable] = None,
    labels: Optional[Tensor] = None,
    control: Optional[Candidates] = None,
    unseen: Optional[Candidates] = None,
) -> Tuple[SeededViews, Dict[str, int], SeededViews]:
    """The views of one measurement, validated before any forward pass (``measure()`` and the monitor).

    Returns:
        ``(views, group_sizes, pool)``: the candidates' :class:`~lightning_memloc.views.SeededViews`,
        the sizes of the control / unseen sets by name, and the pooled view set of the pass
        (candidates first, then each group, through the same transform, K and seed).

    Raises:
        ValueError: fewer than 2 candidates, a bad group (:func:`check_groups`), or bad labels.
    """
    groups = check_groups(control, unseen, with_reference=options.with_reference)
    view_set = build_views(candidates, options.views, transform, options.seed, labels, normalize=options.normalize)
    strict = isinstance(view_set.transform, BatchedSimCLRAugment)
    for name, images in groups.items():  # checked by name: the pooled set's check would say `candidates`
        if isinstance(images, Tensor) and images.ndim == 4:
            check_image_layout(images.shape, name)
            check_image_range(images, name, strict=strict)
        elif isinstance(images, Dataset):  # read as the pass streams it, checked item by item
            groups[name] = CheckedImages(images, name, strict)
    n = len(view_set)
    if n < 2:
        raise ValueError(
            f"UnitMem compares a candidate with the others and needs at least 2 candidates, got {n}: pass more candidates."
        )
    return view_set, {name: len(images) for name, images in groups.items()}, view_set.pooled(list(groups.values()))


def check_groups(control: Optional[Candidates], unseen: Optional[Candidates], *, with_reference: bool) -> Dict[str, Candidates]:
    """Validate the control / unseen sets; return them by name, in pass order (control first).

    Raises:
        ValueError: a set is empty or has one image, or a control is given without a reference.
        TypeError: a set is neither a tensor nor a map-style dataset.
    """
    groups: Dict[str, Candidates] = {}
    for name, images in (("control", control), ("unseen", unseen)):
        if images is None:
            continue
        if not isinstance(images, (Tensor, Dataset)):
            raise TypeError(f"`{name}` must be an image tensor (N, C, H, W) or a Dataset, got {type(images).__name__}.")
        if isinstance(images, Tensor):
            check_dense(images, name)
        try:
            size = len(images)  # type: ignore[arg-type]
        except TypeError as err:
            raise TypeError(f"`{name}` must be a map-style Dataset with __len__.") from err
        if size < 2:
            raise ValueError(f"`{name}` needs at least 2 images for a test against the candidates, got {size}.")
        groups[name] = images
    if "control" in groups and not with_reference:
        raise ValueError("`control` is compared with the candidates on SSLMem, which needs `reference`: pass the "
                         "reference encoder, or drop `control` (use `unseen` for UnitMem's membership test).")
    return groups
