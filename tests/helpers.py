"""Helpers shared by several test files: one definition instead of a copy per file.

Plain functions and classes, imported as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import matplotlib.image
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import BatchedSimCLRAugment, MemorizationMonitor
from lightning_memloc.cli import main
from lightning_memloc.models.cotrain import CoTrainedPair, cotraining_loader
from lightning_memloc.data import split_candidates
from lightning_memloc.models import TinyCNN
from lightning_memloc.models.ssl import SimCLR

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


# ------------------------------------------------------------- DDP on 2 CPU processes
def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class _DestroysGroupAtExit:
    """Destroy the process group when the worker exits, while the interpreter is still whole.

    Lightning registers this only for NCCL. A gloo group left to interpreter finalization can abort
    a spawned worker after a finished fit ("terminate called without an active exception", SIGABRT;
    pytorch/pytorch#179291): seen once in CI, never locally. ``on_fit_end`` callbacks and the spawn
    launcher run after the strategy's ``teardown`` and may still communicate, so not there.
    """

    def setup_distributed(self) -> None:
        super().setup_distributed()  # type: ignore[misc]
        atexit.register(_destroy_process_group)


class GlooSpawn(_DestroysGroupAtExit, pl.strategies.DDPStrategy):
    """``pytorch_lightning``'s ``DDPStrategy`` with spawn and gloo that shuts down cleanly."""


try:
    import lightning.pytorch.strategies as _lightning_strategies
except ImportError:  # the binding's own tests skip themselves
    _lightning_strategies = None  # type: ignore[assignment]
else:
    class LightningGlooSpawn(_DestroysGroupAtExit, _lightning_strategies.DDPStrategy):
        """The same for ``lightning.pytorch``."""


def gloo_spawn(package: str = "pytorch_lightning", seconds: int = 90) -> Any:
    """A spawn + gloo DDP strategy for 2 CPU processes; the short timeout turns a deadlock into an error."""
    strategy = GlooSpawn if package == "pytorch_lightning" else LightningGlooSpawn
    return strategy(start_method="spawn", process_group_backend="gloo", timeout=timedelta(seconds=seconds))


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


# ------------------------------------------------ slow float64 references of the metrics
def slow_unitmem(mu: np.ndarray, reduction: str = "mean") -> np.ndarray:
    """Loop over units: max, drop one occurrence of it, mean/np.median of the rest."""
    out = np.zeros(mu.shape[1])
    for u in range(mu.shape[1]):
        col = mu[:, u]
        k = int(np.argmax(col))
        rest = np.delete(col, k)
        other = rest.mean() if reduction == "mean" else np.median(rest)
        out[u] = 0.0 if col[k] + other == 0 else (col[k] - other) / (col[k] + other)
    return out


def slow_alignment(reps: torch.Tensor, anchor: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float64 double loop over views; an all-zero view stays zero (1 / max(‖r‖, 1e-12), as F.normalize)."""
    r = reps.double()
    r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n, k, _ = r.shape
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        dists = []
        if anchor is None:
            for a in range(k):
                for b in range(a + 1, k):
                    dists.append(float((r[i, a] - r[i, b]).norm()))
        else:
            an = anchor[i].double() / anchor[i].double().norm().clamp_min(1e-12)
            dists = [float((r[i, a] - an).norm()) for a in range(k)]
        out[i] = sum(dists) / len(dists)
    return out


def _slow_outputs(model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> List[Dict[str, torch.Tensor]]:
    """Each layer's output for each image, one image at a time, in float64 (a copy of the model, in eval mode)."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    modules = dict(twin.named_modules())
    grabbed: Dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: grabbed.__setitem__(n, o.detach()[0]))
             for n in layers]
    out = []
    with torch.no_grad():
        for image in images:
            twin(image.double().unsqueeze(0))
            out.append(dict(grabbed))
    for h in hooks:
        h.remove()
    return out


