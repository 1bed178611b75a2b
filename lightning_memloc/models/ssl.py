"""A minimal SimCLR model (lightly's projection head and NT-Xent loss) for examples and the demo."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor, nn


def _as_float(images: Tensor) -> Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


class SimCLR(nn.Module):
    """Backbone + SimCLR projection head + NT-Xent loss; ``augment``: a batched ``(images, seeds) -> views`` for
    raw image batches (``None``: batches hold two views ``((v1, v2), ...)``).

    Example:
        >>> from lightning_memloc import BatchedSimCLRAugment
        >>> from lightning_memloc.models import TinyCNN
        >>> model = SimCLR(TinyCNN(), feature_dim=16, augment=BatchedSimCLRAugment(16))
        >>> loss = model.training_loss((torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8), torch.zeros(4)))
        >>> loss.ndim
        0
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 512, out_dim: int = 128,
                 augment: Optional[nn.Module] = None, temperature: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)
        self.augment = augment
        self.criterion = NTXentLoss(temperature=temperature)

    @classmethod
    def resnet9(cls, in_channels: int = 3, width: int = 64, augment: Optional[nn.Module] = None,
                norm: str = "batch") -> "SimCLR":
        """The paper's set-up: a ResNet9 backbone, projection head ``4 * width`` → ``2 * width``."""
        from lightning_memloc.models import ResNet9
        backbone = ResNet9(in_channels=in_channels, width=width, norm=norm)
        return cls(backbone, feature_dim=backbone.feature_dim, hidden_dim=4 * width, out_dim=2 * width, augment=augment)

    @classmethod
    def authors_resnet9(cls, in_channels: int = 3, width: int = 32, augment: Optional[nn.Module] = None,
                        norm: str = "batch") -> "SimCLR":
        """The authors' released set-up: an AuthorsResNet9 backbone, projection head ``8 * width`` → ``2 * width``."""
        from lightning_memloc.models import AuthorsResNet9
        backbone = AuthorsResNet9(in_channels=in_channels, width=width, norm=norm)
        return cls(backbone, feature_dim=backbone.feature_dim, hidden_dim=backbone.feature_dim, out_dim=2 * width,
                   augment=augment)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def two_views(self, batch: Any) -> tuple[Tensor, Tensor]:
        """The two views of a training batch (augmenting raw images when ``augment`` is set)."""
        data = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(data, (tuple, list)):
            return _as_float(data[0]), _as_float(data[1])
        if self.augment is None:
            raise ValueError("batches hold raw images but `augment` is None: pass `augment=` or two-view batches.")
        images = _as_float(data)
        seeds = torch.randint(0, 2**62, (2, images.shape[0]), device=images.device)
        return self.augment(images, seeds[0]), self.augment(images, seeds[1])

    def training_loss(self, batch: Any) -> Tensor:
        """NT-Xent loss of one batch."""
        first, second = self.two_views(batch)
        return self.criterion(self(first), self(second))
