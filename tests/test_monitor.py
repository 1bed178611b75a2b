"""End-to-end: MemorizationMonitor inside Trainer.fit, TensorBoard events, report files, resume."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_memloc import MemorizationReport, measure
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.cotrain import cotraining_loader
from helpers import cotrained_pair, cotraining_split

LAYERS = ["conv1", "conv2", "conv3"]


@pytest.fixture(scope="module")
def data():
    return cotraining_split()


def _monitor(images, split, **kwargs):
    defaults = dict(every_n_epochs=1, views=3, encoder="encoder.backbone", reference="reference.backbone",
                    top_k=3, grid_size=4, progress=False)
    defaults.update(kwargs)
    return MemorizationMonitor(images[split.candidates], **defaults)


def _trainer(tmp_path, callbacks, max_epochs=3, logger=True, **kwargs):
    return pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, logger=TensorBoardLogger(tmp_path, name="tb", version=0) if logger else False,
        deterministic=True, **kwargs,
    )


def test_fit_logs_tensorboard_and_writes_reports(tmp_path, data):
    images, split = data
    pl.seed_everything(0)
    monitor = _monitor(images, split, output_dir=tmp_path / "memloc")
    model = cotrained_pair()
    trainer = _trainer(tmp_path, [monitor], enable_checkpointing=False)
    trainer.fit(model, cotraining_loader(images, split, batch_size=8))

    assert [h["epoch"] for h in monitor.history] == [0, 1, 2]
    report = monitor.report
    assert report.layers == LAYERS and report.has_reference
    assert report.meta["epoch"] == 2
    # The logged scalars are also in callback_metrics.
    assert trainer.callback_metrics["memloc.layer_mem/conv3"].item() == pytest.approx(report.layer_mem["conv3"], abs=1e-6)

    # The report equals a post-hoc measure() of the final weights on the same views.
    again = measure(model.encoder.backbone, images[split.candidates], reference=model.reference.backbone, views=3,
                    seed=0, top_k=3)
    assert again.allclose(report, atol=1e-5)

    # Files: one report per measurement and the history, loadable.
    saved = MemorizationReport.load(tmp_path / "memloc" / "report_epoch=2.json")
    assert saved.allclose(report)
    assert [h["epoch"] for h in json.loads((tmp_path / "memloc" / "history.json").read_text())] == [0, 1, 2]

    # TensorBoard: scalars, histograms, images and the custom-scalars layout on one x-axis.
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"),
                           size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for layer in LAYERS:
        assert f"memloc.layer_mem/{layer}" in tags["scalars"]
        assert f"memloc.delta_layer_mem/{layer}" in tags["scalars"]
        assert f"memloc.unit_mem_mean/{layer}" in tags["scalars"]
        assert f"memloc.dead_units/{layer}" in tags["scalars"]
        assert f"memloc.unit_mem/{layer}" in tags["histograms"]
    scalar_steps = [e.step for e in acc.Scalars("memloc.layer_mem/conv1")]
    hist_steps = [e.step for e in acc.Histograms("memloc.unit_mem/conv1")]
    image_steps = [e.step for e in acc.Images("memloc/most_memorized")]
    figure_steps = [[e.step for e in acc.Images(f"memloc/{name}")] for name in ("profile", "profile_over_training")]
    assert scalar_steps == hist_steps == image_steps == [h["global_step"] for h in monitor.history]
    assert figure_steps == [scalar_steps, scalar_steps]  # the profile and the heat maps at every measurement
    assert [e.value for e in acc.Scalars("memloc.layer_mem/conv3")] == pytest.approx(
        [h["memloc.layer_mem/conv3"] for h in monitor.history], abs=1e-6)
    assert "memloc/least_memorized" in tags["images"]
    assert any("custom_scalars" in t for t in tags["tensors"])


def test_resume_continues_the_same_history(tmp_path, data):
    images, split = data

    def run(max_epochs, ckpt_path=None, ckdir=tmp_path / "ck"):
        pl.seed_everything(0)
        monitor = _monitor(images, split)
        checkpoint = ModelCheckpoint(dirpath=ckdir, save_last=True, every_n_epochs=1, save_top_k=-1)
        trainer = _trainer(tmp_path / f"log{max_epochs}", [monitor, checkpoint], max_epochs=max_epochs, logger=False)
        trainer.fit(cotrained_pair(), cotraining_loader(images, split, batch_size=8), ckpt_path=ckpt_path)
        return monitor

    full = run(3, ckdir=tmp_path / "full")
    run(2, ckdir=tmp_path / "part")
    resumed = run(3, ckpt_path=str(tmp_path / "part" / "last.ckpt"), ckdir=tmp_path / "part")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for a, b in zip(full.history, resumed.history):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_monitor_pass_leaves_modes_and_requires_grad(tmp_path, data):
    images, split = data
    seen = {}

    class Spy(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # runs after the monitor (callback order)
            seen["modes"] = {n: m.training for n, m in pl_module.named_modules()}
            seen["grads"] = {n: p.requires_grad for n, p in pl_module.named_parameters()}

    class Before(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            pl_module.encoder.backbone.conv1.eval()  # a mixed-mode model, like a frozen BN
            pl_module.encoder.backbone.conv2.conv.weight.requires_grad_(False)
            seen["before_modes"] = {n: m.training for n, m in pl_module.named_modules()}
            seen["before_grads"] = {n: p.requires_grad for n, p in pl_module.named_parameters()}

    monitor = _monitor(images, split)
    trainer = _trainer(tmp_path, [Before(), monitor, Spy()], max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(cotrained_pair(), cotraining_loader(images, split, batch_size=8))
    assert monitor.history, "the monitor did not measure"
    assert seen["modes"] == seen["before_modes"]
    assert seen["grads"] == seen["before_grads"]


def test_every_n_epochs_and_final_measurement(tmp_path, data):
    images, split = data
    monitor = _monitor(images, split, every_n_epochs=2, measure_on_train_start=True, reference=None)
    trainer = _trainer(tmp_path, [monitor], max_epochs=3, logger=False, enable_checkpointing=False)
    trainer.fit(cotrained_pair(), cotraining_loader(images, split, batch_size=8))
    # before training, epoch 1 (every 2nd), and the last epoch at the end of training
    assert [h["epoch"] for h in monitor.history] == [-1, 1, 2]
    assert not monitor.report.has_reference


def test_reference_from_checkpoint_file(tmp_path, data):
    images, split = data
    reference = cotrained_pair(1).reference.backbone
    path = tmp_path / "reference.pt"
    torch.save(reference.state_dict(), path)
    monitor = _monitor(images, split, reference=str(path))
    trainer = _trainer(tmp_path, [monitor], max_epochs=1, logger=False, enable_checkpointing=False)
    model = cotrained_pair()
    trainer.fit(model, cotraining_loader(images, split, batch_size=8))
    again = measure(model.encoder.backbone, images[split.candidates], reference=reference, views=3, top_k=3)
    assert again.allclose(monitor.report, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"views": 1}, ValueError, "views"),
        ({"threshold": 2.0}, ValueError, "threshold"),
        ({"reference": 3}, TypeError, "reference"),
    ],
)
def test_constructor_errors(data, kwargs, error, match):
    images, split = data
    with pytest.raises(error, match=match):
        _monitor(images, split, **kwargs)


def test_setup_errors_before_training(tmp_path, data):
    images, split = data
    model = cotrained_pair()
    before = [p.detach().clone() for p in model.parameters()]
    for kwargs, error in (({"encoder": "encoder.bakbone"}, AttributeError), ({"layers": ["conv9"]}, ValueError),
                          ({"reference": str(tmp_path / "missing.ckpt")}, FileNotFoundError)):
        trainer = _trainer(tmp_path, [_monitor(images, split, **kwargs)], max_epochs=1, logger=False,
                           enable_checkpointing=False)
        with pytest.raises(error):
            trainer.fit(model, cotraining_loader(images, split, batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "training ran before the error"


def test_control_and_unseen_in_one_pass_logged_with_intervals(tmp_path, data):
    images, split = data
    pl.seed_everything(0)
    control, unseen = images[split.control(6)], images[split.independent]
    monitor = _monitor(images, split, control=control, unseen=unseen, bootstrap=200, measure_on_train_start=True,
                       output_dir=tmp_path / "memloc")
    model = cotrained_pair()
    trainer = _trainer(tmp_path, [monitor], max_epochs=2, enable_checkpointing=False)
    trainer.fit(model, cotraining_loader(images, split, batch_size=8))
    report = monitor.report
    assert report.evidence.meta["groups"] == {"candidates": 8, "control": 6, "unseen": 8}
    direct = measure(model.encoder.backbone, images[split.candidates], reference=model.reference.backbone, views=3,
                     top_k=3, control=control, unseen=unseen, bootstrap=200)
    assert report.allclose(direct)
    for layer in LAYERS:
        assert report.evidence.layers[layer]["excess"] == pytest.approx(direct.evidence.layers[layer]["excess"], abs=1e-6)
    # the history and callback_metrics carry the evidence; the init point ran with recalibrated BatchNorm
    assert [h["epoch"] for h in monitor.history] == [-1, 0, 1]
    for key in ("excess", "excess_lo", "excess_hi", "excess_p_holm", "membership", "membership_p_holm", "unit_mem_mean_lo"):
        assert f"memloc.{key}/conv3" in monitor.history[-1]
        assert trainer.callback_metrics[f"memloc.{key}/conv3"].item() == pytest.approx(monitor.history[-1][f"memloc.{key}/conv3"])
    first = MemorizationReport.load(tmp_path / "memloc" / "report_epoch=-1.json")
    assert first.meta["init_batchnorm"] == "recalibrate" and report.meta["init_batchnorm"] == "model"
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0}).Reload()
    assert "memloc.excess/conv3" in acc.Tags()["scalars"] and "memloc.excess_lo/conv3" in acc.Tags()["scalars"]
    # margin charts (value, lower, upper) per layer in the custom-scalars layout
    from lightning_memloc.callbacks.logging import custom_scalar_layout

    layout = custom_scalar_layout(report)
    assert layout["memloc LayerMem excess over control ± CI"]["conv3"] == [
        "Margin", ["memloc.excess/conv3", "memloc.excess_lo/conv3", "memloc.excess_hi/conv3"]]


def test_recalibrated_init_restores_the_models_buffers(data):
    from lightning_memloc.baseline import recalibrated_batchnorm

    images, split = data
    model = cotrained_pair()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    views = MemorizationMonitor(images[split.candidates], views=2).pool
    with recalibrated_batchnorm(model.encoder.backbone, model.reference.backbone, views=views):
        bn = model.encoder.backbone.conv1.bn
        assert not torch.equal(bn.running_var, before["encoder.backbone.conv1.bn.running_var"])
        assert bn.training  # modes are the model's own; only the statistics differ inside
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.encoder.backbone.conv1.bn.training
    with pytest.raises(ValueError, match="init_batchnorm"):
        MemorizationMonitor(images[split.candidates], init_batchnorm="fresh")


def test_layer_runs_in_depth_order_for_tensorboard(tmp_path, data):
    """One TensorBoard run per layer, named <NN>_<layer> in depth order, one tag per quantity."""
    images, split = data
    pl.seed_everything(0)
    layers = ["conv3", "conv1", "conv2"]  # any order asked: runs follow the forward order
    monitor = _monitor(images, split, layers=layers, control=images[split.control(6)], bootstrap=200)
    trainer = _trainer(tmp_path, [monitor], max_epochs=1, enable_checkpointing=False)
    trainer.fit(cotrained_pair(), cotraining_loader(images, split, batch_size=8))
    root = tmp_path / "tb" / "version_0" / "memloc_layers"
    runs = sorted(p.name for p in root.iterdir())
    assert runs == [f"{i + 1:02d}_{name}" for i, name in enumerate(monitor.report.layers)]
    for run, layer in zip(runs, monitor.report.layers):
        acc = EventAccumulator(str(root / run), size_guidance={"scalars": 0, "histograms": 0}).Reload()
        assert "memloc.unit_mem" in acc.Tags()["histograms"]
        for quantity in ("layer_mem", "excess", "unit_mem_mean"):
            events = acc.Scalars(f"memloc.{quantity}")
            assert [e.value for e in events] == pytest.approx([monitor.history[-1][f"memloc.{quantity}/{layer}"]], abs=1e-6)
    from lightning_memloc.callbacks.logging import custom_scalar_layout

    layout = custom_scalar_layout(monitor.report, by_layer=True)["memloc"]  # series coloured by run = by layer
    assert layout["layer_mem"] == ["Multiline", [r"^memloc\.layer_mem$"]]
    assert layout["LayerMem excess over control ± CI"] == [
        "Margin", ["memloc.excess", "memloc.excess_lo", "memloc.excess_hi"]]
    no_runs = _monitor(images, split, layer_runs=False)
    trainer = _trainer(tmp_path / "b", [no_runs], max_epochs=1, enable_checkpointing=False)
    trainer.fit(cotrained_pair(), cotraining_loader(images, split, batch_size=8))
    assert not (tmp_path / "b" / "tb" / "version_0" / "memloc_layers").exists()
