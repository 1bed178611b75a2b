"""ViT support: auto rule (torchvision, timm-style, lightly), token units, negative policy, grouping."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import Tensor, nn

import lightning_memloc.taps.vit as vit_module
from lightning_memloc import measure
from lightning_memloc.models import TinyCNN
from lightning_memloc.models.small import TinyViT
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.taps import hooks as taps
from lightning_memloc.taps.hooks import LayerTaps, activation_rule, resolve_layers, unit_activations
from lightning_memloc.taps.vit import group_by_kind, token_unit_activations, vit_block_rule, vit_layers


def tv_names(depth: int, prefix: str = "") -> list:
    out = []
    for i in range(depth):
        block = f"{prefix}encoder.layers.encoder_layer_{i}"
        out += [(f"{block}.self_attention", "attention"), (f"{block}.mlp.1", "mlp")]
    return out


class _Attention(nn.Module):
    """timm-style attention: qkv, softmax, proj; returns a (B, T, D) tensor."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), _Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmStyleViT(nn.Module):
    """Patch embedding + class token + timm-style blocks; returns the class token."""

    def __init__(self, dim: int = 16, depth: int = 2, patch: int = 4, image: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, 2, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


def specs_of(model: nn.Module, size: int = 16) -> list:
    return [(s.name, s.kind) for s in resolve_layers(model, "auto", torch.rand(2, 3, size, size))]


# ----------------------------------------------------------------------------- models and auto rule
def test_tiny_vit_forward_and_validation() -> None:
    model = TinyViT()
    assert tuple(model(torch.rand(3, 3, 16, 16)).shape) == (3, 32)
    with pytest.raises(ValueError, match="patch_size"):
        TinyViT(image_size=15)
    with pytest.raises(ValueError, match="heads"):
        TinyViT(dim=30, heads=4)


def test_auto_layers_tiny_vit_exact() -> None:
    assert specs_of(TinyViT(depth=2)) == tv_names(2)
    assert specs_of(TinyViT(depth=3)) == tv_names(3)


def test_auto_layers_timm_style_blocks() -> None:
    expected = []
    for i in range(2):
        expected += [(f"blocks.{i}.attn", "attention"), (f"blocks.{i}.mlp.act", "mlp")]
    assert specs_of(TimmStyleViT()) == expected


def test_auto_layers_lightly_masked_vit_torchvision() -> None:
    from lightly.models.modules import MaskedVisionTransformerTorchvision

    backbone = MaskedVisionTransformerTorchvision(vit=TinyViT(depth=2))
    assert specs_of(backbone) == tv_names(2, prefix="vit.")


def test_vit_rule_ignores_cnns_and_is_registered_once() -> None:
    assert vit_block_rule(TinyCNN()) is None
    assert [s.kind for s in resolve_layers(TinyCNN(), "auto", torch.rand(1, 3, 16, 16))][0] == "conv"
    importlib.reload(vit_module)
    rules = [r for r in taps.AUTO_RULES if getattr(r, "__name__", "") == "vit_block_rule"]
    assert len(rules) == 1 and rules[0] is vit_module.vit_block_rule
    assert taps.AUTO_RULES.index(rules[0]) < taps.AUTO_RULES.index(activation_rule)


def test_vit_layers_kinds_filter_and_explicit_use() -> None:
    model = TinyViT(depth=2)
    mlp = vit_layers(model, kinds=("mlp",))
    assert [(s.name, s.kind) for s in mlp] == [n for n in tv_names(2) if n[1] == "mlp"]
    assert [(s.name, s.kind) for s in resolve_layers(model, mlp, torch.rand(1, 3, 16, 16))] == [(s.name, s.kind) for s in mlp]
    with pytest.raises(ValueError, match="kinds"):
        vit_layers(model, kinds=("conv",))


# ----------------------------------------------------------------------------- token units
def test_token_unit_activations_policies() -> None:
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(token_unit_activations(x), unit_activations(x))
    torch.testing.assert_close(token_unit_activations((x, None), "exclude"), x[:, 1:].mean(dim=1))
    torch.testing.assert_close(token_unit_activations(x, "exclude", num_prefix_tokens=2), x[:, 2:].mean(dim=1))
    torch.testing.assert_close(token_unit_activations(x, "only"), x[:, 0])
    with pytest.raises(ValueError, match="class_token"):
        token_unit_activations(x, "cls")
    with pytest.raises(ValueError, match="token sequence"):
        token_unit_activations(torch.randn(4, 3), "exclude")
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        token_unit_activations(x, "exclude", num_prefix_tokens=5)


def test_mlp_hidden_units_are_bounded_below_by_gelu_minimum() -> None:
    torch.manual_seed(0)
    model, units = TinyViT(), {}
    specs = resolve_layers(model, "auto", torch.rand(1, 3, 16, 16))
    with torch.no_grad(), LayerTaps(model, specs, lambda n, out: units.update({n: unit_activations(out)})):
        model(torch.rand(8, 3, 16, 16))
    for spec in specs:
        assert units[spec.name].shape == (8, 32 if spec.kind == "attention" else 64)
        if spec.kind == "mlp":
            assert float(units[spec.name].min()) >= -0.17
    assert any(float(units[s.name].min()) < 0 for s in specs if s.kind == "attention")


# ----------------------------------------------------------------------------- measure()
@pytest.fixture(scope="module")
def vit_pair() -> tuple:
    torch.manual_seed(0)
    return TinyViT(), TinyViT(), torch.rand(6, 3, 16, 16)


@pytest.mark.parametrize("negative", ["clamp", "shift"])
def test_measure_tiny_vit_unitmem_in_range(vit_pair: tuple, negative: str) -> None:
    f, g, images = vit_pair
    report = measure(f, images, reference=g, views=3, negative=negative, top_k=2, batch_size=4)
    assert report.layers == [n for n, _ in tv_names(2)]
    assert report.layer_kinds == dict(tv_names(2))
    for layer in report.layers:
        scores = report.unit_mem[layer]
        assert not torch.isnan(scores).any()
        assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
        assert math.isfinite(report.layer_mem[layer]) and math.isfinite(report.delta_layer_mem[layer])
    assert report.meta["negative"] == negative


def test_measure_tiny_vit_error_policy_names_the_fix(vit_pair: tuple) -> None:
    f, _, images = vit_pair
    with pytest.raises(ValueError, match="negative='clamp' or 'shift'"):
        measure(f, images, views=2, negative="error")


def test_measure_timm_style_model(vit_pair: tuple) -> None:
    torch.manual_seed(1)
    report = measure(TimmStyleViT(), vit_pair[2], reference=TimmStyleViT(), views=3, top_k=2)
    assert [report.layer_kinds[n] for n in report.layers] == ["attention", "mlp"] * 2
    assert all(float(report.unit_mem[n].max()) <= 1.0 for n in report.layers)


# ----------------------------------------------------------------------------- group_by_kind
def _report(layer_mem: bool) -> MemorizationReport:
    kinds = {"a0": "attention", "m0": "mlp", "a1": "attention", "m1": "mlp"}
    unit_mem = {"a0": torch.tensor([0.0, 0.2]), "m0": torch.tensor([0.6, 0.8, 1.0]),
                "a1": torch.tensor([0.4, 0.6]), "m1": torch.tensor([0.0, 0.2, 0.4])}
    extra = {}
    if layer_mem:
        extra = {"layer_mem": {"a0": 0.1, "m0": 0.3, "a1": 0.35, "m1": 0.6},
                 "delta_layer_mem": {"a0": 0.1, "m0": 0.2, "a1": 0.05, "m1": 0.25}}
    return MemorizationReport(
        layers=list(kinds), layer_kinds=kinds, candidate_ids=torch.arange(3), unit_mem=unit_mem,
        unit_argmax={k: torch.zeros_like(v, dtype=torch.long) for k, v in unit_mem.items()},
        dead_units={k: v == 0 for k, v in unit_mem.items()}, **extra)


def test_group_by_kind_values() -> None:
    groups = group_by_kind(_report(True))
    assert list(groups) == ["attention", "mlp"]
    att, mlp = groups["attention"], groups["mlp"]
    assert att["num_layers"] == 2.0 and mlp["num_layers"] == 2.0
    assert att["unit_mem"] == pytest.approx(0.3) and mlp["unit_mem"] == pytest.approx(3.0 / 6)
    assert att["fraction_above"] == pytest.approx(0.25) and mlp["fraction_above"] == pytest.approx(0.5)
    assert att["dead_fraction"] == pytest.approx(0.25) and mlp["dead_fraction"] == pytest.approx(1 / 6)
    assert att["layer_mem"] == pytest.approx(0.225) and mlp["layer_mem"] == pytest.approx(0.45)
    assert att["delta_layer_mem"] == pytest.approx(0.075) and mlp["delta_layer_mem"] == pytest.approx(0.225)


def test_group_by_kind_without_reference_and_on_measure(vit_pair: tuple) -> None:
    assert "layer_mem" not in group_by_kind(_report(False))["mlp"]
    f, g, images = vit_pair
    report = measure(f, images, reference=g, views=3, top_k=2)
    groups = group_by_kind(report)
    assert set(groups) == {"attention", "mlp"}
    for stats in groups.values():
        assert 0.0 <= stats["unit_mem"] <= 1.0 and math.isfinite(stats["layer_mem"])
    assert groups["mlp"]["unit_mem"] == pytest.approx(
        float(torch.cat([report.unit_mem[n] for n in report.layers if report.layer_kinds[n] == "mlp"]).mean()))
