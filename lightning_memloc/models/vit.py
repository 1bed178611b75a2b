"""A tiny torchvision Vision Transformer for tests and examples."""

from __future__ import annotations

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["TinyViT"]


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
