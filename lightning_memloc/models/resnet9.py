"""ResNet9, the encoder of the paper's main experiments (``layers="auto"`` taps its eight layers in order)."""

from __future__ import annotations

from typing import ClassVar, Optional

from torch import Tensor, nn

from lightning_memloc.checks import check_choice, check_int
from lightning_memloc.models.norm import NORMS, make_norm


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

