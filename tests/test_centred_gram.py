"""The hook's float32 all-pairs alignment on CPU: within its stated bound of float64, float64 where it must be.

The bound (docs/performance.md, "The float32 Gram"): every per-candidate alignment within
``BOUND`` = 2e-7 of the float64 alignment of the same float32 activations (explicit differences of
the normalised views), before the float32 rounding of the result. Layers of fewer than
``MIN_FEATURES`` features take the float64 Gram.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_memloc.functional.centred_gram import (GRAM_BLOCK, MIN_FEATURES, TAU, centred_gram,
                                                      centred_sq_distances, view_norms)
from lightning_memloc.models import TinyCNN
from lightning_memloc.reductions.hook import forward_reduce, sq_distances_from_gram, view_gram, view_sq_distances
from lightning_memloc.taps.hooks import LayerTaps

BOUND = 2e-7
CHUNK = 4 << 20


def exact_alignment(reps: torch.Tensor) -> torch.Tensor:
    """The slow float64 reference: mean over pairs of the distance of the normalised views."""
    u = F.normalize(reps.double(), dim=-1)
    k = reps.shape[1]
    i, j = torch.triu_indices(k, k, 1)
    return (u[:, i] - u[:, j]).norm(dim=-1).mean(dim=-1)


def fast_alignment(reps: torch.Tensor) -> torch.Tensor:
    return view_sq_distances(reps).sqrt().mean(dim=-1)


def flagged(reps: torch.Tensor) -> torch.Tensor:
    return centred_sq_distances(centred_gram(reps, CHUNK))[1]


shapes = st.tuples(st.integers(1, 4), st.integers(2, 12), st.integers(1, 5000))


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_view_norms_are_float64_accurate(shape, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    reps = scale * torch.randn(*shape, generator=gen)
    reps[0, 0] = 0.0
    exact = reps.double().norm(dim=-1)
    got = view_norms(reps)
    assert got.dtype == torch.float64 and got[0, 0] == 0
    assert ((got - exact).abs() <= 1e-7 * exact).all()


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.sampled_from([64, 1 << 20]))
def test_centred_gram_is_the_gram_of_the_centred_normalised_views(shape, seed, chunk):
    gen = torch.Generator().manual_seed(seed)
    reps = torch.randn(*shape, generator=gen)
    u = F.normalize(reps.double(), dim=-1)
    v = u - u.mean(dim=1, keepdim=True)
    expected = v @ v.transpose(1, 2)
    got = centred_gram(reps, chunk)  # tiny chunks: several chunks and a ragged last block
    assert got.dtype == torch.float64 and got.shape == (shape[0], shape[1], shape[1])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


features = st.integers(MIN_FEATURES, 3 * MIN_FEATURES)  # what the hook gives the float32 path


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(2, 12), features, st.sampled_from([1e-3, 1e-4, 1e-5, 1e-6]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_nearly_identical_views_within_the_bound(n, k, d, eps, relu, seed):
    """The hard case of a Gram: tiny pairwise distances (a float32 Gram of the raw views is ~1e-3 off)."""
    gen = torch.Generator().manual_seed(seed)
    reps = torch.randn(n, 1, d, generator=gen) + eps * torch.randn(n, k, d, generator=gen)
    if relu:
        reps = reps.relu()
    reps = reps * torch.empty(n, k, 1).uniform_(0.1, 100, generator=gen)  # views of different norms
    err = (fast_alignment(reps) - exact_alignment(reps)).abs().max()
    assert err <= BOUND  # a float32 Gram of the raw views is ~1e-3 off here; measured ≤ 5.1e-8


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(2, 12), features, st.sampled_from(["gauss", "relu", "uniform", "corr"]),
       st.integers(0, 2**31 - 1))
def test_ordinary_views_within_the_bound(n, k, d, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "corr":
        reps = (torch.randn(n, 1, d, generator=gen) + 0.3 * torch.randn(n, k, d, generator=gen)).relu()
    else:
        reps = torch.randn(n, k, d, generator=gen) if kind != "uniform" else torch.rand(n, k, d, generator=gen)
        reps = reps.relu() if kind == "relu" else reps
    assert (fast_alignment(reps) - exact_alignment(reps)).abs().max() <= BOUND


@pytest.mark.parametrize("k,d", [(2, 2048), (3, 2048), (4, 2100), (4, 5000), (10, 4096)])
@pytest.mark.parametrize("gap", [0.17, 0.2, 0.25, 0.3, 0.5])
def test_a_close_pair_among_spread_views_within_the_bound(k, d, gap):
    """Around the float64 threshold, where the float32 Gram's own rounding is largest against d²."""
    gen = torch.Generator().manual_seed(int(100 * gap) + k + d)
    reps = torch.randn(8, k, d, generator=gen)
    reps[:, 1] = reps[:, 0] + gap * torch.randn(8, d, generator=gen)
    assert (fast_alignment(reps) - exact_alignment(reps)).abs().max() <= BOUND


