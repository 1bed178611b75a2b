"""Tests of :mod:`lightning_memloc.taps.hooks`: layer resolution, hooks, unit reduction."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

from lightning_memloc.taps import hooks as taps
from lightning_memloc.errors import LayerNotFoundError
from lightning_memloc.models import ResNet9, TinyCNN, TinyMLP
from lightning_memloc.taps.hooks import (
    LayerSpec,
    LayerTaps,
    flat_representation,
    register_auto_rule,
    resolve_layers,
    unit_activations,
)

RESNET9_LAYERS = ["conv1", "conv2", "res1.conv1", "res1.conv2", "conv3", "conv4", "res2.conv1", "res2.conv2"]
RESNET18_LAYERS = ["relu"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def _img(size: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.randn(2, channels, size, size)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


class SharedAct(nn.Module):
    """One ReLU used twice, one used once, and a module that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.unused = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.act, self.last = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.fc2(self.act(self.fc1(self.act(x)))))


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn(self.conv1(x))
        raise RuntimeError("boom")


# ---------------------------------------------------------------- resolve_layers: auto


def test_auto_resnet9_is_the_papers_eight_layers() -> None:
    specs = resolve_layers(ResNet9(width=2), "auto", _img())
    assert [s.name for s in specs] == RESNET9_LAYERS
    assert all(s.kind == "conv" for s in specs)


def test_auto_resnet9_with_classifier() -> None:
    specs = resolve_layers(ResNet9(width=1, num_classes=3), "auto", _img(32))
    assert [s.name for s in specs] == RESNET9_LAYERS


def test_auto_torchvision_resnet18() -> None:
    model = torchvision.models.resnet18(num_classes=4)
    specs = resolve_layers(model, "auto", torch.randn(1, 3, 32, 32))
    assert [s.name for s in specs] == RESNET18_LAYERS
    assert all(s.kind == "conv" for s in specs)


def test_auto_lightly_style_sequential_resnet18() -> None:
    backbone = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
    specs = resolve_layers(backbone, "auto", torch.randn(1, 3, 32, 32))
    assert [s.name for s in specs] == ["2"] + [f"{i}.{j}" for i in range(4, 8) for j in range(2)]


def test_auto_torchvision_bottleneck() -> None:
    from torchvision.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=2, width_per_group=8)
    specs = resolve_layers(model, "auto", torch.randn(1, 3, 32, 32))
    assert [s.name for s in specs] == ["relu", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def test_auto_tiny_models() -> None:
    assert resolve_layers(TinyCNN(width=2), "auto", _img(8)) == [
        LayerSpec("conv1", "conv"), LayerSpec("conv2", "conv"), LayerSpec("conv3", "conv")]
    assert resolve_layers(TinyMLP(12, hidden=(6, 4, 3)), "auto", torch.randn(2, 12)) == [
        LayerSpec("relu1", "linear"), LayerSpec("relu2", "linear"), LayerSpec("relu3", "linear")]


def test_auto_never_picks_a_module_called_twice() -> None:
    specs = resolve_layers(SharedAct(), "auto", torch.randn(2, 4))
    assert specs == [LayerSpec("last", "linear")]


def test_auto_token_outputs_are_linear() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3))
    assert resolve_layers(model, "auto", torch.randn(2, 7, 4)) == [LayerSpec("1", "linear")]


def test_auto_finds_nothing() -> None:
    with pytest.raises(ValueError, match=r"layers=\["):
        resolve_layers(nn.Sequential(nn.Linear(4, 2), nn.Sigmoid()), "auto", torch.randn(2, 4))


def test_register_auto_rule_takes_precedence_over_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taps, "AUTO_RULES", list(taps.AUTO_RULES))
    fallback = taps.AUTO_RULES[-1]

    @register_auto_rule
    def fc_rule(model: nn.Module) -> list | None:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        return [LayerSpec(n, "mlp") for n in reversed(names)] or None

    assert taps.AUTO_RULES[-1] is fallback and taps.AUTO_RULES[-2] is fc_rule
    specs = resolve_layers(TinyMLP(12, hidden=(6, 4)), "auto", torch.randn(2, 12))
    assert specs == [LayerSpec("fc1", "mlp"), LayerSpec("fc2", "mlp")]  # execution order, kind kept
    # A rule that does not apply (returns None) falls through to the next one.
    assert [s.name for s in resolve_layers(nn.Sequential(nn.ReLU()), "auto", torch.randn(2, 3))] == ["0"]


