"""Unit surgery: zero a unit's rows of its producing weight and bias and of following BatchNorms' affine
(``prune.identity`` masks), so that its output is exactly zero after the ReLU; no Lightning needed."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune

from lightning_memloc.checks import as_python_number, check_choice, check_layers_exist
from lightning_memloc.taps.producers import SHORTCUTS
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.selection import SCOPES, UNIT_STRATEGIES, select_units

__all__ = ["Amount", "UnitTargets", "check_amount", "check_amount_units", "choose_units", "find_unit_targets",
           "following_norms", "prune_units", "register_masks", "remove_masks", "zero_units"]

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Amount = Union[int, float]  # int first: a config's `1` is a count, not the fraction 1.0


def _width(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


@dataclass(frozen=True)
class UnitTargets:
    """The modules whose parameters carry the units of one tapped layer: the conv / linear ``producer`` whose
    outputs are the units, and the BatchNorm ``norms`` that follow it (masked too)."""

    layer: str
    producer: nn.Module
    norms: Tuple[nn.Module, ...]
    num_units: int

    def parameters(self) -> List[Tuple[nn.Module, str]]:
        """``(module, name)`` of every parameter masked per unit (weight, bias if any, BN affine)."""
        return [(module, name) for module in (self.producer, *self.norms) for name in ("weight", "bias")
                if module._parameters.get(name) is not None or hasattr(module, name + "_orig")]


def _last_producer(block: nn.Module, num_units: Optional[int]) -> Optional[Tuple[nn.Module, Tuple[nn.Module, ...]]]:
    # a residual block's projection shortcut produces no unit of the block
    named = [m for name, m in block.named_modules() if not set(name.split(".")) & set(SHORTCUTS)]
    positions = [i for i, m in enumerate(named)
                 if isinstance(m, _PRODUCERS) and (num_units is None or _width(m) == num_units)]
    if not positions:
        return None
    producer = named[positions[-1]]
    norms = tuple(m for m in named[positions[-1] + 1:] if isinstance(m, _BatchNorm) and m.num_features == _width(producer)
                  or isinstance(m, nn.GroupNorm) and m.affine and m.num_channels == _width(producer))  # norm="group"
    return producer, norms


def find_unit_targets(encoder: nn.Module, layer: str, num_units: Optional[int] = None) -> UnitTargets:
    """The last conv / linear with ``num_units`` outputs in ``layer`` or, for a parameter-free tap (a ReLU),
    among its preceding siblings, and the BatchNorm layers after it."""
    check_layers_exist(encoder, [layer])
    found = _last_producer(encoder.get_submodule(layer), num_units)
    if found is None and layer:
        parent, _, own = layer.rpartition(".")
        children = list(encoder.get_submodule(parent).named_children())
        index = [name for name, _ in children].index(own)
        norms: List[nn.Module] = []
        for _, sibling in reversed(children[:index]):
            found = _last_producer(sibling, num_units)
            if found is not None:
                found = (found[0], found[1] + tuple(n for n in reversed(norms) if n.num_features == _width(found[0])))
                break
            if isinstance(sibling, _BatchNorm):
                norms.append(sibling)
            elif any(True for _ in sibling.parameters()):
                break
    if found is None:
        wanted = "" if num_units is None else f" with {num_units} outputs"
        raise ValueError(f"cannot find the conv / linear module producing the units of layer {layer!r}: no "
                         f"Conv1d/2d/3d or Linear{wanted} inside it or before it among its siblings. Prune layers that "
                         "are (or end in) such a module.")
    after = tuple(m for m in following_norms(encoder, layer, _width(found[0])) if all(m is not n for n in found[1]))
    return UnitTargets(layer, found[0], found[1] + after, _width(found[0]))  # + BatchNorms after the tap


def _mask(module: nn.Module, name: str) -> Tensor:
    if not hasattr(module, name + "_mask"):
        prune.identity(module, name)
    return getattr(module, name + "_mask")


def register_masks(targets: UnitTargets) -> None:
    """Register all-ones ``prune.identity`` masks on every parameter of ``targets`` (idempotent)."""
    for module, name in targets.parameters():
        _mask(module, name)


def zero_units(targets: UnitTargets, units: Tensor) -> None:
    """Write zeros for ``units`` (output indices) into the masks of ``targets`` (idempotent)."""
    with torch.no_grad():
        for module, name in targets.parameters():
            mask = _mask(module, name)
            mask[units.to(mask.device)] = 0
            setattr(module, name, getattr(module, name + "_orig") * mask)  # visible before the next forward


def remove_masks(targets: UnitTargets) -> None:
    """Bake the masks into the weights (``prune.remove``): plain parameters again."""
    for module, name in targets.parameters():
        if hasattr(module, name + "_mask"):
            prune.remove(module, name)


def check_amount(amount: object) -> Dict[str, Amount]:
    """``{"count": n}`` for an int ``amount`` >= 1, ``{"fraction": f}`` for a float in (0, 1); else an error.

    Example:
        >>> check_amount(3), check_amount(0.25)
        ({'count': 3}, {'fraction': 0.25})
    """
    amount = as_python_number(amount)  # NumPy integers / floats behave as int / float
    message = f"`amount` must be a float in (0, 1) (a fraction) or an int >= 1 (a count), got {amount!r}."
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(message)
    if (amount < 1) if isinstance(amount, int) else not 0.0 < amount < 1.0:
        raise ValueError(message)
    return {"count": amount} if isinstance(amount, int) else {"fraction": float(amount)}


def choose_units(report: MemorizationReport, targets: Dict[str, UnitTargets], amount: Amount, strategy: str,
                 scope: str, seed: int) -> Dict[str, Tensor]:
    """The units to prune in every layer of ``targets`` (refusing a report of another encoder)."""
    missing = [layer for layer in targets if layer not in report.layers]
    if missing:
        raise ValueError(f"layers {missing} are not in the report; its layers are {report.layers}.")
    for layer, target in targets.items():
        if report.unit_mem[layer].numel() != target.num_units:
            raise ValueError(f"layer {layer!r} has {report.unit_mem[layer].numel()} units in the report but its "
                             f"producer {type(target.producer).__name__} has {target.num_units} outputs: the report was "
                             "measured on another encoder.")
    return select_units(report, strategy=strategy, scope=scope, layers=list(targets), seed=seed, **check_amount(amount))


def prune_units(module: nn.Module, report: MemorizationReport, amount: Amount, strategy: str = "lowest",
                scope: str = "layer", layers: Optional[Sequence[str]] = None, seed: int = 0,
                permanent: bool = True) -> Dict[str, Tensor]:
    """Prune units of a bare encoder, chosen from a report by UnitMem; returns ``{layer: pruned unit indices}``.

    Args:
        amount: a fraction in (0, 1) or a count >= 1 (per layer or in all, see ``scope``).
        strategy: ``"highest"``, ``"lowest"`` or ``"random"`` UnitMem.
        scope: ``"layer"`` or ``"global"``.
        permanent: bake the masks into the weights; ``False`` keeps ``*_orig`` / ``*_mask``.

    Example:
        >>> from lightning_memloc import measure
        >>> from lightning_memloc.models import TinyCNN
        >>> encoder = TinyCNN(width=2)
        >>> report = measure(encoder, torch.rand(4, 3, 8, 8), views=2, progress=False)
        >>> pruned = prune_units(encoder, report, amount=1, strategy="highest")
        >>> [len(v) for v in pruned.values()]
        [1, 1, 1]
    """
    if not isinstance(report, MemorizationReport):
        raise TypeError(f"`report` must be a MemorizationReport, got {type(report).__name__}.")
    amount = next(iter(check_amount(amount).values()))
    check_choice("strategy", strategy, UNIT_STRATEGIES, as_tuple=False)
    check_choice("scope", scope, SCOPES, as_tuple=False)
    names = list(report.layers if layers is None else layers)
    missing = [name for name in names if name not in report.layers]
    if missing:
        raise ValueError(f"`layers` names {missing} are not in the report; its layers are {report.layers}.")
    targets = {name: find_unit_targets(module, name, report.unit_mem[name].numel()) for name in names}
    check_amount_units(amount, scope, {name: t.num_units for name, t in targets.items()})
    units = choose_units(report, targets, amount, strategy, scope, seed)
    for layer, index in units.items():
        zero_units(targets[layer], index)
        if permanent:
            remove_masks(targets[layer])
    return units


def check_amount_units(amount: Any, scope: str, units: Dict[str, int]) -> None:
    """Refuse an ``amount`` that prunes every unit, warn when it rounds to none."""
    if not units:
        return
    amount = as_python_number(amount)
    groups = units if scope == "layer" else {"all layers in scope": sum(units.values())}
    for where, total in groups.items():
        n = int(round(float(amount) * total)) if isinstance(amount, float) else int(amount)
        label = where if scope != "layer" else f"layer {where!r}"
        if n >= total:
            raise ValueError(f"`amount`={amount!r} would prune all {total} units of {label} (its output would be 0 "
                             f"everywhere): pass a smaller amount (a fraction < {1 - 0.5 / total:.3g} or a count "
                             f"< {total}).")
        if n == 0:
            warnings.warn(f"`amount`={amount!r} rounds to 0 of the {total} units of {label}: nothing will be pruned "
                          f"there; pass a fraction >= {0.5 / total:.3g} or a count.", UserWarning, stacklevel=3)


def following_norms(encoder: nn.Module, layer: str, width: int) -> Tuple[nn.Module, ...]:
    """BatchNorm layers right after the tapped module acting on its ``width`` channels (a masked channel would
    still fire through them, ``β − γ·μ/σ``); a GroupNorm / LayerNorm there mixes channels: ``ValueError``."""
    parent, _, own = layer.rpartition(".")  # the whole encoder (layer ""): no sibling
    children = list(encoder.get_submodule(parent).named_children())
    names = [name for name, _ in children]
    found = []
    for name, sibling in children[names.index(own) + 1:] if own in names else []:
        if isinstance(sibling, _BatchNorm) and sibling.num_features == width:
            found.append(sibling)
        elif isinstance(sibling, (nn.GroupNorm, nn.LayerNorm)) and any(True for _ in sibling.parameters()):
            raise ValueError(f"layer {layer!r} is followed by {type(sibling).__name__} {name!r}, which mixes its "
                             "channels: masking units at the tap would not silence them after it; prune a layer "
                             "whose units reach the next layer unmixed (e.g. the block after the norm).")
        elif any(True for _ in sibling.parameters()):
            break
    return tuple(found)
