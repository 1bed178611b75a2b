"""Helpers shared by several test files: one definition instead of a copy per file.

Plain functions and classes, imported as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import matplotlib.image
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import BatchedSimCLRAugment, MemorizationMonitor
from lightning_memloc.cli import main
from lightning_memloc.cotrain import CoTrainedPair, cotraining_loader
from lightning_memloc.data import split_candidates
from lightning_memloc.models import TinyCNN
from lightning_memloc.ssl import SimCLR

if TYPE_CHECKING:
    from lightning_memloc.data import SplitIndices


# ----------------------------------------------------------- a model left as it was
def take_snapshot(model: nn.Module) -> dict:
    """Weights and buffers, every module's mode and every parameter's ``requires_grad``, copied."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "grads": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def no_hooks(model: nn.Module) -> bool:
    """No forward (pre-)hook left on any module."""
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def assert_untouched(model: nn.Module, snapshot: dict) -> None:
    """Weights (and buffers), every module's mode and ``requires_grad`` as before; no hook left."""
    state = model.state_dict()
    assert state.keys() == snapshot["state"].keys()
    for key, value in snapshot["state"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, equal_nan=True, msg=f"{key} changed")
    assert {n: m.training for n, m in model.named_modules()} == snapshot["modes"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == snapshot["grads"]
    assert no_hooks(model), "a hook was left on the model"


@contextmanager
def counting_forwards(model: nn.Module) -> Iterator[Dict[str, int]]:
    """Count the model's forward calls (the hook is removed on exit, before any hook check)."""
    calls = {"n": 0}
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def files_in(folder: Path) -> Set[str]:
    """Every file under ``folder``, hidden ones (temporary files are ``.<name>.*.tmp``) included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def mixed_encoder(seed: int = 0, width: int = 4) -> nn.Module:
    """A ``TinyCNN`` in train mode with ``conv1`` in eval mode and ``conv2`` frozen."""
    torch.manual_seed(seed)
    model = TinyCNN(width=width)
    model.train()
    model.conv1.eval()  # a mixed state (like a frozen BN block) that must survive every failure
    for p in model.conv2.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------- co-trained SimCLR pairs
def cotraining_split() -> Tuple[torch.Tensor, SplitIndices]:
    """40 random uint8 images (3x16x16) and their split: 24 shared, 8 candidates, 8 independent."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=gen)
    return images, split_candidates(40, shared=24, candidates=8, independent=8, seed=0)


def cotrained_pair(seed: int = 0, max_epochs: int = 3) -> CoTrainedPair:
    """Two SimCLR ``TinyCNN(width=4)`` encoders, ``encoder`` and ``reference``, trained in one ``fit``."""
    torch.manual_seed(seed)
    make = lambda: SimCLR(TinyCNN(width=4), feature_dim=16, hidden_dim=16, out_dim=8, augment=BatchedSimCLRAugment(16))
    return CoTrainedPair(make(), make(), lr=0.05, warmup_epochs=1, max_epochs=max_epochs)


def pair_monitor(train: torch.Tensor, split: SplitIndices, **kwargs: Any) -> MemorizationMonitor:
    """A monitor of a :func:`cotrained_pair` every epoch, 2 views, batch size 4 (``kwargs`` override)."""
    defaults = dict(every_n_epochs=1, views=2, encoder="encoder.backbone", reference="reference.backbone",
                    top_k=3, grid_size=0, progress=False, batch_size=4)
    defaults.update(kwargs)
    return MemorizationMonitor(train[split.candidates], **defaults)


def fit_pair(train: torch.Tensor, split: SplitIndices, callbacks: List[pl.Callback], max_epochs: int = 2,
             model: Optional[CoTrainedPair] = None, ckpt_path: Optional[str] = None,
             **kwargs: Any) -> Tuple[pl.Trainer, CoTrainedPair]:
    """Fit ``model`` (a new :func:`cotrained_pair` by default) on the split, on CPU, deterministically."""
    model = cotrained_pair(max_epochs=max_epochs) if model is None else model
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                         **{"enable_checkpointing": False, **kwargs})
    trainer.fit(model, cotraining_loader(train, split, batch_size=8), ckpt_path=ckpt_path)
    return trainer, model


# -------------------------------------------------- a supervised model for the callbacks
class LitModel(pl.LightningModule):
    """``backbone`` (``TinyCNN(width=4)``) and a linear ``head`` on 16 random 3x8x8 images, 2 classes."""

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


def make_trainer(callbacks: List[pl.Callback], max_epochs: int = 2, checkpoint: bool = False) -> pl.Trainer:
    """A quiet CPU trainer without logger (checkpointing only when asked)."""
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=checkpoint,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


# ------------------------------------------------------------- the command line, files
def run_cli(argv: Sequence[Any]) -> Tuple[int, str, str]:
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


def n_params(model: nn.Module) -> int:
    """Number of parameters (elements)."""
    return sum(p.numel() for p in model.parameters())


def small_monitor(**kwargs: Any) -> MemorizationMonitor:
    """A monitor of ``backbone`` over 4 random 3x8x8 candidates, 2 views, no figures."""
    return MemorizationMonitor(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)), views=2,
                               encoder="backbone", progress=False, grid_size=0, log_histograms=False, **kwargs)


def load_script(path: Path, name: Optional[str] = None, *, add_folder: bool = False,
                register: bool = False) -> ModuleType:
    """Import the script at ``path`` as a module.

    ``add_folder``: the script's folder goes on ``sys.path`` first (for its sibling imports);
    ``register``: the module is put in ``sys.modules`` under ``name`` (dataclasses need it).
    """
    path = Path(path)
    if add_folder and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
