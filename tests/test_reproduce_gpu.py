"""Smoke tests of examples/reproduce_gpu.py, the GPU run of the paper-scale check, on a CPU.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024). The script runs
with tiny settings (width 4, 16 px synthetic images, a few seconds); the pieces it adds (wall-clock
schedule, batch loader, the torch linear probe) are checked against hand values and scikit-learn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_memloc import MemorizationReport
from lightning_memloc.models import ResNet9
from helpers import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--shared", "40", "--candidates", "10", "--independent", "10", "--control", "10", "--width", "4",
        "--batch-size", "16", "--views", "2", "--top-k", "2", "--measure-batch", "16", "--bootstrap", "200",
        "--monitor-bootstrap", "200", "--probe-train", "30", "--ft-samples", "20", "--ft-epochs", "1",
        "--ft-batch", "8", "--device", "cpu", "--monitor-points", "2"]


def _load(name: str):
    """An example script as a module; examples/ goes on ``sys.path`` for its sibling imports."""
    return load_script(EXAMPLES / f"{name}.py", add_folder=True)


@pytest.fixture(scope="module")
def gpu():
    return _load("reproduce_gpu")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (70, 16, 16, 3), dtype=np.uint8), y=rng.integers(0, 3, 70))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--precision", "bf16-mixed", "--channels-last", "on"]],
                         ids=["fp32", "bf16-channels-last"])
def test_smoke_run_writes_every_output(gpu, data: Path, tmp_path: Path, extra) -> None:
    out = tmp_path / "out"
    assert gpu.main(["--data", str(data), "--out", str(out), "--max-epochs", "1", "--train-seconds", "600", *TINY,
                     *extra]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["f.pt", "g.pt", "history.json", "report.json", "results.json",
                                                       "tables.md"]
    results = json.loads((out / "results.json").read_text())
    # split: 40 / 10 / 10, control drawn from the shared part, all disjoint from candidates and independent
    assert results["split"] == {"shared": 40, "candidates": 10, "independent": 10, "control": 10}
    idx = results["indices"]
    assert not set(idx["control"]) & (set(idx["candidates"]) | set(idx["independent"]))
    assert not set(idx["candidates"]) & set(idx["independent"])
    # one epoch of (40 + 10) // 16 = 3 full batches, not stopped by the 5 s budget
    training = results["training"]
    assert training["steps_per_epoch"] == 3 and training["steps"] == 3 and training["epochs_reached"] == 1.0
    assert training["stopped_by_budget"] is False
    # the monitor measured before training (epoch -1) and at its end, with control and unseen images
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [-1, 0]
    assert all("memloc.excess/conv1" in h and "memloc.unit_mem_frac_above/res2.conv2" in h for h in history)
    report = MemorizationReport.load(out / "report.json")
    assert len(report.layers) == 8 and report.evidence.has("excess") and report.evidence.has("membership")
    assert report.candidate_ids.tolist() == idx["candidates"]
    assert set(results["a"]["evidence"]) == set(report.layers)
    # fine-tuning: the layers each configuration chose
    configs = results["b"]["configs"]
    assert list(configs) == ["head only", "top-2 LayerMem", "top-2 excess over control", "last 2"]
    assert configs["head only"]["layers"] == [] and configs["last 2"]["layers"] == report.layers[-2:]
    top = sorted(report.layers, key=lambda l: -report.layer_mem[l])[:2]
    assert sorted(configs["top-2 LayerMem"]["layers"]) == sorted(top)
    assert all(0.0 <= c["probe_acc"] <= 1.0 and 0.0 <= c["finetuned_acc"] <= 1.0 for c in configs.values())
    # pruning: 2 scopes x 2 amounts x 3 strategies; "highest" removes units of higher UnitMem than "lowest"
    pruned = results["c"]["configs"]
    assert len(pruned) == 12
    for scope in ("layer", "global"):
        assert pruned[f"{scope}/0.2/highest"]["mean_unit_mem_pruned"] > pruned[f"{scope}/0.2/lowest"]["mean_unit_mem_pruned"]
    assert sum(pruned["global/0.2/lowest"]["units_per_layer"].values()) == round(0.2 * sum(
        len(report.unit_mem[l]) for l in report.layers))
    tables = (out / "tables.md").read_text()
    for title in ("(a) over epochs: mean UnitMem", "(a) LayerMem, top-k", "(b) fine-tuning", "(c) pruning",
                  "(d) the paper's findings"):
        assert title in tables
    # half-precision backbones that load into the architecture
    state = torch.load(out / "f.pt", weights_only=True)
    assert state["conv1.conv.weight"].dtype == torch.float16
    channels_last = state["res2.conv2.conv.weight"].is_contiguous(memory_format=torch.channels_last)
    assert channels_last == bool(extra) and results["settings"]["precision"] == ("bf16-mixed" if extra else "32-true")
    ResNet9(in_channels=3, width=4).load_state_dict({k: v.float() if v.is_floating_point() else v
                                                      for k, v in state.items()})


def test_budget_stops_training_and_anneals(gpu, data: Path, tmp_path: Path) -> None:
    args = gpu.build_parser().parse_args(["--data", str(data), "--out", str(tmp_path), "--max-epochs", "100000",
                                          "--train-seconds", "2", *TINY])
    gpu.check_args(args)
    args.precision = "32-true"
    images, labels = gpu.load_data(args.data)
    split = gpu.split_candidates(len(images), shared=40, candidates=10, independent=10, seed=0)
    out = gpu.train(args, images, labels, split, split.control(10), torch.device("cpu"), top_k=2)
    assert out["stopped_by_budget"] and out["timer_s"] >= 2.0
    assert out["epochs_reached"] < 100000
    # the learning rate follows the clock (test_wall_clock_factor: warm-up, then cosine to 0 at the budget's end);
    # how far the last step got depends on the machine's load, so it is read back, not assumed
    factor = _load("gpu_training").wall_clock_factor(out["last_progress"], args.warmup)
    assert out["last_progress"] >= 0.0
    assert out["last_lr"] == pytest.approx(args.lr * max(factor, 1e-3))
    # paced monitor: before training, then every `monitor_every` epochs, then at the end
    epochs = [h["epoch"] for h in out["monitor"].history]
    assert epochs[0] == -1 and len(epochs) >= 2
    if out["monitor_every"] is None:  # a loaded machine: the budget ended before the pacer's second epoch
        assert out["epochs_reached"] <= 2
        return
    assert out["monitor_every"] >= 1
    assert all(e % out["monitor_every"] == out["monitor_every"] - 1 for e in epochs[1:-1])


def test_wall_clock_factor() -> None:
    factor = _load("gpu_training").wall_clock_factor
    assert factor(0.0, 0.1) == 0.0 and factor(0.05, 0.1) == pytest.approx(0.5) and factor(0.1, 0.1) == 1.0
    assert factor(0.55, 0.1) == pytest.approx(0.5) and factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert factor(3.0, 0.1) == pytest.approx(0.0, abs=1e-12) and factor(-1.0, 0.1) == 0.0
    assert factor(0.3, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    after = [factor(p / 100, 0.1) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_index_batch_loader_serves_each_image_once_per_epoch() -> None:
    index_batch_loader = _load("gpu_training").index_batch_loader
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    labels = torch.arange(20) % 3
    indices = torch.tensor([1, 3, 4, 7, 8, 10, 11, 15, 16, 19, 2, 5])
    loader = index_batch_loader(images, indices, batch_size=4, seed=0, labels=labels)
    assert len(loader) == 3
    seen = []
    for x, y in loader:
        assert x.shape == (4, 1, 2, 2) and x.dtype == torch.uint8
        ids = x[:, 0, 0, 0].long()
        assert torch.equal(y, labels[ids])
        seen += ids.tolist()
    assert sorted(seen) == sorted(indices.tolist())
    assert seen != indices.tolist()  # shuffled
    assert [b[0][:, 0, 0, 0].tolist() for b in loader] != [b[0][:, 0, 0, 0].tolist() for b in
                                                          index_batch_loader(images, indices, 4, seed=1)]


def test_fit_logistic_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    probe = _load("gpu_probe")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    x = rng.normal(size=(150, 6)) * [1.0, 5.0, 0.2, 1.0, 3.0, 1.0] + 0.8 * np.eye(3, 6)[y] + [0, 10, 0, 0, -4, 0]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=10000, tol=1e-12).fit(scaler.transform(x), y)
    head = probe.fit_logistic(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), 3)
    expected_w = clf.coef_ / scaler.scale_[None, :]
    torch.testing.assert_close(head.weight.detach().double(), torch.as_tensor(expected_w), atol=2e-4, rtol=1e-3)
    ours = torch.softmax(head(torch.as_tensor(x, dtype=torch.float32)), 1).detach().double()
    torch.testing.assert_close(ours, torch.as_tensor(clf.predict_proba(scaler.transform(x))), atol=2e-4, rtol=0)
    acc = probe.accuracy_of(head, torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
    assert acc == pytest.approx(clf.score(scaler.transform(x), y))
    with pytest.raises(ValueError, match="`x` must be"):
        probe.fit_logistic(torch.zeros(5), torch.zeros(5), 2)


@pytest.mark.parametrize("argv, match", [
    (["--data", "missing.npz"], "--data 'missing.npz': no such file"),
    (["--control", "50"], "--control 50 exceeds --shared 40"),
    (["--candidates", "1"], "need >= 2 images"),
    (["--prune", "0.1", "1.5"], "--prune takes fractions"),
])
def test_bad_arguments_stop_before_any_work(gpu, data: Path, tmp_path: Path, argv, match) -> None:
    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), *TINY, *argv]
    with pytest.raises(SystemExit, match=match.replace("(", r"\(")):
        gpu.main(args)
    assert not out.exists()


@pytest.mark.parametrize("strategy", ["head", "last"])
def test_finetuning_changes_only_what_it_should(strategy: str) -> None:
    """reproduce_paper.finetune (shared by both scripts): "head" keeps the whole encoder, BatchNorm
    statistics included; "last" changes the last 2 layers' parameters and no others."""
    from torch import nn

    from lightning_memloc import measure

    paper = _load("reproduce_paper")
    args = paper.build_parser().parse_args(["--ft-epochs", "1", "--ft-k", "2", "--ft-layer-lr", "0.01"])
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8), torch.arange(24) % 3
    encoder, reference = ResNet9(width=4).eval(), ResNet9(width=4).eval()
    report = measure(encoder, images[:8], reference=reference, views=2, top_k=2, bootstrap=0)
    head = nn.Linear(encoder.feature_dim, 3)
    model = paper.finetune(args, encoder, report, images, labels, torch.arange(8, 24), strategy, "layer_mem", 3, head)
    before, after = encoder.state_dict(), model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not torch.equal(model.head.weight, head.weight)
    if strategy == "head":
        assert changed == set()
    else:
        assert changed and all(k.startswith(("res2.conv1.", "res2.conv2.")) for k in changed)
        assert any(k.startswith("res2.conv1.") for k in changed) and any(k.startswith("res2.conv2.") for k in changed)


def test_full_precision_augment_ignores_autocast() -> None:
    from lightning_memloc import BatchedSimCLRAugment

    FullPrecision = _load("gpu_training").FullPrecision
    images, seeds = torch.rand(4, 3, 16, 16), torch.arange(4)
    augment = BatchedSimCLRAugment(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = FullPrecision(augment)(images.bfloat16(), seeds)
    assert views.dtype == torch.float32
    torch.testing.assert_close(views, augment(images.bfloat16().float(), seeds))
