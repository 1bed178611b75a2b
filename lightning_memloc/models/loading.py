"""Load an encoder's weights from a state dict, Lightning or nested checkpoint (``weights_only=True``): the key
prefix is found (several: an error) or named, ``"pair.ckpt:prefix"``; pruned ``w_orig``, ``w_mask`` load as w."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from lightning_memloc.checks import unwrap_compiled
from lightning_memloc.errors import AmbiguousPrefixError, ArchitectureMismatchError, CheckpointError
from lightning_memloc.io import PathLike
from lightning_memloc.models.pruned import plain_copy, unpruned_state

_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".tar")


def split_prefix(spec: Union[PathLike, str]) -> Tuple[PathLike, Optional[str]]:
    """``"pair.ckpt:reference.backbone"`` -> ``("pair.ckpt", "reference.backbone")``; anything else as is.

    Example:
        >>> split_prefix("runs/pair.ckpt:reference.backbone"), split_prefix("g.pt")
        (('runs/pair.ckpt', 'reference.backbone'), ('g.pt', None))
    """
    if isinstance(spec, os.PathLike) or ":" not in spec or os.path.isfile(spec):
        return spec, None
    path, prefix = spec.rsplit(":", 1)
    if re.fullmatch(r"[A-Za-z_][\w.]*", prefix) and (path.endswith(_EXTENSIONS) or os.path.isfile(path)):
        return path, prefix.rstrip(".")
    return spec, None


def _flatten(data: Dict[Any, Any], prefix: str = "") -> Dict[str, Tensor]:
    """The tensors of nested dicts, under their dotted key paths (other values are skipped)."""
    out: Dict[str, Tensor] = {}
    for key, value in data.items():
        if isinstance(value, Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
    return out


def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """The tensors of a checkpoint, read with ``weights_only=True`` (``CheckpointError``: not a checkpoint)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(source)!r}: check the path.")
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files (pickle, zip, runtime errors)
        raise CheckpointError(f"{str(source)!r} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
                              "pass a file written by torch.save(model.state_dict(), path) or a Lightning "
                              ".ckpt.") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if isinstance(data, dict) and not all(isinstance(v, Tensor) for v in data.values()):
        data = _flatten(data)  # {"model": state_dict, "epoch": 3}, {"teacher": ..., "student": ...}
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{str(source)!r} holds no state dict (found {type(data).__name__}); pass a file "
                              "written by torch.save(model.state_dict(), path) or a Lightning .ckpt.")
    return data


def fitting_prefixes(state: Dict[str, Tensor], expected: List[str]) -> List[str]:
    """Every prefix ``p`` (``""`` included) with ``p + key`` in ``state`` for every ``expected`` key.

    Example:
        >>> state = {f"{p}.{k}": torch.zeros(1) for p in ("encoder", "reference") for k in ("w", "b")}
        >>> fitting_prefixes(state, ["w", "b"])
        ['encoder.', 'reference.']
    """
    if not expected:
        return []
    probe = min(expected)
    heads = sorted({k[: len(k) - len(probe)] for k in state if k == probe or k.endswith("." + probe)})
    return [p for p in heads if all(p + e in state for e in expected)]


def encoder_state(path: PathLike, like: nn.Module, prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """Every tensor under the encoder's ``prefix`` (removed), keys ``like`` lacks included.

    ``prefix=None``: the one under which every key (and shape) of ``like`` fits; several: ``AmbiguousPrefixError``.
    """
    path, named = split_prefix(path)
    if prefix is not None and named is not None and prefix.rstrip(".") != named:
        raise ValueError(f"the checkpoint {str(path)!r} names the prefix {named!r} but `prefix`={prefix!r}: give one.")
    prefix = named if prefix is None else prefix
    state = unpruned_state(read_state_dict(path))
    expected = {k: v.shape for k, v in unpruned_state(like.state_dict()).items()}  # a pruned `like`: plain names
    if prefix is None:
        found = fitting_prefixes(state, list(expected))
        shaped = [p for p in found if all(state[p + k].shape == shape for k, shape in expected.items())]
        found = shaped or found  # names fit under several, shapes under one: that one (else the mismatch error)
        if len(found) > 1:
            shown = [p.rstrip(".") or "(no prefix)" for p in found]
            example = found[0].rstrip(".") or found[1].rstrip(".")
            raise AmbiguousPrefixError(
                f"the checkpoint {str(path)!r} holds weights that fit {type(like).__name__} under {len(found)} prefixes "
                f"{shown} (e.g. the encoder and the reference of a co-trained pair): name the one to load, as "
                f"'{path}:{example}' (a path with its prefix) or prefix={example!r}.", found)
        prefix = found[0] if found else ""
    prefix = "" if not prefix else prefix.rstrip(".") + "."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_encoder(path: PathLike, like: nn.Module, prefix: Optional[str] = None) -> nn.Module:
    """A frozen copy of ``like`` (eval, no grad, no pruning masks) with weights read from ``path``.

    Raises:
        CheckpointError: an unreadable file or an ambiguous prefix; ``ArchitectureMismatchError``: they do not fit.

    Example:
        >>> import tempfile, torch
        >>> from lightning_memloc.models import TinyCNN
        >>> path = tempfile.mkdtemp() + "/g.pt"
        >>> torch.save(TinyCNN().state_dict(), path)
        >>> g = load_encoder(path, like=TinyCNN())
        >>> g.training, any(p.requires_grad for p in g.parameters())
        (False, False)
    """
    like = unwrap_compiled(like)  # a torch.compile'd module: its weights are the original module's
    state = encoder_state(path, like, prefix)
    model = plain_copy(like)  # a pruned `like` (torch prune's masks) gives a plain copy
    expected = set(model.state_dict())
    unused = sorted(set(state) - expected)
    if unused and expected <= set(state):
        # a classifier head (harmless), or a bigger model sharing the first blocks (a mistake): say so
        warnings.warn(f"{len(unused)} tensors of {str(path)!r} are not used by {type(like).__name__} (e.g. "
                      f"{unused[0]!r}): check that the checkpoint has the encoder's architecture, or pass `prefix=`.",
                      UserWarning, stacklevel=2)
        state = {k: state[k] for k in expected}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArchitectureMismatchError(f"the checkpoint {str(path)!r} does not fit the encoder's architecture: "
                                        f"{' '.join(str(err).split())[:400]} (pass `prefix=` if the encoder's "
                                        "weights live under a sub-module name).") from err
    return model.eval().requires_grad_(False)


def resolve_module(owner: nn.Module, spec: Union[str, nn.Module, Callable[[nn.Module], nn.Module], None],
                   argument: str) -> nn.Module:
    """The module ``spec`` (a module, a callable ``owner -> module``, a dotted path, ``None``: ``owner``) designates."""
    if isinstance(spec, nn.Module):
        return spec
    if spec is None:
        return owner
    if callable(spec):
        module = spec(owner)
        if not isinstance(module, nn.Module):
            raise TypeError(f"`{argument}` callable returned {type(module).__name__}, expected an nn.Module.")
        return module
    target: object = owner
    for part in str(spec).split("."):
        if not hasattr(target, part):
            names = [n for n, _ in owner.named_children()]
            raise AttributeError(f"`{argument}`={spec!r}: {type(target).__name__} has no attribute {part!r}; "
                                 f"the module's children are {names}.")
        target = getattr(target, part)
    if not isinstance(target, nn.Module):
        raise TypeError(f"`{argument}`={spec!r} is a {type(target).__name__}, not a torch.nn.Module.")
    return target
