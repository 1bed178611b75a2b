"""One corrected verdict and evidence that stays calibrated on shifted, tied and broken data
(issue 29, items 1, 3, 4, 5, 6, 7 and 9)."""

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_memloc import MemorizationReport, measure
from lightning_memloc.callbacks.report_source import evidence_problem
from lightning_memloc.callbacks.logging import evidence_scalars
from lightning_memloc.report.evidence import (Evidence, EvidenceOptions, MIN_BOOTSTRAP, VERDICT_TESTS, compute_evidence,
                                              min_bootstrap_for, overall_verdict)
from lightning_memloc.functional.statistics import holm, membership_test
from lightning_memloc.functional.unitmem import unitmem
from lightning_memloc.report.tags import verdict_tag

pytestmark = pytest.mark.usefixtures("one_thread")


def _report(evidence: Evidence, layers) -> MemorizationReport:
    u = 3
    return MemorizationReport(layers=list(layers), layer_kinds={k: "conv" for k in layers}, candidate_ids=torch.arange(4),
                              unit_mem={k: torch.zeros(u) for k in layers},
                              unit_argmax={k: torch.zeros(u, dtype=torch.long) for k in layers},
                              dead_units={k: torch.zeros(u, dtype=torch.bool) for k in layers},
                              sslmem_raw={k: torch.zeros(4) for k in layers}, layer_mem={k: 0.0 for k in layers},
                              delta_layer_mem={k: 0.0 for k in layers}, layer_mem_top={k: 0.0 for k in layers},
                              layer_mem_least={k: 0.0 for k in layers}, evidence=evidence)


def _null_inputs(g, layers, n=20, m=20, u=12):
    raw = lambda k: {layer: 0.3 * i + torch.randn(k, generator=g) for i, layer in enumerate(layers)}  # noqa: E731
    mu = lambda k: {layer: torch.exp(torch.randn(k, u, generator=g)) for layer in layers}  # noqa: E731
    return dict(unit_means=mu(n), sslmem_raw=raw(n), control_raw=raw(m), unseen_raw=raw(m), unseen_unit_means=mu(m))


# ------------------------------------------------------------------------------- item 1: verdict
def test_verdict_is_holm_over_every_test_and_layer():
    records = {"a": {"excess_p": 0.004, "membership_p": 0.3, "unit_mem_excess_p": None},
               "b": {"excess_p": 0.02, "membership_p": float("nan"), "excess_unseen_p": 0.011}}
    v = overall_verdict(records, alpha=0.05, bootstrap=999)
    # the family: excess a, b; excess_unseen b; membership a (None / NaN: not tested). Holm by hand:
    # sorted 0.004, 0.011, 0.02, 0.3 -> 4·0.004, 3·0.011, 2·0.02, max(0.04, 0.3)
    assert records["a"]["excess_p_holm"] == pytest.approx(0.016) and records["b"]["excess_p_holm"] == pytest.approx(0.04)
    assert records["b"]["excess_unseen_p_holm"] == pytest.approx(0.033) and records["a"]["membership_p_holm"] == 0.3
    assert records["a"]["unit_mem_excess_p_holm"] is None and records["b"]["membership_p_holm"] is None
    assert v["family_size"] == 4 and v["memorization"] is True and v["tests"] == ["excess", "excess_unseen", "membership"]
    assert v["layers"] == {"excess": ["a", "b"], "excess_unseen": ["b"], "membership": []}
    assert v["min_attainable_p_holm"] == pytest.approx(4 / 1000) and v["attainable"] is True
    # the union counts: each 0.02 passes alone, three of them need 3 x 0.02 = 0.06
    assert overall_verdict({"a": {"excess_p": 0.02, "membership_p": 0.02, "excess_unseen_p": 0.02}}, 0.05, 999)[
        "memorization"] is False
    assert overall_verdict({"a": {"excess_p": 0.5}}, 0.05, 999)["memorization"] is False
    assert overall_verdict({"a": {"excess_p": None}}, 0.05, 999)["memorization"] is None
    assert VERDICT_TESTS == ("excess", "excess_unseen", "membership", "unit_mem_excess", "align_gap")


@pytest.mark.slow
def test_verdict_holds_the_family_wise_error_where_the_old_or_did_not():
    """Pure nulls through compute_evidence: the OR of four per-family Holm corrections fires far more
    often than the one verdict, which stays at alpha (within Monte Carlo error)."""
    layers = ["a", "b", "c", "d"]
    trials, verdicts, ors = 80, 0, 0
    for seed in range(trials):
        g = torch.Generator().manual_seed(500 + seed)
        ev = compute_evidence(layers, top_k=5, options=EvidenceOptions(bootstrap=400, seed=seed), **_null_inputs(g, layers))
        verdicts += bool(ev.shows_memorization)
        records = {k: dict(v) for k, v in ev.layers.items()}  # the old rule: each family alone, then OR
        ors += any(p is not None and p < 0.05 for test in VERDICT_TESTS
                   for p in holm([records[k].get(f"{test}_p") for k in layers]))
    assert ev.meta["verdict"]["family_size"] == 16
    assert verdicts / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert ors >= verdicts


