"""Probing models before a pass: devices, eval mode, and the layers to tap with their unit counts."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from lightning_memloc.errors import ArchitectureMismatchError
from lightning_memloc.checks.module_digest import structure_digest
from lightning_memloc.taps.hooks import LayerSpec, LayerTaps, eval_mode, resolve_layers

#: Results of the most recent probes, by :func:`probe_key`.
_PROBES: "OrderedDict[Hashable, Tuple[List[LayerSpec], Dict[str, int]]]" = OrderedDict()
PROBE_CACHE_SIZE = 8
_Layers = Union[str, Sequence[Union[str, LayerSpec]]]


def model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device of the first parameter (or buffer) and dtype of the first floating one."""
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    return device, next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def probe_key(encoder: nn.Module, reference: Optional[nn.Module], layers: Any, example: Tensor) -> Optional[Hashable]:
    """What a probe's result depends on (models' structure and tensor shapes, layers, example shape), or ``None``."""
    try:
        key: List[Hashable] = [layers if isinstance(layers, str) else tuple(layers),
                               (min(2, len(example)), tuple(example.shape[1:]), example.dtype, example.device)]
        hash(key[0])
        for model in (encoder, reference):
            key.append(None if model is None else (
                id(model), structure_digest(model),
                tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in model.named_parameters()),
                tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in model.named_buffers())))
    except Exception:  # noqa: BLE001 - an undigestible module (UnkeyableModuleError), unhashable layers: probe anyway
        return None
    return tuple(key)


def clear_probe_cache() -> None:
    """Forget every cached probe (:func:`probe_layers` then probes again)."""
    _PROBES.clear()


def probe_layers(encoder: nn.Module, reference: Optional[nn.Module], layers: _Layers,
                 example: Tensor) -> Tuple[List[LayerSpec], Dict[str, int]]:
    """``(layer specs, units per layer)`` resolved on ``encoder`` from ``example``'s first 2 rows.

    Cached by :func:`probe_key` (the last :data:`PROBE_CACHE_SIZE` probes). Raises ``ArchitectureMismatchError``
    when a layer is missing in ``reference`` or has another shape.
    """
    key = probe_key(encoder, reference, layers, example)
    if key is not None and key in _PROBES:
        _PROBES.move_to_end(key)
        specs, num_units = _PROBES[key]
        return list(specs), dict(num_units)
    example = example[:2]  # three forwards on 2 rows: shapes do not depend on the batch
    device, dtype = model_device_dtype(encoder)
    with eval_mode(encoder, reference), torch.no_grad():
        try:
            specs = resolve_layers(encoder, layers, example.to(device=device, dtype=dtype))
        except RuntimeError as err:  # the encoder's own forward failed on the candidates' views
            raise ValueError(f"the encoder cannot run on a batch of candidate views of shape {tuple(example.shape)} "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): make "
                             "`candidates` and `transform` produce what the encoder expects (channels, image size, "
                             "dtype).") from err
        names = [spec.name for spec in specs]

        def shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
            found: Dict[str, Tuple[int, ...]] = {}
            dev, dt = model_device_dtype(model)

            def grab(name: str, output: Any) -> None:
                found[name] = tuple((output[0] if isinstance(output, (tuple, list)) else output).shape[1:])

            with LayerTaps(model, names, grab):
                model(example.to(device=dev, dtype=dt))
            return found

        encoder_shapes = shapes(encoder)
        if reference is not None:
            modules = dict(reference.named_modules())
            missing = [n for n in names if n not in modules]
            if missing:
                raise ArchitectureMismatchError(f"`reference` has no layers {missing} that the encoder has: encoder "
                                                "and reference must share the architecture (the reference is the "
                                                "same model trained without the candidates).")
            try:
                reference_shapes = shapes(reference)
            except RuntimeError as err:
                raise ArchitectureMismatchError(
                    f"`reference` cannot run on views the encoder accepts (shape {tuple(example.shape)}): "
                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; encoder and reference "
                    "must share the architecture.") from err
            for name in names:
                if reference_shapes.get(name) != encoder_shapes.get(name):
                    raise ArchitectureMismatchError(
                        f"layer {name!r} outputs shape {encoder_shapes.get(name)} in the encoder but "
                        f"{reference_shapes.get(name)} in `reference`: encoder and reference must share the "
                        "architecture.")
    sizes = {name: encoder_shapes[name] for name in names}  # units: channels of (C, H, W), features of (T, D)
    num_units = {name: shape[0] if len(shape) in (1, 3) else shape[-1] for name, shape in sizes.items()}
    if key is not None:
        _PROBES[key] = (list(specs), dict(num_units))
        while len(_PROBES) > PROBE_CACHE_SIZE:
            _PROBES.popitem(last=False)
    return specs, num_units
