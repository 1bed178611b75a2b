"""The fused hook reductions give what the per-layer reductions gave: Gram-based alignment, unit means."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_memloc.functional.sslmem import alignment, pairwise_alignment
from lightning_memloc.models import TinyCNN
from lightning_memloc.reductions.hook import (alignment_from_gram, flat_view, forward_reduce, view_gram,
                                         view_unit_means)
from lightning_memloc.taps.hooks import LayerTaps, unit_activations

LAYERS = ["conv1", "conv2", "conv3"]


def unfused(model: nn.Module, inputs: torch.Tensor, names, batch: int, views: int, anchor: bool = False):
    """The reductions before fusion: per layer, in its hook, unit means then `pairwise_alignment`."""
    units, aligns = {}, {}
    n_views = batch * views

    def reduce(name, out):
        units[name] = unit_activations(out[:n_views]).reshape(batch, views, -1).mean(dim=1)
        rep = out.reshape(out.shape[0], -1)
        aligns[name] = pairwise_alignment(rep[:n_views].reshape(batch, views, -1), rep[n_views:] if anchor else None)

    with torch.no_grad(), LayerTaps(model, names, reduce):
        model(inputs)
    return units, aligns


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = TinyCNN(width=4).eval()
    return model, torch.rand(3 * 5, 3, 16, 16)  # 3 candidates x 5 views


def test_gram_alignment_equals_pairwise_alignment():
    torch.manual_seed(1)
    reps = torch.randn(4, 6, 1000)
    reps[1, 2] = 0.0  # an all-zero view: distance 1 to the others, as F.normalize gives
    for chunk in (0, 4 * 6 * 8 * 37):  # default slices, and slices of 37 features (a ragged last one)
        got = alignment_from_gram(view_gram(reps, chunk)).float()
        torch.testing.assert_close(got, pairwise_alignment(reps, chunk_bytes=chunk or None), rtol=0, atol=1e-7)
    torch.testing.assert_close(alignment_from_gram(view_gram(reps)).float(), alignment(reps), rtol=0, atol=1e-7)


def test_gram_alignment_stacked_over_layers_equals_per_layer():
    torch.manual_seed(2)
    grams = torch.stack([view_gram(torch.rand(3, 4, d)) for d in (5, 50, 500)])
    stacked = alignment_from_gram(grams)
    assert stacked.shape == (3, 3)
    for layer in range(3):
        assert torch.equal(stacked[layer], alignment_from_gram(grams[layer]))


def test_gram_alignment_accurate_for_nearly_identical_views():
    torch.manual_seed(3)
    reps = torch.randn(3, 1, 4096) + 1e-4 * torch.randn(3, 6, 4096)  # distances ~1.4e-4
    exact = alignment(reps.double())
    assert (alignment_from_gram(view_gram(reps)) - exact).abs().max() < 1e-9


def test_unit_means_of_a_1x1_map_skip_the_spatial_mean():
    torch.manual_seed(4)
    out = torch.rand(6, 5, 1, 1)
    expected = unit_activations(out).reshape(2, 3, -1).mean(dim=1)
    assert torch.equal(view_unit_means(out, 2, 3), expected)
    assert torch.equal(view_unit_means(out.contiguous(memory_format=torch.channels_last), 2, 3), expected)
    conv = torch.rand(6, 5, 2, 2)
    assert torch.equal(view_unit_means(conv, 2, 3), unit_activations(conv).reshape(2, 3, -1).mean(dim=1))


def test_flat_view_of_channels_last_is_a_view_in_memory_order():
    x = torch.rand(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    flat = flat_view(x)
    assert flat.data_ptr() == x.data_ptr() and flat.shape == (2, 48)
    assert torch.equal(flat, x.permute(0, 2, 3, 1).reshape(2, -1))


def test_forward_reduce_equals_the_unfused_reductions(tiny):
    model, inputs = tiny
    units, aligns = forward_reduce(model, inputs, LAYERS, 3, 5, units=True, align=True, anchor=False)
    ref_units, ref_aligns = unfused(model, inputs, LAYERS, 3, 5)
    assert list(units) == LAYERS and list(aligns) == LAYERS  # in the order of `names`
    for name in LAYERS:
        torch.testing.assert_close(units[name], ref_units[name], rtol=0, atol=0)
        torch.testing.assert_close(aligns[name], ref_aligns[name], rtol=0, atol=1e-7)
        assert aligns[name].dtype == torch.float32 and aligns[name].shape == (3,)


def test_forward_reduce_anchor_and_float64_paths(tiny):
    model, inputs = tiny
    anchors = torch.rand(3, 3, 16, 16)
    _, aligns = forward_reduce(model, torch.cat([inputs, anchors]), LAYERS, 3, 5, units=False, align=True, anchor=True)
    _, ref = unfused(model, torch.cat([inputs, anchors]), LAYERS, 3, 5, anchor=True)
    for name in LAYERS:
        assert torch.equal(aligns[name], ref[name])
    model64 = model.double()
    units, aligns = forward_reduce(model64, inputs, LAYERS, 3, 5, units=True, align=True, anchor=False)
    ref_units, ref = unfused(model64, inputs.double(), LAYERS, 3, 5)
    for name in LAYERS:
        assert aligns[name].dtype == torch.float64 and torch.equal(aligns[name], ref[name])
        assert torch.equal(units[name], ref_units[name])


def test_forward_reduce_a_nan_stays_in_its_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("nan")
    units, aligns = forward_reduce(model, torch.rand(2 * 3, 3, 8, 8), ["1", "2"], 2, 3, units=True, align=True,
                                   anchor=False)
    assert torch.isfinite(aligns["1"]).all() and torch.isfinite(units["1"]).all()
    assert not torch.isfinite(aligns["2"]).all()