def _slow_policy(mu: np.ndarray, negative: str, layer: str) -> np.ndarray:
    if negative == "clamp":
        return np.maximum(mu, 0.0)
    if negative == "shift":  # a spread within 1e-5 of the unit's scale is constant (SHIFT_TOLERANCE)
        shifted = mu - mu.min(axis=0, keepdims=True)
        return np.where(shifted.max(axis=0, keepdims=True) <= 1e-5 * np.abs(mu).max(axis=0, keepdims=True), 0.0, shifted)
    if (mu < 0).any():
        raise ValueError(f"layer {layer!r}: negative mean activations with negative='error'")
    return mu


def slow_measure(encoder: nn.Module, reference: Optional[nn.Module], views: torch.Tensor, layers: Sequence[str], *,
                 top_k: int, reduction: str = "mean", negative: str = "clamp", anchors: Optional[torch.Tensor] = None,
                 labels: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """``measure()``'s figures from its views (N, K, C, H, W), one view, unit and candidate at a time, in float64.

    ``anchors`` (N, C, H, W): the un-augmented images for ``pairing="anchor"``. Dead units (μ all 0
    after the negative policy) have argmax -1. Raises ``ValueError`` where ``negative="error"`` meets
    a negative mean activation.
    """
    n, k = views.shape[:2]
    flat = views.reshape(n * k, *views.shape[2:])
    out: Dict[str, Any] = {"unit_mem": {}, "argmax": {}, "mu": {}, "raw_mu": {}, "class_mem": {}, "sslmem_raw": {}}

    def unit_means(o: torch.Tensor) -> torch.Tensor:
        return o.mean(dim=tuple(range(1, o.ndim))) if o.ndim >= 2 else o

    f_out = _slow_outputs(encoder, flat, layers)
    g_out = None if reference is None else _slow_outputs(reference, flat, layers)
    fa = ga = None
    if anchors is not None and reference is not None:
        fa, ga = _slow_outputs(encoder, anchors, layers), _slow_outputs(reference, anchors, layers)
    for layer in layers:
        per_view = torch.stack([unit_means(f_out[j][layer]) for j in range(n * k)]).reshape(n, k, -1)
        raw_mu = per_view.mean(1).numpy()
        mu = _slow_policy(raw_mu, negative, layer)
        out["mu"][layer], out["raw_mu"][layer] = mu, raw_mu
        out["unit_mem"][layer] = slow_unitmem(mu, reduction)
        out["argmax"][layer] = [int(np.argmax(mu[:, u])) if (mu[:, u] != 0).any() else -1 for u in range(mu.shape[1])]
        if labels is not None:
            classes = sorted(set(labels.tolist()))
            means = np.stack([raw_mu[labels.numpy() == c].mean(0) for c in classes])
            out.setdefault("class_mu", {})[layer] = (_slow_policy(means, negative, layer), means)
            out["class_mem"][layer] = slow_unitmem(out["class_mu"][layer][0], reduction)
        if reference is not None:
            def align(outs: List[Dict[str, torch.Tensor]], anchor_outs: Any) -> torch.Tensor:
                reps = torch.stack([outs[j][layer].flatten() for j in range(n * k)]).reshape(n, k, -1)
                anchor = None if anchor_outs is None else torch.stack([a[layer].flatten() for a in anchor_outs])
                return slow_alignment(reps, anchor)

            out["sslmem_raw"][layer] = align(g_out, ga) - align(f_out, fa)
    if reference is not None:
        out["sslmem"], out["layer_mem"] = {}, {}
        for layer in layers:
            raw = out["sslmem_raw"][layer]
            span = float(raw.max() - raw.min())
            out["sslmem"][layer] = raw / span if span > 0 else torch.zeros_like(raw)
            out["layer_mem"][layer] = float(out["sslmem"][layer].mean())
        last = out["sslmem"][layers[-1]].tolist()
        top = sorted(range(n), key=lambda i: (-last[i], i))[: min(top_k, n)]
        least = sorted(range(n), key=lambda i: (last[i], i))[: min(top_k, n)]
        out["top"] = {layer: float(out["sslmem"][layer][top].mean()) for layer in layers}
        out["least"] = {layer: float(out["sslmem"][layer][least].mean()) for layer in layers}
    return out
