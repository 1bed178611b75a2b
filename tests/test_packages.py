"""The callbacks and LightningModules under both Lightning packages, and several named monitors.

``lightning_memloc`` binds to ``pytorch_lightning``; ``lightning_memloc.lightning`` to
``lightning.pytorch`` (the test matrix: every test here runs under both).
"""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import gloo_spawn
from lightning_memloc.data import split_candidates
from lightning_memloc.models import TinyCNN

PACKAGES = ["pytorch_lightning", "lightning.pytorch"]


@pytest.fixture(params=PACKAGES)
def pkg(request):
    if request.param == "lightning.pytorch":
        pytest.importorskip("lightning")  # the dev extra installs it; a pytorch_lightning-only install runs half
    pl = importlib.import_module(request.param)
    memloc = importlib.import_module("lightning_memloc" if request.param == "pytorch_lightning" else "lightning_memloc.lightning")
    loggers = importlib.import_module(request.param + ".loggers")
    return SimpleNamespace(name=request.param, pl=pl, memloc=memloc, loggers=loggers)


def _lit(pl):
    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.backbone, self.head = TinyCNN(width=2), nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.head(self.backbone(x)), y)

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            return DataLoader(TensorDataset(torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g)),
                              batch_size=4)

    return Lit()


def _trainer(pkg, callbacks, tmp_path, epochs=2, **kwargs):
    kwargs.setdefault("logger", False)
    return pkg.pl.Trainer(max_epochs=epochs, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=str(tmp_path), **kwargs)


def test_bindings_are_the_package_classes(pkg):
    from lightning_memloc.callbacks import monitor

    assert issubclass(pkg.memloc.MemorizationMonitor, pkg.pl.Callback)
    assert issubclass(pkg.memloc.MemorizationMonitor, monitor.MemorizationMonitor)  # one implementation
    assert issubclass(pkg.memloc.MemorizationFinetuning, pkg.pl.callbacks.BaseFinetuning)
    assert issubclass(pkg.memloc.MemorizationPruning, pkg.pl.Callback)
    assert issubclass(pkg.memloc.CoTrainedPair, pkg.pl.LightningModule)
    assert issubclass(pkg.memloc.CoTrainingData, pkg.pl.LightningDataModule)
    assert pkg.memloc.measure is importlib.import_module("lightning_memloc").measure


