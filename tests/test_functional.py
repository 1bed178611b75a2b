"""Tests of the functional core: hand-computed cases, slow references, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_memloc.errors import NonFiniteActivationError
from lightning_memloc.functional import (
    alignment,
    apply_negative_policy,
    class_means,
    classmem,
    dead_units,
    delta_layermem,
    layermem,
    sslmem,
    top_least_indices,
    unit_argmax,
    unitmem,
)
from helpers import slow_alignment, slow_unitmem  # the slow references


# --------------------------------------------------------------------------- unitmem


def test_unitmem_hand_computed_mean():
    mu = torch.tensor([[3.0, 0.0], [1.0, 2.0], [2.0, 2.0]])
    # unit 0: max 3, rest mean (1 + 2) / 2 = 1.5 -> 1.5 / 4.5; unit 1: max 2, rest (0 + 2) / 2 = 1 -> 1 / 3
    torch.testing.assert_close(unitmem(mu), torch.tensor([1 / 3, 1 / 3]))
    assert unit_argmax(mu).tolist() == [0, 1]  # ties: first position
    assert dead_units(mu).tolist() == [False, False]


def test_unitmem_hand_computed_median_odd_and_even():
    odd = torch.tensor([[9.0], [1.0], [2.0], [6.0]])  # others [1, 2, 6]: median 2, mean 3
    torch.testing.assert_close(unitmem(odd, reduction="median"), torch.tensor([7 / 11]))
    torch.testing.assert_close(unitmem(odd, reduction="mean"), torch.tensor([6 / 12]))
    even = torch.tensor([[10.0], [1.0], [2.0], [6.0], [9.0]])  # others [1, 2, 6, 9]: median 4, mean 4.5
    torch.testing.assert_close(unitmem(even, reduction="median"), torch.tensor([6 / 14]))
    torch.testing.assert_close(unitmem(even, reduction="mean"), torch.tensor([5.5 / 14.5]))


def test_unitmem_two_candidates():
    mu = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(unitmem(mu), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(unitmem(mu, reduction="median"), torch.tensor([0.5, 0.0]))


@pytest.mark.parametrize("n", [2, 3, 6, 7])
@pytest.mark.parametrize("reduction", ["mean", "median"])
def test_unitmem_matches_numpy_reference(n, reduction):
    torch.manual_seed(n)
    mu = torch.rand(n, 9, dtype=torch.float64)
    mu[:, 0] = 0.5  # a constant unit (all ties)
    mu[1, 1] = mu[0, 1] = 2.0  # a tied maximum
    expected = slow_unitmem(mu.numpy(), reduction)
    np.testing.assert_allclose(unitmem(mu, reduction=reduction).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_dead_units_score_zero_and_are_counted():
    mu = torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, -2.0], [0.0, 3.0, -0.5]])
    for reduction in ("mean", "median"):
        score = unitmem(mu, reduction=reduction)
        assert score[0] == 0 and score[2] == 0 and not torch.isnan(score).any()
    dead = dead_units(mu)
    assert dead.tolist() == [True, False, True]  # an all-negative unit is dead after clamping
    assert int(dead.sum()) == 2


def test_negative_policies_hand_computed():
    mu = torch.tensor([[-1.0, 2.0], [1.0, -2.0], [3.0, 0.0]])
    torch.testing.assert_close(apply_negative_policy(mu, "clamp"), torch.tensor([[0.0, 2.0], [1.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(apply_negative_policy(mu, "shift"), torch.tensor([[0.0, 4.0], [2.0, 0.0], [4.0, 2.0]]))
    # clamp: unit 0 max 3, rest (0 + 1) / 2 -> 2.5 / 3.5; unit 1 max 2, rest 0 -> 1
    torch.testing.assert_close(unitmem(mu, negative="clamp"), torch.tensor([5 / 7, 1.0]))
    # shift: unit 0 max 4, rest (0 + 2) / 2 = 1 -> 3 / 5; unit 1 max 4, rest 1 -> 3 / 5
    torch.testing.assert_close(unitmem(mu, negative="shift"), torch.tensor([0.6, 0.6]))
    with pytest.raises(ValueError, match="negative='error'"):
        unitmem(mu, negative="error")
    ok = torch.tensor([[1.0], [0.0]])
    torch.testing.assert_close(unitmem(ok, negative="error"), torch.tensor([1.0]))
    mu_before = mu.clone()
    apply_negative_policy(mu, "clamp")
    assert torch.equal(mu, mu_before)  # input untouched


@pytest.mark.parametrize("negative", ["clamp", "shift"])
@pytest.mark.parametrize("reduction", ["mean", "median"])
def test_gelu_like_data_gives_scores_in_unit_interval(negative, reduction):
    torch.manual_seed(0)
    mu = torch.nn.functional.gelu(torch.randn(11, 64) - 1.0)  # many negative means
    mu[:, :3] = torch.nn.functional.gelu(-torch.rand(11, 3))  # all-negative units
    assert (mu < 0).any()
    score = unitmem(mu, reduction=reduction, negative=negative)
    assert score.shape == (64,)
    assert torch.isfinite(score).all() and (score >= 0).all() and (score <= 1).all()
    with pytest.raises(ValueError):
        unitmem(mu, reduction=reduction, negative="error")


def test_scores_in_range_with_nearly_equal_values():
    mu = torch.full((5, 3), 0.1) + torch.tensor([0.0, 1e-9, 0.0])
    score = unitmem(mu)
    assert (score >= 0).all() and (score <= 1).all()


def test_unitmem_dtype_and_integer_input():
    mu = torch.tensor([[3.0, 0.0], [1.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    assert unitmem(mu).dtype == torch.float64
    torch.testing.assert_close(unitmem(torch.tensor([[3, 1], [1, 1]])), torch.tensor([0.5, 0.0]))


def test_unitmem_validation():
    with pytest.raises(ValueError, match="N = 1"):
        unitmem(torch.ones(1, 4))
    with pytest.raises(ValueError, match="mean_activations.*2 dimension"):
        unitmem(torch.ones(4))
    with pytest.raises(TypeError, match="mean_activations"):
        unitmem([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reduction.*'mean', 'median'"):
        unitmem(torch.ones(3, 2), reduction="max")
    with pytest.raises(ValueError, match=r"negative.*'clamp', 'shift', 'error'"):
        unitmem(torch.ones(3, 2), negative="relu")
    for bad in (float("nan"), float("inf")):
        mu = torch.ones(3, 2)
        mu[1, 1] = bad
        with pytest.raises(NonFiniteActivationError, match="NaN/inf"):
            unitmem(mu)
        with pytest.raises(ValueError):
            apply_negative_policy(mu)


# --------------------------------------------------------------------------- classmem


def test_class_means_and_classmem_hand_computed():
    mu = torch.tensor([[4.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    means, classes = class_means(mu, torch.tensor([3, 3, 1]))
    torch.testing.assert_close(means, torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
    assert classes.tolist() == [1, 3]
    # class 3 mean 3, class 1 mean 1 -> (3 - 1) / (3 + 1); unit 1 constant -> 0
    torch.testing.assert_close(classmem(mu, torch.tensor([3, 3, 1])), torch.tensor([0.5, 0.0]))


def test_classmem_matches_unitmem_on_class_means():
    torch.manual_seed(1)
    mu = torch.rand(20, 7)
    labels = torch.randint(0, 4, (20,))
    means, _ = class_means(mu, labels)
    for reduction in ("mean", "median"):
        torch.testing.assert_close(classmem(mu, labels, reduction=reduction), unitmem(means, reduction=reduction))


def test_classmem_validation():
    mu = torch.rand(4, 3)
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        classmem(mu, torch.tensor([2, 2, 2, 2]))
    with pytest.raises(ValueError, match=r"labels.*\(4,\)"):
        classmem(mu, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="labels.*>= 0"):
        classmem(mu, torch.tensor([0, 1, -1, 1]))
    with pytest.raises(TypeError, match="labels"):
        classmem(mu, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="reduction"):
        classmem(mu, torch.tensor([0, 1, 1, 0]), reduction="avg")


# --------------------------------------------------------------------------- alignment


def test_alignment_hand_computed():
    reps = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], [[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]]])
    # candidate 0: pairs sqrt(2), 0, sqrt(2); candidate 1: identical directions
    torch.testing.assert_close(alignment(reps), torch.tensor([2 * math.sqrt(2) / 3, 0.0]))
    anchor = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    # candidate 0 vs (1, 0): 0, sqrt(2), 0; candidate 1: angle 45 deg -> sqrt(2 - sqrt(2)) each
    expected = torch.tensor([math.sqrt(2) / 3, math.sqrt(2 - math.sqrt(2))])
    torch.testing.assert_close(alignment(reps, anchor=anchor), expected)


def test_alignment_matches_float64_double_loop():
    torch.manual_seed(2)
    reps = torch.randn(4, 5, 300)
    anchor = torch.randn(4, 300)
    assert (alignment(reps).double() - slow_alignment(reps)).abs().max() < 1e-6
    assert (alignment(reps, anchor).double() - slow_alignment(reps, anchor)).abs().max() < 1e-6
    torch.testing.assert_close(alignment(3.0 * reps), alignment(reps))  # scale invariant


def test_alignment_accurate_for_nearly_identical_views():
    torch.manual_seed(3)
    base = torch.randn(3, 1, 4096)
    reps = base + 1e-4 * torch.randn(3, 6, 4096)  # distances ~1.4e-4
    exact = slow_alignment(reps)
    err = (alignment(reps).double() - exact).abs().max()
    assert err < 1e-6 and float(exact.min()) > 1e-5
    # the Gram trick in float32 would be off by ~1e-3 here
    r = torch.nn.functional.normalize(reps, dim=-1)
    sq = r.pow(2).sum(-1)
    gram = (sq[:, :, None] + sq[:, None, :] - 2 * r @ r.transpose(1, 2)).clamp(min=0).sqrt()
    iu = torch.triu_indices(6, 6, 1)
    assert (gram[:, iu[0], iu[1]].mean(-1).double() - exact).abs().max() > 10 * err


def test_alignment_dtypes():
    torch.manual_seed(4)
    reps = torch.randn(2, 3, 8)
    assert alignment(reps.double()).dtype == torch.float64
    assert alignment(reps.half()).dtype == torch.float32
    torch.testing.assert_close(alignment(reps.double()), slow_alignment(reps), atol=1e-12, rtol=0)


def test_alignment_validation():
    with pytest.raises(ValueError, match="K >= 2"):
        alignment(torch.randn(3, 1, 5))
    torch.testing.assert_close(
        alignment(torch.tensor([[[1.0, 0.0]]]), anchor=torch.tensor([[0.0, 1.0]])), torch.tensor([math.sqrt(2)])
    )
    with pytest.raises(ValueError, match="representations.*3 dimension"):
        alignment(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"anchor.*\(3, 5\)"):
        alignment(torch.randn(3, 2, 5), anchor=torch.randn(3, 4))
    reps = torch.randn(2, 2, 3)
    reps[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="representations"):
        alignment(reps)


# --------------------------------------------------------------------------- sslmem / layermem


def test_sslmem_hand_computed():
    g = torch.tensor([1.0, 1.0, 0.5, 0.8])
    f = torch.tensor([0.5, 1.0, 0.5, 1.0])
    # m = [0.5, 0, 0, -0.2]; range 0.7
    torch.testing.assert_close(sslmem(g, f, normalize=False), torch.tensor([0.5, 0.0, 0.0, -0.2]))
    torch.testing.assert_close(sslmem(g, f), torch.tensor([0.5, 0.0, 0.0, -0.2]) / 0.7)


def test_sslmem_zero_range_is_zero_not_nan():
    out = sslmem(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.5, 0.5, 0.5]))
    assert torch.equal(out, torch.zeros(3))
    out = sslmem(torch.tensor([0.7]), torch.tensor([0.2]))
    assert torch.equal(out, torch.zeros(1))


def test_sslmem_per_layer_range():
    g = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    f = torch.zeros(2, 3)
    torch.testing.assert_close(sslmem(g, f), torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="same shape"):
        sslmem(torch.zeros(3), torch.zeros(4))


def test_layermem_and_delta_hand_computed():
    s = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.4, 0.9], [0.3, 0.3, 0.3]])
    lm = layermem(s)
    torch.testing.assert_close(lm, torch.tensor([0.5, 0.5, 0.3]))
    torch.testing.assert_close(layermem(s, subset=torch.tensor([0, 2])), torch.tensor([0.5, 0.55, 0.3]))
    torch.testing.assert_close(delta_layermem(lm), torch.tensor([0.5, 0.0, -0.2]))
    torch.testing.assert_close(delta_layermem(torch.tensor([0.25])), torch.tensor([0.25]))
    with pytest.raises(ValueError, match="subset"):
        layermem(s, subset=torch.tensor([3]))
    with pytest.raises(ValueError, match="subset"):
        layermem(s, subset=torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="sslmem.*2 dimension"):
        layermem(torch.zeros(3))


def test_top_least_indices_ties_and_k():
    scores = torch.tensor([0.2, 0.9, 0.2, 0.5, 0.9])
    top, least = top_least_indices(scores, 3)
    assert top.tolist() == [1, 4, 3]
    assert least.tolist() == [0, 2, 3]
    top, least = top_least_indices(scores, 50)  # k' = min(k, N)
    assert top.tolist() == [1, 4, 3, 0, 2] and least.tolist() == [0, 2, 3, 1, 4]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`k`"):
            top_least_indices(scores, bad)  # type: ignore[arg-type]
