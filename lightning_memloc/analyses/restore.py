"""Single-unit restore (the authors' recipe): fine-tune the whole layer (``requires_grad`` is per tensor, so one
channel cannot train alone), then copy every unit but the chosen ones back from the original.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from lightning_memloc.checks import check_int, named_module
from lightning_memloc.errors import ArchitectureMismatchError
from lightning_memloc.taps.hooks import eval_mode

_UNIT_MODULES = (nn.modules.conv._ConvNd, nn.Linear)


def unit_module(layer_module: nn.Module) -> Tuple[str, int]:
    """``(name, number of units)`` of the last conv / linear module inside a layer: its outputs are the units."""
    found = [(name, m) for name, m in layer_module.named_modules() if isinstance(m, _UNIT_MODULES)]
    if not found:
        raise ValueError(f"the layer ({type(layer_module).__name__}) holds no Conv or Linear module, so it has no unit "
                         "weights: pass the module that computes the units (e.g. 'fc1' rather than the ReLU tap "
                         "'relu1').")
    name, module = found[-1]
    return name, int(module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features)


def _keep_mask(keep: Union[int, Sequence[int], Tensor], units: int) -> Tensor:
    values = torch.as_tensor([keep] if isinstance(keep, int) else keep)
    if values.dtype == torch.bool or values.is_floating_point() or values.ndim != 1:
        raise TypeError(f"`keep` must be a unit index or a 1-d sequence of unit indices, got {keep!r}.")
    bad = values[(values < 0) | (values >= units)]
    if bad.numel():
        raise ValueError(f"`keep` holds unit {int(bad[0])}, but the layer has units 0..{units - 1}.")
    mask = torch.zeros(units, dtype=torch.bool)
    mask[values.long()] = True
    return mask


def restore_units(module: nn.Module, original: nn.Module, layer: str,
                  keep: Union[int, Sequence[int], Tensor]) -> Dict[str, str]:
    """Reset every unit of ``layer`` except ``keep`` to ``original``'s weights, in place.

    Rows of the unit module and of the norms after it are restored outside ``keep``; every other tensor of the
    layer is shared by all units and restored whole. Returns tensor name -> ``"rows"`` or ``"all"``.

    Example:
        >>> from lightning_memloc.models import TinyCNN
        >>> f = TinyCNN(width=2); tuned = copy.deepcopy(f)
        >>> with torch.no_grad(): _ = tuned.conv1.conv.weight.add_(1.0)
        >>> restore_units(tuned, f, "conv1", keep=[1])["conv.weight"]
        'rows'
        >>> torch.equal(tuned.conv1.conv.weight[0], f.conv1.conv.weight[0]), torch.equal(tuned.conv1.conv.weight[1], f.conv1.conv.weight[1])
        (True, False)
    """
    target, source = named_module(module, layer, "module"), named_module(original, layer, "original")
    unit_name, units = unit_module(target)
    mask = _keep_mask(keep, units)
    dst, src = target.state_dict(keep_vars=True), source.state_dict()
    if set(dst) != set(src) or any(dst[key].shape != src[key].shape for key in dst):
        raise ArchitectureMismatchError(f"layer {layer!r} differs between `module` and `original`: restore_units "
                                        "needs the fine-tuned model and its original of the same architecture.")
    names = [name for name, _ in target.named_modules()]
    after = names[names.index(unit_name):]  # the unit module and the modules that follow it (norms, activations)
    done: Dict[str, str] = {}
    with torch.no_grad():
        for key, tensor in dst.items():
            owner = key.rsplit(".", 1)[0] if "." in key else ""
            value = src[key].to(device=tensor.device, dtype=tensor.dtype)
            if tensor.ndim == 0 and not tensor.is_floating_point():
                continue  # num_batches_tracked: a counter, not a unit
            if owner in after and tensor.ndim >= 1 and tensor.shape[0] == units:
                tensor[~mask] = value[~mask]
                done[key] = "rows"
            else:
                tensor.copy_(value)
                done[key] = "all"
    return done


def finetune_units(encoder: nn.Module, layer: str, units: Union[int, Sequence[int]],
                   loss_fn: Callable[[nn.Module], Tensor], candidates: Any, *, steps: int = 20, lr: float = 1e-2,
                   tap: Optional[str] = None, **measure_kwargs: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Fine-tune ``layer`` of a copy of ``encoder``, keep only ``units``' change, measure their UnitMem.

    The copy trains in eval mode (Adam, ``steps`` steps on ``loss_fn(copy) -> scalar``), then
    :func:`restore_units` puts every other unit back; UnitMem of ``tap`` (default ``layer``) is measured
    before and after with the same views (``**measure_kwargs`` go to ``measure``).

    Returns:
        ``(tuned copy, result)``, result ``{"layer", "tap", "units", "steps", "lr", "unit_mem_before",
        "unit_mem_after", "argmax_before", "argmax_after", "other_units_max_change"}``.
    """
    check_int("steps", steps, 1)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"`lr` must be a number > 0, got {lr!r}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable model -> scalar loss, got {type(loss_fn).__name__}.")
    _, count = unit_module(named_module(encoder, layer, "encoder"))
    mask = _keep_mask(units, count)
    tap = layer if tap is None else tap
    named_module(encoder, tap, "encoder")
    from lightning_memloc.measurement import measure

    tuned = copy.deepcopy(encoder)
    tuned.requires_grad_(False).get_submodule(layer).requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.get_submodule(layer).parameters(), lr=lr)
    with eval_mode(tuned):  # then back to the encoder's modes, module by module
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(tuned).backward()
            optimizer.step()
    kept = mask.nonzero().flatten()
    restore_units(tuned, encoder, layer, keep=kept)
    for p, q in zip(tuned.parameters(), encoder.parameters()):
        p.requires_grad_(q.requires_grad)
    before = measure(encoder, candidates, layers=[tap], **measure_kwargs)
    after = measure(tuned, candidates, layers=[tap], **measure_kwargs)
    um_b, um_a = before.unit_mem[tap], after.unit_mem[tap]
    others = ~mask if um_b.numel() == count else torch.ones_like(um_b, dtype=torch.bool)
    return tuned, {"layer": layer, "tap": tap, "units": kept.tolist(), "steps": steps, "lr": float(lr),
                   "unit_mem_before": um_b[kept].tolist() if um_b.numel() == count else None,
                   "unit_mem_after": um_a[kept].tolist() if um_a.numel() == count else None,
                   "argmax_before": before.unit_argmax[tap][kept].tolist() if um_b.numel() == count else None,
                   "argmax_after": after.unit_argmax[tap][kept].tolist() if um_a.numel() == count else None,
                   "other_units_max_change": float((um_a[others] - um_b[others]).abs().max()) if bool(others.any())
                   else 0.0}