def test_two_named_monitors_log_write_and_checkpoint_side_by_side(pkg, tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = torch.Generator().manual_seed(1)
    monitors = [pkg.memloc.MemorizationMonitor(torch.rand(6, 3, 8, 8, generator=g), views=2, encoder="backbone",
                                               progress=False, output_dir=tmp_path / "out", name=name, grid_size=2)
                for name in ("cand", "ctl")]
    logger = pkg.loggers.TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = _trainer(pkg, monitors, tmp_path, epochs=1, logger=logger)
    trainer.fit(_lit(pkg.pl))
    assert monitors[0].state_key != monitors[1].state_key
    for name in ("cand", "ctl"):
        assert f"memloc-{name}.unit_mem_mean/conv1" in trainer.callback_metrics
        assert (tmp_path / "out" / name / "history.json").is_file()
        assert (tmp_path / "out" / name / "report_epoch=0.json").is_file()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in ("cand", "ctl"):  # lightning's TensorBoardLogger gets the extras too (capability, not class)
        assert f"memloc-{name}.unit_mem/conv3" in tags["histograms"]
        assert f"memloc-{name}/most_memorized" in tags["images"]
        assert f"memloc-{name}.unit_mem_mean/conv3" in tags["scalars"]
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = layout_pb2.Layout.FromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    titles = sorted(c.title for c in layout.category)  # merged, not overwritten (+ each monitor's margin charts)
    assert {"memloc-cand", "memloc-ctl"} <= set(titles)
    assert all(t.startswith(("memloc-cand", "memloc-ctl")) for t in titles)
    ckpt = tmp_path / "both.ckpt"
    trainer.save_checkpoint(ckpt)
    states = torch.load(ckpt, weights_only=False)["callbacks"]
    assert {monitors[0].state_key, monitors[1].state_key} <= set(states)


def test_step_schedule(pkg, tmp_path, one_thread):
    monitor = pkg.memloc.MemorizationMonitor(torch.rand(4, 3, 8, 8), views=2, encoder="backbone", progress=False,
                                             every_n_train_steps=3, output_dir=tmp_path)
    _trainer(pkg, [monitor], tmp_path, epochs=2).fit(_lit(pkg.pl))  # 4 steps an epoch, 8 in all
    assert [h["global_step"] for h in monitor.history] == [3, 6, 8]  # multiples of 3, then the end of training
    assert sorted(p.name for p in tmp_path.glob("report_*.json")) == [
        "report_epoch=0_step=3.json", "report_epoch=1_step=6.json", "report_epoch=1_step=8.json"]
    with pytest.raises(ValueError, match="either `every_n_epochs`"):
        pkg.memloc.MemorizationMonitor(torch.rand(4, 3, 8, 8), every_n_epochs=1, every_n_train_steps=3)


def test_finetuning_and_pruning_read_a_monitor_by_name(pkg, tmp_path, one_thread):
    monitor = pkg.memloc.MemorizationMonitor(torch.rand(6, 3, 8, 8), views=2, encoder="backbone", progress=False,
                                             measure_on_train_start=True, name="cand")
    finetuning = pkg.memloc.MemorizationFinetuning("monitor:cand", k=1, by="unit_mem", encoder="backbone", head="head",
                                                   unfreeze_at_epoch=1)
    pruning = pkg.memloc.MemorizationPruning("monitor", amount=1, prune_at=1)
    model = _lit(pkg.pl)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _trainer(pkg, [monitor, finetuning, pruning], tmp_path).fit(model)
    assert finetuning.source.source is monitor and pruning.source.source is monitor
    layer = finetuning.chosen_layers[0]
    conv = model.backbone.get_submodule(layer).conv
    assert not torch.equal(before[f"backbone.{layer}.conv.weight"], conv.weight_orig)  # trained (masks aside)
    untouched = [n for n in ("conv1", "conv2", "conv3") if n != layer]
    assert not any(p.requires_grad for n in untouched for p in model.backbone.get_submodule(n).parameters())
    for layer, units in pruning.pruned_units.items():
        weight = model.backbone.get_submodule(layer).conv.weight
        assert units.numel() == 1 and float(weight[units].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="no MemorizationMonitor has name='other'"):
        _trainer(pkg, [monitor, pkg.memloc.MemorizationPruning("monitor:other", amount=1)], tmp_path).fit(_lit(pkg.pl))


def test_cotrained_pair_with_a_live_reference(pkg, tmp_path, one_thread):
    from lightning_memloc import BatchedSimCLRAugment
    from lightning_memloc.models.ssl import SimCLR

    torch.manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8)
    split = split_candidates(24, shared=16, candidates=4, independent=4, seed=0)

    def make():
        return SimCLR(TinyCNN(width=2), 8, hidden_dim=16, out_dim=8, augment=BatchedSimCLRAugment(8))

    pair = pkg.memloc.CoTrainedPair(make(), make(), lr=0.05, warmup_epochs=0, max_epochs=1)
    monitor = pkg.memloc.MemorizationMonitor(images[split.candidates], views=2, encoder="encoder.backbone",
                                             reference="reference.backbone", progress=False, top_k=2)
    trainer = _trainer(pkg, [monitor], tmp_path, epochs=1)
    trainer.fit(pair, pkg.memloc.cotraining_loader(images, split, batch_size=8))
    assert trainer.global_step == 2 and monitor.report.has_reference
    assert json.loads(json.dumps(monitor.history))[0]["memloc.layer_mem/conv3"] == monitor.report.layer_mem["conv3"]


