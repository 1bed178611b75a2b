"""SimCLR with lightly on the paper's ResNet9, your own LightningModule, and the memorization monitor.

The set-up of Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024):
lightly's ``SimCLRTransform`` (two views per image), ``SimCLRProjectionHead`` and ``NTXentLoss``,
a linear LR warm-up, and :class:`~lightning_memloc.MemorizationMonitor` measuring UnitMem of a
held-out candidate set every epoch (LayerMem too when ``--reference`` gives a checkpoint of the
same encoder trained without the candidates, e.g. one written by a previous run of this script
with ``--exclude-candidates``). The monitor measures on the views the model trains on: one view of
the training ``SimCLRTransform`` (``transform.transforms[0]``); its view check would warn otherwise.

    python examples/simclr_lightly.py --data digits --epochs 3
    python examples/simclr_lightly.py --data cifar10 --epochs 200 --width 64     # the paper's scale
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn
from torch.utils.data import DataLoader, Subset

from lightning_memloc import MemorizationMonitor
from lightning_memloc.data import TensorImageDataset, load_data, split_candidates
from lightning_memloc.models import ResNet9


class SimCLRModule(pl.LightningModule):
    """A plain lightly SimCLR LightningModule: the monitor only needs ``encoder="backbone"``."""

    def __init__(self, in_channels: int, width: int, lr: float, warmup_epochs: int, max_epochs: int) -> None:
        super().__init__()
        self.backbone = ResNet9(in_channels=in_channels, width=width)
        self.projection_head = SimCLRProjectionHead(self.backbone.feature_dim, 4 * width, 2 * width)
        self.criterion = NTXentLoss(temperature=0.5)
        self.lr, self.warmup_epochs, self.max_epochs = lr, warmup_epochs, max_epochs

    def training_step(self, batch, batch_idx):
        (first, second), _ = batch
        loss = self.criterion(self.projection_head(self.backbone(first)), self.projection_head(self.backbone(second)))
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=max(1, self.warmup_epochs))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.max_epochs - self.warmup_epochs))
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[max(1, self.warmup_epochs)])
        return [optimizer], [scheduler]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--reference", default=None, help="checkpoint of the reference encoder (enables LayerMem)")
    parser.add_argument("--exclude-candidates", action="store_true",
                        help="train on shared + independent (i.e. train a reference encoder)")
    parser.add_argument("--out", default="runs/simclr_lightly")
    args = parser.parse_args()

    pl.seed_everything(0)
    size = args.size or (16 if args.data == "digits" else None)
    images, labels = load_data(args.data, size=size)
    split = split_candidates(len(images), seed=0)
    train_idx = split.reference if args.exclude_candidates else split.encoder
    # lightly's SimCLR view transform on uint8 tensors: ImageNet-normalised (lightly's default), no blur at this size.
    transform = SimCLRTransform(input_size=images.shape[-1], gaussian_blur=0.0)
    dataset = Subset(TensorImageDataset(images, labels, transform=transform), train_idx.tolist())
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)

    monitor = MemorizationMonitor(
        images[split.candidates], labels=labels[split.candidates], views=args.views, encoder="backbone",
        transform=transform.transforms[0],  # measure on the views the model trains on (one view of the pair)
        reference=args.reference, measure_on_train_start=True, output_dir=f"{args.out}/memloc",
    )
    model = SimCLRModule(images.shape[1], args.width, args.lr, warmup_epochs=min(3, args.epochs), max_epochs=args.epochs)
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[monitor], default_root_dir=args.out, log_every_n_steps=5)
    trainer.fit(model, loader)
    torch.save(model.backbone.state_dict(), f"{args.out}/backbone.pt")
    print(monitor.report.summary_table())
    print(f"encoder weights: {args.out}/backbone.pt (pass as --reference after a run with --exclude-candidates)")


if __name__ == "__main__":
    main()
