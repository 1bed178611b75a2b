"""Figures of the analyses (lightning_memloc.plots.analysis_figures) and ``memloc analyze --analyses`` / ``memloc plot`` on tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_memloc import MemorizationReport, load_encoder
from lightning_memloc.analyses import layer_consistency, run_analyses
from lightning_memloc.data import load_npz
from lightning_memloc.models import TinyCNN
from lightning_memloc.plots.analysis_figures import (
    ANALYSIS_FILENAMES,
    plot_analyses,
    plot_consistency,
    plot_exchange,
    plot_unit_restore,
)
from helpers import assert_png, run_cli as run

N = 12
ANALYZE = ["analyze", "--arch", "tiny", "--size", "16", "--views", "3", "--top-k", "3", "--no-progress"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_analyses")
    torch.manual_seed(0)
    torch.save(TinyCNN(3, 4).state_dict(), root / "f.pt")
    torch.save(TinyCNN(3, 4).state_dict(), root / "g.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.integers(0, 256, (2 * N, 16, 16, 3), dtype=np.uint8), y=np.arange(2 * N) % 3)
    (root / "cand.json").write_text(json.dumps(list(range(N))))
    (root / "pool.json").write_text(json.dumps(list(range(4, 2 * N))))  # overlaps the candidates 4..11
    return root


@pytest.fixture(scope="module")
def analyzed(ws):
    out = ws / "out"
    code, stdout, stderr = run(ANALYZE + ["--encoder", ws / "f.pt", "--reference", ws / "g.pt", "--data", ws / "d.npz",
                                          "--indices", ws / "cand.json", "--pool-indices", ws / "pool.json", "--knn", "2",
                                          "--analyses", "consistency,exchange,atypicality", "--exchange-draws", "1",
                                          "--output-dir", out])
    return out, code, stdout, stderr


def test_analyze_writes_analyses_to_the_report_and_figures(ws, analyzed):
    out, code, stdout, stderr = analyzed
    assert code == 0, stderr
    report = MemorizationReport.load(out / "report.json")
    assert set(report.analyses) == {"consistency", "exchange", "atypicality"}
    assert report.analyses["consistency"] == layer_consistency(report, k=3)
    for name in ("consistency", "exchange", "atypicality", "neighbours"):
        assert_png(out / ANALYSIS_FILENAMES[name])
        assert ANALYSIS_FILENAMES[name] in stdout
    atyp = report.analyses["atypicality"]
    # the pool holds candidates 4..11 themselves: none may be its own neighbour
    for cid, neighbours in zip(atyp["most_memorized"]["ids"], atyp["most_memorized"]["neighbours"]):
        assert cid not in neighbours and all(4 <= n < 2 * N for n in neighbours)
    assert atyp["class_mean_distance"] is not None  # d.npz is labelled


def test_analyze_atypicality_equals_the_python_api(ws, analyzed):
    out, code, _, stderr = analyzed
    assert code == 0, stderr
    saved = MemorizationReport.load(out / "report.json")
    images, labels = load_npz(ws / "d.npz")
    encoder = load_encoder(ws / "f.pt", TinyCNN(3, 4))
    pool_idx = torch.arange(4, 2 * N)
    exclude = torch.tensor([-1] * 4 + list(range(8)))
    fresh = MemorizationReport.from_dict({**saved.to_dict(), "analyses": {}})
    direct = run_analyses("atypicality", fresh, encoder, candidates=images[:N], pool=images[pool_idx], knn=2,
                          exclude=exclude, pool_ids=pool_idx.tolist(), candidate_labels=labels[:N],
                          pool_labels=labels[pool_idx])
    assert direct["atypicality"]["knn_distance"] == pytest.approx(saved.analyses["atypicality"]["knn_distance"])


def test_plot_renders_the_stored_analyses(ws, analyzed):
    out, code, _, stderr = analyzed
    assert code == 0, stderr
    again = ws / "replot"
    code, stdout, stderr = run(["plot", out / "report.json", "--output-dir", again])
    assert code == 0, stderr
    for name in ("consistency", "exchange", "atypicality"):
        assert_png(again / ANALYSIS_FILENAMES[name])
    assert not (again / ANALYSIS_FILENAMES["neighbours"]).exists()  # needs the pool images


@pytest.mark.parametrize("extra, flag", [
    (["--analyses", "consistency,bogus"], "--analyses"),
    (["--analyses", "all", "--knn", "0"], "--knn"),
    (["--analyses", "atypicality", "--pool-indices", "missing.json"], "--pool-indices: no indices file"),
])
def test_analyze_rejects_bad_analysis_arguments_before_measuring(ws, extra, flag):
    out = ws / "bad"
    code, _, stderr = run(ANALYZE + ["--encoder", ws / "f.pt", "--reference", ws / "g.pt", "--data", ws / "d.npz",
                                     "--output-dir", out] + extra)
    assert code == 2 and flag in stderr and "Traceback" not in stderr
    assert not (out / "report.json").exists()


def test_analyze_exchange_needs_a_reference(ws):
    code, _, stderr = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--output-dir", ws / "noref",
                                     "--analyses", "exchange"])
    assert code == 2 and "--analyses" in stderr and "--reference" in stderr


def test_plot_functions_reject_other_results_and_draw_restore(tmp_path):
    with pytest.raises(ValueError, match="not a consistency result"):
        plot_consistency({"layers": ["a"]}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="not a exchange result"):
        plot_exchange({}, tmp_path / "e.png")
    restore = {"layer": "conv3", "units": [0, 2], "unit_mem_before": [0.1, 0.2], "unit_mem_after": [0.8, 0.3],
               "other_units_max_change": 0.0}
    assert_png(plot_unit_restore(restore, tmp_path / "u.png"))
    report = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
                                unit_mem={"a": torch.zeros(1)}, unit_argmax={"a": torch.zeros(1, dtype=torch.long)},
                                dead_units={"a": torch.zeros(1, dtype=torch.bool)}, analyses={"unit_restore": restore})
    assert plot_analyses(report, tmp_path / "all") == [tmp_path / "all" / ANALYSIS_FILENAMES["unit_restore"]]


def test_plot_exchange_with_a_control(tmp_path, one_thread):
    from lightning_memloc import measure
    from lightning_memloc.analyses import layer_exchange_study

    torch.manual_seed(0)
    f, g = TinyCNN(width=2), TinyCNN(width=2)
    x = torch.rand(5, 3, 8, 8)
    report = measure(f, x, reference=g, views=2, top_k=2)
    result = layer_exchange_study(f, g, x, report, k=1, random_draws=1, views=2, control=torch.rand(4, 3, 8, 8))
    assert_png(plot_exchange(result, tmp_path / "exchange.png"))
