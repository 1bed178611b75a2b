"""Smoke tests of examples/tradeoff.py: memorization vs utility of fine-tuning and pruning.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the most
memorizing layers and prune units by UnitMem. The script runs here with tiny settings (a width-2
ResNet9, one epoch, seconds) and the tests check that it really fine-tuned the chosen layers only,
that pruned units output exactly zero, and the structure of ``results.json`` and ``table.md``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--limit", "40", "--canaries", "4", "--epochs", "1", "--width", "2", "--views", "2", "--bootstrap", "200",
        "--finetune-size", "40", "--test-size", "30", "--ft-epochs", "1", "--ft-seeds", "2", "--random-seeds", "2",
        "--ks", "5", "10", "--fractions", "0.5"]


def _load(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def tradeoff():
    return _load("tradeoff")


@pytest.fixture(scope="module")
def results(tradeoff, tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("tradeoff")
    try:
        assert tradeoff.main(TINY + ["--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "results.json").read_text())


def test_finetuning_trains_the_chosen_layers_only(results) -> None:
    _, res = results
    rows = {row["strategy"]: row for row in res["finetuning"]}
    assert list(rows) == ["head only", "last-2", "top-2 LayerMem", "top-2 ΔLayerMem", "top-2 excess", "all layers"]
    layers = list(res["before"]["memorization"])
    assert rows["last-2"]["chosen_layers"] == layers[-2:]
    assert rows["all layers"]["chosen_layers"] == layers
    assert rows["head only"]["chosen_layers"] == [] and rows["head only"]["changed_layers"] == []
    for name, row in rows.items():
        assert len(row["per_seed"]) == 2
        for run in row["per_seed"]:
            # exactly the chosen layers' weights moved; frozen layers (BatchNorm statistics included) did not
            assert sorted(run["changed_layers"]) == sorted(run["chosen_layers"]), name
        for cell in [row["head"]] + [row["knn"][k] for k in ("5", "10")]:
            assert 0.0 <= cell["acc"] <= 1.0 and cell["se"] >= 0.0
            assert math.isclose(cell["acc"], cell["seeds"]["mean"], abs_tol=1e-6)  # mean of per-image hits = mean of runs
        assert rows["last-2"]["head"]["diff"] == 0.0
        assert set(row["excess"]) == set(res["deep_layers"])


def test_pruning_silences_the_chosen_units(results) -> None:
    _, res = results
    rows = res["pruning"]
    assert [(r["fraction"], r["strategy"], r["seeds"]) for r in rows] == [(0.5, "lowest", 1), (0.5, "random", 2),
                                                                          (0.5, "highest", 1)]
    for row in rows:
        for run in row["per_seed"]:
            counts = {layer: len(units) for layer, units in run["units"].items()}
            assert counts == row["pruned"] and all(n >= 1 for n in counts.values())
            assert set(run["pruned_output_max"].values()) == {0.0}  # pruned units output exactly 0
            for layer, units in run["units"].items():
                assert run["memorization"][layer]["unit_mem_mean"] is not None
        assert all(0.0 <= row["knn"][k]["acc"] <= 1.0 for k in ("5", "10"))
    random = rows[1]["per_seed"]
    assert random[0]["units"] != random[1]["units"]  # the random baseline draws different units per seed


def test_each_layer_pruned_alone(results) -> None:
    _, res = results
    rows = res["layer_pruning"]
    layers = list(res["before"]["memorization"])
    assert [(r["layer"], r["fraction"]) for r in rows] == [(layer, 0.5) for layer in layers]
    for row in rows:
        after = {s: row[s]["unit_mem_after"]["mean"] for s in ("lowest", "random", "highest")}
        # pruned units count 0: removing the most memorizing units lowers the layer's mean most
        assert after["highest"] <= after["random"] + 1e-9 and after["random"] <= after["lowest"] + 1e-9
        assert after["lowest"] <= row["unit_mem_before"] + 1e-9 and row["pruned"] >= 1
        assert row["random"]["seeds"] == 2 and all(0 <= row[s]["knn"]["5"]["acc"] <= 1 for s in after)


def test_pruning_lowest_and_highest_pick_by_unitmem(results) -> None:
    from lightning_memloc import MemorizationReport

    out, res = results
    report = MemorizationReport.load(out / "report_pretrained.json")
    lowest, highest = res["pruning"][0]["per_seed"][0]["units"], res["pruning"][2]["per_seed"][0]["units"]
    for layer in report.layers:
        scores = report.unit_mem[layer]
        kept_low = torch.ones_like(scores, dtype=torch.bool)
        kept_low[lowest[layer]] = False
        assert scores[lowest[layer]].max() <= scores[kept_low].min()
        kept_high = torch.ones_like(scores, dtype=torch.bool)
        kept_high[highest[layer]] = False
        assert scores[highest[layer]].min() >= scores[kept_high].max()


def test_tables_and_pretrained_reuse(results, tradeoff, tmp_path: Path) -> None:
    out, res = results
    table = (out / "table.md").read_text()
    assert "| head only |" in table and "| 50% | random (2 seeds) |" in table and "kNN k=10" in table
    assert table.count("baseline") == 3  # last-2: head, k=5, k=10
    assert (out / "pretrained.pt").is_file() and res["seconds"]["total"] > 0
    # --pretrained skips pre-training and reproduces the pre-trained encoder's figures exactly
    threads = torch.get_num_threads()
    try:
        tradeoff.main(TINY[:-2] + ["--fractions", "0.5", "--ft-seeds", "1", "--random-seeds", "1",
                                   "--pretrained", str(out / "pretrained.pt"), "--no-per-layer", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["before"] == res["before"] and "layer_pruning" not in again


@pytest.mark.parametrize("bad, message", [(["--fractions", "1.5"], "--fractions"), (["--ks", "0"], "--ks"),
                                          (["--pretrained", "missing.pt"], "--pretrained"),
                                          (["--finetune-size", "100"], "kNN bank")])
def test_bad_arguments_are_refused_before_any_work(tradeoff, bad, message, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        tradeoff.parse(bad)
    assert err.value.code == 2 and message in capsys.readouterr().err