def test_csv_logger_gets_the_scalars_only(pkg, tmp_path, one_thread):
    from lightning_memloc.callbacks.logging import has_tensorboard

    monitor = pkg.memloc.MemorizationMonitor(torch.rand(4, 3, 8, 8), views=2, encoder="backbone", progress=False)
    csv = pkg.loggers.CSVLogger(str(tmp_path), name="csv", version="")
    tensorboard = pkg.loggers.TensorBoardLogger(str(tmp_path), name="tb", version="")
    assert not has_tensorboard(csv) and has_tensorboard(tensorboard)
    _trainer(pkg, [monitor], tmp_path, epochs=1, logger=csv).fit(_lit(pkg.pl))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "memloc.unit_mem_mean/conv3" in header
    assert not any(h.startswith(("memloc.unit_mem/", "memloc/profile", "memloc/most_memorized")) for h in header)


@pytest.mark.slow
def test_ddp_spawn_under_lightning(tmp_path, one_thread):
    """The lightning.pytorch binding under ``ddp_spawn`` (2 CPU processes, gloo): rank 0's report
    equals a single-process ``measure()`` of the weights that come back (test_ddp.py checks the
    same for pytorch_lightning in depth)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is unavailable")
    L = pytest.importorskip("lightning.pytorch")

    from lightning_memloc import BatchedSimCLRAugment, MemorizationReport, measure
    from lightning_memloc.lightning import CoTrainedPair, MemorizationMonitor, cotraining_loader
    from lightning_memloc.models.ssl import SimCLR

    torch.manual_seed(0)
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    split = split_candidates(30, shared=16, candidates=7, independent=7, seed=0)
    make = lambda: SimCLR(TinyCNN(width=2), 8, hidden_dim=16, out_dim=8, augment=BatchedSimCLRAugment(8))  # noqa: E731
    pair = CoTrainedPair(make(), make(), lr=0.05, warmup_epochs=0, max_epochs=1)
    candidates = images[split.candidates]
    monitor = MemorizationMonitor(candidates, views=2, seed=3, encoder="encoder.backbone", reference="reference.backbone",
                                  top_k=3, progress=False, output_dir=tmp_path)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor],
                        strategy=gloo_spawn("lightning"))
    trainer.fit(pair, cotraining_loader(images, split, batch_size=4))
    saved = MemorizationReport.load(tmp_path / "report_epoch=0.json")
    single = measure(pair.encoder.backbone, candidates, reference=pair.reference.backbone, views=2, seed=3, top_k=3,
                     progress=False)
    assert saved.meta["num_candidates"] == 7 and single.allclose(saved, atol=1e-5)


def test_checkpoint_moves_from_pytorch_lightning_to_lightning(tmp_path, one_thread):
    pytest.importorskip("lightning")
    old = SimpleNamespace(pl=importlib.import_module("pytorch_lightning"), memloc=importlib.import_module("lightning_memloc"))
    new = SimpleNamespace(pl=importlib.import_module("lightning.pytorch"),
                          memloc=importlib.import_module("lightning_memloc.lightning"))
    candidates = torch.rand(4, 3, 8, 8)
    first = old.memloc.MemorizationMonitor(candidates, views=2, encoder="backbone", progress=False, name="x")
    trainer = _trainer(old, [first], tmp_path, epochs=1)
    trainer.fit(_lit(old.pl))
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    second = new.memloc.MemorizationMonitor(candidates, views=2, encoder="backbone", progress=False, name="x")
    assert second.state_key == first.state_key
    _trainer(new, [second], tmp_path, epochs=2).fit(_lit(new.pl), ckpt_path=tmp_path / "old.ckpt")
    assert [h["epoch"] for h in second.history] == [0, 1]  # the history continued
    assert second.history[0] == first.history[0]
