"""examples/paper_findings_cpu.py: its pooling over seeds (hand-computed) and a ``--quick`` smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def stats():
    return load_script(EXAMPLES / "paper_findings_stats.py")


def test_pool_is_the_t_interval_and_t_test_over_seeds(stats) -> None:
    # values 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    r = stats.pool([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["sd"] == pytest.approx(1.0) and r["n"] == 3 and r["positive"] == 3
    assert (r["lo"], r["hi"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    # t = 2 / (1 / sqrt 3) = 3.4641, two-sided p with 2 df = 0.074180
    assert r["p"] == pytest.approx(0.074180, abs=1e-5)
    assert stats.verdict(r) == "cannot tell"


def test_pool_of_correlations_is_on_fisher_z(stats) -> None:
    r = stats.pool([0.5, 0.5], fisher=True)  # no spread: the interval is the point
    assert r["mean"] == pytest.approx(0.5) and r["lo"] == pytest.approx(0.5) and r["hi"] == pytest.approx(0.5)
    r = stats.pool([0.2, 0.6, 0.4], fisher=True)
    z = [math.atanh(v) for v in (0.2, 0.6, 0.4)]
    assert r["mean"] == pytest.approx(math.tanh(sum(z) / 3))
    assert -1 < r["lo"] < r["mean"] < r["hi"] < 1


def test_verdicts_follow_the_interval(stats) -> None:
    assert stats.verdict(stats.pool([0.9, 1.0, 1.1])) == "holds"
    assert stats.verdict(stats.pool([-0.9, -1.0, -1.1])) == "does not hold"
    assert stats.verdict(stats.pool([-1.0, 1.0, 0.1])) == "cannot tell"
    with pytest.raises(ValueError, match="finite"):
        stats.pool([1.0, float("nan")])


@pytest.mark.slow
def test_quick_run_writes_every_finding_with_a_verdict(tmp_path: Path, one_thread) -> None:
    script = load_script(EXAMPLES / "paper_findings_cpu.py", add_folder=True)
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert [r["id"] for r in rows] == [row[0] for row in script.ROWS]
    assert {r["id"].rstrip("abc") for r in rows} == {str(i) for i in range(1, 8)}  # findings 1-7 of issue 26
    for r in rows:
        assert r["verdict"] in {"holds", "does not hold", "cannot tell"}
        assert len(r["per_seed"]) == 2 and all(math.isfinite(v) for v in r["per_seed"])
        pooled = r["pooled"]
        assert all(math.isfinite(pooled[key]) for key in ("mean", "lo", "hi", "p", "sd"))
        assert pooled["lo"] <= pooled["mean"] <= pooled["hi"] and 0 <= pooled["p"] <= 1
    table = (tmp_path / "findings.md").read_text()
    assert all(f"| {r['id']} |" in table for r in rows)
    # each seed is cached: a second call pools without training again
    assert sorted(p.name for p in tmp_path.glob("seed_*.json")) == ["seed_0.json", "seed_1.json"]
    seed0 = json.loads((tmp_path / "seed_0.json").read_text())
    assert seed0["training"]["epochs"][0] == -1  # the curve starts before training
