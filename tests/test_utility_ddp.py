"""``UtilityMonitor`` under DDP (2 CPU processes, gloo, ``ddp_spawn``) gives the single-process answer.

Each rank embeds a strided shard of the bank and of the test set; the bank's features are
all-gathered without padding duplicates (7 bank images over 2 ranks: shards of 4 and 3) and the
correct counts summed (5 test images: 3 and 2). A rank that measured everything, a padded gather
or a missing sum would all change the accuracy of at least one ``k`` here.
"""

from __future__ import annotations

import json
import os

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from helpers import gloo_spawn
from lightning_memloc.callbacks import UtilityMonitor
from lightning_memloc.callbacks.utility import gather_rows

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend"),
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
]


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full = torch.arange(14.0).reshape(7, 2)
        gathered = gather_rows(full[rank::world], 7, world)
        torch.save(gathered, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_rows_reassembles_strided_shards_without_padding(tmp_path):
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), torch.arange(14.0).reshape(7, 2))


class Tiny(pl.LightningModule):
    """A conv + BatchNorm encoder (its running statistics differ between ranks) trained on a toy loss."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU())

    def training_step(self, batch, batch_idx):
        return self.backbone(batch[0].float() / 255).var()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_ddp_knn_accuracy_equals_single_process(tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 1])
    make = lambda: UtilityMonitor(images[:7], labels[:7], images[7:], labels[7:], ks=(1, 3, 7), temperature=0.5,
                                  encoder="backbone", output_dir=tmp_path / "out")
    torch.manual_seed(0)
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=2, callbacks=[make()], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        strategy=gloo_spawn(),
    )
    trainer.fit(model, DataLoader(TensorDataset(images), batch_size=3))
    history = json.loads((tmp_path / "out" / "utility_history.json").read_text())
    assert len(history) == 1
    expected = make().compute(model.backbone)  # one process, rank 0's final weights and buffers
    assert {k: history[0][f"memloc/knn_acc_k{k}"] for k in (1, 3, 7)} == pytest.approx(expected)
    assert trainer.callback_metrics["memloc/knn_acc_k3"].item() == pytest.approx(expected[3])
    assert all(v * 5 == pytest.approx(round(v * 5)) for v in expected.values())  # counts over the 5 test images
