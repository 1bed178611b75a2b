"""The encoders ``memloc analyze`` builds: the ``--arch`` zoo (:data:`ARCHS`, :func:`build_model`) or the user's own
models (``--model pkg.module:factory``, ``--lightning-module``)."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any, Optional, Tuple

from torch import nn

from lightning_memloc.cli.cli_error import CLIError

#: ``--arch`` choices: the paper's ResNet9, torchvision's ResNet-18 (ImageNet stem, or the CIFAR stem:
#: 3×3 stride-1 first conv, no max-pool) without its classifier, and the test encoder TinyCNN.
ARCHS = ("resnet9", "authors-resnet9", "resnet18", "resnet18-cifar", "tiny")
#: ``--width`` when none is given, per ``--arch``.
DEFAULT_WIDTH = {"resnet9": 64, "authors-resnet9": 32, "resnet18": 64, "resnet18-cifar": 64, "tiny": 4}


def build_model(arch: str, width: Optional[int] = None, in_channels: int = 3) -> nn.Module:
    """An untrained encoder of ``arch`` (one of :data:`ARCHS`) to load a checkpoint into.

    Args:
        width: base width (``None``: :data:`DEFAULT_WIDTH`); ResNet-18 only has 64.

    Example:
        >>> import torch
        >>> build_model("tiny", width=2)(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 8])
    """
    from lightning_memloc.models import AuthorsResNet9, ResNet9, TinyCNN
    width = DEFAULT_WIDTH.get(arch, 0) if width is None else width
    # authors-resnet9: the layout of the authors' released code (docs/fidelity.md)
    own = {"tiny": TinyCNN, "resnet9": ResNet9, "authors-resnet9": AuthorsResNet9}
    if arch in own:
        return own[arch](in_channels=in_channels, width=width)
    if arch in ("resnet18", "resnet18-cifar"):
        if width != 64:
            raise ValueError(f"torchvision's ResNet-18 has width 64, got {width}: drop --width or use --arch resnet9.")
        from torchvision.models import resnet18
        model = resnet18(weights=None)
        model.fc = nn.Identity()
        cifar = arch == "resnet18-cifar"
        if cifar or in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 3 if cifar else 7, stride=1 if cifar else 2,
                                    padding=1 if cifar else 3, bias=False)
        if cifar:
            model.maxpool = nn.Identity()
        return model
    raise ValueError(f"unknown architecture {arch!r}: expected one of {list(ARCHS)}.")


def add_model_args(group: Any) -> None:
    """Add ``--model``, ``--model-kwargs``, ``--lightning-module``, ``--encoder-attr``, ``--reference-attr``."""
    group.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                       help="instead of --arch: an importable callable returning the encoder, e.g. my_models:vit_tiny")
    group.add_argument("--model-kwargs", metavar="JSON", default="{}",
                       help="keyword arguments of the --model factory, a JSON object, e.g. '{\"num_classes\": 0}'")
    group.add_argument("--lightning-module", metavar="PKG.CLASS",
                       help="instead of --arch: a LightningModule class; --encoder is its checkpoint, read with "
                            "Class.load_from_checkpoint")
    group.add_argument("--encoder-attr", metavar="ATTR",
                       help="with --lightning-module: the encoder's attribute path, e.g. backbone; omitted: the whole module")
    group.add_argument("--reference-attr", metavar="ATTR",
                       help="with --lightning-module: the reference's attribute path; omitted: --encoder-attr")


def import_object(spec: str, flag: str) -> Any:
    """The object ``"pkg.module:name"`` (or ``"pkg.module.name"``) names.

    Example:
        >>> import_object("torch.nn:Identity", "--model").__name__
        'Identity'
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise CLIError(flag, f"{spec!r} is not an import path: write pkg.module:name (or pkg.module.Name).")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CLIError(flag, f"cannot import {module_name!r} ({err}): install it or add its folder to PYTHONPATH.") from err
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CLIError(flag, f"{module_name!r} has no attribute {attribute!r}: check the name after ':'.")
        target = getattr(target, part)
    return target


def _build(spec: str, kwargs_json: str, flag: str, what: str) -> Tuple[Any, dict]:
    """``(factory(**kwargs), kwargs)`` for ``flag`` ``pkg.module:factory`` and its ``-kwargs`` JSON object."""
    factory = import_object(spec, flag)
    try:
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as err:
        raise CLIError(f"{flag}-kwargs", f"{kwargs_json!r} is not JSON ({err}): pass an object, e.g. '{{}}'.") from err
    if not isinstance(kwargs, dict):
        raise CLIError(f"{flag}-kwargs", f"expected a JSON object, got {type(kwargs).__name__}.")
    if not callable(factory):
        raise CLIError(flag, f"{spec!r} is a {type(factory).__name__}, not a callable returning {what}.")
    try:
        return factory(**kwargs), kwargs
    except Exception as err:  # the user's factory may raise anything
        raise CLIError(flag, f"{spec}(**{kwargs}) failed: {type(err).__name__}: {err}") from err


