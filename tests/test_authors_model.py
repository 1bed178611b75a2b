"""Tests of the authors' ResNet9 layout, the ``norm`` option and the SimCLR factories."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from lightning_memloc.models import (AuthorsBlock, AuthorsResNet9, ConvBlock, ResNet9, convert_authors_state_dict,
                                     group_count, make_norm)
from lightning_memloc.models.ssl import SimCLR
from lightning_memloc.taps.hooks import resolve_layers
from helpers import n_params

NAMES = ["prep", "layer1_head", "layer1_residual1", "layer1_residual2",
         "layer2", "layer3_head", "layer3_residual1", "layer3_residual2"]


def _hand_count(in_ch: int, w: int, num_classes: int | None = None) -> int:
    """Conv weights 9·in·out + conv bias out + norm affine 2·out per layer, + classifier."""
    blocks = [(in_ch, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w),
              (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 8 * w), (8 * w, 8 * w)]
    total = sum(9 * cin * cout + cout + 2 * cout for cin, cout in blocks)
    return total + (8 * w * num_classes + num_classes if num_classes else 0)


def test_authors_widths_and_full_parameter_count() -> None:
    model = AuthorsResNet9()
    widths = [dict(model.named_modules())[n].conv.out_channels for n in NAMES]
    assert widths == [32, 64, 64, 64, 128, 256, 256, 256]
    # 960 + 18,624 + 2 x 37,056 + 74,112 + 295,680 + 2 x 590,592 (computed by hand)
    assert n_params(model) == 1_644_672 == _hand_count(3, 32)
    assert n_params(AuthorsResNet9(num_classes=10)) == 1_644_672 + 256 * 10 + 10


@pytest.mark.parametrize("in_ch,width,num_classes", [(3, 1, None), (1, 4, 7), (5, 3, None)])
def test_authors_parameter_count_formula(in_ch: int, width: int, num_classes: int | None) -> None:
    assert n_params(AuthorsResNet9(in_ch, width, num_classes)) == _hand_count(in_ch, width, num_classes)


def test_authors_layer_shapes_at_32px() -> None:
    model = AuthorsResNet9(width=2).eval()
    shapes = {}
    handles = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, a, out, n=n: shapes.update({n: tuple(out.shape[1:])})) for n in NAMES]
    model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    # pools after layers 1, 2, 5, 6 are inside the layers: the taps see 16, 8, 8, 8, 4, 2, 2, 2 px
    assert shapes == {"prep": (2, 16, 16), "layer1_head": (4, 8, 8), "layer1_residual1": (4, 8, 8),
                      "layer1_residual2": (4, 8, 8), "layer2": (8, 4, 4), "layer3_head": (16, 2, 2),
                      "layer3_residual1": (16, 2, 2), "layer3_residual2": (16, 2, 2)}


def test_authors_blocks_have_bias_and_are_tapped_by_auto() -> None:
    model = AuthorsResNet9(width=2)
    blocks = [dict(model.named_modules())[n] for n in NAMES]
    assert all(isinstance(b, AuthorsBlock) and isinstance(b, ConvBlock) for b in blocks)
    assert all(b.conv.bias is not None for b in blocks)
    assert [b.pool is not None for b in blocks] == [True, True, False, False, True, True, False, False]
    assert [s.name for s in resolve_layers(model, "auto", torch.randn(2, 3, 32, 32))] == NAMES
    assert [n for n, _ in model.named_children()][:8] == NAMES  # forward order: IntermediateLayerGetter relies on it


def test_authors_forward_adds_the_two_residuals() -> None:
    model = AuthorsResNet9(width=2, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    m = dict(model.named_modules())
    a = m["layer1_head"](m["prep"](x))
    a = a + m["layer1_residual2"](m["layer1_residual1"](a))
    b = m["layer3_head"](m["layer2"](a))
    b = b + m["layer3_residual2"](m["layer3_residual1"](b))
    assert torch.allclose(model.forward_map(x), b)
    assert torch.allclose(model(x), model.fc(b.amax(dim=(2, 3))))


def _their_layer(cin: int, cout: int, pool: bool) -> nn.Sequential:
    parts = [("conv", nn.Conv2d(cin, cout, 3, padding=1)), ("batch", nn.BatchNorm2d(cout)), ("relu", nn.ReLU())]
    return nn.Sequential(OrderedDict(parts + ([("pool", nn.MaxPool2d(2))] if pool else [])))


class _Theirs(nn.Module):
    """The layout of the authors' released model.py, written from its description (DESIGN §7)."""

    def __init__(self, w: int, num_classes: int) -> None:
        super().__init__()
        spec = [(3, w, True), (w, 2 * w, True), (2 * w, 2 * w, False), (2 * w, 2 * w, False),
                (2 * w, 4 * w, True), (4 * w, 8 * w, True), (8 * w, 8 * w, False), (8 * w, 8 * w, False)]
        for name, (cin, cout, pool) in zip(NAMES, spec):
            self.add_module(name, _their_layer(cin, cout, pool))
        self.classifier = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1_head(self.prep(x))
        x = self.layer1_residual2(self.layer1_residual1(x)) + x
        x = self.layer3_head(self.layer2(x))
        x = self.layer3_residual2(self.layer3_residual1(x)) + x
        return self.classifier(x)