def test_equal_views_among_others_are_recomputed_in_float64():
    torch.manual_seed(0)
    reps = torch.randn(5, 6, MIN_FEATURES)
    reps[1, 3] = reps[1, 0]  # identical views: d = 0, which a float32 Gram gets only to ~3e-4
    reps[2, 4] = reps[2, 2] + 1e-6 * torch.randn(MIN_FEATURES)
    reps[3] = torch.where(torch.rand(6, 1) < 0.5, reps[3, :1], reps[3, 1:2])  # two clusters (a flip-only transform)
    assert flagged(reps).tolist() == [False, True, True, True, False]
    float64 = sq_distances_from_gram(view_gram(reps))
    got = view_sq_distances(reps)
    torch.testing.assert_close(got[1:4], float64[1:4], rtol=0, atol=1e-14)
    assert (fast_alignment(reps) - exact_alignment(reps)).abs().max() <= BOUND


def test_zero_views_follow_f_normalize():
    torch.manual_seed(1)
    reps = torch.randn(3, 4, MIN_FEATURES + 3)
    reps[0, 1] = 0.0  # a zero view stays zero: distance 1 to the others
    reps[1] = 0.0  # all zero: every distance 0
    reps[2] = torch.randn(1, MIN_FEATURES + 3) + 1e-4 * torch.randn(4, MIN_FEATURES + 3)
    reps[2, 3] = 0.0  # a zero view among nearly identical ones: they are close against its spread
    assert flagged(reps).tolist() == [False, False, True]
    align = fast_alignment(reps)
    assert align[1] == 0
    assert (align - exact_alignment(reps)).abs().max() <= BOUND


@pytest.mark.parametrize("d", [1, 79, MIN_FEATURES - 1])
def test_small_layers_take_the_float64_gram(d):
    torch.manual_seed(d)
    reps = torch.randn(3, 4, d)
    assert torch.equal(view_sq_distances(reps), sq_distances_from_gram(view_gram(reps)))


def test_the_threshold_on_a_hand_computed_gram():
    # centred views v0 = (1, 0), v1 = (1, s) with a pair distance s: flagged iff s² < TAU·(1 + 1 + s²)
    for s, expected in ((0.2, False), (0.25, False), (0.24, True), (0.0, True)):
        v = torch.tensor([[[1.0, 0.0], [1.0, s]]], dtype=torch.float64)
        d2, risky = centred_sq_distances(v @ v.transpose(1, 2))
        assert d2.item() == pytest.approx(s * s, abs=1e-15)
        assert risky.item() == (s * s < TAU * (2 + s * s))
    nan = torch.full((1, 3, 3), float("nan"), dtype=torch.float64)
    d2, risky = centred_sq_distances(nan)
    assert torch.isnan(d2).all() and not risky.any()  # NaN is reported by the caller's finite check


def test_many_blocks_and_a_ragged_tail_equal_one_block():
    torch.manual_seed(2)
    reps = torch.randn(2, 5, 3 * GRAM_BLOCK + 17)
    torch.testing.assert_close(centred_gram(reps, 2 * 5 * GRAM_BLOCK * 4), centred_gram(reps, 1 << 30), rtol=0, atol=1e-7)


def test_no_gradient_flows_and_inputs_are_untouched():
    for d in (40, MIN_FEATURES):
        reps = torch.randn(2, 3, d, requires_grad=True)
        before = reps.detach().clone()
        d2 = view_sq_distances(reps)
        assert not d2.requires_grad and torch.equal(reps.detach(), before)


def test_forward_reduce_on_cpu_is_within_the_bound_of_a_float64_model():
    torch.manual_seed(3)
    model = TinyCNN(width=8).eval()  # conv1: 8 x 16 x 16 = MIN_FEATURES features (float32 Gram), the others fewer
    x = torch.rand(3 * 5, 3, 16, 16)
    _, aligns = forward_reduce(model, x, ["conv1", "conv2", "conv3"], 3, 5, units=False, align=True, anchor=False)
    outs = {}
    with torch.no_grad(), LayerTaps(model, list(aligns), lambda name, out: outs.__setitem__(name, out.reshape(3, 5, -1))):
        model(x)
    assert list(outs) == ["conv1", "conv2", "conv3"]
    for name, reps in outs.items():  # same float32 activations, float64 alignment; + float32 rounding of the result
        assert (aligns[name].double() - exact_alignment(reps)).abs().max() <= BOUND + 2**-23


def uncentred_float32_alignment(reps: torch.Tensor) -> torch.Tensor:
    """The rejected formula: ``d² = G_aa + G_bb − 2G_ab`` from a float32 Gram of the normalised (uncentred) views."""
    u = F.normalize(reps.float(), dim=-1)
    gram = u @ u.transpose(1, 2)
    k = reps.shape[1]
    i, j = torch.triu_indices(k, k, 1)
    sq = gram.diagonal(dim1=-2, dim2=-1)
    return (sq[:, i] + sq[:, j] - 2 * gram[:, i, j]).clamp_min(0).sqrt().double().mean(dim=-1)


@pytest.mark.parametrize("eps", [1e-4, 1e-5])
def test_the_uncentred_float32_gram_misses_the_bound_the_centred_one_keeps(eps):
    """Why the centring: on near-identical views the uncentred float32 formula is ~1e-4 off, 100x the bound."""
    gen = torch.Generator().manual_seed(7)
    reps = torch.randn(4, 1, 4096, generator=gen) + eps * torch.randn(4, 8, 4096, generator=gen)
    exact = exact_alignment(reps)
    assert not flagged(reps).any()  # the float32 centred path itself, not the float64 fallback
    assert (fast_alignment(reps) - exact).abs().max() <= BOUND
    assert (uncentred_float32_alignment(reps) - exact).abs().max() > 100 * BOUND
