"""``memloc analyze --model pkg.module:factory`` and ``--lightning-module pkg.Class --encoder-attr ...``."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from lightning_memloc import measure
from helpers import run_cli as run

USER_MODULE = '''
import pytorch_lightning as pl
import torch
from lightly.models import ResNetGenerator
from torch import nn


def backbone(width=0.125):
    """A lightly-style backbone: lightly's ResNet without its classifier."""
    resnet = ResNetGenerator("resnet-9", width=width)
    return nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1))


class LitSSL(pl.LightningModule):
    def __init__(self, width=0.125, seed=0):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.backbone = backbone(width)
        self.head = nn.Linear(int(512 * width), 4)

    def training_step(self, batch, batch_idx):
        return self.head(self.backbone(batch[0]).flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
'''
COMMON = ["--size", "8", "--views", "2", "--top-k", "2", "--no-progress", "--candidates", "4"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("usermodels")
    (root / "memloc_user_models.py").write_text(textwrap.dedent(USER_MODULE), encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), y=np.arange(6) % 2)
    return root


@pytest.fixture
def user(ws, monkeypatch):
    monkeypatch.syspath_prepend(str(ws))
    import memloc_user_models

    return memloc_user_models


def _images(ws) -> torch.Tensor:
    return torch.from_numpy(np.load(ws / "d.npz")["x"]).permute(0, 3, 1, 2)[:4]


def test_model_factory_with_weights_matches_measure(ws, user, tmp_path, one_thread):
    torch.manual_seed(0)
    f, g = user.backbone(), user.backbone()
    torch.save(f.state_dict(), tmp_path / "f.pt")
    torch.save(g.state_dict(), tmp_path / "g.pt")
    code, _, err = run(["analyze", "--model", "memloc_user_models:backbone", "--encoder", tmp_path / "f.pt",
                        "--reference", tmp_path / "g.pt", "--data", ws / "d.npz", "--output-dir", tmp_path / "out", *COMMON])
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    expected = measure(f.eval(), _images(ws), reference=g.eval(), views=2, top_k=2, progress=False)
    assert saved["layers"] == expected.layers == ["2.0", "3.0", "4.0", "5.0"]  # lightly's residual blocks
    assert saved["layer_mem"] == pytest.approx(expected.layer_mem, abs=1e-6)


def test_timm_factory_without_checkpoint(ws, tmp_path, one_thread):
    pytest.importorskip("timm")
    kwargs = json.dumps({"model_name": "resnet18", "num_classes": 0})
    code, _, err = run(["analyze", "--model", "timm:create_model", "--model-kwargs", kwargs, "--data", ws / "d.npz",
                        "--output-dir", tmp_path, *COMMON])
    assert code == 0, err
    layers = json.loads((tmp_path / "report.json").read_text())["layers"]
    assert layers[0] == "act1" and layers[1:] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def test_lightning_module_checkpoint(ws, user, tmp_path, one_thread):
    paths = []
    for seed in (0, 1):
        module = user.LitSSL(seed=seed)
        trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=str(tmp_path))
        trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(2, 3, 8, 8)), batch_size=2))
        trainer.save_checkpoint(tmp_path / f"m{seed}.ckpt")
        paths.append((tmp_path / f"m{seed}.ckpt", module))
    code, _, err = run(["analyze", "--lightning-module", "memloc_user_models.LitSSL", "--encoder-attr", "backbone",
                        "--encoder", paths[0][0], "--reference", paths[1][0], "--data", ws / "d.npz",
                        "--output-dir", tmp_path / "out", *COMMON])
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    f, g = paths[0][1].backbone.eval(), paths[1][1].backbone.eval()
    expected = measure(f, _images(ws), reference=g, views=2, top_k=2, progress=False)
    assert saved["layer_mem"] == pytest.approx(expected.layer_mem, abs=1e-6)
    code, _, err = run(["analyze", "--lightning-module", "memloc_user_models.LitSSL", "--encoder-attr", "trunk",
                        "--encoder", paths[0][0], "--data", ws / "d.npz", "--output-dir", tmp_path / "o2", *COMMON])
    assert code == 2 and "--encoder-attr" in err and "trunk" in err


@pytest.mark.parametrize("argv, flag", [
    (["--arch", "tiny", "--model", "x:y", "--encoder", "f.pt"], "--arch"),
    (["--lightning-module", "memloc_user_models.LitSSL"], "--encoder"),
    (["--model", "no_such_module_xyz:f"], "--model"),
    (["--model", "memloc_user_models:nothing"], "--model"),
    (["--model", "memloc_user_models:backbone", "--model-kwargs", "[1]"], "--model-kwargs"),
    (["--model", "memloc_user_models:backbone", "--encoder-attr", "backbone"], "--encoder-attr"),
    (["--lightning-module", "memloc_user_models:backbone", "--encoder", "f.ckpt"], "--lightning-module"),
])
def test_bad_model_arguments_name_the_flag(ws, user, tmp_path, argv, flag):
    code, _, err = run(["analyze", *argv, "--data", ws / "d.npz", "--output-dir", tmp_path, *COMMON])
    assert code == 2 and err.startswith(f"memloc analyze: error: {flag}:"), err
    assert not (tmp_path / "report.json").exists()
