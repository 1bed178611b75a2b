"""Modules and state dicts carrying ``torch.nn.utils.prune`` masks (``w = w_orig * w_mask``): copy, read, undo."""

from __future__ import annotations

import copy
from typing import Dict, List, Tuple

from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = ["MaskUndo", "plain_copy", "pruning_hooks", "unpruned_state"]


def pruning_hooks(module: nn.Module) -> List[Tuple[int, "prune.BasePruningMethod"]]:
    """``(handle id, method)`` of every pruning forward pre-hook on ``module`` (not its children)."""
    return [(k, h) for k, h in module._forward_pre_hooks.items() if isinstance(h, prune.BasePruningMethod)]


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every pruning mask baked into a plain parameter (``module`` unchanged).

    Example:
        >>> conv = nn.Conv2d(1, 2, 1)
        >>> _ = prune.identity(conv, "weight")
        >>> sorted(plain_copy(conv).state_dict()), sorted(conv.state_dict())
        (['bias', 'weight'], ['bias', 'weight_mask', 'weight_orig'])
    """
    # deepcopy refuses non-leaf tensors a pre-hook computes (prune's w, weight_norm's): copy their values.
    memo: Dict[int, object] = {id(v): v.detach().clone() for m in module.modules() for v in vars(m).values()
                               if isinstance(v, Tensor) and not v.is_leaf}
    copied = copy.deepcopy(module, memo)
    for m in copied.modules():
        for _, hook in pruning_hooks(m):
            prune.remove(m, hook._tensor_name)
    return copied


def unpruned_state(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state`` with each ``w_orig`` / ``w_mask`` pair replaced by ``w = w_orig * w_mask``.

    Example:
        >>> import torch
        >>> unpruned_state({"w_orig": torch.ones(2), "w_mask": torch.tensor([1.0, 0.0]), "b": torch.ones(1)})
        {'b': tensor([1.]), 'w': tensor([1., 0.])}
    """
    out = dict(state)
    for key in [k for k in state if k.endswith("_orig")]:
        name = key[: -len("_orig")]
        if name + "_mask" in state and name not in state:
            del out[key], out[name + "_mask"]
            out[name] = state[key] * state[name + "_mask"]
    return out


class MaskUndo:
    """Remember a module's parameters before masks are registered; :meth:`undo` puts back the very ``Parameter``
    objects (optimizers holding them stay valid), in their order.

    Example:
        >>> conv = nn.Conv2d(1, 2, 1)
        >>> undo = MaskUndo()
        >>> undo.remember(conv, "weight")
        >>> _ = prune.identity(conv, "weight")
        >>> undo.undo()
        >>> list(conv.state_dict())
        ['weight', 'bias']
    """

    def __init__(self) -> None:
        self._entries: List[Tuple[nn.Module, str, List[str]]] = []

    def remember(self, module: nn.Module, name: str) -> None:
        """Call before masking ``module.<name>``; a tensor masked already is left alone by :meth:`undo`."""
        if name in module._parameters and all(m is not module or n != name for m, n, _ in self._entries):
            self._entries.append((module, name, list(module._parameters)))

    def undo(self) -> None:
        """Remove the masks registered since :meth:`remember` (newest first); forget them."""
        for module, name, order in reversed(self._entries):
            for key, hook in pruning_hooks(module):
                if hook._tensor_name == name:
                    del module._forward_pre_hooks[key]
            if name + "_orig" not in module._parameters:
                continue
            module._buffers.pop(name + "_mask", None)
            module.__dict__.pop(name, None)  # the computed ``w``
            module._parameters[name] = module._parameters.pop(name + "_orig")
            position = {n: i for i, n in enumerate(order)}
            items = sorted(module._parameters.items(), key=lambda item: position.get(item[0], len(position)))
            module._parameters.clear()
            module._parameters.update(items)
        self._entries.clear()
