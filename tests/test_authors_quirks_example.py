"""Smoke test of examples/authors_quirks.py at tiny settings (synthetic data, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "authors_quirks.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


def test_authors_quirks_smoke(example, tmp_path: Path, one_thread, capsys) -> None:
    args = ["--data", "synthetic", "--subset", "40", "--candidates", "6", "--independent", "6", "--width", "1",
            "--epochs", "1", "--batch-size", "16", "--views", "2", "--out", str(tmp_path)]
    assert example.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    table = results["table"]
    assert set(table) == set(example.SETTINGS)
    layers = results["layers"]
    assert len(layers) == 8
    for layer in layers:
        assert table["clean"][layer]["max_abs_diff"] == 0.0
        # the median and the sequential taps do not touch LayerMem / the first four layers
        assert table["c_median"][layer]["layer_mem"] == pytest.approx(table["clean"][layer]["layer_mem"])
    for layer in layers[:4]:
        assert table["b_sequential"][layer]["max_abs_diff"] == 0.0
    # the batched emulation of the authors' UnitMem equals their literal one-view-per-forward loop
    assert results["emulation_gap"] < 1e-5
    assert "Mean UnitMem" in (tmp_path / "tables.md").read_text()
    assert "LayerMem" in capsys.readouterr().out
