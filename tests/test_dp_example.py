"""Smoke test of examples/dp_unitmem.py (DP-SGD with Opacus) at tiny settings; skipped without Opacus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script

pytest.importorskip("opacus")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dp_unitmem.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


def test_dp_example_smoke(example, tmp_path: Path, one_thread) -> None:
    args = ["--data", "synthetic", "--subset", "80", "--test", "12", "--size", "16", "--width", "2", "--epochs", "1",
            "--batch-size", "16", "--views", "2", "--bootstrap", "200", "--ks", "3", "10", "--sigmas", "0.8", "4.0",
            "--out", str(tmp_path)]
    assert example.main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["no DP", "DP σ=0.8", "DP σ=4"]
    assert rows[0]["epsilon"] is None
    # more noise, smaller ε (same steps, same sampling rate)
    assert rows[1]["epsilon"] > rows[2]["epsilon"] > 0
    for r in rows:
        assert all(0.0 <= u <= 1.0 for u in r["unit_mem_last"])
        assert all(0.0 <= r[f"knn_k{k}"] <= 1.0 for k in (3, 10))
        assert r["excess"][r["last_layer"]] is not None and r["unit_mem_excess"] is not None
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n") == 2 + len(rows) and "kNN k=10" in table
    assert (tmp_path / "dp_unitmem.png").stat().st_size > 0


def test_dp_model_has_no_batchnorm(example) -> None:
    from opacus.validators import ModuleValidator

    model = example.make_model(example.parse(["--width", "2", "--size", "16"]), in_channels=3)
    assert ModuleValidator.validate(model, strict=False) == []