# ---------------------------------------------------------------- resolve_layers: explicit


def test_explicit_names_in_execution_order_with_kinds() -> None:
    model = ResNet9(width=1)
    specs = resolve_layers(model, ["flatten", "res2.conv2", "conv1", "res1"], _img())
    assert specs == [LayerSpec("conv1", "conv"), LayerSpec("res1", "conv"),
                     LayerSpec("res2.conv2", "conv"), LayerSpec("flatten", "linear")]
    assert resolve_layers(model, (LayerSpec("conv4", "mlp"),), _img()) == [LayerSpec("conv4", "mlp")]


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(LayerNotFoundError, match="res1.conv1") as info:
        resolve_layers(ResNet9(width=1), ["conv1", "res1.conv3"], _img())
    assert isinstance(info.value, ValueError)
    assert "'res1.conv3'" in str(info.value) and "named_modules" in str(info.value)


@pytest.mark.parametrize(
    "layers,match",
    [([], "empty"), (["conv1", "conv1"], "Duplicate"), ("conv1", r"layers=\['conv1'\]")],
)
def test_bad_layer_arguments(layers: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_layers(TinyCNN(width=1), layers, _img(8))  # type: ignore[arg-type]


def test_explicit_module_called_twice_or_never() -> None:
    with pytest.raises(ValueError, match="2 times"):
        resolve_layers(SharedAct(), ["act"], torch.randn(2, 4))
    with pytest.raises(ValueError, match="did not run"):
        resolve_layers(SharedAct(), ["unused"], torch.randn(2, 4))


def test_explicit_unsupported_rank() -> None:
    model = nn.Sequential(nn.Conv3d(1, 2, 1), nn.ReLU())
    with pytest.raises(ValueError, match="rank 5"):
        resolve_layers(model, ["1"], torch.randn(1, 1, 2, 2, 2))


def test_modes_restored_and_stats_untouched() -> None:
    model = ResNet9(width=1).train()
    model.conv3.bn.eval()  # mixed modes (e.g. a frozen BatchNorm) must survive
    before = {n: m.training for n, m in model.named_modules()}
    stats = model.conv1.bn.running_mean.clone()
    resolve_layers(model, "auto", _img())
    assert {n: m.training for n, m in model.named_modules()} == before
    assert torch.equal(model.conv1.bn.running_mean, stats)  # the probe ran in eval mode
    assert _no_hooks(model)
    model.eval()
    resolve_layers(model, ["conv1"], _img())
    assert not any(m.training for m in model.modules())


def test_modes_restored_and_hooks_removed_on_error() -> None:
    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        resolve_layers(model, "auto", _img(4))
    assert all(m.training for m in model.modules())
    assert _no_hooks(model)
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------- LayerTaps


def test_layer_taps_calls_fn_and_removes_hooks() -> None:
    model = TinyCNN(width=2).eval()
    x = _img(8)
    calls: list = []
    with LayerTaps(model, [LayerSpec("conv3", "conv"), "conv1"], lambda n, out: calls.append((n, out))) as t:
        assert t.active and model.conv1._forward_hooks
        y = model(x)
    assert [n for n, _ in calls] == ["conv1", "conv3"]
    assert torch.equal(calls[0][1], model.conv1(x))
    assert torch.equal(y, model(x))
    assert not t.active and _no_hooks(model)


def test_layer_taps_ignores_fn_return_value() -> None:
    model = TinyCNN(width=1).eval()
    x = _img(8)
    with LayerTaps(model, ["conv3"], lambda n, out: torch.zeros_like(out)):
        y = model(x)
    assert torch.equal(y, model(x))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_layer_taps_removes_hooks_on_exception(exc: type) -> None:
    model = TinyCNN(width=1)
    with pytest.raises(exc):
        with LayerTaps(model, ["conv1", "conv2"], lambda n, out: None):
            model(_img(8))
            raise exc("stop")
    assert _no_hooks(model)


def test_layer_taps_removes_hooks_when_fn_raises() -> None:
    model = TinyCNN(width=1)

    def fn(name: str, out: torch.Tensor) -> None:
        raise ValueError(name)

    with pytest.raises(ValueError, match="conv1"):
        with LayerTaps(model, ["conv1"], fn):
            model(_img(8))
    assert _no_hooks(model)


def test_layer_taps_keeps_no_reference_to_outputs() -> None:
    model = TinyCNN(width=1).eval()
    refs: list = []
    with torch.no_grad(), LayerTaps(model, ["conv1"], lambda n, out: refs.append(weakref.ref(out))):
        model(_img(8))
        gc.collect()
        assert refs[0]() is None


def test_layer_taps_validation() -> None:
    model = TinyCNN(width=1)
    with pytest.raises(LayerNotFoundError, match="conv1"):
        LayerTaps(model, ["conv01"], lambda n, out: None)
    with pytest.raises(TypeError, match=r"\['conv1'\]"):
        LayerTaps(model, "conv1", lambda n, out: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Duplicate"):
        LayerTaps(model, ["conv1", "conv1"], lambda n, out: None)
    taps_ = LayerTaps(model, ["conv1"], lambda n, out: None)
    with taps_:
        with pytest.raises(RuntimeError, match="re-entrant"):
            taps_.__enter__()
    assert _no_hooks(model)


# ---------------------------------------------------------------- reductions


def test_unit_activations_conv() -> None:
    x = torch.arange(16.0).reshape(2, 2, 2, 2)  # channel means: 1.5, 5.5, 9.5, 13.5
    assert torch.equal(unit_activations(x), torch.tensor([[1.5, 5.5], [9.5, 13.5]]))
    # Non-contiguous input (channels-last view of the same data).
    nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not nc.is_contiguous()
    assert torch.equal(unit_activations(nc), torch.tensor([[1.5, 5.5], [9.5, 13.5]]))


def test_unit_activations_tokens_linear_tuple() -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]]])  # (1, 3, 2): token mean (3, 3)
    assert torch.equal(unit_activations(tokens), torch.tensor([[3.0, 3.0]]))
    assert torch.equal(unit_activations(tokens.transpose(1, 2).contiguous().transpose(1, 2)),
                       torch.tensor([[3.0, 3.0]]))
    flat = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    assert torch.equal(unit_activations(flat), flat)
    assert torch.equal(unit_activations(flat.t()), flat.t())
    assert torch.equal(unit_activations((tokens, torch.zeros(1))), torch.tensor([[3.0, 3.0]]))
    assert torch.equal(unit_activations([flat]), flat)
    assert unit_activations(torch.ones(2, 3, 4, 4, dtype=torch.float16)).dtype == torch.float16