def test_authors_checkpoint_loads_and_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    theirs = _Theirs(2, 5)
    for module in theirs.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    ours = AuthorsResNet9(width=2, num_classes=5)
    ours.load_state_dict(convert_authors_state_dict(theirs.state_dict()))  # strict: every key maps
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-6)


@pytest.mark.parametrize("cls", [ResNet9, AuthorsResNet9])
def test_group_norm_option(cls: type) -> None:
    batch, group = cls(width=4), cls(width=4, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 8
    assert all(m.num_groups == group_count(m.num_channels) for m in norms)
    assert n_params(group) == n_params(batch)
    assert not list(group.buffers())  # no running statistics
    group.train()
    x = torch.randn(3, 3, 32, 32)
    # per-image normalisation: in training mode an image's features do not depend on the batch
    assert torch.allclose(group(x)[1:2], group(x[1:2]), atol=1e-5)
    assert "norm='group'" in repr(group)


@pytest.mark.parametrize("cls", [ResNet9, AuthorsResNet9])
def test_norm_validation(cls: type) -> None:
    with pytest.raises(ValueError, match="`norm` must be one of"):
        cls(width=2, norm="layer")
    with pytest.raises(ValueError, match="`norm`"):
        ConvBlock(3, 4, norm="instance")


def test_group_count_and_make_norm() -> None:
    # largest divisor <= 32 leaving >= 2 channels a group
    assert [group_count(c) for c in (1, 2, 3, 6, 16, 24, 64, 96, 512)] == [1, 1, 1, 3, 8, 12, 32, 32, 32]
    assert group_count(64, max_groups=16) == 16
    assert isinstance(make_norm("batch", 4), nn.BatchNorm2d)
    with pytest.raises(ValueError, match="channels"):
        group_count(0)


def test_simclr_factories() -> None:
    model = SimCLR.authors_resnet9(width=4)
    assert isinstance(model.backbone, AuthorsResNet9) and model.backbone.norm == "batch"
    linears = [m for m in model.projection_head.modules() if isinstance(m, nn.Linear)]
    assert (linears[0].in_features, linears[0].out_features, linears[-1].out_features) == (32, 32, 8)
    views = torch.rand(4, 3, 32, 32)
    loss = model.training_loss(((views, views.flip(-1)), torch.zeros(4)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert SimCLR.authors_resnet9(width=2, norm="group").backbone.norm == "group"
    assert SimCLR.resnet9(width=2, norm="group").backbone.norm == "group"
    assert SimCLR.resnet9(width=2).backbone.norm == "batch"


@pytest.mark.parametrize("cls,size,norm", [(ResNet9, 16, "group"), (AuthorsResNet9, 32, "group"),
                                           (AuthorsResNet9, 32, "batch")])
def test_pruned_units_output_zero_with_conv_bias_and_group_norm(cls: type, size: int, norm: str, one_thread) -> None:
    from lightning_memloc import measure
    from lightning_memloc.callbacks import prune_units

    torch.manual_seed(0)
    encoder = cls(width=2, norm=norm)
    for m in encoder.modules():  # affine away from (1, 0) so that an unmasked norm would leak
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.1, 0.5)
    report = measure(encoder, torch.rand(4, 3, size, size), views=2)
    pruned = prune_units(encoder, report, amount=1, strategy="highest")
    x = torch.rand(3, 3, size, size)
    for train in (False, True):
        encoder.train(train)
        outputs = {}
        handles = [encoder.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: outputs.update({n: o}))
                   for n in pruned]
        encoder(x)
        for h in handles:
            h.remove()
        for layer, units in pruned.items():
            assert torch.count_nonzero(outputs[layer][:, units]) == 0, (layer, train)
