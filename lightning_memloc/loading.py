"""Load an encoder's weights from a checkpoint file, safely (``weights_only=True``).

Accepts a plain ``state_dict`` file (``torch.save(model.state_dict(), path)``), a Lightning
checkpoint (``{"state_dict": ...}``), and a whole-module prefix inside a Lightning module's
state dict (``"backbone."``, ``"reference.backbone."``...).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor, nn

from lightning_memloc.errors import ArchitectureMismatchError, CheckpointError
from lightning_memloc.io import PathLike


def read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    """Read the tensors of a checkpoint with ``torch.load(..., weights_only=True)``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is not a (Lightning) checkpoint or state dict.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(source)!r}: check the path.")
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files (pickle, zip, runtime errors)
        raise CheckpointError(
            f"{str(source)!r} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
            "pass a file written by torch.save(model.state_dict(), path) or a Lightning .ckpt."
        ) from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(
            f"{str(source)!r} holds no state dict (found {type(data).__name__}); pass a file written by "
            "torch.save(model.state_dict(), path) or a Lightning .ckpt."
        )
    return data


def encoder_state(path: PathLike, like: nn.Module, prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """The checkpoint's tensors that belong to ``like``'s architecture, with their prefix removed.

    Args:
        path: a ``state_dict`` file or a Lightning checkpoint.
        like: a module of the expected architecture.
        prefix: key prefix of the encoder inside the checkpoint; ``None`` finds it: no prefix when
            every key of ``like`` is in the file, else the prefix under which all of them are
            (``"backbone."``, ``"encoder.backbone."`` ...).

    Returns:
        Every tensor under the prefix (the prefix removed): keys ``like`` lacks are kept, so callers
        can tell a checkpoint of another architecture.
    """
    state = read_state_dict(path)
    expected = set(like.state_dict())
    if prefix is None and not expected <= set(state):
        probe = min(expected) if expected else ""
        prefix = next((k[: len(k) - len(probe)] for k in state if k.endswith("." + probe)
                       and all(k[: len(k) - len(probe)] + e in state for e in expected)), "")
    prefix = "" if not prefix else prefix.rstrip(".") + "."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_encoder(path: PathLike, like: nn.Module, prefix: Optional[str] = None) -> nn.Module:
    """A copy of ``like`` with weights read from ``path``.

    Args:
        path: a ``state_dict`` file or a Lightning checkpoint.
        like: a module of the right architecture (e.g. the encoder being trained); not modified.
        prefix: key prefix of the encoder inside the checkpoint (found automatically if ``None``).

    Returns:
        A new module in eval mode with ``requires_grad=False`` everywhere (a frozen reference).

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_state_dict`.
        ArchitectureMismatchError: the checkpoint's tensors do not fit ``like``.

    Example:
        >>> import tempfile, torch
        >>> from lightning_memloc.models import TinyCNN
        >>> path = tempfile.mkdtemp() + "/g.pt"
        >>> torch.save(TinyCNN().state_dict(), path)
        >>> g = load_encoder(path, like=TinyCNN())
        >>> g.training, any(p.requires_grad for p in g.parameters())
        (False, False)
    """
    state = encoder_state(path, like, prefix)
    expected = set(like.state_dict())
    unused = sorted(set(state) - expected)
    if unused and expected <= set(state):
        # e.g. a classifier head (harmless), or a ResNet9 checkpoint read into a smaller model that
        # shares its first blocks (a mistake): say so rather than load silently.
        warnings.warn(
            f"{len(unused)} tensors of {str(path)!r} are not used by {type(like).__name__} (e.g. {unused[0]!r}): "
            "check that the checkpoint has the encoder's architecture, or pass `prefix=`.",
            UserWarning,
            stacklevel=2,
        )
        state = {k: state[k] for k in expected}
    model = copy.deepcopy(like)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArchitectureMismatchError(
            f"the checkpoint {str(path)!r} does not fit the encoder's architecture: {' '.join(str(err).split())[:400]} "
            "(pass `prefix=` if the encoder's weights live under a sub-module name)."
        ) from err
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def resolve_module(owner: nn.Module, spec: Union[str, nn.Module, Callable[[nn.Module], nn.Module], None],
                   argument: str) -> nn.Module:
    """The module ``spec`` designates on ``owner``.

    Args:
        owner: e.g. the LightningModule.
        spec: a module (returned as is), a callable ``owner -> module``, a dotted attribute path
            (``"encoder.backbone"``), or ``None`` for ``owner`` itself.
        argument: the user-facing argument name, for error messages.
    """
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
            raise AttributeError(
                f"`{argument}`={spec!r}: {type(target).__name__} has no attribute {part!r}; "
                f"the module's children are {names}."
            )
        target = getattr(target, part)
    if not isinstance(target, nn.Module):
        raise TypeError(f"`{argument}`={spec!r} is a {type(target).__name__}, not a torch.nn.Module.")
    return target
