"""The ResNet9 of the authors' released code (their checkpoints load after :func:`convert_authors_state_dict`)."""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

from torch import Tensor, nn

from lightning_memloc.models.resnet9 import ConvBlock, ResNet9Base

#: The eight layers of the authors' ResNet9, in forward order: (name, width multiple, pool).
AUTHORS_LAYERS: Tuple[Tuple[str, int, bool], ...] = (
    ("prep", 1, True), ("layer1_head", 2, True), ("layer1_residual1", 2, False), ("layer1_residual2", 2, False),
    ("layer2", 4, True), ("layer3_head", 8, True), ("layer3_residual1", 8, False), ("layer3_residual2", 8, False))


class AuthorsBlock(ConvBlock):
    """conv (3×3, bias) → norm → ReLU [→ 2×2 max-pool]: a layer of the authors' ResNet9 (hooks see the pooled map).

    Example:
        >>> import torch
        >>> AuthorsBlock(3, 8, pool=True)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, in_ch: int, out_ch: int, pool: bool = False, norm: str = "batch") -> None:
        super().__init__(in_ch, out_ch, norm=norm, bias=True)
        self.pool: Optional[nn.MaxPool2d] = nn.MaxPool2d(2) if pool else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class AuthorsResNet9(ResNet9Base):
    """ResNet9 as in the authors' released SimCLR and supervised code.

    Layout with ``w = width`` (theirs: ``w = 32``, 1,644,672 parameters without a classifier)::

        prep              AuthorsBlock(in, w, pool)      layer 1
        layer1_head       AuthorsBlock(w, 2w, pool)      layer 2   ─┐ a
        layer1_residual1  AuthorsBlock(2w, 2w)           layer 3    │
        layer1_residual2  AuthorsBlock(2w, 2w)           layer 4   + a
        layer2            AuthorsBlock(2w, 4w, pool)     layer 5
        layer3_head       AuthorsBlock(4w, 8w, pool)     layer 6   ─┐ b
        layer3_residual1  AuthorsBlock(8w, 8w)           layer 7    │
        layer3_residual2  AuthorsBlock(8w, 8w)           layer 8   + b
        global_pool (adaptive max, 1) → flatten          features of size 8w
        fc     Linear(8w, num_classes)                   only if num_classes is given

    A tap on ``layer1_residual2`` sees the block output *before* ``+ a``, as on the authors' model. Inputs
    ≥ 16×16. ``norm="group"``: GroupNorm (for DP-SGD).

    Example:
        >>> import torch
        >>> AuthorsResNet9(width=4)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 32])
    """

    def __init__(self, in_channels: int = 3, width: int = 32, num_classes: Optional[int] = None,
                 norm: str = "batch") -> None:
        super().__init__(in_channels, width, num_classes, norm)

    def build(self, w: int, norm: str) -> None:
        channels = self.in_channels
        for name, multiple, pool in AUTHORS_LAYERS:
            self.add_module(name, AuthorsBlock(channels, multiple * w, pool=pool, norm=norm))
            channels = multiple * w

    def forward_map(self, x: Tensor) -> Tensor:
        """The layer-8 map after its residual addition, ``(B, 8w, H/16, W/16)`` (the authors' SimCLR output)."""
        x = self.layer1_head(self.prep(x))
        x = self.layer1_residual2(self.layer1_residual1(x)) + x
        x = self.layer3_head(self.layer2(x))
        return self.layer3_residual2(self.layer3_residual1(x)) + x

    def forward_features(self, x: Tensor) -> Tensor:
        """The ``(B, 8 * width)`` representation (before ``fc``)."""
        return self.flatten(self.global_pool(self.forward_map(x)))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, width={self.width}, num_classes={self.num_classes}, "
                f"norm={self.norm!r}")


def convert_authors_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename the keys of the authors' ResNet9 checkpoint for :class:`AuthorsResNet9` (``batch`` → ``bn``,
    ``classifier.2`` → ``fc``).

    Example:
        >>> import torch
        >>> sorted(convert_authors_state_dict({"prep.batch.weight": torch.ones(1), "classifier.2.bias": torch.ones(1)}))
        ['fc.bias', 'prep.bn.weight']
    """
    return {re.sub(r"^([A-Za-z0-9_]+)\.batch\.", r"\1.bn.", re.sub(r"^classifier\.2\.", "fc.", key)): value
            for key, value in state_dict.items()}

