"""A tiny torchvision Vision Transformer for tests and examples.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) localize
memorization in ViT encoders block by block (attention vs MLP). :class:`TinyViT` is a torchvision
``VisionTransformer`` (so the torchvision branch of the ViT ``layers="auto"`` rule in
:mod:`lightning_memloc.taps.vit` applies unchanged) small enough for CPU tests, returning the
class-token features like an SSL backbone.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["TinyViT"]


class TinyViT(VisionTransformer):
    """A small torchvision ``VisionTransformer`` without classification head.

    ``forward(images: float[B, 3, image_size, image_size]) -> float[B, dim]``: the final
    layer-normalised class token (``heads`` is ``nn.Identity``). Each of the ``depth`` blocks is an
    ``EncoderBlock`` named ``encoder.layers.encoder_layer_<i>``, whose ``self_attention`` and
    ``mlp.1`` (the GELU of the MLP) are the ViT ``"auto"`` layers.

    Args:
        image_size: input side length (must be divisible by ``patch_size``).
        patch_size: patch side length; ``(image_size / patch_size)² + 1`` tokens.
        dim: token width (``hidden_dim``); the number of attention units per block.
        depth: number of encoder blocks.
        heads: attention heads (must divide ``dim``).
        mlp_dim: MLP hidden width; the number of MLP units per block.
        dropout: dropout rate (0 keeps measurements deterministic in train mode too).

    Example:
        >>> import torch
        >>> model = TinyViT()
        >>> tuple(model(torch.rand(2, 3, 16, 16)).shape)
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
