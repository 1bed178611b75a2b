"""UnitMem's resampled evidence, batched: equal to the per-resample loop it replaced, for the same draws.

``median_unitmem_resamples`` sorts the draws of many resamples at once (the former code drew and
scored each resample in a Python loop); ``weighted_mean_unitmem`` and the unit evidence run on
the device of the mean activations. Same seed, same draws (taken on the CPU), same figures.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_memloc.report.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.functional.statistics import bootstrap_indices, weighted_mean_unitmem
from lightning_memloc.functional.unitmem import unitmem
from lightning_memloc.report.unit_evidence import median_unitmem_resamples


def loop_resamples(mu: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """The former implementation: each multiset drawn explicitly and scored by ``unitmem``."""
    positions = torch.arange(mu.shape[0])
    out = [float(unitmem(mu[positions.repeat_interleave(row.long())].double(), reduction=reduction, negative="clamp").mean())
           for row in weights]
    return torch.tensor(out, dtype=torch.float64)


def counts(index: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(index.shape[0], n, dtype=torch.float64).scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(1, 6), st.integers(1, 30), st.integers(0, 2**31 - 1), st.booleans(),
       st.sampled_from([1 << 24, 7]))
def test_median_resamples_equal_the_loop(n, u, b, seed, ties, max_elements):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.rand(n, u, generator=gen, dtype=torch.float64)
    if ties:  # repeated values, zero (dead) units: the median's and the dead-unit branches
        mu = (mu * 3).floor()
        mu[:, 0] = 0
    weights = counts(bootstrap_indices(n, b, seed), n)
    got = median_unitmem_resamples(mu, weights, max_elements=max_elements)  # 7: one resample per step
    assert torch.equal(got, loop_resamples(mu, weights, "median"))
    mean = weighted_mean_unitmem(mu, weights, chunk=max(1, max_elements // 1000))  # also several chunks
    torch.testing.assert_close(mean, loop_resamples(mu, weights, "mean"), rtol=0, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(st.integers(2, 10), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_subset_masks_equal_the_loop(size, u, seed):
    """The permutation null's 0/1 masks (each row ``size`` of ``2·size`` images), both reductions."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.rand(2 * size, u, generator=gen, dtype=torch.float64)
    perms = torch.argsort(torch.rand(25, 2 * size, generator=gen), dim=1)
    first = torch.zeros(25, 2 * size, dtype=torch.float64).scatter_(1, perms[:, :size], 1.0)
    for mask in (first, 1.0 - first):
        if size >= 2:
            assert torch.equal(median_unitmem_resamples(mu, mask), loop_resamples(mu, mask, "median"))
            torch.testing.assert_close(weighted_mean_unitmem(mu, mask), loop_resamples(mu, mask, "mean"), rtol=0, atol=1e-12)


def test_unequal_or_too_small_multisets_are_refused():
    mu = torch.rand(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="same number of draws"):
        median_unitmem_resamples(mu, torch.tensor([[1, 1, 1, 1], [2, 0, 0, 0]]))
    with pytest.raises(ValueError, match="at least 2"):
        median_unitmem_resamples(mu, torch.tensor([[1, 0, 0, 0]]))


def test_median_evidence_equals_the_loop_end_to_end(monkeypatch):
    """A whole report's UnitMem evidence (interval, seen − unseen, permutation p) with the loop swapped back in."""
    gen = torch.Generator().manual_seed(3)
    layers = ["a", "b"]
    mu = {layer: torch.rand(14, 5, generator=gen) for layer in layers}
    mu_u = {layer: torch.rand(12, 5, generator=gen) for layer in layers}
    kwargs = dict(unit_means=mu, unseen_unit_means=mu_u, reduction="median", options=EvidenceOptions(bootstrap=200))
    batched = compute_evidence(layers, **kwargs)
    import lightning_memloc.report.unit_evidence as module

    monkeypatch.setattr(module, "median_unitmem_resamples", lambda m, w: loop_resamples(m, w, "median"))
    looped = compute_evidence(layers, **kwargs)
    assert batched.to_dict() == looped.to_dict()
    assert batched.layers["a"]["unit_mem_mean_lo"] is not None and batched.layers["a"]["unit_mem_excess_p"] is not None
