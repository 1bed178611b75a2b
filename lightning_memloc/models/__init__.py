"""Encoders: the paper's ResNet9, the authors' released ResNet9 and small test encoders."""

from lightning_memloc.models.resnet9 import (AuthorsBlock, AuthorsResNet9, ConvBlock, ResNet9, Residual,
                                             convert_authors_state_dict, group_count, make_norm)
from lightning_memloc.models.small import TinyCNN, TinyMLP

__all__ = ["AuthorsBlock", "AuthorsResNet9", "ConvBlock", "Residual", "ResNet9", "TinyCNN", "TinyMLP",
           "convert_authors_state_dict", "group_count", "make_norm"]
