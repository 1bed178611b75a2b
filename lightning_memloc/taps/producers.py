"""Which parametrised modules produce a tapped layer's output: what fine-tuning a layer trains.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the layers
where memorization is highest. A measured layer is a module whose *output* is measured; it may
hold no parameter at all (a ReLU after a residual addition, timm's ``act2``, a ViT's ``mlp.act``,
the stem ``relu`` of a torchvision ResNet, an activation inside a plain ``nn.Sequential``).
Fine-tuning such a layer means training the weights that compute its output:

- a tapped module that holds parameters (a ``ConvBlock``, a residual block, an attention
  module, a conv / linear) is trained whole;
- a parameter-free tap is produced by the modules registered before it in its parent: looking
  back over its preceding siblings (skipping parameter-free ones and projection shortcuts), the
  normalisation layers met on the way and the first module holding a conv / linear (or any other
  parametrised module) are trained — e.g. ``conv1`` + ``bn1`` for a torchvision stem ``relu``,
  ``mlp.fc1`` for timm's ``mlp.act``; when no sibling qualifies the search repeats one level up.

The same look-back rule (the conv / linear and the norms after it) is the one
:func:`~lightning_memloc.models.surgery.find_unit_targets` uses to find a layer's units.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from lightning_memloc.errors import LayerNotFoundError

__all__ = ["NORM_TYPES", "SHORTCUTS", "count_parameters", "producing_modules", "producing_modules_map",
           "trainable_map"]

#: Normalisation layers: trained together with the conv / linear they follow.
NORM_TYPES = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)

#: Child names of a residual block's projection shortcut: it does not produce the tap (nor carry its units).
SHORTCUTS = ("downsample", "shortcut", "skip")


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def producing_modules(encoder: nn.Module, layer: str) -> List[str]:
    """Names (in ``encoder.named_modules()``) of the parametrised modules producing ``layer``'s output.

    Args:
        encoder: the encoder the layer name refers to.
        layer: a module name of ``encoder`` (a measured layer).

    Returns:
        Module names in registration order; ``[]`` when nothing before the layer holds parameters
        (the layer's output then depends on no trainable weight).

    Raises:
        LayerNotFoundError: ``layer`` is not a module of ``encoder``.

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
            found.append(_join(parent_name, sibling_name))
            if not isinstance(sibling, NORM_TYPES):
                break  # the producer (a conv / linear or a block holding them) is reached
        if found:
            return found[::-1]
        name = parent_name
    return []


def producing_modules_map(encoder: nn.Module, layers: Sequence[str]) -> Dict[str, List[str]]:
    """:func:`producing_modules` of every layer: ``{layer: [module names]}``."""
    return {layer: producing_modules(encoder, layer) for layer in layers}


def count_parameters(encoder: nn.Module, names: Sequence[str]) -> int:
    """Number of scalar parameters held by the named modules (each parameter counted once)."""
    seen = {id(p): p.numel() for name in names for p in encoder.get_submodule(name).parameters()}
    return int(sum(seen.values()))


def trainable_map(encoder: nn.Module, layers: Sequence[str]) -> Dict[str, List[str]]:
    """:func:`producing_modules_map`, raising when a layer would train no parameter.

    Raises:
        ValueError: naming every layer whose output depends on no parameter of ``encoder``.
    """
    mapping = producing_modules_map(encoder, layers)
    empty = [layer for layer, names in mapping.items() if count_parameters(encoder, names) == 0]
    if empty:
        raise ValueError(
            f"layers {empty} of {type(encoder).__name__} are produced by no module with parameters, so fine-tuning them "
            "would train nothing: measure layers that are (or follow) a conv / linear / block (pass the monitor or "
            "`measure` explicit `layers=`), or choose other layers."
        )
    return mapping
