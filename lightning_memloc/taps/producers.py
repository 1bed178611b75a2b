"""Which parametrised modules produce a tapped layer's output: what fine-tuning a layer trains."""

from __future__ import annotations

from typing import Dict, List, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from lightning_memloc.errors import LayerNotFoundError

#: Normalisation layers: trained together with the conv / linear they follow.
NORM_TYPES = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)

#: Child names of a residual block's projection shortcut: it does not produce the tap (nor carry its units).
SHORTCUTS = ("downsample", "shortcut", "skip")


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def producing_modules(encoder: nn.Module, layer: str) -> List[str]:
    """Names of the parametrised modules producing ``layer``'s output, in registration order (``[]``: none).

    A parameter-free tap (a ReLU) is produced by its preceding siblings back to the first conv / linear with the
    norms after it (``conv1`` + ``bn1`` for a ResNet stem ``relu``), skipping shortcuts, one level up if none.

    Example:
        >>> seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2), nn.ReLU())
        >>> producing_modules(seq, "2"), producing_modules(seq, "6"), producing_modules(seq, "0")
        (['0', '1'], ['5'], ['0'])
    """
    modules = dict(encoder.named_modules())
    if layer not in modules:
        raise LayerNotFoundError(f"layer {layer!r} is not a module of {type(encoder).__name__}: "
                                 "list the valid names with `[name for name, _ in encoder.named_modules()]`.")
    if _has_parameters(modules[layer]):
        return [layer]
    name = layer
    while name:
        parent_name, _, child = name.rpartition(".")
        children = list(modules[parent_name].named_children())
        index = [n for n, _ in children].index(child)
        found: List[str] = []
        for sibling_name, sibling in reversed(children[:index]):
            if sibling_name in SHORTCUTS or not _has_parameters(sibling):
                continue
            found.append(f"{parent_name}.{sibling_name}" if parent_name else sibling_name)
            if not isinstance(sibling, NORM_TYPES):
                break  # the producer (a conv / linear or a block holding them) is reached
        if found:
            return found[::-1]
        name = parent_name
    return []


def count_parameters(encoder: nn.Module, names: Sequence[str]) -> int:
    """Scalar parameters held by the named modules, each counted once."""
    return int(sum({id(p): p.numel() for name in names for p in encoder.get_submodule(name).parameters()}.values()))


def trainable_map(encoder: nn.Module, layers: Sequence[str]) -> Dict[str, List[str]]:
    """``{layer: producing_modules(encoder, layer)}``; ``ValueError`` naming every layer that would train nothing."""
    mapping = {layer: producing_modules(encoder, layer) for layer in layers}
    empty = [layer for layer, names in mapping.items() if count_parameters(encoder, names) == 0]
    if empty:
        raise ValueError(f"layers {empty} of {type(encoder).__name__} are produced by no module with parameters, so "
                         "fine-tuning them would train nothing: measure layers that are (or follow) a conv / linear / "
                         "block (pass the monitor or `measure` explicit `layers=`), or choose other layers.")
    return mapping
