"""Helpers shared by several test files: one definition instead of a copy per file.

Plain functions and classes, imported as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import io
from contextlib import contextmanager
from pathlib import Path

import matplotlib.image
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import BatchedSimCLRAugment, MemorizationMonitor
from lightning_memloc.cli import main
from lightning_memloc.cotrain import CoTrainedPair, cotraining_loader
from lightning_memloc.models import TinyCNN
from lightning_memloc.ssl import SimCLR


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "grads": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def assert_untouched(model: nn.Module, snapshot: dict) -> None:
    """Weights (and buffers), every module's mode and ``requires_grad`` as before; no hook left."""
    state = model.state_dict()
    assert state.keys() == snapshot["state"].keys()
    for key, value in snapshot["state"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, equal_nan=True, msg=f"{key} changed")
    assert {n: m.training for n, m in model.named_modules()} == snapshot["modes"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == snapshot["grads"]
    assert _no_hooks(model), "a hook was left on the model"


@contextmanager
def counting_forwards(model: nn.Module):
    """Count the model's forward calls (the hook is removed on exit, before any hook check)."""
    calls = {"n": 0}
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def files_in(folder: Path) -> set:
    """Every file under ``folder``, hidden ones (temporary files are ``.<name>.*.tmp``) included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _encoder(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN(width=width)
    model.train()
    model.conv1.eval()  # a mixed state (like a frozen BN block) that must survive every failure
    for p in model.conv2.parameters():
        p.requires_grad_(False)
    return model


def _pair(seed: int = 0, max_epochs: int = 3) -> CoTrainedPair:
    torch.manual_seed(seed)
    make = lambda: SimCLR(TinyCNN(width=4), feature_dim=16, hidden_dim=16, out_dim=8, augment=BatchedSimCLRAugment(16))
    return CoTrainedPair(make(), make(), lr=0.05, warmup_epochs=1, max_epochs=max_epochs)


def _monitor(train, split, **kwargs) -> MemorizationMonitor:
    defaults = dict(every_n_epochs=1, views=2, encoder="encoder.backbone", reference="reference.backbone",
                    top_k=3, grid_size=0, progress=False, batch_size=4)
    defaults.update(kwargs)
    return MemorizationMonitor(train[split.candidates], **defaults)


def _fit(train, split, callbacks, max_epochs=2, model=None, ckpt_path=None, **kwargs):
    model = _pair(max_epochs=max_epochs) if model is None else model
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                         **{"enable_checkpointing": False, **kwargs})
    trainer.fit(model, cotraining_loader(train, split, batch_size=8), ckpt_path=ckpt_path)
    return trainer, model


class LitModel(pl.LightningModule):
    def __init__(self, optimize_all: bool = False) -> None:
        super().__init__()
        self.backbone = TinyCNN(width=4)
        self.head = nn.Linear(16, 2)
        self.optimize_all = optimize_all

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self):
        params = list(self.parameters()) if self.optimize_all else [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g))
        return DataLoader(data, batch_size=8)


def make_trainer(callbacks, max_epochs: int = 2, checkpoint: bool = False) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=checkpoint,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


def run(argv) -> tuple:
    """``main(argv)`` with stdout / stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """A complete, readable PNG with a nonzero image size."""
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert not list(path.parent.glob(".*.tmp")), "atomic writes leave no temporary files"


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
