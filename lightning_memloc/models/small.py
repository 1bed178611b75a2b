"""Small encoders for fast tests and examples: a CNN and an MLP with ResNet9's conventions (post-ReLU taps,
``feature_dim``) and a tiny torchvision Vision Transformer."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

from lightning_memloc.checks import check_int
from lightning_memloc.models.resnet9 import ConvBlock


class TinyCNN(nn.Module):
    """Three :class:`ConvBlock` layers (``conv1..3``, widths w, 2w, 4w, max-pooled): a miniature ResNet9.

    Example:
        >>> import torch
        >>> TinyCNN(in_channels=1, width=2)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8])
    """

    def __init__(self, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1, type_error=True)
        w = check_int("width", width, 1, type_error=True)
        self.in_channels, self.width, self.feature_dim = in_channels, w, 4 * w
        self.conv1 = ConvBlock(in_channels, w)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = ConvBlock(w, 2 * w)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = ConvBlock(2 * w, 4 * w)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.flatten(self.global_pool(self.conv3(x)))


class TinyMLP(nn.Module):
    """``Flatten`` then ``fc<i> → relu<i>`` blocks of widths ``hidden``; the auto taps are the ReLUs.

    Example:
        >>> import torch
        >>> TinyMLP(12, hidden=(6, 4))(torch.randn(5, 3, 2, 2)).shape
        torch.Size([5, 4])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (16, 8)) -> None:
        super().__init__()
        check_int("in_features", in_features, 1, type_error=True)
        if isinstance(hidden, int) or not isinstance(hidden, Sequence) or len(hidden) == 0:
            raise ValueError(f"`hidden` must be a non-empty sequence of positive integers, got {hidden!r}.")
        for i, h in enumerate(hidden):
            check_int(f"hidden[{i}]", h, 1, type_error=True)
        self.in_features, self.hidden, self.feature_dim = in_features, tuple(hidden), hidden[-1]
        self.flatten = nn.Flatten(1)
        previous = in_features
        for i, h in enumerate(self.hidden, start=1):
            self.add_module(f"fc{i}", nn.Linear(previous, h))
            self.add_module(f"relu{i}", nn.ReLU(inplace=False))
            previous = h

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.children():  # flatten, fc1, relu1, fc2, relu2, ...
            x = layer(x)
        return x


class TinyViT(VisionTransformer):
    """A small torchvision ``VisionTransformer`` returning the class token ``(B, dim)`` (no head); the ``"auto"``
    layers are each block's ``self_attention`` (``dim`` units) and ``mlp.1`` (``mlp_dim`` units).

    Example:
        >>> import torch
        >>> tuple(TinyViT()(torch.rand(2, 3, 16, 16)).shape)
        (2, 32)
    """

    def __init__(self, image_size: int = 16, patch_size: int = 4, dim: int = 32, depth: int = 2, heads: int = 2,
                 mlp_dim: int = 64, dropout: float = 0.0) -> None:
        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("dim", dim), ("depth", depth),
                            ("heads", heads), ("mlp_dim", mlp_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if image_size % patch_size:
            raise ValueError(f"`image_size` ({image_size}) must be divisible by `patch_size` ({patch_size}).")
        if dim % heads:
            raise ValueError(f"`heads` ({heads}) must divide `dim` ({dim}).")
        super().__init__(image_size=image_size, patch_size=patch_size, num_layers=depth, num_heads=heads,
                         hidden_dim=dim, mlp_dim=mlp_dim, dropout=dropout, attention_dropout=dropout)
        self.heads = nn.Identity()
        self.feature_dim = dim
