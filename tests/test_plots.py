"""Figures of lightning_memloc.plots: valid PNGs, the right files, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.lines import Line2D

from lightning_memloc import MemorizationReport, ReportFormatError, measure
from lightning_memloc.callbacks.logging import report_scalars
from lightning_memloc.models import TinyCNN
from lightning_memloc.plots import (
    FILENAMES,
    load_history,
    max_unit_mem_per_candidate,
    plot_candidate_grid,
    plot_history,
    plot_layer_mem,
    plot_report,
    plot_sslmem_vs_unitmem,
    plot_unit_mem_distribution,
)
from helpers import assert_png

@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (10, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.fixture(scope="module")
def report(images: torch.Tensor) -> MemorizationReport:
    torch.manual_seed(0)
    f, g = TinyCNN(width=4), TinyCNN(width=4)
    return measure(f, images, reference=g, views=3, labels=torch.arange(10) % 3, top_k=3)


@pytest.fixture(scope="module")
def unit_only(images: torch.Tensor) -> MemorizationReport:
    torch.manual_seed(1)
    return measure(TinyCNN(width=4), images, views=2)


def history_of(report: MemorizationReport, epochs=(-1, 0, 1, 2)) -> list:
    return [{"epoch": e, "global_step": 5 * (e + 1), **report_scalars(report)} for e in epochs]


def test_every_figure_of_a_report_with_reference(report, images, tmp_path):
    paths = [
        plot_layer_mem(report, tmp_path / "lm.png"),
        plot_unit_mem_distribution(report, tmp_path / "um.png"),
        plot_sslmem_vs_unitmem(report, tmp_path / "sv.png", layer="conv2"),
        plot_candidate_grid(report, images, tmp_path / "grid.png", k=3),
        plot_history(history_of(report), tmp_path / "hist.png"),
    ]
    assert [p.name for p in paths] == ["lm.png", "um.png", "sv.png", "grid.png", "hist.png"]
    for path in paths:
        assert_png(path)


def test_plot_report_writes_what_applies(report, unit_only, images, tmp_path):
    full = plot_report(report, tmp_path / "full", images=images, history=history_of(report))
    kinds = ("layer_mem", "unit_mem", "sslmem_vs_unitmem", "candidates", "history", "evidence", "evidence_history",
             "profile", "heatmap")
    assert [p.name for p in full] == [FILENAMES[k] for k in kinds]
    for path in full:
        assert_png(path)
    only_units = plot_report(unit_only, tmp_path / "units")
    assert [p.name for p in only_units] == [FILENAMES["unit_mem"]] + ([FILENAMES["evidence"]] if unit_only.evidence else []) \
        + [FILENAMES["profile"]]
    only_history = plot_report(None, tmp_path / "hist", history=history_of(unit_only))
    assert [p.name for p in only_history][0] == FILENAMES["history"]


def test_reference_figures_need_a_reference(unit_only, tmp_path):
    for plot in (plot_layer_mem, plot_sslmem_vs_unitmem):
        with pytest.raises(ValueError, match="reference"):
            plot(unit_only, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_unknown_layer_is_a_clear_error(report, tmp_path):
    with pytest.raises(ValueError, match="'nope' is not in the report"):
        plot_sslmem_vs_unitmem(report, tmp_path / "x.png", layer="nope")


def test_candidate_grid_checks_images_and_accepts_any_format(report, unit_only, images, tmp_path):
    with pytest.raises(ValueError, match=r"N = 10 candidates"):
        plot_candidate_grid(report, images[:5], tmp_path / "x.png")
    with pytest.raises(ValueError, match="`k`"):
        plot_candidate_grid(report, images, tmp_path / "x.png", k=0)
    normalised = images.float() / 127.5 - 1.0  # float outside [0, 1] is rescaled for display
    assert_png(plot_candidate_grid(report, normalised, tmp_path / "float.png", k=20))  # k is capped at N
    assert_png(plot_candidate_grid(unit_only, images[:, :1], tmp_path / "grey.png", k=2))  # ranked by UnitMem


def test_max_unit_mem_per_candidate():
    r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.tensor([10, 11, 12]),
                           unit_mem={"a": torch.tensor([0.2, 0.9, 0.4])}, unit_argmax={"a": torch.tensor([12, 12, 10])},
                           dead_units={"a": torch.zeros(3, dtype=torch.bool)})
    got = max_unit_mem_per_candidate(r, "a")
    assert got[0] == pytest.approx(0.4) and torch.isnan(torch.tensor(got[1])) and got[2] == pytest.approx(0.9)


def test_degenerate_distributions_do_not_break_the_violins(tmp_path):
    r = MemorizationReport(layers=["a", "b"], layer_kinds={"a": "conv", "b": "linear"}, candidate_ids=torch.arange(2),
                           unit_mem={"a": torch.zeros(4), "b": torch.tensor([0.7])},
                           unit_argmax={"a": torch.zeros(4, dtype=torch.long), "b": torch.tensor([1])},
                           dead_units={"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([False])})
    assert_png(plot_unit_mem_distribution(r, tmp_path / "um.png"))


def test_history_from_a_file_and_validation(report, tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps(history_of(report)))
    assert len(load_history(path)) == 4
    assert_png(plot_history(path, tmp_path / "h.png"))
    without_reference = [{k: v for k, v in e.items() if "layer_mem" not in k} for e in history_of(report, (0, 1))]
    assert_png(plot_history(without_reference, tmp_path / "h2.png"))
    with pytest.raises(FileNotFoundError, match="history.json"):
        plot_history(tmp_path / "missing" / "history.json", tmp_path / "h3.png")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"epoch": 0, "memloc/unit_mem')
    with pytest.raises(ReportFormatError, match="corrupt"):
        load_history(bad)
    for data in ([], {"epoch": 0}, [{"loss": 1.0}]):
        with pytest.raises(ReportFormatError, match="not a monitor history"):
            load_history(data)


def _drawn(monkeypatch, module, draw) -> list:
    """(x label, {series label: x data}) of every axes of the figure ``draw()`` saves through ``module.save_png``."""
    figures = []
    monkeypatch.setattr(module, "save_png", lambda fig, path: figures.append(fig))
    draw()
    (fig,) = figures
    return [(ax.get_xlabel(), {line.get_label(): line.get_xdata().tolist() for line in ax.get_lines()
                               if not line.get_label().startswith("_")}) for ax in fig.axes if ax.get_lines()]


def test_histories_with_several_steps_per_epoch_are_drawn_against_the_global_step(report, monkeypatch, tmp_path):
    """every_n_train_steps: epochs 0 and 1 hold two measurements each; each gets its own x (its global step)."""
    import lightning_memloc.plots.evidence_figures as evidence_plots
    import lightning_memloc.plots.report_figures as history_plots
    from lightning_memloc.plots.evidence_figures import plot_evidence_history

    steps = [(-1, 0), (0, 3), (0, 6), (1, 9), (1, 12)]
    from lightning_memloc.report.tags import scalar_tag

    evidence = {scalar_tag(key, layer): value for layer in report.layers
                for key, value in (("excess", 0.1), ("excess_lo", 0.0), ("excess_hi", 0.2))}
    history = [{"epoch": e, "global_step": s, **report_scalars(report), **evidence} for e, s in steps]
    for module, draw in ((history_plots, plot_history), (evidence_plots, plot_evidence_history)):
        panels = _drawn(monkeypatch, module, lambda: draw(history, tmp_path / "x.png"))
        assert panels and all(label == "global step" for label, _ in panels)
        series = [x for _, lines in panels for x in lines.values()]
        assert set(report.layers) <= set(panels[0][1]) and series == [[0, 3, 6, 9, 12]] * len(series)
        # without global steps (older histories): one point per epoch, on the epoch axis
        by_epoch = [{k: v for k, v in e.items() if k != "global_step"} for e in history[::2]]
        panels = _drawn(monkeypatch, module, lambda: draw(by_epoch, tmp_path / "y.png"))
        assert all(label == "epoch" and all(x == [-1, 0, 1] for x in lines.values()) for label, lines in panels)


def test_memloc_plot_writes_the_profile_and_the_heat_maps_of_a_run(monkeypatch, tmp_path, capsys):
    """The TensorBoard pictures (memloc/profile, memloc/profile_over_training) as PNGs from a run's folder."""
    import lightning_memloc.plots.report_figures as report_plots
    from lightning_memloc.cli.command import main
    from matplotlib.image import AxesImage

    torch.manual_seed(0)
    run = measure(TinyCNN(width=4), torch.rand(10, 3, 16, 16), reference=TinyCNN(width=4), views=2, top_k=2,
                  control=torch.rand(6, 3, 16, 16), unseen=torch.rand(6, 3, 16, 16), bootstrap=200)
    (tmp_path / "run").mkdir()
    run.save(tmp_path / "run" / "report.json")
    (tmp_path / "run" / "history.json").write_text(json.dumps(history_of(run)), encoding="utf-8")
    figures = {}
    real = report_plots.save_png
    monkeypatch.setattr(report_plots, "save_png", lambda fig, path: figures.setdefault(path.name, fig) and real(fig, path))
    assert main(["plot", str(tmp_path / "run"), "--output-dir", str(tmp_path / "out"), "--warmup-step", "5"]) == 0
    printed = capsys.readouterr().out
    for name in (FILENAMES["profile"], FILENAMES["heatmap"]):
        assert_png(tmp_path / "out" / name)
        assert str(tmp_path / "out" / name) in printed  # listed in "[memloc] wrote ..."
    profile = figures[FILENAMES["profile"]]
    assert [ax.get_title() for ax in profile.axes if ax.get_visible()] == [
        "LayerMem", "LayerMem excess (Holm p; * below α=0.05)", "μmax membership vs chance",
        "mean UnitMem: seen vs unseen (Holm p)"]
    assert [t.get_text() for t in profile.axes[0].get_xticklabels()] == run.layers  # by depth
    heat = figures[FILENAMES["heatmap"]]
    maps = {im.get_gid(): im.get_array() for im in heat.findobj(AxesImage)}
    assert set(maps) == {"excess", "unit_mem_mean"} and all(m.shape == (len(run.layers), 4) for m in maps.values())
    excess = run.evidence.layers
    assert np.allclose(maps["excess"][:, 0], [excess[layer]["excess"] for layer in run.layers], atol=1e-6)
    warmup = [line for line in heat.findobj(Line2D) if line.get_gid() == "warmup"]  # after step 5 (epoch 0)
    assert len(warmup) == 2 and all(line.get_xdata()[0] == 1.5 for line in warmup)
    # a history alone: the heat maps, no profile (it is one measurement's)
    assert main(["plot", str(tmp_path / "run" / "history.json"), "--output-dir", str(tmp_path / "h")]) == 0
    assert (tmp_path / "h" / FILENAMES["heatmap"]).exists() and not (tmp_path / "h" / FILENAMES["profile"]).exists()


