"""Encoders: the paper's ResNet9, the authors' released ResNet9 and small test encoders."""

from lightning_memloc.models.authors import AuthorsBlock, AuthorsResNet9, convert_authors_state_dict
from lightning_memloc.models.norm import group_count, make_norm
from lightning_memloc.models.resnet9 import ConvBlock, Residual, ResNet9
from lightning_memloc.models.small import TinyCNN, TinyMLP

__all__ = ["AuthorsBlock", "AuthorsResNet9", "ConvBlock", "Residual", "ResNet9", "TinyCNN", "TinyMLP",
           "convert_authors_state_dict", "group_count", "make_norm"]
