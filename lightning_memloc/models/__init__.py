"""Encoders: the paper's ResNet9 and small test encoders.

ResNet9 is the encoder of Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024); :class:`TinyCNN` and :class:`TinyMLP` are fast stand-ins for tests.
"""

from lightning_memloc.models.resnet9 import ConvBlock, Residual, ResNet9
from lightning_memloc.models.small import TinyCNN, TinyMLP

__all__ = ["ConvBlock", "Residual", "ResNet9", "TinyCNN", "TinyMLP"]
