"""One measurement, views → taps → reductions → states → report, shared by ``measure()`` and the monitor
(hooks reduce each tapped layer to per-unit view means and per-candidate alignments: memory stays O(N·U))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

from lightning_memloc.checks import (check_candidate_ids, check_dense, check_has_weights, check_image_layout,
                                     check_image_range, check_meta, check_reference, check_views_memory,
                                     unwrap_compiled)
from lightning_memloc.data.loaders import CheckedImages
from lightning_memloc.errors import NonFiniteActivationError
from lightning_memloc.options import DEFAULT, MeasureOptions, options_doc
from lightning_memloc.reductions.hook import check_autocast, forward_reduce
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.states.distributed import is_distributed, max_across_ranks
from lightning_memloc.states.meter import MemorizationMeter
from lightning_memloc.states.reference_cache import ReferenceCache
from lightning_memloc.taps.hooks import LayerSpec
from lightning_memloc.taps.probe import eval_mode, model_device_dtype, probe_layers
from lightning_memloc.views.augment import BatchedSimCLRAugment
from lightning_memloc.views.stats import NormalizeSpec, resolve_normalize
from lightning_memloc.views.seeded import SeededViews

__all__ = ["Candidates", "Measurement", "build_views", "check_groups", "check_models", "measure", "run_pass"]

Candidates = Union[Tensor, Dataset]


@dataclass
class Measurement:
    """One measurement: validated options and views, the probed layers, and a pass into a fresh meter.

    Attributes:
        group_sizes: sizes of the control / unseen sets, by name (pass order: control first).
        pool: the pass's view set (candidates, then each group, same transform, K and seed).

    Example:
        >>> from lightning_memloc.models import TinyCNN
        >>> m = Measurement.prepare(torch.rand(4, 3, 16, 16), MeasureOptions(views=2, bootstrap=0))
        >>> f = TinyCNN()
        >>> m.probe(f, None, "auto")
        >>> report = m.report(m.run(f, None), torch.arange(4), m.meta())
        >>> report.layers == [s.name for s in m.specs]
        True
    """

    options: MeasureOptions
    views: SeededViews
    group_sizes: Dict[str, int]
    pool: SeededViews
    specs: Optional[List[LayerSpec]] = None
    num_units: Dict[str, int] = field(default_factory=dict)

    @classmethod
    def prepare(cls, candidates: Union[Candidates, SeededViews], options: MeasureOptions, *,
                transform: Optional[Callable] = None, labels: Optional[Tensor] = None,
                control: Optional[Candidates] = None, unseen: Optional[Candidates] = None) -> "Measurement":
        """Validate the views of a measurement before any forward pass."""
        groups = check_groups(control, unseen, with_reference=options.with_reference)
        view_set = build_views(candidates, options.views, transform, options.seed, labels, normalize=options.normalize)
        strict = isinstance(view_set.transform, BatchedSimCLRAugment)
        for name, images in groups.items():  # checked by name: the pooled set's check would say `candidates`
            if isinstance(images, Tensor) and images.ndim == 4:
                check_image_layout(images.shape, name)
                check_image_range(images, name, strict=strict)
            elif isinstance(images, Dataset):  # read as the pass streams it, checked item by item
                groups[name] = CheckedImages(images, name, strict)
        if len(view_set) < 2:
            raise ValueError(f"UnitMem compares a candidate with the others and needs at least 2 candidates, got "
                             f"{len(view_set)}: pass more candidates.")
        return cls(options, view_set, {name: len(images) for name, images in groups.items()},
                   view_set.pooled(list(groups.values())))

    @property
    def keeps_alignment(self) -> bool:
        """Whether the pass keeps f's alignments (reference-free evidence): an unseen set, and K >= 2 or anchors."""
        return "unseen" in self.group_sizes and (self.options.pairing == "anchor" or self.views.views >= 2)

    def probe(self, encoder: nn.Module, reference: Optional[nn.Module], layers: Union[str, Sequence[str]],
              device: Optional[torch.device] = None) -> None:
        """Resolve ``layers`` and count their units with one forward of two candidates' views."""
        device = model_device_dtype(encoder)[0] if device is None else device
        self.specs, self.num_units = probe_layers(encoder, reference, layers, self.views.example_batch(device))

    def meta(self, **extra: Any) -> Dict[str, Any]:
        """The settings the report records (:meth:`MeasureOptions.meta`), with ``extra``."""
        return self.options.meta(views=self.views.views, seed=self.views.seed, num_candidates=len(self.views),
                                 groups=self.group_sizes, **extra)

    def run(self, encoder: nn.Module, reference: Optional[nn.Module], *, state_dtype: torch.dtype = torch.float32,
            **pass_kwargs: Any) -> MemorizationMeter:
        """One pass of :attr:`pool` through the models into a fresh meter (``pass_kwargs``: :func:`run_pass`'s)."""
        if self.specs is None:
            raise RuntimeError("Measurement.run before Measurement.probe: probe the layers first.")
        meter = MemorizationMeter(self.specs, self.num_units, len(self.views), reference=reference is not None,
                                  labels=self.views.has_labels, state_dtype=state_dtype, groups=self.group_sizes,
                                  view_shape=self.views.view_shape, alignment=self.keeps_alignment,
                                  **self.options.meter_kwargs()).to(model_device_dtype(encoder)[0])
        run_pass(encoder, reference, self.pool, self.specs, meter, **{**self.options.pass_kwargs(), **pass_kwargs})
        return meter

    def report(self, meter: MemorizationMeter, candidate_ids: Tensor, meta: Dict[str, Any]) -> MemorizationReport:
        """The report of a pass, with its evidence (collective under DDP: call on every rank)."""
        return meter.compute_report(candidate_ids, meta, evidence=self.options.evidence)


