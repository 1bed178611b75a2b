"""Issue 24 §1: TensorBoard sections per quantity, the profile and heat-map figures, the warm-up marker.

The figures are pure functions of a report / a history (checked without Lightning against the
numbers they draw); the monitor logs them at every measurement (read back from the event files).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings, strategies as st
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from lightning_memloc import MemorizationReport, measure
from lightning_memloc.report import tags
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.callbacks.logging import NamedWriter, report_scalars, steps_per_epoch, warmup_end_step
from lightning_memloc.models.cotrain import cotraining_loader
from lightning_memloc.models import TinyCNN
from lightning_memloc.plots.evidence_figures import plot_evidence_history
from lightning_memloc.plots.figure import figure_array
from lightning_memloc.plots.heatmap import heatmap_data, heatmap_figure, warmup_boundary
from lightning_memloc.plots.report_figures import plot_history
from lightning_memloc.plots.io import load_history
from lightning_memloc.plots.profile import measurement_title, profile_data, profile_figure
from helpers import cotrained_pair, cotraining_split


@pytest.fixture(scope="module")
def full_report() -> MemorizationReport:
    torch.manual_seed(0)
    return measure(TinyCNN(), torch.rand(10, 3, 16, 16), reference=TinyCNN(), views=2, top_k=2,
                   control=torch.rand(6, 3, 16, 16), unseen=torch.rand(6, 3, 16, 16), bootstrap=200)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ profile
def test_profile_data_are_the_reports_numbers(full_report):
    data, ev = profile_data(full_report), full_report.evidence
    for key in ("layer_mem", "layer_mem_lo", "control_layer_mem", "unseen_layer_mem", "excess", "excess_hi",
                "excess_p_holm", "membership", "membership_chance", "unit_mem_seen", "unit_mem_unseen"):
        expected = [np.nan if ev.layers[layer][key] is None else ev.layers[layer][key] for layer in full_report.layers]
        assert _same(data[key], expected), key
    assert np.allclose(data["layer_mem"], [full_report.layer_mem[layer] for layer in full_report.layers], atol=1e-6)
    plain = measure(TinyCNN(), torch.rand(6, 3, 16, 16), views=2, bootstrap=0)  # no reference, no evidence
    assert set(profile_data(plain)) == {"unit_mem_mean"}
    assert np.allclose(profile_data(plain)["unit_mem_mean"], [plain.unit_mem_mean()[layer] for layer in plain.layers], atol=1e-6)


def test_profile_figure_draws_exactly_the_data(full_report):
    fig, data = profile_figure(full_report, warmup_step=5), profile_data(full_report)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "LayerMem" and titles[2] == "μmax membership vs chance" and len(titles) == 4
    drawn = {line.get_gid(): line for line in fig.findobj(Line2D) if line.get_gid()}
    assert set(drawn) == {"layer_mem", "control_layer_mem", "unseen_layer_mem", "excess", "excess_unseen", "membership",
                          "membership_chance", "unit_mem_seen", "unit_mem_unseen"}
    for key, line in drawn.items():
        assert _same(line.get_ydata(), data[key]), key
    # the interval of the excess is the error bar: its caps sit at the bounds
    excess_ax = next(ax for ax in fig.axes if ax.get_title().startswith("LayerMem excess"))
    caps = sorted(np.concatenate([line.get_ydata() for line in excess_ax.lines if line.get_marker() == "_"]).tolist())
    bounds = np.concatenate([data[k] for k in ("excess_lo", "excess_hi", "excess_unseen_lo", "excess_unseen_hi")])
    assert caps == pytest.approx(sorted(bounds.tolist()))
    significant = full_report.evidence.meta["significant"]
    assert f"excess {len(significant['excess'])}/{len(full_report.layers)}" in fig.get_suptitle()


def test_measurement_title_and_warmup_status(full_report):
    assert measurement_title({"epoch": -1, "global_step": 0}) == "before training · step 0"
    assert measurement_title({"epoch": 4, "global_step": 150}) == "epoch 4 · step 150"
    report = MemorizationReport.from_dict({**full_report.to_dict(), "meta": {**full_report.meta, "epoch": 0, "global_step": 3}})
    assert "in the LR warm-up" in profile_figure(report, warmup_step=4).get_suptitle()
    assert "after the LR warm-up (ended at step 2)" in profile_figure(report, warmup_step=2).get_suptitle()


# ------------------------------------------------------------------------------------ heat maps
def _history(values: np.ndarray, layers, key="excess", pkey="excess_p_holm", pvalues=None):
    entries = []
    for j in range(values.shape[1]):
        entry = {"epoch": j - 1, "global_step": 10 * j}
        for i, layer in enumerate(layers):
            entry[tags.scalar_tag(key, layer)] = float(values[i, j])
            entry[tags.scalar_tag("unit_mem_mean", layer)] = float(values[i, j]) ** 2
            if pvalues is not None:
                entry[tags.scalar_tag(pkey, layer)] = float(pvalues[i, j])
        entries.append(entry)
    return entries


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.data())
def test_heatmap_data_is_the_history_matrix(rows, columns, draw):
    values = np.array(draw.draw(st.lists(st.floats(-1, 1), min_size=rows * columns, max_size=rows * columns))).reshape(rows, columns)
    p = np.array(draw.draw(st.lists(st.floats(0, 1), min_size=rows * columns, max_size=rows * columns))).reshape(rows, columns)
    layers = [f"block{i}.conv" for i in range(rows)]
    history = _history(values, layers, pvalues=p)
    data = heatmap_data(history, "excess")
    assert data.layers == layers and data.steps == [10 * j for j in range(columns)]
    assert _same(data.values, values) and _same(data.pvalues, p)
    assert _same(heatmap_data(history, "unit_mem_mean").values, values ** 2)
    assert heatmap_data(history, "unit_mem_mean").pvalues is None  # no test for it
    # the history as written before tags had sections reads the same
    old = [{k.replace(".", "/", 1) if k.startswith("memloc.") else k: v for k, v in e.items()} for e in history]
    assert any(k.startswith("memloc/excess/") for k in old[0])
    assert _same(heatmap_data(old, "excess").values, values)


def test_heatmap_figure_colours_the_matrices_and_marks_the_warmup():
    layers = ["conv1", "res1.conv1", "res1.conv2"]
    values = np.arange(12, dtype=float).reshape(3, 4) / 10 - 0.5
    p = np.full((3, 4), 0.5)
    p[1, 3] = 0.001
    fig = heatmap_figure(_history(values, layers, pvalues=p), warmup_step=10)
    images = {im.get_gid(): im for im in fig.findobj(AxesImage)}
    assert _same(images["excess"].get_array(), values) and _same(images["unit_mem_mean"].get_array(), values ** 2)
    lo, hi = images["excess"].get_clim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(0.6)  # centred on 0 (no excess is white)
    lines = [line for line in fig.findobj(Line2D) if line.get_gid() == "warmup"]
    assert len(lines) == 2 and all(line.get_xdata()[0] == 1.5 for line in lines)  # after steps 0 and 10
    stars = [t.get_text() for t in fig.axes[0].texts if t.get_text().endswith("*")]
    assert stars == [f"{values[1, 3]:+.2f}*"]  # the one cell whose Holm p is below 0.05
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == layers  # depth order, input at the top
    no_control = [{k: v for k, v in e.items() if "excess" not in k} for e in _history(values, layers)]
    assert [im.get_gid() for im in heatmap_figure(no_control).findobj(AxesImage)] == ["unit_mem_mean"]


@pytest.mark.parametrize("steps, end, expected", [
    ([0, 10, 20, 30], 20, 2.5), ([0, 10, 20], 20, 2.5), ([0, 10, 20], 15, 1.5), ([0, 10], 20, None),
    ([30, 40], 20, None), ([0, 10], None, None), ([5, 5, 25], 5, 1.5)])
def test_warmup_boundary_splits_the_measurements(steps, end, expected):
    assert warmup_boundary(steps, end) == expected
    if expected is not None:  # columns left of the line were measured by the end of the warm-up, the others after it
        assert all((step <= end) == (j < expected) for j, step in enumerate(steps))


def test_warmup_end_step_reads_the_module():
    class Epochs:
        warmup_epochs = 2

    class Steps:
        warmup_steps, warmup_epochs = 7, 2  # steps win

    class Off:
        warmup_epochs = 0

    class Flag:
        warmup_epochs = True  # not a count

    assert warmup_end_step(Epochs(), 15) == 30 and warmup_end_step(Steps(), 15) == 7
    assert warmup_end_step(Epochs(), None) is None and warmup_end_step(Off(), 15) is None
    assert warmup_end_step(Flag(), 15) is None and warmup_end_step(None, 15) is None

    class Trainer:
        num_training_batches, accumulate_grad_batches = 10, 3

    assert steps_per_epoch(Trainer()) == 4  # the last, partial accumulation still steps the optimizer
    Trainer.num_training_batches = float("inf")
    assert steps_per_epoch(Trainer()) is None


def test_named_writer_renames_text():
    calls = []

    class Writer:
        def add_text(self, tag, text, global_step=None):
            calls.append((tag, text, global_step))

    NamedWriter(Writer(), "ctl").add_text("memloc/lr_warmup", "ends at 4", global_step=3)
    assert calls == [("memloc-ctl/lr_warmup", "ends at 4", 3)]


# ------------------------------------------------------------------------------------ old histories
def test_plots_read_histories_written_with_the_former_tag_names(tmp_path, full_report):
    new = [{"epoch": e, "global_step": 4 * e, **{k: v + 0.01 * e for k, v in report_scalars(full_report).items()}}
           for e in range(-1, 3)]
    old = [{tags.PREFIX + "/" + k[len(tags.PREFIX) + 1:] if k.startswith("memloc.") else k: v for k, v in e.items()}
           for e in new]
    assert "memloc/excess_p_holm/conv1" in old[0] and load_history(old) == new
    (tmp_path / "old.json").write_text(json.dumps(old))
    for plot in (plot_history, plot_evidence_history):
        a, b = plot(new, tmp_path / "a.png"), plot(tmp_path / "old.json", tmp_path / "b.png")
        assert a.read_bytes() == b.read_bytes(), plot.__name__


# ------------------------------------------------------------------------------------ end to end
def _png(event) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


@pytest.mark.slow
def test_monitor_logs_sections_figures_and_the_warmup(tmp_path):
    images, split = cotraining_split()
    pl.seed_everything(0)
    monitor = MemorizationMonitor(images[split.candidates], every_n_epochs=1, views=2, encoder="encoder.backbone",
                                  reference="reference.backbone", top_k=3, grid_size=0, progress=False, batch_size=4,
                                  control=images[split.control(6)], unseen=images[split.independent], bootstrap=200,
                                  measure_on_train_start=True)
    model = cotrained_pair(max_epochs=2)  # warmup_epochs=1
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[monitor], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         logger=TensorBoardLogger(tmp_path, name="tb", version=0))
    trainer.fit(model, cotraining_loader(images, split, batch_size=8))
    steps = [h["global_step"] for h in monitor.history]
    assert steps == [0, 4, 8]  # 4 optimizer steps per epoch: the warm-up (1 epoch) ends at step 4
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"),
                           size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    # one section per quantity, each holding one chart per layer
    sections = {}
    for tag in acc.Tags()["scalars"]:
        sections.setdefault(tag.split("/")[0], []).append(tag)
    layers = monitor.report.layers
    for section, members in sections.items():
        if section.startswith("memloc."):
            quantity = section[len("memloc."):]
            assert sorted(members) == sorted(tags.scalar_tag(quantity, layer) for layer in layers), section
    assert {"memloc.excess", "memloc.excess_p_holm", "memloc.membership", "memloc.unit_mem_mean"} <= set(sections)
    # the significant-layer counts and the overall verdict
    assert len(sections["memloc"]) == len(monitor.report.evidence.meta["significant"]) + 1
    # the figures, at every measured step; the last ones are the final report's and the whole history's
    for name in tags.FIGURE_NAMES:
        assert [e.step for e in acc.Images(f"memloc/{name}")] == steps
    profile, heatmaps = acc.Images("memloc/profile")[-1], acc.Images("memloc/profile_over_training")[-1]
    assert np.array_equal(_png(profile), figure_array(profile_figure(monitor.report, warmup_step=4)))
    expected = figure_array(heatmap_figure(monitor.history, layers, warmup_step=4, alpha=0.05))
    assert np.array_equal(_png(heatmaps), expected)
    assert np.array_equal(_png(acc.Images("memloc/profile_over_training")[0]),
                          figure_array(heatmap_figure(monitor.history[:1], layers, warmup_step=4)))
    # the warm-up's end, said once
    notes = acc.Tensors("memloc/lr_warmup/text_summary")
    assert len(notes) == 1 and "global step 4" in tensor_util.make_ndarray(notes[0].tensor_proto).item().decode()
    # each per-layer run writes every quantity under its section's name: the section's first chart holds every layer
    run = tmp_path / "tb" / "version_0" / "memloc_layers" / f"03_{layers[2]}"
    in_run = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    assert [e.value for e in in_run.Scalars("memloc.excess")] == pytest.approx(
        [h[tags.scalar_tag("excess", layers[2])] for h in monitor.history])