def test_unit_activations_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        unit_activations(torch.ones(2, 1, 1, 1, 1))
    with pytest.raises(ValueError):
        unit_activations(torch.ones(3))
    with pytest.raises(TypeError):
        unit_activations({"x": torch.ones(2, 2)})


def test_flat_representation() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    r = flat_representation(x)
    assert r.shape == (4, 75)
    assert torch.allclose(r.norm(dim=1), torch.ones(4))
    assert torch.allclose(r, x.reshape(4, -1) / x.reshape(4, -1).norm(dim=1, keepdim=True))
    nc = x.permute(0, 2, 3, 1)  # non-contiguous
    assert torch.allclose(flat_representation(nc).norm(dim=1), torch.ones(4))
    assert torch.allclose(flat_representation((x, None)), r)
    hand = flat_representation(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(hand, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_flat_representation_zero_vector(dtype: torch.dtype) -> None:
    r = flat_representation(torch.zeros(2, 3, 2, 2, dtype=dtype))
    assert r.dtype == dtype
    assert torch.equal(r, torch.zeros(2, 12, dtype=dtype))


def test_flat_representation_errors() -> None:
    with pytest.raises(ValueError, match="batched"):
        flat_representation(torch.ones(3))
    with pytest.raises(TypeError):
        flat_representation("x")


def test_taps_with_reductions_end_to_end() -> None:
    model = ResNet9(width=1).eval()
    x = _img()
    specs = resolve_layers(model, "auto", x)
    units: dict = {}
    with torch.no_grad(), LayerTaps(model, specs, lambda n, out: units.update({n: unit_activations(out)})):
        model(x)
    assert list(units) == RESNET9_LAYERS
    assert [u.shape[1] for u in units.values()] == [1, 2, 2, 2, 4, 8, 8, 8]
    assert all((u >= 0).all() for u in units.values())
    with torch.no_grad():
        assert torch.allclose(units["conv1"], model.conv1(x).mean(dim=(2, 3)))
