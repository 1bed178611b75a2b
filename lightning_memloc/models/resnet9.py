"""ResNet9, the encoder of the paper's main experiments (``layers="auto"`` taps its eight layers in order), with
BatchNorm (the paper's) or GroupNorm (per-image, e.g. for DP-SGD), and the ResNet9 of the authors' released code
(their checkpoints load after :func:`convert_authors_state_dict`)."""

from __future__ import annotations

import re
from typing import ClassVar, Dict, Mapping, Optional, Tuple

from torch import Tensor, nn

from lightning_memloc.checks import check_choice, check_int

#: Allowed values of the encoders' ``norm`` argument.
NORMS: Tuple[str, ...] = ("batch", "group")


def group_count(channels: int, max_groups: int = 32, min_group_size: int = 2) -> int:
    """GroupNorm groups for ``channels``: the largest divisor ≤ ``max_groups`` leaving ≥ ``min_group_size`` per
    group (not a per-channel InstanceNorm on narrow layers).

    Example:
        >>> [group_count(c) for c in (1, 2, 8, 32, 48, 64, 256)]
        [1, 1, 4, 16, 24, 32, 32]
    """
    if channels < 1:
        raise ValueError(f"`channels` must be >= 1, got {channels}.")
    return max([1] + [g for g in range(1, min(max_groups, channels) + 1)
                      if channels % g == 0 and channels // g >= min_group_size])


def make_norm(norm: str, channels: int) -> nn.Module:
    """``nn.BatchNorm2d`` for ``norm="batch"``, ``nn.GroupNorm(group_count(channels), channels)`` for ``"group"``.

    Example:
        >>> make_norm("group", 64)
        GroupNorm(32, 64, eps=1e-05, affine=True, bias=True)
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}: 'batch' (the paper's BatchNorm) or "
                     "'group' (GroupNorm, per-image, e.g. for DP-SGD).")


class ConvBlock(nn.Module):
    """3×3 convolution → BatchNorm2d (or GroupNorm, ``norm="group"``, still ``self.bn``) → ReLU: one "layer"
    of the paper's ResNet9, whose output channels are units with non-negative activations, as UnitMem assumes.

    Example:
        >>> import torch
        >>> bool((ConvBlock(3, 8)(torch.randn(2, 3, 16, 16)) >= 0).all())
        True
    """

    #: ``layers="auto"`` taps the whole block (:data:`lightning_memloc.taps.hooks.LAYER_MARKER`).
    memloc_layer: ClassVar[bool] = True

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", bias: bool = False) -> None:
        super().__init__()
        self.in_ch = check_int("in_ch", in_ch, 1, type_error=True)
        self.out_ch = check_int("out_ch", out_ch, 1, type_error=True)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=bool(bias))
        self.bn = make_norm(norm, out_ch)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Two :class:`ConvBlock` with an identity shortcut: ``x + conv2(conv1(x))``.

    Example:
        >>> import torch
        >>> Residual(8)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.channels = check_int("channels", channels, 1, type_error=True)
        self.conv1 = ConvBlock(channels, channels, norm)
        self.conv2 = ConvBlock(channels, channels, norm)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class ResNet9Base(nn.Module):
    """Shared by both ResNet9 layouts: argument checks, ``feature_dim = 8 * width``, the layers the subclass's
    ``build(w, norm)`` adds, then global max-pool → flatten → ``fc`` (if ``num_classes``) after ``forward_features``."""

    def __init__(self, in_channels: int, width: int, num_classes: Optional[int], norm: str) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1, type_error=True)
        check_choice("norm", norm, NORMS)
        w = check_int("width", width, 1, type_error=True)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1, type_error=True)
        self.in_channels, self.width, self.num_classes, self.norm = in_channels, w, num_classes, norm
        self.feature_dim = 8 * w
        self.build(w, norm)
        self.global_pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc: Optional[nn.Linear] = nn.Linear(8 * w, num_classes) if num_classes is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, 8 * width)``, or logits ``(B, num_classes)`` if ``fc`` exists."""
        features = self.forward_features(x)
        return features if self.fc is None else self.fc(features)


class ResNet9(ResNet9Base):
    """The paper's ResNet9 encoder (DAWNBench / Myrtle layout).

    Layout with ``w = width`` (the paper uses ``w = 64``, about 6.57 M parameters)::

        conv1  ConvBlock(in, w)                       layer 1
        conv2  ConvBlock(w, 2w)   → pool2 (max, 2)    layer 2
        res1   Residual(2w): conv1, conv2             layers 3, 4
        conv3  ConvBlock(2w, 4w)  → pool3 (max, 2)    layer 5
        conv4  ConvBlock(4w, 8w)  → pool4 (max, 2)    layer 6
        res2   Residual(8w): conv1, conv2             layers 7, 8
        global_pool (adaptive max, 1) → flatten       features of size 8w
        fc     Linear(8w, num_classes)                only if num_classes is given

    A tap on ``conv2`` sees the map before pooling. Inputs ≥ 8×8. ``norm="group"``: GroupNorm (for DP-SGD).

    Example:
        >>> import torch
        >>> ResNet9(width=4, num_classes=10)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_classes: Optional[int] = None,
                 norm: str = "batch") -> None:
        super().__init__(in_channels, width, num_classes, norm)

    def build(self, w: int, norm: str) -> None:
        self.conv1 = ConvBlock(self.in_channels, w, norm)
        self.conv2 = ConvBlock(w, 2 * w, norm)
        self.pool2 = nn.MaxPool2d(2)
        self.res1 = Residual(2 * w, norm)
        self.conv3 = ConvBlock(2 * w, 4 * w, norm)
        self.pool3 = nn.MaxPool2d(2)
        self.conv4 = ConvBlock(4 * w, 8 * w, norm)
        self.pool4 = nn.MaxPool2d(2)
        self.res2 = Residual(8 * w, norm)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the ``(B, 8 * width)`` representation (before ``fc``)."""
        x = self.res1(self.pool2(self.conv2(self.conv1(x))))
        x = self.res2(self.pool4(self.conv4(self.pool3(self.conv3(x)))))
        return self.flatten(self.global_pool(x))

    def extra_repr(self) -> str:
        extra = "" if self.norm == "batch" else f", norm={self.norm!r}"
        return f"in_channels={self.in_channels}, width={self.width}, num_classes={self.num_classes}{extra}"


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