def test_find_plot_inputs(report, tmp_path):
    from lightning_memloc.plots.io import find_plot_inputs, read_plot_input

    folder = tmp_path / "run" / "memloc"
    folder.mkdir(parents=True)
    for epoch in (2, 10, -1):
        MemorizationReport(**{**report.__dict__, "meta": {"epoch": epoch}}).save(folder / f"report_epoch={epoch}.json")
    (folder / "history.json").write_text(json.dumps(history_of(report)))
    found, history = find_plot_inputs([tmp_path / "run"])
    assert found.meta["epoch"] == 10 and len(history) == 4  # the latest epoch, numerically
    report.save(tmp_path / "run" / "report.json")
    assert find_plot_inputs([tmp_path / "run"])[0].meta == report.meta  # report.json wins
    assert read_plot_input(folder / "history.json")[0] == "history"
    with pytest.raises(ValueError, match="second report"):
        find_plot_inputs([tmp_path / "run" / "report.json", folder / "report_epoch=2.json"])
    with pytest.raises(FileNotFoundError, match="holds no report.json"):
        find_plot_inputs([tmp_path])
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ReportFormatError, match="not a MemorizationReport"):
        read_plot_input(tmp_path / "x.json")


@pytest.mark.parametrize("old, new, name", [("plots_io", "plots.io", "find_plot_inputs"),
                                            ("plots_evidence", "plots.evidence_figures", "evidence_figures"),
                                            ("plots_analyses", "plots.analysis_figures", "plot_analyses"),
                                            ("cli_analyses", "cli.analysis_flags", "run_cli_analyses")])
