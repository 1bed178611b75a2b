"""MemorizationReport: ranking helpers on hand-made numbers, JSON round trip, atomic save, bad files."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from lightning_memloc import MemorizationReport, ReportFormatError


def _report(reference: bool = True) -> MemorizationReport:
    layers = ["a", "b", "c"]
    kwargs = {}
    if reference:
        sslmem = {"a": torch.tensor([0.1, 0.0, -0.2, 0.3]), "b": torch.tensor([0.4, 0.1, 0.0, 0.2]),
                  "c": torch.tensor([0.9, -0.1, 0.2, 0.5])}
        kwargs = dict(
            sslmem=sslmem,
            sslmem_raw={k: v * 2 for k, v in sslmem.items()},
            layer_mem={"a": 0.05, "b": 0.175, "c": 0.375},
            delta_layer_mem={"a": 0.05, "b": 0.125, "c": 0.2},
            layer_mem_top={"a": 0.2, "b": 0.3, "c": 0.7},
            layer_mem_least={"a": -0.1, "b": 0.05, "c": 0.05},
            top_ids=torch.tensor([10, 13]),
            least_ids=torch.tensor([11, 12]),
        )
    return MemorizationReport(
        layers=layers,
        layer_kinds={"a": "conv", "b": "conv", "c": "linear"},
        candidate_ids=torch.tensor([10, 11, 12, 13]),
        unit_mem={"a": torch.tensor([0.1, 0.6, 0.0]), "b": torch.tensor([0.9, 0.2]), "c": torch.tensor([0.3, 0.8, 0.7, 0.0])},
        unit_argmax={"a": torch.tensor([10, 11, 10]), "b": torch.tensor([13, 12]), "c": torch.tensor([10, 10, 13, 10])},
        dead_units={"a": torch.tensor([False, False, True]), "b": torch.tensor([False, False]),
                    "c": torch.tensor([False, False, False, True])},
        class_mem={"a": torch.tensor([0.0, 0.1, 0.0]), "b": torch.tensor([0.5, 0.5]), "c": torch.tensor([0.1, 0.2, 0.3, 0.0])},
        meta={"views": 4, "seed": 0, "epoch": 3},
        **kwargs,
    )


def test_ranking_helpers_hand_computed():
    r = _report()
    assert r.top_layers(2) == ["c", "b"]
    assert r.top_layers(1, by="delta_layer_mem", largest=False) == ["a"]
    # mean UnitMem: a = 0.7/3, b = 0.55, c = 0.45
    assert r.unit_mem_mean() == pytest.approx({"a": 0.7 / 3, "b": 0.55, "c": 0.45})
    assert r.top_layers(3, by="unit_mem") == ["b", "c", "a"]
    assert r.top_units("c", 2).tolist() == [1, 2]
    assert r.top_units("a", 1, largest=False).tolist() == [2]
    assert r.unit_mem_frac_above(0.5) == pytest.approx({"a": 1 / 3, "b": 0.5, "c": 0.5})
    assert r.num_dead_units() == {"a": 1, "b": 0, "c": 1}
    assert r.most_memorized(2).tolist() == [10, 13]          # SSLMem at the last layer: 0.9, 0.5
    assert r.most_memorized(1, layer="b", largest=False).tolist() == [12]


def test_candidate_scores_without_reference_sum_owned_unit_mem():
    r = _report(reference=False)
    # layer c: candidate 10 owns units 0, 1, 3 (0.3 + 0.8 + 0.0), candidate 13 owns unit 2 (0.7)
    assert r.candidate_scores().tolist() == pytest.approx([1.1, 0.0, 0.0, 0.7])
    with pytest.raises(ValueError, match="reference"):
        r.top_layers(1, by="layer_mem")
    with pytest.raises(ValueError, match="reference"):
        r.most_memorized(1)


def test_summary_table_rows():
    table = _report().summary_table()
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 1  # header, rule, 3 layers, and the line saying there is no null
    assert "cannot be told apart from noise" in lines[-1]
    lines = lines[:-1]
    assert re.search(r"^c\s+linear\s+0\.375\s+\+0\.200\s+0\.700\s+0\.050\s+0\.450\s+50\.0%\s+1$", lines[-1])


def test_json_round_trip(tmp_path):
    for reference in (True, False):
        r = _report(reference)
        path = r.save(tmp_path / f"r{reference}.json")
        back = MemorizationReport.load(path)
        assert back.allclose(r, atol=0.0)
        assert back.meta == r.meta and back.layer_kinds == r.layer_kinds
        assert back.dead_units["a"].dtype == torch.bool and back.unit_argmax["a"].dtype == torch.long


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    _report().save(path)
    before = path.read_text()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", lambda *a, **k: before.replace("0.375", "0.5"))
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        _report().save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"], "a temporary file was left behind"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report file"):
        MemorizationReport.load(tmp_path / "missing.json")
    good = json.dumps(_report().to_dict())
    (tmp_path / "trunc.json").write_text(good[: len(good) // 2])
    with pytest.raises(ReportFormatError, match="corrupt or truncated"):
        MemorizationReport.load(tmp_path / "trunc.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ReportFormatError, match="not a MemorizationReport"):
        MemorizationReport.load(tmp_path / "other.json")
    data = _report().to_dict()
    data["sslmem"]["a"] = [0.1]
    (tmp_path / "shape.json").write_text(json.dumps(data))
    with pytest.raises(ReportFormatError, match="sslmem"):
        MemorizationReport.load(tmp_path / "shape.json")
    data = _report().to_dict()
    data["version"] = 99
    (tmp_path / "version.json").write_text(json.dumps(data))
    with pytest.raises(ReportFormatError, match="version"):
        MemorizationReport.load(tmp_path / "version.json")
    assert issubclass(ReportFormatError, ValueError)
