"""The two-sample test every evidence family uses, its matching bound and the bootstrap-t interval
(issue 29, items 2 and 6): checked against scipy, exact enumeration and simulated nulls."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lightning_memloc.functional.evidence import percentile_interval, weighted_mean_unitmem
from lightning_memloc.functional.two_sample import (bootstrap_t_interval, permutation_lower_bound,
                                                    studentized_permutation_test)
from lightning_memloc.functional.unitmem import unitmem

pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """Slow reference: the studentized permutation p over every split of the pooled values."""
    pooled = torch.cat([a, b]).double()
    t_obs = stats.ttest_ind(a.numpy(), b.numpy(), equal_var=False).statistic
    hits = total = 0
    for picked in itertools.combinations(range(len(pooled)), len(a)):
        mask = torch.zeros(len(pooled), dtype=torch.bool)
        mask[list(picked)] = True
        t = stats.ttest_ind(pooled[mask].numpy(), pooled[~mask].numpy(), equal_var=False).statistic
        hits += t >= t_obs - 1e-9
        total += 1
    return hits / total


def test_statistic_is_welch_and_p_matches_exact_enumeration():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, generator=g).double() + 0.8, torch.randn(4, generator=g).double() * 2
    out = studentized_permutation_test(a, b, n_perm=20000, seed=1)
    ref = stats.ttest_ind(a.numpy(), b.numpy(), equal_var=False)
    assert float(out["t"]) == pytest.approx(ref.statistic, rel=1e-10)
    assert float(out["estimate"]) == pytest.approx(float(a.mean() - b.mean()), rel=1e-12)
    assert float(out["p"]) == pytest.approx(_exact_p(a, b), abs=0.01)  # 126 splits; MC error of 20,000 draws
    assert out["null"].shape == (20000,)


def test_rows_are_independent_tests_sharing_permutations_and_nan_rows_stay_nan():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 12, generator=g).double(), torch.randn(3, 9, generator=g).double()
    a[1, 4] = math.nan
    rows = studentized_permutation_test(a, b, 300, seed=5)
    for i in (0, 2):
        one = studentized_permutation_test(a[i], b[i], 300, seed=5)
        assert float(rows["p"][i]) == float(one["p"]) and float(rows["t"][i]) == pytest.approx(float(one["t"]))
    assert math.isnan(float(rows["p"][1])) and math.isnan(float(rows["estimate"][1]))
    # scale-free: multiplying both groups by 10 changes neither t nor p
    ten = studentized_permutation_test(10 * a, 10 * b, 300, seed=5)
    torch.testing.assert_close(ten["p"], rows["p"], equal_nan=True)
    with pytest.raises(ValueError, match=">= 2 values per group"):
        studentized_permutation_test(a, b[:, :1])


def test_holds_alpha_on_skewed_unequal_groups_where_welch_does_not():
    """Lognormal values, 80 candidates vs 10 control drawn from one distribution: Welch's t rejected
    15 % of these true nulls (issue 29); the studentized permutation test stays at alpha."""
    g = torch.Generator().manual_seed(3)
    trials = 3000
    a = torch.exp(torch.randn(trials, 80, generator=g, dtype=torch.float64))
    b = torch.exp(torch.randn(trials, 10, generator=g, dtype=torch.float64))
    p = studentized_permutation_test(a, b, 400, seed=4)["p"]
    welch = stats.ttest_ind(a.numpy(), b.numpy(), axis=1, equal_var=False, alternative="greater").pvalue
    se = math.sqrt(0.05 * 0.95 / trials)
    assert float((p <= 0.05).double().mean()) <= 0.05 + 3 * se
    assert float((welch <= 0.05).mean()) > 0.10  # the design does break Welch


def test_uniform_p_values_under_exchangeability():
    g = torch.Generator().manual_seed(6)
    p = studentized_permutation_test(torch.randn(4000, 7, generator=g), torch.randn(4000, 30, generator=g), 400)["p"]
    for level in (0.01, 0.1, 0.5):  # P(p <= level) ≈ level (discreteness 1/401)
        assert float((p <= level).double().mean()) == pytest.approx(level, abs=4 * math.sqrt(level / 4000) + 0.003)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 30), st.integers(2, 30), st.floats(-2.0, 2.0), st.sampled_from([0.05, 0.01, 0.05 / 8]),
       st.integers(0, 1000))
def test_bound_is_positive_exactly_when_the_test_rejects(na, nb, shift, level, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, na, generator=g, dtype=torch.float64) + shift
    b = torch.exp(torch.randn(4, nb, generator=g, dtype=torch.float64))
    out = studentized_permutation_test(a, b, 399, seed=seed)
    bound = permutation_lower_bound(out["estimate"], out["se"], out["null"], level)
    assert torch.equal(bound > 0, out["p"] <= level + 1e-12)


def test_bound_hand_computed_and_unreachable_levels():
    null = torch.arange(19.0)[:, None]  # 0 .. 18; B + 1 = 20
    # level 0.1: k = 2 - 1 = 1, the 2nd largest null value 17 is the critical value
    assert permutation_lower_bound(torch.tensor([20.0]), torch.tensor([2.0]), null, 0.1).item() == 20.0 - 17.0 * 2.0
    assert permutation_lower_bound(torch.tensor([20.0]), torch.tensor([1.0]), null, 0.04).item() == -math.inf  # 0.04·20 < 1


def test_bootstrap_t_interval_covers_skewed_means_better_than_percentile():
    g = torch.Generator().manual_seed(7)
    reps, n = 600, 20
    x = torch.exp(torch.randn(reps, n, generator=g, dtype=torch.float64))
    truth = math.exp(0.5)
    lo, hi = bootstrap_t_interval(x, None, 1000, 0.95, seed=1)
    t_cover = float(((lo <= truth) & (truth <= hi)).double().mean())
    idx = torch.randint(0, n, (1000, n), generator=g)
    p_lo, p_hi = percentile_interval(x[:, idx].mean(-1).T, 0.95)
    p_cover = float(((p_lo <= truth) & (truth <= p_hi)).double().mean())
    assert t_cover > p_cover + 0.03 and t_cover >= 0.89
    c_lo, c_hi = bootstrap_t_interval(torch.full((2, 6), 3.0), torch.full((2, 4), 1.0), 300)
    assert c_lo.tolist() == c_hi.tolist() == [2.0, 2.0]  # constant groups: [est, est]


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 9), st.integers(1, 6), st.integers(0, 10_000), st.booleans())
def test_weighted_unitmem_matches_explicit_multisets(n, u, seed, masks):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(n, u, generator=g, dtype=torch.float64).round(decimals=1)  # ties and zeros happen
    mu[:, 0] = 0.0  # a dead unit
    if masks:  # 0/1 subsets, as the permutation nulls use
        weights = (torch.rand(6, n, generator=g) < 0.6).double()
        weights[:, :2] = 1.0
    else:  # bootstrap counts
        weights = torch.zeros(6, n, dtype=torch.float64).scatter_add_(
            1, torch.randint(0, n, (6, n), generator=g), torch.ones(6, n, dtype=torch.float64))
        weights[weights.sum(1) < 2, 0] += 2
    expected = torch.stack([unitmem(mu.repeat_interleave(row.long(), dim=0)).mean() for row in weights])
    torch.testing.assert_close(weighted_mean_unitmem(mu, weights, chunk=4), expected)