def test_verdict_reaches_summary_logs_and_gate():
    layers = ["a", "b"]
    g = torch.Generator().manual_seed(0)
    n = 30
    raw = {"a": torch.randn(n, generator=g), "b": 1.5 + torch.randn(n, generator=g)}
    control = {k: torch.randn(n, generator=g) for k in layers}
    mu = {k: torch.rand(n, 6, generator=g) for k in layers}
    unseen = {k: torch.rand(n, 6, generator=g) for k in layers}
    ev = compute_evidence(layers, unit_means=mu, sslmem_raw=raw, control_raw=control, unseen_unit_means=unseen, top_k=5,
                          options=EvidenceOptions(bootstrap=500))
    assert ev.shows_memorization and ev.meta["verdict"]["layers"]["excess"] == ["b"]
    report = _report(ev, layers)
    text = report.summary_table()
    assert "verdict: MEMORIZATION (Holm over 6 tests" in text and "excess at b" in text
    assert evidence_scalars(report)[verdict_tag()] == 1.0
    assert evidence_problem(report, "excess") is None
    assert "the verdict is positive through excess" in evidence_problem(report, "membership")
    null = compute_evidence(layers, unit_means=mu, sslmem_raw=control, control_raw=raw, top_k=5,
                            options=EvidenceOptions(bootstrap=500))
    assert null.shows_memorization is False and evidence_scalars(_report(null, layers))[verdict_tag()] == 0.0


def test_old_reports_load_unchanged_and_say_they_have_no_verdict():
    layers = ["a", "b"]
    old = {"layers": {"a": {"excess": 0.2, "excess_p": 0.01, "excess_p_holm": 0.02},
                      "b": {"excess": 0.1, "excess_p": 0.02, "excess_p_holm": 0.02}},
           "meta": {"alpha": 0.05, "bootstrap": 1000}}
    ev = Evidence.from_dict(old)
    assert ev.to_dict()["layers"] == old["layers"] and "verdict" not in ev.meta and ev.shows_memorization is None
    assert "verdict: not recorded (a report saved before the overall verdict)" in _report(ev, layers).summary_table()


# --------------------------------------------------------------- item 3: one shift for the pool
def test_shift_uses_one_minimum_for_candidates_and_unseen():
    g = torch.Generator().manual_seed(1)
    raw_c, raw_u = torch.randn(12, 5, generator=g).double(), torch.randn(10, 5, generator=g).double() + 0.5
    ev = compute_evidence(["a"], unit_means={"a": raw_c}, unseen_unit_means={"a": raw_u}, negative="shift",
                          options=EvidenceOptions(bootstrap=300))
    pool = torch.cat([raw_c, raw_u])
    pooled = membership_test(pool - pool.amin(0), torch.arange(22) < 12, n_perm=10)
    assert ev.layers["a"]["membership"] == pytest.approx(pooled["fraction"])
    assert ev.layers["a"]["unit_mem_mean"] == pytest.approx(float(unitmem(raw_c, negative="shift").mean()))


def test_shared_shift_keeps_membership_at_alpha_where_separate_shifts_did_not():
    """60 seen / 20 unseen images, activations that can be negative: shifting each group by its
    own minimum gave a false-positive rate of 0.17 (issue 29); one shift for the pool holds alpha."""
    trials, shared, separate = 300, 0, 0
    seen = torch.arange(80) < 60
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        raw_c, raw_u = torch.randn(60, 64, generator=g), torch.randn(20, 64, generator=g)
        pool = torch.cat([raw_c, raw_u])
        shared += membership_test(pool - pool.amin(0), seen, n_perm=200, seed=seed)["p"] < 0.05
        each = torch.cat([raw_c - raw_c.amin(0), raw_u - raw_u.amin(0)])  # what the meter passed before
        separate += membership_test(each, seen, n_perm=200, seed=seed)["p"] < 0.05
    assert shared / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert separate / trials > 0.10