def check_models(encoder: nn.Module, reference: Optional[nn.Module]) -> None:
    """Refuse an ``encoder`` / ``reference`` that is not an ``nn.Module`` with weights."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"`encoder` must be a torch.nn.Module, got {type(encoder).__name__}.")
    if reference is not None and not isinstance(reference, nn.Module):
        raise TypeError(f"`reference` must be a torch.nn.Module or None, got {type(reference).__name__} "
                        "(load checkpoints with `lightning_memloc.load_encoder`).")
    check_has_weights(encoder, "encoder")
    if reference is not None:
        check_has_weights(reference, "reference")


def build_views(candidates: Union[Candidates, SeededViews], views: int, transform: Optional[Callable], seed: int,
                labels: Optional[Tensor], normalize: NormalizeSpec = None) -> SeededViews:
    """``candidates`` as validated :class:`~lightning_memloc.views.seeded.SeededViews` (explicit labels checked)."""
    if isinstance(candidates, SeededViews):
        view_set = candidates
        if normalize is not None and view_set.normalization != resolve_normalize(normalize):
            raise ValueError(f"`normalize`={normalize!r} but the SeededViews given as `candidates` normalise with "
                             f"{view_set.normalization}: pass normalize= to the SeededViews only.")
    else:
        if isinstance(candidates, Tensor) and candidates.ndim in (3, 5):
            views = None  # precomputed views (N, K, ...) are used as they are
        view_set = SeededViews(candidates, views=views, transform=transform, seed=seed, labels=labels, normalize=normalize)
    if view_set.labels is not None and len(view_set) >= 2:  # labels of dataset items are checked as they stream
        classes = torch.unique(view_set.labels)
        if bool((classes < 0).any()):
            raise ValueError(f"`labels` must be class ids >= 0 for ClassMem, got {classes[classes < 0].tolist()} "
                             "(-1 means 'no label'): drop unlabelled candidates, or pass labels=None to skip ClassMem.")
        if classes.numel() < 2:
            raise ValueError(f"`labels` hold a single class {classes.tolist()}: ClassMem compares a class with the "
                             "others and needs at least 2 classes; pass labels of 2 or more classes, or labels=None "
                             "to skip ClassMem.")
    return view_set


def check_groups(control: Optional[Candidates], unseen: Optional[Candidates], *, with_reference: bool) -> Dict[str, Candidates]:
    """Validate the control / unseen sets; return them by name, in pass order (control first)."""
    groups = {name: images for name, images in (("control", control), ("unseen", unseen)) if images is not None}
    for name, images in groups.items():
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
    if "control" in groups and not with_reference:
        raise ValueError("`control` is compared with the candidates on SSLMem, which needs `reference`: pass the "
                         "reference encoder, or drop `control` (use `unseen` for UnitMem's membership test).")
    return groups


def pin_memory_for(device: Union[torch.device, str]) -> bool:
    """Whether the views' loader pins its batches: for a CUDA model (non-blocking host-to-device copies)."""
    return torch.device(device).type == "cuda"


def run_pass(encoder: nn.Module, reference: Optional[nn.Module], views: SeededViews, specs: Sequence[LayerSpec],
             meter: MemorizationMeter, *, batch_size: int, pairing: str = "all", num_workers: int = 0,
             sampler: Optional[Sampler] = None, progress: bool = False, desc: str = "memloc",
             epoch: Optional[int] = None, world_size: int = 1, reference_cache: Optional[ReferenceCache] = None,
             autocast: Optional[str] = None) -> None:
    """Stream the views of every candidate through ``encoder`` (and ``reference``) into ``meter``.

    Both models run in eval mode under ``no_grad`` and get their modes back, also on error; with
    ``reference_cache`` the reference's alignments of unchanged batches are reused; with ``autocast``
    (``"bf16"`` / ``"fp16"``) the forwards run under ``torch.autocast``, the reductions in float32.
    """
    names = [spec.name for spec in specs]
    dtype = check_autocast(autocast, encoder, reference)  # before any work
    cache = reference_cache if reference is not None else None
    if cache is not None:
        cache.bind(reference, names, pairing, autocast=autocast)  # type: ignore[arg-type]
    device = meter.device  # metric states are not registered buffers: meter.buffers() is empty
    anchor = pairing == "anchor"
    distributed = is_distributed(world_size)
    loader: Any = views.dataloader(batch_size=batch_size, num_workers=num_workers, sampler=sampler,
                                   pin_memory=pin_memory_for(device))
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
    # nonfinite[0][i] / nonfinite[1][i]: layer names[i] gave NaN/inf in the encoder / the reference.
    nonfinite = torch.zeros(2, len(names), dtype=torch.uint8)
    with eval_mode(encoder, reference), torch.no_grad():
        for index, x, label in loader:
            index = torch.as_tensor(index, dtype=torch.long)
            label = torch.as_tensor(label, dtype=torch.long)
            batch_views = views.finalize(x, index, device)
            b, k = batch_views.shape[:2]
            inputs = batch_views.reshape(b * k, *batch_views.shape[2:])
            if anchor:
                inputs = torch.cat([inputs, views.anchors(index).to(inputs)])
            units, align_f = forward_reduce(encoder, inputs, names, b, k, units=True,
                                            align=meter.needs_alignment, anchor=anchor, autocast=dtype)
            key = None if cache is None else cache.batch_key(index, inputs)
            align_g = None if cache is None else cache.get(key, device)  # type: ignore[arg-type]
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
    if distributed:  # every rank must agree before raising, or the healthy ranks would wait forever in compute()
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
            f's alignment gap (:mod:`lightning_memloc.report.layer_evidence`).
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