def user_transform(args: argparse.Namespace) -> Any:
    """The per-image view transform of ``--transform pkg.module:factory`` (with ``--transform-kwargs``), or ``None``.

    Example:
        >>> ns = argparse.Namespace(transform="torchvision.transforms.v2:RandomHorizontalFlip",
        ...                         transform_kwargs='{"p": 0.5}')
        >>> type(user_transform(ns)).__name__
        'RandomHorizontalFlip'
    """
    if getattr(args, "transform", None) is None:
        return None
    transform, _ = _build(args.transform, args.transform_kwargs, "--transform", "the view transform")
    if not callable(transform):
        raise CLIError("--transform", f"{args.transform} returned a {type(transform).__name__}, which cannot be called "
                                      "on an image: name a factory returning a per-image transform.")
    return transform


def _from_factory(args: argparse.Namespace) -> Tuple[nn.Module, Optional[nn.Module]]:
    from lightning_memloc.models.loading import load_encoder
    like, kwargs = _build(args.model, args.model_kwargs, "--model", "the encoder")
    if not isinstance(like, nn.Module):
        raise CLIError("--model", f"{args.model} returned a {type(like).__name__}, not a torch.nn.Module.")

    def load(path: Optional[str], prefix: Optional[str], flag: str) -> nn.Module:
        if path is None:
            return like.eval().requires_grad_(False)
        try:
            return load_encoder(path, like=like, prefix=prefix)
        except Exception as err:  # FileNotFoundError, CheckpointError, ArchitectureMismatchError
            raise CLIError(flag, f"{err} (the model is {args.model}(**{kwargs})).") from err

    reference = None if args.reference is None else load(args.reference, args.reference_prefix, "--reference")
    return load(args.encoder, args.encoder_prefix, "--encoder"), reference


def _from_lightning_module(args: argparse.Namespace) -> Tuple[nn.Module, Optional[nn.Module]]:
    from lightning_memloc.models.loading import resolve_module
    cls = import_object(args.lightning_module, "--lightning-module")
    if not (isinstance(cls, type) and callable(getattr(cls, "load_from_checkpoint", None))):
        raise CLIError("--lightning-module", f"{args.lightning_module!r} is not a LightningModule class.")

    def load(path: str, attr: Optional[str], flag: str, attr_flag: str) -> nn.Module:
        try:
            module = cls.load_from_checkpoint(path, map_location="cpu")
        except Exception as err:  # missing file, missing hyperparameters, bad checkpoint
            raise CLIError(flag, f"{cls.__name__}.load_from_checkpoint({path!r}) failed: {type(err).__name__}: {err} "
                                 "(a module with __init__ arguments must call self.save_hyperparameters()).") from err
        try:
            return resolve_module(module, attr, attr_flag.lstrip("-")).eval().requires_grad_(False)
        except (AttributeError, TypeError) as err:
            raise CLIError(attr_flag, str(err)) from err

    encoder = load(args.encoder, args.encoder_attr, "--encoder", "--encoder-attr")
    attr = args.reference_attr if args.reference_attr is not None else args.encoder_attr
    return encoder, None if args.reference is None else load(args.reference, attr, "--reference", "--reference-attr")


def user_encoders(args: argparse.Namespace) -> Optional[Tuple[nn.Module, Optional[nn.Module]]]:
    """``(encoder, reference or None)`` built by ``--model`` / ``--lightning-module``; ``None`` for ``--arch``."""
    given = [flag for flag, value in (("--arch", args.arch), ("--model", args.model),
                                      ("--lightning-module", args.lightning_module)) if value]
    if len(given) != 1:
        raise CLIError("--arch", f"pass exactly one of --arch, --model, --lightning-module to build the encoder "
                                 f"(got {given or 'none'}).")
    if given[0] != "--model" and args.encoder is None:
        raise CLIError("--encoder", f"{given[0]} needs the encoder's checkpoint: pass --encoder CKPT.")
    if given[0] != "--lightning-module" and (args.encoder_attr or args.reference_attr):
        raise CLIError("--encoder-attr", "--encoder-attr / --reference-attr only apply with --lightning-module.")
    if given[0] == "--arch":
        return None
    return _from_factory(args) if given[0] == "--model" else _from_lightning_module(args)
