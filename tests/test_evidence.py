"""Evidence: intervals, tests and their nulls (functional level, then through measure())."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lightning_memloc import measure
from lightning_memloc.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.functional.evidence import (
    bootstrap_difference_interval,
    bootstrap_indices,
    bootstrap_mean_interval,
    bootstrap_topk_interval,
    holm,
    membership_test,
    samples_for_halfwidth,
    standard_error_interval,
    weighted_mean_unitmem,
    welch_greater,
)
from lightning_memloc.functional.unitmem import unitmem
from lightning_memloc.models import TinyMLP

pytestmark = pytest.mark.usefixtures("one_thread")


def test_welch_matches_scipy():
    g = torch.Generator().manual_seed(0)
    for na, nb, shift in ((5, 9, 0.0), (12, 7, 0.8), (30, 30, -0.3)):
        a, b = torch.randn(na, generator=g).double() + shift, torch.randn(nb, generator=g).double() * 2
        t, df, p = welch_greater(a, b)
        ref = stats.ttest_ind(a.numpy(), b.numpy(), equal_var=False, alternative="greater")
        assert t == pytest.approx(ref.statistic, rel=1e-9) and p == pytest.approx(ref.pvalue, rel=1e-9)
    assert math.isnan(welch_greater(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))[2])
    assert welch_greater(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]))[2] == 0.0
    assert welch_greater(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))[2] == 1.0


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.04, 0.5 -> 4·0.01, 3·0.02, max(0.06, 2·0.04), max(0.08, 0.5)
    assert holm([0.04, 0.01, 0.5, 0.02]) == pytest.approx([0.08, 0.04, 0.5, 0.06])
    assert holm([None, 0.2, float("nan")]) == [None, 0.2, None]
    assert holm([0.6, 0.6]) == [1.0, 1.0]


def test_bootstrap_intervals_hand_cases_and_seeding():
    const = torch.full((2, 6), 3.0)
    lo, hi = bootstrap_mean_interval(const, n_boot=50)
    assert lo.tolist() == [3.0, 3.0] and hi.tolist() == [3.0, 3.0]
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bootstrap_mean_interval(x, 200, seed=4)[0], bootstrap_mean_interval(x, 200, seed=4)[0])
    assert not torch.equal(bootstrap_mean_interval(x, 200, seed=4)[0], bootstrap_mean_interval(x, 200, seed=5)[0])
    lo, hi = bootstrap_difference_interval(torch.full((4,), 1.0), torch.full((9,), 0.25), n_boot=30)
    assert float(lo) == float(hi) == 0.75
    # top-1 of a resample of {0, 1, 2} is the max drawn: it is 0 with probability 1/27 = 3.7 %
    # (> 2.5 %), so the 95 % interval is [0, 2]; least-1 (the min) is 2 with 3.7 %: also [0, 2]
    scores = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    t_lo, t_hi, l_lo, l_hi = bootstrap_topk_interval(scores, 1, n_boot=4000)
    assert t_lo.tolist() == [0.0, 0.0] and t_hi.tolist() == [2.0, 2.0]
    assert l_lo.tolist() == [0.0, 0.0] and l_hi.tolist() == [2.0, 2.0]
    # with 90 % the 5 % quantile of the max is 1 (P(max = 0) = 3.7 % < 5 %)
    assert bootstrap_topk_interval(scores, 1, n_boot=4000, level=0.9)[0].tolist() == [1.0, 1.0]
    assert bootstrap_indices(5, 7, 0).max() < 5
    assert samples_for_halfwidth(50, 0.01, 0.02) == 50 and samples_for_halfwidth(10, 0.1, 0.05) == 40


def test_weighted_unitmem_equals_explicit_multisets():
    g = torch.Generator().manual_seed(2)
    mu = torch.rand(7, 5, generator=g).double()
    mu[:, 4] = 0.0  # a dead unit scores 0
    idx = bootstrap_indices(7, 20, seed=3)
    weights = torch.zeros(20, 7, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    got = weighted_mean_unitmem(mu, weights, chunk=6)
    expected = torch.stack([unitmem(mu[row]).mean() for row in idx])
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="at least 2"):
        weighted_mean_unitmem(mu, torch.eye(7, dtype=torch.float64)[:1])


def test_membership_hand_computed_and_dead_units_excluded():
    mu = torch.tensor([[5.0, 0.0, 4.0, 0.0], [0.0, 5.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    out = membership_test(mu, torch.tensor([True, True, False, False]), n_perm=500)
    # 3 alive units (the 4th is dead), all won by seen images; only 1 of the 6 labelings puts
    # both winners (images 0 and 1) in the seen pair: p ≈ 1/6
    assert (out["fraction"], out["chance"], out["alive"], out["winners"]) == (1.0, 0.5, 3, 2)
    assert out["p"] == pytest.approx(1 / 6, abs=0.05)
    assert math.isnan(membership_test(torch.zeros(3, 2), torch.tensor([True, False, False]))["p"])


def test_null_false_positive_rate_is_controlled():
    """f and g identically distributed: candidates, control and unseen images all come from one
    distribution (the offset o_l is shared) -> the tests reject at most ~alpha of the time."""
    layers = ["a", "b", "c"]
    rejections = {"excess": 0, "membership": 0, "any_layer_excess": 0, "unit_mem_excess": 0}
    seeds = 60
    for seed in range(seeds):
        g = torch.Generator().manual_seed(1000 + seed)
        offset = {layer: 0.3 * i for i, layer in enumerate(layers)}
        raw = lambda n: {layer: offset[layer] + torch.randn(n, generator=g) for layer in layers}  # noqa: E731
        mu = lambda n: {layer: torch.exp(torch.randn(n, 12, generator=g)) for layer in layers}  # noqa: E731
        ev = compute_evidence(layers, unit_means=mu(20), sslmem_raw=raw(20), control_raw=raw(20), unseen_raw=raw(20),
                              unseen_unit_means=mu(20), top_k=5, options=EvidenceOptions(bootstrap=200, seed=seed))
        rejections["excess"] += ev.layers["a"]["excess_p"] < 0.05
        rejections["membership"] += ev.layers["a"]["membership_p"] < 0.05
        rejections["unit_mem_excess"] += ev.layers["a"]["unit_mem_excess_p"] < 0.05
        rejections["any_layer_excess"] += bool(ev.significant_layers("excess"))
    for name, count in rejections.items():
        assert count / seeds <= 0.10, (name, count)


def test_positive_effects_are_found():
    layers = ["a", "b"]
    g = torch.Generator().manual_seed(0)
    n = 30
    # candidates memorized more with depth; control at the shared offset
    raw = {"a": 0.1 + 0.2 * torch.randn(n, generator=g), "b": 0.8 + 0.2 * torch.randn(n, generator=g)}
    control = {"a": 0.1 + 0.2 * torch.randn(n, generator=g), "b": 0.1 + 0.2 * torch.randn(n, generator=g)}
    # units tuned to single candidates: unit u fires 5 on candidate u, ~0.1 elsewhere
    mu_c = 0.1 * torch.rand(n, 16, generator=g)
    mu_c[torch.arange(16), torch.arange(16)] = 5.0
    mu_u = 0.1 * torch.rand(n, 16, generator=g)
    ev = compute_evidence(layers, unit_means={k: mu_c for k in layers}, sslmem_raw=raw, control_raw=control,
                          unseen_unit_means={k: mu_u for k in layers}, top_k=5, options=EvidenceOptions(bootstrap=500))
    assert ev.significant_layers("excess") == ["b"]
    assert ev.layers["b"]["excess_lo"] > 0 and ev.layers["a"]["excess_lo"] < 0 < ev.layers["a"]["excess_hi"]
    rec = ev.layers["a"]
    assert rec["membership"] == 1.0 and rec["membership_chance"] == 0.5 and rec["membership_p"] < 0.01
    assert rec["unit_mem_seen"] > rec["unit_mem_unseen"] and rec["unit_mem_excess_p"] < 0.01
    assert ev.meta["significant"]["membership"] == ["a", "b"]


def test_bootstrap_coverage_within_tolerance():
    """95% intervals cover the true value 90-99% of the time (200 synthetic draws)."""
    g = torch.Generator().manual_seed(7)
    hits = 0
    reps = 200
    for r in range(reps):
        x = 0.4 + torch.randn(1, 40, generator=g) * 0.3  # true mean 0.4
        lo, hi = bootstrap_mean_interval(x, n_boot=300, seed=r)
        hits += float(lo) <= 0.4 <= float(hi)
    assert 0.90 <= hits / reps <= 0.99


def test_unitmem_interval_coverage_within_tolerance():
    """Mean UnitMem (a max statistic): the standard-error interval covers the mean over fresh
    candidate sets 85-99% of the time (its percentile interval would cover ~5%)."""
    n, u = 30, 8
    g = torch.Generator().manual_seed(11)
    draw = lambda: torch.exp(0.7 * torch.randn(n, u, generator=g)).double()  # noqa: E731
    truth = float(torch.stack([unitmem(draw()).mean() for _ in range(1500)]).mean())
    hits, reps = 0, 120
    for r in range(reps):
        mu = draw()
        idx = bootstrap_indices(n, 300, r)
        w = torch.zeros(300, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        lo, hi = standard_error_interval(weighted_mean_unitmem(mu, w), float(unitmem(mu).mean()))
        hits += lo <= truth <= hi
    assert 0.85 <= hits / reps <= 0.99


def test_tests_do_not_depend_on_the_scale():
    layers = ["a"]
    g = torch.Generator().manual_seed(5)
    raw, control = torch.randn(15, generator=g).double() + 0.5, torch.randn(12, generator=g).double()
    mu = {"a": torch.rand(15, 4, generator=g)}
    one = compute_evidence(layers, unit_means=mu, sslmem_raw={"a": raw}, control_raw={"a": control},
                           options=EvidenceOptions(bootstrap=200))
    ten = compute_evidence(layers, unit_means=mu, sslmem_raw={"a": 10 * raw}, control_raw={"a": 10 * control},
                           options=EvidenceOptions(bootstrap=200))
    for key in ("excess", "excess_p", "layer_mem", "control_layer_mem", "excess_lo"):
        assert one.layers["a"][key] == pytest.approx(ten.layers["a"][key], rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------- through measure()
def _models():
    torch.manual_seed(0)
    return TinyMLP(12, hidden=(10, 6)), TinyMLP(12, hidden=(10, 6))


def test_candidates_figures_unchanged_by_control_and_unseen():
    f, g = _models()
    x = torch.rand(16, 3, 2, 2)
    views = torch.rand(16, 3, 12)  # precomputed (N, K, D) feature views
    alone = measure(f, views[:8], reference=g, views=3, bootstrap=200)
    pooled = measure(f, views[:8], reference=g, views=3, control=views[8:12], unseen=views[12:], bootstrap=200)
    assert alone.allclose(pooled, atol=1e-6)
    assert x.shape[0] == 16
    assert pooled.meta["num_control"] == 4 and pooled.meta["num_unseen"] == 4
    assert pooled.evidence.meta["groups"] == {"candidates": 8, "control": 4, "unseen": 4}


def test_control_sslmem_equals_a_separate_measurement_on_the_candidates_scale():
    f, g = _models()
    views = torch.rand(14, 4, 12, generator=torch.Generator().manual_seed(3))
    pooled = measure(f, views[:8], reference=g, views=4, control=views[8:], bootstrap=200, batch_size=3)
    separate = measure(f, views[8:], reference=g, views=4, bootstrap=0)
    for layer in pooled.layers:
        raw = pooled.sslmem_raw[layer]
        scale = float(raw.max() - raw.min())
        got = torch.tensor(pooled.evidence.group_sslmem["control"][layer]) * scale
        torch.testing.assert_close(got, separate.sslmem_raw[layer], atol=1e-5, rtol=1e-5)


def test_evidence_invariant_to_batch_size_and_reproducible():
    f, g = _models()
    views = torch.rand(18, 3, 12, generator=torch.Generator().manual_seed(4))
    kw = dict(reference=g, views=3, control=views[8:13], unseen=views[13:], bootstrap=200)
    a = measure(f, views[:8], batch_size=2, **kw).evidence
    b = measure(f, views[:8], batch_size=18, **kw).evidence
    for layer in a.layers:
        for key, value in a.layers[layer].items():
            other = b.layers[layer][key]
            assert (value is None and other is None) or value == pytest.approx(other, abs=1e-5), (layer, key)


def test_group_validation_errors_before_any_work():
    f, g = _models()
    views = torch.rand(6, 3, 12)
    with pytest.raises(ValueError, match="`control`.*needs `reference`"):
        measure(f, views, control=views)
    with pytest.raises(ValueError, match="`unseen` needs at least 2"):
        measure(f, views, unseen=views[:1])
    with pytest.raises(TypeError, match="`control` must be"):
        measure(f, views, reference=g, control=np.zeros((3, 3, 12)))
    with pytest.raises(ValueError, match="precomputed views"):
        measure(f, views, reference=g, control=torch.rand(4, 3, 13))
    with pytest.raises(ValueError, match="`bootstrap` must be"):
        measure(f, views, bootstrap=-1)


class _Tuned(nn.Module):
    """Unit u fires for images close to template u: a synthetic encoder that memorized the templates."""

    def __init__(self, templates: torch.Tensor) -> None:
        super().__init__()
        t = templates.reshape(templates.shape[0], -1)
        self.fc = nn.Linear(t.shape[1], t.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(t / t.norm(dim=1, keepdim=True))
            self.fc.bias.copy_(-0.9 * t.norm(dim=1))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x.reshape(x.shape[0], -1)))


def test_tuned_units_give_membership_near_one_through_measure():
    g = torch.Generator().manual_seed(9)
    seen, unseen = torch.randn(12, 32, generator=g), torch.randn(12, 32, generator=g)
    views = lambda x: x[:, None] + 0.05 * torch.randn(x.shape[0], 4, 32, generator=g)  # noqa: E731
    report = measure(_Tuned(seen), views(seen), views=4, layers=["act"], unseen=views(unseen), bootstrap=500)
    rec = report.evidence.layers["act"]
    assert rec["membership"] == 1.0 and rec["membership_p"] < 0.01
    assert report.evidence.significant_layers("membership") == ["act"]
    assert "1 of 1 layers" in report.summary_table()
