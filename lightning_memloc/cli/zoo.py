"""The ``--arch`` model zoo of ``memloc analyze``: :data:`ARCHS` and :func:`build_model`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

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

