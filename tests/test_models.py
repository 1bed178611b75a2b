"""Tests of the encoders in :mod:`lightning_memloc.models`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_memloc.models import ConvBlock, Residual, ResNet9, TinyCNN, TinyMLP
from helpers import n_params


def _hand_count(in_ch: int, w: int, num_classes: int | None = None) -> int:
    """Parameters of ResNet9 counted block by block: 3x3 conv weights (no bias) + BN gamma/beta."""
    blocks = [(in_ch, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w),
              (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 8 * w), (8 * w, 8 * w)]
    total = sum(9 * cin * cout + 2 * cout for cin, cout in blocks)
    if num_classes is not None:
        total += 8 * w * num_classes + num_classes
    return total


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_resnet9_feature_shapes(size: int, width: int) -> None:
    model = ResNet9(width=width)
    assert model.feature_dim == 8 * width
    assert model.fc is None
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 8 * width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [16, 32])
def test_resnet9_logits_and_channels(size: int) -> None:
    model = ResNet9(in_channels=1, width=2, num_classes=5)
    assert model(torch.randn(3, 1, size, size)).shape == (3, 5)
    assert model.forward_features(torch.randn(3, 1, size, size)).shape == (3, 16)


def test_resnet9_full_width_parameter_count() -> None:
    model = ResNet9()  # no forward: construction only
    assert _hand_count(3, 64) == 6_568_000
    assert n_params(model) == 6_568_000
    assert n_params(ResNet9(num_classes=10)) == 6_568_000 + 512 * 10 + 10


@pytest.mark.parametrize("in_ch,width,num_classes", [(3, 1, None), (1, 4, 7), (5, 3, None)])
def test_resnet9_parameter_count_formula(in_ch: int, width: int, num_classes: int | None) -> None:
    model = ResNet9(in_channels=in_ch, width=width, num_classes=num_classes)
    assert n_params(model) == _hand_count(in_ch, width, num_classes)


def test_resnet9_layout() -> None:
    model = ResNet9(width=2)
    names = dict(model.named_modules())
    expected = {"conv1": (3, 2), "conv2": (2, 4), "res1.conv1": (4, 4), "res1.conv2": (4, 4),
                "conv3": (4, 8), "conv4": (8, 16), "res2.conv1": (16, 16), "res2.conv2": (16, 16)}
    for name, (cin, cout) in expected.items():
        block = names[name]
        assert isinstance(block, ConvBlock)
        assert (block.conv.in_channels, block.conv.out_channels) == (cin, cout)
    assert sum(isinstance(m, ConvBlock) for m in model.modules()) == 8
    assert isinstance(model.global_pool, nn.AdaptiveMaxPool2d)


def test_conv2_tap_is_post_relu_pre_pool() -> None:
    model = ResNet9(width=2).eval()
    seen = {}
    handle = model.conv2.register_forward_hook(lambda m, a, out: seen.update(out=out))
    try:
        model(torch.randn(2, 3, 16, 16))
    finally:
        handle.remove()
    assert seen["out"].shape == (2, 4, 16, 16)  # not pooled to 8x8
    assert (seen["out"] >= 0).all()


def test_conv_block() -> None:
    block = ConvBlock(3, 4)
    assert block.conv.bias is None
    assert block.conv.kernel_size == (3, 3) and block.conv.padding == (1, 1)
    assert isinstance(block.bn, nn.BatchNorm2d)
    assert isinstance(block.relu, nn.ReLU) and not block.relu.inplace
    x = torch.randn(2, 3, 5, 5)
    block.eval()
    expected = torch.relu(block.bn(block.conv(x)))
    assert torch.equal(block(x), expected)


def test_residual() -> None:
    res = Residual(3).eval()
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(res(x), x + res.conv2(res.conv1(x)))


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        ({"width": 0}, ValueError, "width"),
        ({"width": -3}, ValueError, "width"),
        ({"in_channels": 0}, ValueError, "in_channels"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"width": 1.5}, TypeError, "width"),
        ({"width": True}, TypeError, "width"),
    ],
)
def test_resnet9_validation(kwargs: dict, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        ResNet9(**kwargs)


def test_tiny_cnn() -> None:
    model = TinyCNN(in_channels=1, width=2)
    assert model.feature_dim == 8
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 8)
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 8)
    assert [n for n, m in model.named_modules() if isinstance(m, ConvBlock)] == ["conv1", "conv2", "conv3"]
    with pytest.raises(ValueError, match="width"):
        TinyCNN(width=0)


def test_tiny_mlp() -> None:
    model = TinyMLP(12, hidden=(6, 4))
    assert model.feature_dim == 4
    assert model(torch.randn(5, 12)).shape == (5, 4)
    assert model(torch.randn(5, 3, 2, 2)).shape == (5, 4)
    assert [n for n, _ in model.named_children()] == ["flatten", "fc1", "relu1", "fc2", "relu2"]
    assert (model(torch.randn(5, 12)) >= 0).all()
    with pytest.raises(ValueError, match="hidden"):
        TinyMLP(12, hidden=())
    with pytest.raises(ValueError, match=r"hidden\[1\]"):
        TinyMLP(12, hidden=(3, 0))
    with pytest.raises(ValueError, match="in_features"):
        TinyMLP(0)


def test_train_step_updates_all_parameters() -> None:
    torch.manual_seed(0)
    model = ResNet9(width=1, num_classes=3)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
