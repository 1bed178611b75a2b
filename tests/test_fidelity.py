"""Tests of the authors' measurement quirks (:mod:`lightning_memloc.analyses.fidelity`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from lightning_memloc import make_views, measure
from lightning_memloc.analyses.fidelity import (authors_unitmem, measure_as_authors, measure_with_quirks, per_view_batchnorm,
                                       sequential_children)
from lightning_memloc.models import AuthorsResNet9, ResNet9

NAMES = ["prep", "layer1_head", "layer1_residual1", "layer1_residual2",
         "layer2", "layer3_head", "layer3_residual1", "layer3_residual2"]


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine and running statistics, so that neither mode is an identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.3)
            m.num_batches_tracked.fill_(7)
    return model


def _taps(model: nn.Module, x: torch.Tensor, names=NAMES) -> dict:
    out = {}
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, a, o, n=n: out.update({n: o})) for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def _state(model: nn.Module) -> tuple:
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()], [p.grad for p in model.parameters()])


def _assert_same_state(model: nn.Module, before: tuple) -> None:
    sd, modes, req, grads = before
    now = model.state_dict()
    assert now.keys() == sd.keys()
    for k in sd:
        assert torch.equal(now[k], sd[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters()) and all(g is None for g in grads)


def test_sequential_children_skips_the_residual_additions(one_thread) -> None:
    model = _randomize_bn(AuthorsResNet9(width=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    seq = sequential_children(model)
    assert all(seq._modules[n] is getattr(model, n) for n in NAMES)  # shared, not copied
    got = _taps(seq, x)
    # hand-chained blocks, no additions
    m, h, expected = dict(model.named_modules()), x, {}
    for n in NAMES:
        h = m[n](h)
        expected[n] = h
    for n in NAMES:
        assert torch.allclose(got[n], expected[n]), n
    clean = _taps(model, x)
    for n in NAMES[:5]:  # layers 1-4, and layer 5's input is the un-added layer-4 output ...
        if n != "layer2":
            assert torch.allclose(clean[n], got[n]), n
    for n in NAMES[4:]:  # ... so from layer 5 on the taps differ
        assert not torch.allclose(clean[n], got[n]), n
    # what torchvision's IntermediateLayerGetter (the authors' taps) returns
    getter = IntermediateLayerGetter(model, {n: n for n in NAMES})
    for n, value in getter(x).items():
        assert torch.allclose(value, got[n]), n


def test_sequential_children_is_a_no_op_for_resnet9(one_thread) -> None:
    model = _randomize_bn(ResNet9(width=2)).eval()  # its residual blocks are children with their own forward
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(sequential_children(model)(x), model(x))


def test_sequential_children_validation() -> None:
    model = AuthorsResNet9(width=1)
    assert list(sequential_children(model, until="layer2")._modules)[-1] == "layer2"
    with pytest.raises(ValueError, match="`until`='layer9' is not a direct child"):
        sequential_children(model, until="layer9")
    with pytest.raises(ValueError, match="no child modules"):
        sequential_children(nn.ReLU())
    with pytest.raises(TypeError, match="`model`"):
        sequential_children("prep")  # type: ignore[arg-type]


def test_per_view_batchnorm_equals_train_mode_batch_of_one(one_thread) -> None:
    model = _randomize_bn(AuthorsResNet9(width=2)).eval()
    x = torch.randn(3, 3, 32, 32)
    before = _state(model)
    with per_view_batchnorm(model):
        batched = _taps(model, x)
    _assert_same_state(model, before)  # running statistics untouched
    assert all("forward" not in m.__dict__ for m in model.modules())  # own forward back
    literal = copy.deepcopy(model).train()
    for i in range(3):
        one = _taps(literal, x[i:i + 1])
        for n in NAMES:  # float32 round-off through 8 normalisations: worst 5.3e-5 over 300 random draws
            assert torch.allclose(batched[n][i:i + 1], one[n], atol=2e-4), (i, n)
    eval_taps = _taps(model, x)
    assert not torch.allclose(eval_taps["prep"], batched["prep"])  # the quirk changes the numbers


def test_per_view_batchnorm_restores_forward_on_error_and_rejects_1x1_maps() -> None:
    model = AuthorsResNet9(width=1).eval()
    with pytest.raises(ValueError, match="1x1 map.*>= 32 px"):
        with per_view_batchnorm(model):
            model(torch.randn(2, 3, 16, 16))  # layers 7-8 are 1x1 at 16 px
    assert all("forward" not in m.__dict__ for m in model.modules())
    bn1d = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="one value per channel"):
        with per_view_batchnorm(bn1d):
            bn1d(torch.randn(2, 3))


def _slow_reference(model: nn.Module, views: torch.Tensor) -> dict:
    """The authors' UnitMem script, step by step: a copy in train mode, IntermediateLayerGetter,
    one view per forward, numpy mean over the spatial positions and the views, then the max vs
    the median of the sorted rest (np.median(np.sort(a, 0)[:-1], 0))."""
    getter = IntermediateLayerGetter(copy.deepcopy(model).train(), {n: n for n in NAMES})
    mu = {n: [] for n in NAMES}
    with torch.no_grad():
        for cand in views:
            acts = {n: [] for n in NAMES}
            for view in cand:
                for n, v in getter(view[None]).items():
                    acts[n].append(v[0].reshape(v.shape[1], -1).numpy().astype(np.float64).mean(axis=1))
            for n in NAMES:
                mu[n].append(np.mean(np.array(acts[n]), axis=0))
    out = {}
    for n in NAMES:
        a = np.array(mu[n])
        top = np.max(a, axis=0)
        med = np.median(np.sort(a, axis=0)[:-1], axis=0)
        denom = top + med
        out[n] = np.where(denom > 0, (top - med) / np.where(denom > 0, denom, 1), 0.0)
    return out


def test_authors_unitmem_equals_the_slow_reference_and_the_batched_emulation(one_thread) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(AuthorsResNet9(width=2))
    model.eval()
    model.layer2.train()  # a mixed state must come back as it was
    model.prep.conv.weight.requires_grad_(False)
    before = _state(model)
    images = torch.rand(5, 3, 32, 32)
    views = make_views(images, 3, seed=4)
    literal = authors_unitmem(model, images, views=3, seed=4)
    _assert_same_state(model, before)
    reference = _slow_reference(model, views)
    for n in NAMES:
        assert np.allclose(literal[n].numpy(), reference[n], atol=1e-6), n
    batched = measure_with_quirks(model, images, views=3, seed=4, train_bn=True, sequential=True, reduction="median")
    _assert_same_state(model, before)
    for n in NAMES:
        assert torch.allclose(batched.unit_mem[n].double(), literal[n], atol=1e-5), n
    clean = measure(model, images, views=3, seed=4)
    assert any(not torch.allclose(clean.unit_mem[n], batched.unit_mem[n], atol=1e-3) for n in NAMES)
    # precomputed views give the same numbers as the images with the same seed
    assert all(torch.allclose(authors_unitmem(model, views)[n], literal[n]) for n in NAMES)


def test_authors_unitmem_restores_state_on_error() -> None:
    model = _randomize_bn(AuthorsResNet9(width=1)).eval()
    before = _state(model)
    with pytest.raises(ValueError):  # train-mode BatchNorm refuses the 1x1 maps of 16 px inputs
        authors_unitmem(model, torch.rand(3, 3, 16, 16), views=2)
    _assert_same_state(model, before)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        authors_unitmem(model, torch.rand(1, 3, 32, 32), views=2)


def test_quirk_flags_and_meta(one_thread) -> None:
    torch.manual_seed(0)
    f, g = _randomize_bn(AuthorsResNet9(width=1), 1).eval(), _randomize_bn(AuthorsResNet9(width=1), 2).eval()
    images = torch.rand(4, 3, 32, 32)
    before_f, before_g = _state(f), _state(g)
    report = measure_as_authors(f, images, reference=g, views=2, top_k=2, meta={"epoch": 3})
    _assert_same_state(f, before_f)
    _assert_same_state(g, before_g)
    assert report.meta["train_bn"] is True and report.meta["sequential_children"] is True
    assert report.meta["pairing"] == "anchor" and report.meta["reduction"] == "median" and report.meta["epoch"] == 3
    assert report.layers == NAMES and report.has_reference
    plain = measure_with_quirks(f, images, reference=g, views=2, top_k=2)
    assert plain.meta["train_bn"] is False and plain.meta["pairing"] == "all"
    assert plain.allclose(measure(f, images, reference=g, views=2, top_k=2, meta=dict(train_bn=False, sequential_children=False)))
    with pytest.raises(TypeError, match="`train_bn` must be True or False"):
        measure_with_quirks(f, images, train_bn="yes")  # type: ignore[arg-type]


def test_train_bn_quirk_is_a_no_op_with_group_norm(one_thread) -> None:
    model = AuthorsResNet9(width=2, norm="group").eval()
    images = torch.rand(4, 3, 32, 32)
    a = measure_with_quirks(model, images, views=2, train_bn=True)
    b = measure_with_quirks(model, images, views=2)
    assert all(torch.allclose(a.unit_mem[n], b.unit_mem[n]) for n in NAMES)