def test_old_module_names_are_gone(old, new, name):
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"lightning_memloc.{old}")
    assert callable(getattr(importlib.import_module(f"lightning_memloc.{new}"), name))


def test_the_packages_keep_the_public_names_of_the_modules_they_replace():
    """cli.py, plots.py and data.py became packages: every public name of the old modules still imports."""
    import lightning_memloc.cli as cli
    import lightning_memloc.data as data
    import lightning_memloc.plots as plots

    old = {cli: ["ARCHS", "CLIError", "build_model", "build_parser", "main"],
           plots: ["FILENAMES", "History", "load_history", "max_unit_mem_per_candidate", "plot_candidate_grid",
                   "plot_history", "plot_layer_mem", "plot_report", "plot_sslmem_vs_unitmem",
                   "plot_unit_mem_distribution"],
           data: ["NAMED_DATASETS", "SplitIndices", "TensorImageDataset", "as_float_image", "load_data", "load_digits",
                  "load_image_folder", "load_npz", "load_torchvision", "split_candidates", "split_item"]}
    for module, names in old.items():
        missing = [name for name in names if not hasattr(module, name)]
        assert not missing, f"{module.__name__} lost {missing}"
    assert callable(cli.main) and cli.main.__module__ == "lightning_memloc.cli.command"  # the console script target
