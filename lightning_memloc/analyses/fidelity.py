"""The quirks of the authors' released scripts, as explicit options (never the default).

(a) train-mode BatchNorm at batch size 1, (b) children run in sequence, (c) μ-max against the median, (d) alignment
to the un-augmented image (``pairing="anchor"``); ``docs/fidelity.md`` measures what each changes.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_memloc.functional.unitmem import unitmem
from lightning_memloc.measurement import Candidates, build_views, measure
from lightning_memloc.taps.probe import model_device_dtype
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.taps.hooks import LayerSpec, LayerTaps, eval_mode, resolve_layers, unit_activations
from lightning_memloc.views.seeded import SeededViews

__all__ = ["AUTHORS_QUIRKS", "authors_unitmem", "measure_as_authors", "measure_with_quirks",
           "per_view_batchnorm", "sequential_children"]

#: The settings of the authors' released scripts, as keyword arguments of :func:`measure_with_quirks`.
AUTHORS_QUIRKS: Dict[str, Any] = {"train_bn": True, "sequential": True, "reduction": "median", "pairing": "anchor"}


def sequential_children(model: nn.Module, until: Optional[str] = None) -> nn.Sequential:
    """The model's direct children (same objects and names) run in order up to ``until``, as torchvision's
    ``IntermediateLayerGetter`` does: what ``forward`` does between them (residuals, reshapes) is skipped.

    Example:
        >>> from lightning_memloc.models import AuthorsResNet9
        >>> seq = sequential_children(AuthorsResNet9(width=2), until="layer3_residual2")
        >>> list(seq._modules)[-2:], seq(torch.randn(1, 3, 32, 32)).shape
        (['layer3_residual1', 'layer3_residual2'], torch.Size([1, 16, 2, 2]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    children = list(model.named_children())
    if not children:
        raise ValueError(f"`model` ({type(model).__name__}) has no child modules to run in sequence.")
    names = [name for name, _ in children]
    if until is not None:
        if until not in names:
            raise ValueError(f"`until`={until!r} is not a direct child of {type(model).__name__}; its children are {names}.")
        children = children[:names.index(until) + 1]
    return nn.Sequential(OrderedDict(children))


def _per_view_forward(name: str, module: _BatchNorm) -> Callable[[Tensor], Tensor]:
    """A BatchNorm forward normalising each sample with its own statistics; running statistics untouched."""

    def forward(x: Tensor) -> Tensor:
        undefined = f"per-view BatchNorm (train mode at batch size 1) is undefined for layer {name!r}: its input "
        if x.ndim < 3:
            raise ValueError(f"{undefined}{tuple(x.shape)} holds one value per channel and view. Use train_bn=False "
                             "for this model.")
        if x[0, 0].numel() < 2:
            raise ValueError(f"{undefined}{tuple(x.shape)} has a 1x1 map, one value per channel (PyTorch refuses it in "
                             "train mode too). Use larger images (>= 32 px for AuthorsResNet9) or train_bn=False.")
        return F.instance_norm(x, weight=module.weight, bias=module.bias, eps=module.eps)

    return forward


@contextmanager
def per_view_batchnorm(*models: Optional[nn.Module]) -> Iterator[None]:
    """Inside the block, every BatchNorm of ``models`` normalises each sample on its own, as train mode does at batch
    size 1 (``F.instance_norm`` with BatchNorm's affine), without updating the running statistics.

    Example:
        >>> bn = torch.nn.BatchNorm2d(2).eval()
        >>> x = torch.randn(3, 2, 4, 4)
        >>> with per_view_batchnorm(bn):
        ...     y = bn(x)
        >>> bool(torch.allclose(y[1:2], bn.train()(x[1:2]), atol=1e-6))
        True
    """
    patched: List[nn.Module] = []
    try:
        for model in (m for m in models if m is not None):
            for name, module in model.named_modules():
                if isinstance(module, _BatchNorm) and "forward" not in module.__dict__:
                    module.forward = _per_view_forward(name, module)  # type: ignore[method-assign]
                    patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def measure_with_quirks(encoder: nn.Module, candidates: Union[Candidates, SeededViews], *,
                        reference: Optional[nn.Module] = None, train_bn: bool = False, sequential: bool = False,
                        until: Optional[str] = None, **measure_kwargs: Any) -> MemorizationReport:
    """:func:`~lightning_memloc.measure` with quirks (a) ``train_bn`` and (b) ``sequential`` (recorded in ``meta``).

    Example:
        >>> from lightning_memloc.models import AuthorsResNet9
        >>> r = measure_with_quirks(AuthorsResNet9(width=2), torch.rand(3, 3, 32, 32), views=2, train_bn=True)
        >>> r.meta["train_bn"], len(r.layers)
        (True, 8)
    """
    for flag, value in (("train_bn", train_bn), ("sequential", sequential)):
        if not isinstance(value, bool):
            raise TypeError(f"`{flag}` must be True or False, got {value!r}.")
    f = sequential_children(encoder, until) if sequential else encoder
    g = sequential_children(reference, until) if sequential and reference is not None else reference
    meta = {**(measure_kwargs.pop("meta", None) or {}), "train_bn": train_bn, "sequential_children": sequential}
    with per_view_batchnorm(f, g) if train_bn else nullcontext():
        return measure(f, candidates, reference=g, meta=meta, **measure_kwargs)


def measure_as_authors(encoder: nn.Module, candidates: Union[Candidates, SeededViews], *,
                       reference: Optional[nn.Module] = None, **measure_kwargs: Any) -> MemorizationReport:
    """:func:`measure_with_quirks` with all four quirks (:data:`AUTHORS_QUIRKS`); keywords override them.

    The authors' LayerMem script calls ``.eval()``: for their LayerMem use ``pairing="anchor"`` alone.
    """
    return measure_with_quirks(encoder, candidates, reference=reference, **{**AUTHORS_QUIRKS, **measure_kwargs})


def authors_unitmem(encoder: nn.Module, candidates: Union[Candidates, SeededViews], *, views: int = 10,
                    seed: int = 0, layers: Union[str, Sequence[Union[str, LayerSpec]]] = "auto",
                    transform: Optional[Callable] = None, reduction: str = "median", sequential: bool = True,
                    train_bn: bool = True, negative: str = "clamp") -> Dict[str, Tensor]:
    """UnitMem as the authors' script computes it (a literal, slow reference): layer -> ``(U,)``.

    One forward of batch size 1 per seeded view of :func:`~lightning_memloc.measure`; buffers and modes restored.

    Example:
        >>> from lightning_memloc.models import AuthorsResNet9
        >>> scores = authors_unitmem(AuthorsResNet9(width=2), torch.rand(3, 3, 32, 32), views=2)
        >>> list(scores)[0], tuple(scores["layer3_residual2"].shape)
        ('prep', (16,))
    """
    view_set = build_views(candidates, views, transform, seed, None)
    if len(view_set) < 2:
        raise ValueError(f"UnitMem needs at least 2 candidates, got {len(view_set)}: pass more candidates.")
    model = sequential_children(encoder) if sequential else encoder
    device, dtype = model_device_dtype(encoder)
    buffers = {n: b.detach().clone() for n, b in encoder.named_buffers()}
    try:
        names = [s.name for s in resolve_layers(model, layers, view_set.example_batch(device).to(dtype)[:1])]
        sums: Dict[str, List[Tensor]] = {n: [] for n in names}
        current: Dict[str, Tensor] = {}
        with eval_mode(encoder), torch.no_grad(), LayerTaps(
                model, names, lambda n, out: current.__setitem__(n, unit_activations(out)[0])):
            encoder.train(train_bn)  # eval_mode gives every module its own mode back
            for index, x, _ in view_set.dataloader(batch_size=1):
                candidate_views = view_set.finalize(x, index, device)[0]
                acc = {n: torch.zeros((), dtype=torch.float64) for n in names}
                for view in candidate_views:
                    model(view[None].to(dtype))
                    for n in names:
                        acc[n] = acc[n] + current[n].double().cpu()
                for n in names:
                    sums[n].append(acc[n] / len(candidate_views))
    finally:
        with torch.no_grad():
            for name, buf in encoder.named_buffers():
                buf.copy_(buffers[name])
    return {n: unitmem(torch.stack(sums[n]), reduction=reduction, negative=negative) for n in names}
