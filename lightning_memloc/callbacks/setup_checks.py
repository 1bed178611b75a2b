"""``setup``-time checks of the fine-tuning and pruning callbacks: catch a plan that will not do what it says.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the most
memorizing layers and prune the most memorizing units. A plan that unfreezes after the last
epoch, prunes nothing (or everything), asks for more layers than there are, or masks a conv whose
channels a BatchNorm outside the tap turns back on, would run to the end and report a result
that is not what was asked. These checks run in ``setup``, before the first training step.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_memloc.checks import as_python_number

__all__ = ["check_amount_units", "check_epoch_in_run", "check_k_layers", "following_norms"]

_MIXING_NORMS = (nn.GroupNorm, nn.LayerNorm)


def check_epoch_in_run(trainer: Any, epoch: Optional[int], argument: str, consequence: str) -> None:
    """Refuse an action epoch at or after ``max_epochs`` (it would never happen).

    Args:
        trainer: the trainer being set up (``max_epochs`` of -1 / ``None`` means no limit).
        epoch: the epoch at whose start the action happens (``None``: at fit start).
        argument: the callback argument, for the message.
        consequence: what would happen instead, for the message.
    """
    max_epochs = getattr(trainer, "max_epochs", None)
    if epoch is None or max_epochs is None or max_epochs < 0 or epoch < max_epochs:
        return
    raise ValueError(f"`{argument}`={epoch} but training ends after epoch {max_epochs - 1} (max_epochs={max_epochs}): "
                     f"{consequence}. Pass `{argument}` < {max_epochs} or raise max_epochs.")


def check_amount_units(amount: Any, scope: str, units: Dict[str, int]) -> None:
    """Refuse an ``amount`` that prunes every unit, warn when it rounds to none.

    A fraction is ``round(fraction * units)`` per layer (``scope="layer"``) or over all layers
    (``"global"``); a count is taken from every layer or in all.
    """
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


def check_k_layers(k: int, source: Any) -> None:
    """Refuse ``k`` larger than the layers a monitor will measure (known before its first report)."""
    monitor = getattr(source, "source", source)
    specs = getattr(monitor, "_specs", None)
    layers = [s.name for s in specs] if specs else getattr(monitor, "layers", None)
    if not isinstance(layers, (list, tuple)) or not layers:
        return  # "auto" before the monitor's setup: checked when the report is known
    if k > len(layers):
        raise ValueError(f"`k`={k} but the monitor measures {len(layers)} layers ({list(layers)}): pass k <= "
                         f"{len(layers)}.")


def following_norms(encoder: nn.Module, layer: str, width: int) -> Tuple[nn.Module, ...]:
    """BatchNorm layers right after the tapped module, outside it, that act on its ``width`` channels.

    Masking a conv channel whose output then goes through a BatchNorm leaves the channel firing
    (the BatchNorm adds ``β − γ·μ/σ``): those BatchNorms are masked too. The walk goes over the
    tap's following siblings, across parameter-free modules, up to the next module with
    parameters. A GroupNorm / LayerNorm there mixes the channels and cannot be pruned per unit:
    ``ValueError``.
    """
    if not layer:
        return ()
    parent = encoder.get_submodule(layer.rpartition(".")[0])
    children = list(parent.named_children())
    names = [name for name, _ in children]
    own = layer.rpartition(".")[2]
    if own not in names:
        return ()
    found = []
    for name, sibling in children[names.index(own) + 1:]:
        if isinstance(sibling, _BatchNorm) and sibling.num_features == width:
            found.append(sibling)
        elif isinstance(sibling, _MIXING_NORMS) and any(True for _ in sibling.parameters()):
            raise ValueError(f"layer {layer!r} is followed by {type(sibling).__name__} {name!r}, which mixes its "
                             "channels: masking units at the tap would not silence them after it; prune a layer "
                             "whose units reach the next layer unmixed (e.g. the block after the norm).")
        elif any(True for _ in sibling.parameters()):
            break
    return tuple(found)