def test_measure_passes_raw_means_so_the_shift_is_shared():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(8, 5))  # outputs can be negative
    g = torch.Generator().manual_seed(2)
    seen, unseen = torch.randn(10, 3, 8, generator=g), torch.randn(10, 3, 8, generator=g) + 0.3
    report = measure(enc, seen, views=3, layers=["0"], unseen=unseen, negative="shift", bootstrap=200)
    with torch.no_grad():
        means = torch.cat([enc(seen).mean(1), enc(unseen).mean(1)]).double()  # a linear layer: mean of the views
    expected = membership_test(means - means.amin(0), torch.arange(20) < 10, n_perm=10)["fraction"]
    assert report.evidence.layers["0"]["membership"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------- item 4: ties
def test_tied_units_split_their_credit():
    mu = torch.tensor([[2.0, 1.0, 3.0], [2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
    seen = torch.tensor([True, True, False, False])
    out = membership_test(mu, seen, n_perm=50)
    # unit 0: 4 tied images, 2 seen -> 0.5; unit 1: 3 tied, 2 seen -> 2/3; unit 2: images 0 and 3 -> 0.5
    assert out["fraction"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert out["winners"] == 4 and out["alive"] == 3


def test_constant_units_leave_the_share_at_chance_and_the_test_at_alpha():
    trials, hits, shares = 200, 0, []
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        mu = torch.exp(torch.randn(60, 40, generator=g))
        mu[:, :12] = 1.0  # 30 % constant units: the first image (a candidate) won all of them before
        out = membership_test(mu, torch.arange(60) < 30, n_perm=200, seed=seed)
        hits += out["p"] < 0.05
        shares.append(out["fraction"])
    assert abs(sum(shares) / trials - 0.5) < 0.02
    assert hits / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


# ------------------------------------------------------------------- item 5: too few resamples
def test_too_few_resamples_are_refused_and_unreachable_alpha_is_said():
    for bad in (1, 20, MIN_BOOTSTRAP - 1):
        with pytest.raises(ValueError, match=f"at least {MIN_BOOTSTRAP}, got {bad}"):
            EvidenceOptions(bootstrap=bad)
    EvidenceOptions(bootstrap=0)  # off is allowed
    layers = [f"l{i}" for i in range(8)]
    g = torch.Generator().manual_seed(3)
    with pytest.warns(UserWarning, match="smallest attainable Holm p is 0.159 > alpha=0.05: no test can pass.*>= 639"):
        ev = compute_evidence(layers, top_k=5, options=EvidenceOptions(bootstrap=MIN_BOOTSTRAP), **_null_inputs(g, layers))
    v = ev.meta["verdict"]
    assert v["family_size"] == 32 and v["attainable"] is False
    assert v["min_attainable_p_holm"] == pytest.approx(32 / 201) and v["needs_bootstrap"] == min_bootstrap_for(32, 0.05) == 639
    text = _report(ev, layers).summary_table()
    assert "smallest attainable Holm p is 0.159 > 0.05, so no test could pass: use bootstrap >= 639" in text
    assert "candidates > control at 0 of 8 layers — none could pass with bootstrap = 200 (see the verdict)" in text
    assert "not distinguishable" not in text  # a test that cannot pass says nothing about the effect
    assert "no test can reach that level: use bootstrap >= 639" in evidence_problem(_report(ev, layers), "excess")


def test_cli_and_demo_refuse_too_few_resamples_before_any_work(capsys):
    from lightning_memloc.cli.parser import build_parser
    from lightning_memloc.cli.demo import main as demo

    analyze = ["analyze", "--data", "d.npz", "--output-dir", "o", "--bootstrap"]
    for argv, run in ((analyze + ["50"], lambda a: build_parser().parse_args(a)), (["--bootstrap", "50"], demo)):
        with pytest.raises(SystemExit) as exit_info:
            run(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "argument --bootstrap:" in err and ">= 200" in err and "got 50" in err
    assert build_parser().parse_args(analyze + ["0"]).bootstrap == 0
    assert build_parser().parse_args(analyze + ["200"]).bootstrap == 200


# ------------------------------------------------------------------ item 6: bounds match tests
def test_bounds_agree_with_the_verdict_and_intervals_are_labelled():
    layers = ["a", "b", "c"]
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        inputs = _null_inputs(g, layers)
        inputs["sslmem_raw"]["c"] = inputs["sslmem_raw"]["c"] + 0.4 * seed  # some layers pass, some do not
        ev = compute_evidence(layers, top_k=5, options=EvidenceOptions(bootstrap=400, seed=seed), **inputs)
        m = ev.meta["verdict"]["family_size"]
        for layer, rec in ev.layers.items():
            for test in ("excess", "excess_unseen", "unit_mem_excess"):
                bound = rec[f"{test}_lb"]
                assert bound is not None and (bound > 0) == (rec[f"{test}_p"] <= 0.05 / m + 1e-12), (seed, layer, test)
                if bound > 0:
                    assert rec[f"{test}_p_holm"] < 0.05 and layer in ev.significant_layers(test)
    text = _report(ev, layers).summary_table()
    assert "not adjusted for multiple tests" in text and f"one-sided lower bound at 0.05/{m}" in text
    assert "studentized permutation" in ev.meta["tests"]["excess"]


def test_small_groups_warn_and_name_the_group():
    g = torch.Generator().manual_seed(4)
    with pytest.warns(UserWarning, match="`control` has 5 images, fewer than 10.*Pass at least 10 control images"):
        ev = compute_evidence(["a"], unit_means={"a": torch.rand(20, 3, generator=g)}, sslmem_raw={"a": torch.randn(20)},
                              control_raw={"a": torch.randn(5)}, options=EvidenceOptions(bootstrap=200))
    assert any("`control` has 5 images" in w for w in ev.meta["warnings"])


# -------------------------------------------------------------------------- item 7: NaN shows
def test_nan_propagates_with_a_warning_naming_the_layer():
    g = torch.Generator().manual_seed(5)
    raw = {"a": torch.randn(12, generator=g), "b": torch.randn(12, generator=g)}
    raw["a"][3] = math.nan
    with pytest.warns(RuntimeWarning, match="layer 'a': 1 non-finite raw SSLMem value.*NaN \\(not 0\\)"):
        ev = compute_evidence(["a", "b"], unit_means={k: torch.rand(12, 3, generator=g) for k in "ab"}, sslmem_raw=raw,
                              control_raw={k: torch.randn(12, generator=g) for k in "ab"}, top_k=3,
                              options=EvidenceOptions(bootstrap=200))
    a, b = ev.layers["a"], ev.layers["b"]
    assert math.isnan(a["layer_mem"]) and math.isnan(a["layer_mem_lo"]) and math.isnan(a["excess"])
    assert a["excess_p"] is None and math.isfinite(b["layer_mem"]) and b["excess_p"] is not None
    assert ev.meta["nonfinite"] == {"a": ["candidates"]}
    text = _report(ev, ["a", "b"]).summary_table()
    row = next(line for line in text.splitlines() if line.startswith("a "))
    assert "nan" in row and "0.000" not in row
    assert "layer 'a' has non-finite raw SSLMem among the candidates" in text
    assert ev.to_dict()["layers"]["a"]["layer_mem"] is None


# ------------------------------------------------------------------------------ item 9: wording
def test_a_null_result_says_what_it_cannot_exclude():
    layers = ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = compute_evidence(layers, top_k=5, options=EvidenceOptions(bootstrap=1000),
                              **_null_inputs(torch.Generator().manual_seed(8), layers, n=25, m=15))
    assert ev.shows_memorization is False
    text = _report(ev, layers).summary_table()
    assert "verdict: no memorization distinguishable from the nulls at n = 25 candidates, 15 control, 15 unseen" in text
    width = max((r["excess_hi"] - r["excess_lo"]) / 2 for r in ev.layers.values())
    assert (f"candidates > control at 0 of 2 layers — not distinguishable at n = 25 candidates, 15 control, "
            f"95 % CI up to ±{width:.3f}; a smaller effect is not excluded.") in text
    for absent in ("score like", "absent", "shows no memorization at"):
        assert absent not in text


# ------------------------------------------------------------------------- item 8: the benchmark
@pytest.mark.slow
def test_calibration_benchmark_quick_runs_every_table():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "evidence_calibration.py"
    out = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    for title in ("false-positive rates", "the excess test alone", "coverage of 95 % intervals by n",
                  "the excess bound at alpha/40", "mean UnitMem interval"):
        assert f"## {title}" in out.stdout
    assert "| normal, 40 / 40 / 40 | 200 |" in out.stdout and "(unattainable)" in out.stdout
    assert "| lognormal, 80 / 10 / 10 (8:1) | 1000 |" in out.stdout


@pytest.mark.slow
def test_real_data_calibration_benchmark_quick_runs():
    """The smoke run of benchmarks/verdict_calibration_real.py (digits, no training): one table, rates in [0, 1]."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_calibration_real.py"
    out = subprocess.run([sys.executable, str(script), "--data", "digits", "--quick"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| untrained ResNet9 pair #0 |")]
    assert [row.split(" | ")[1] for row in rows] == ["40 / 40 / 40", "80 / 10 / 10"]
    for row in rows:
        rates = [float(cell) for cell in row.strip(" |").split(" | ")[2:]]
        assert len(rates) == 6 and all(0.0 <= r <= 1.0 for r in rates)
