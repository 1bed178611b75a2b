"""LightningCLI: README's YAML attaches the monitor and fine-tuning, under both Lightning packages."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("jsonargparse")
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_yaml() -> str:
    return next(b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
                if "MemorizationFinetuning" in b)


@pytest.mark.slow
@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_readme_config_runs(package, tmp_path, monkeypatch, one_thread):
    pytest.importorskip(package.split(".")[0])
    cli_module = importlib.import_module(package + ".cli")
    text = _readme_yaml()
    if package == "pytorch_lightning":
        text = text.replace("lightning_memloc.lightning.", "lightning_memloc.")
    config = tmp_path / "memloc.yaml"
    config.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cli = cli_module.LightningCLI(args=[
        "fit", "--config", str(config), "--trainer.max_epochs=3", "--trainer.limit_train_batches=2",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks.init_args.unfreeze_at_epoch=1",
    ], save_config_callback=None)
    monitor, finetuning = cli.trainer.callbacks[:2]
    assert type(monitor).__name__ == "MemorizationMonitor" and type(finetuning).__name__ == "MemorizationFinetuning"
    assert isinstance(monitor, importlib.import_module(package).Callback)
    assert finetuning.source.source is monitor  # `source: monitor` resolved in setup
    assert len(monitor.views) == 64 and monitor.report.has_reference
    assert [h["epoch"] for h in monitor.history] == [-1, 0, 1, 2]
    assert (tmp_path / "runs" / "memloc" / "history.json").is_file()
    # the chosen layer trained in epochs 1..2, the others stayed frozen
    encoder = cli.model.encoder.backbone
    (layer,) = finetuning.chosen_layers
    assert all(p.requires_grad for n in finetuning.trainable_modules[layer] for p in encoder.get_submodule(n).parameters())
    others = [n for n in ("conv1", "conv2", "conv3") if n != layer]
    assert not any(p.requires_grad for n in others for p in encoder.get_submodule(n).parameters())
    # the candidates are the data module's candidates: the same images
    data = cli.datamodule
    assert torch.equal(data.split.candidates, torch.arange(64))
    assert torch.allclose(monitor.views.display_images(torch.arange(64)), data.images[:64].float().div(255))


def test_callbacks_from_the_command_line(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("lightning")
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.chdir(tmp_path)
    torch.save({"images": torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8), "labels": torch.arange(10) % 2},
               tmp_path / "cands.pt")
    model = ["--model=lightning_memloc.lightning.CoTrainedPair",
             "--model.encoder=lightning_memloc.ssl.SimCLR", "--model.encoder.backbone=lightning_memloc.models.TinyCNN",
             "--model.encoder.backbone.width=2", "--model.encoder.feature_dim=8",
             "--model.encoder.augment=lightning_memloc.BatchedSimCLRAugment", "--model.encoder.augment.size=8",
             "--model.reference=lightning_memloc.ssl.SimCLR", "--model.reference.backbone=lightning_memloc.models.TinyCNN",
             "--model.reference.backbone.width=2", "--model.reference.feature_dim=8",
             "--model.reference.augment=lightning_memloc.BatchedSimCLRAugment", "--model.reference.augment.size=8"]
    cli = LightningCLI(args=[
        "fit", *model, "--data=lightning_memloc.lightning.CoTrainingData", "--data.data=cands.pt",
        "--data.candidates=0:4", "--data.independent=4:6", "--data.batch_size=2",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=lightning_memloc.lightning.MemorizationMonitor", "--trainer.callbacks.candidates=cands.pt",
        "--trainer.callbacks.indices=[0, 1, 2, 3]", "--trainer.callbacks.labels=true", "--trainer.callbacks.views=2",
        "--trainer.callbacks.encoder=encoder.backbone", "--trainer.callbacks.name=cand",
        "--trainer.callbacks.progress=false", "--trainer.callbacks.measure_on_train_start=true",
        "--trainer.callbacks+=lightning_memloc.lightning.MemorizationPruning", "--trainer.callbacks.source=monitor:cand",
        "--trainer.callbacks.amount=1", "--trainer.callbacks.prune_at=0", "--trainer.callbacks.layers=[conv1]",
    ], save_config_callback=None)
    (monitor,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "MemorizationMonitor"]
    (pruning,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "MemorizationPruning"]
    assert monitor.name == "cand" and len(monitor.views) == 4 and monitor.report.class_mem is not None
    assert pruning.source.source is monitor and list(pruning.pruned_units) == ["conv1"]
    conv = cli.model.encoder.backbone.conv1.conv
    assert float(conv.weight[pruning.pruned_units["conv1"]].abs().sum()) == 0.0
    assert "memloc-cand.unit_mem_mean/conv1" in cli.trainer.callback_metrics
