"""Reliability: bad inputs, faults, interrupts and resume (the table in docs/reliability.md).

Every error case checks three things: the exception type (a standard type, or a package error
deriving from one), fragments of the message (the argument's name and the fix), and that nothing
was touched (weights, train/eval modes, ``requires_grad``, no hook left, no file written).
"""

from __future__ import annotations

import copy
import json
import random
import signal

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset

from lightning_memloc import (
    ArchitectureMismatchError,
    CheckpointError,
    LayerNotFoundError,
    MemlocError,
    MemorizationMeter,
    MemorizationReport,
    NonFiniteActivationError,
    ReportFormatError,
    load_encoder,
    measure,
)
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.io import atomic_write_text
from lightning_memloc.measure import build_views, probe_layers, run_pass
from lightning_memloc.models import TinyCNN, TinyMLP
from helpers import (
    assert_untouched, cotrained_pair, cotraining_split, counting_forwards, files_in, fit_pair, mixed_encoder,
    no_hooks, pair_monitor, take_snapshot,
)

LAYERS = ["conv1", "conv2", "conv3"]


# ------------------------------------------------------------ measure(): bad inputs
def test_empty_candidate_set(encoder, images):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(ValueError, match=r"`candidates` is empty.*at least one"):
        measure(encoder, images[:0])
    assert calls["n"] == 0
    assert_untouched(encoder, snap)
    with pytest.raises(ValueError, match="`candidates` is empty"):
        MemorizationMonitor(images[:0], views=2, progress=False)


def test_single_candidate(encoder, images):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(ValueError, match=r"at least 2 candidates, got 1.*pass more"):
        measure(encoder, images[:1])
    assert calls["n"] == 0
    assert_untouched(encoder, snap)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        MemorizationMonitor(images[:1], views=2, progress=False)


def test_layermem_needs_two_views_with_pairing_all(encoder, reference, images):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(
            ValueError, match=r"`views` >= 2, got 1: raise `views` or use pairing='anchor'"):
        measure(encoder, images, reference=reference, views=1)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)
    with pytest.raises(ValueError, match="`views` >= 2"):
        MemorizationMonitor(images, views=1, reference="reference", progress=False)
    # the documented way out: one view against the un-augmented image
    report = measure(encoder, images, reference=reference, views=1, pairing="anchor", top_k=2)
    assert all(np.isfinite(v) for v in report.layer_mem.values())
    assert_untouched(encoder, snap)
    # UnitMem alone is defined for K = 1
    assert measure(encoder, images, views=1).layers == LAYERS


def test_unknown_layer_lists_close_matches(encoder, images):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(LayerNotFoundError) as info:
        measure(encoder, images, layers=["conv_2", "conv3"])
    assert calls["n"] == 0
    message = str(info.value)
    assert "'conv_2' not found in TinyCNN" in message and "Did you mean 'conv2'" in message
    assert "named_modules" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemlocError)
    assert_untouched(encoder, snap)
    with pytest.raises(ValueError, match=r"layers=\['conv2'\]"):
        measure(encoder, images, layers="conv2")  # a bare string is not a list of names
    with pytest.raises(ValueError, match="`layers` is empty"):
        measure(encoder, images, layers=[])
    assert_untouched(encoder, snap)


class _Renamed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TinyCNN(width=4)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("make_reference, fragments", [
    (lambda: TinyCNN(width=5), ["layer 'conv1' outputs shape (4, 16, 16)", "(5, 16, 16) in `reference`", "share the architecture"]),
    (lambda: TinyCNN(in_channels=1, width=4), ["`reference` cannot run on views", "share the architecture"]),
    (_Renamed, ["`reference` has no layers", "conv1", "same model trained without the candidates"]),
], ids=["layer-shapes", "input-channels", "layer-names"])
def test_reference_architecture_mismatch(encoder, images, make_reference, fragments):
    reference = make_reference().eval()
    snap, snap_ref = take_snapshot(encoder), take_snapshot(reference)
    with pytest.raises(ArchitectureMismatchError) as info:
        measure(encoder, images, reference=reference, views=2)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert_untouched(encoder, snap)
    assert_untouched(reference, snap_ref)


def test_reference_is_the_encoder_itself(encoder, images):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(
            ValueError, match="`reference` is the encoder itself: pass an encoder trained without the candidates"):
        measure(encoder, images, reference=encoder, views=2)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)


def test_candidates_that_do_not_fit_the_encoder(images):
    encoder = TinyCNN(in_channels=1, width=4)
    snap = take_snapshot(encoder)
    with pytest.raises(ValueError, match=r"encoder cannot run on a batch of candidate views of shape \(\d+, 3, 16, 16\)") as info:
        measure(encoder, images, views=2)
    assert "channels" in str(info.value) and "`candidates`" in str(info.value)
    assert_untouched(encoder, snap)


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"batch_size": 0}, ValueError, "`batch_size` must be an int >= 1, got 0"),
    ({"batch_size": 2.5}, ValueError, "`batch_size` must be an int >= 1, got 2.5"),
    ({"top_k": 0}, ValueError, "`top_k` must be an int >= 1, got 0"),
    ({"views": 0}, ValueError, "`views` must be an int >= 1, got 0"),
    ({"views": True}, ValueError, "`views` must be an int >= 1, got True"),
    ({"num_workers": -1}, ValueError, "`num_workers` must be an int >= 0, got -1"),
    ({"pairing": "pairs"}, ValueError, "`pairing` must be one of ('all', 'anchor'), got 'pairs'"),
    ({"reduction": "max"}, ValueError, "`reduction` must be one of ('mean', 'median'), got 'max'"),
    ({"negative": "abs"}, ValueError, "`negative` must be one of ('clamp', 'shift', 'error'), got 'abs'"),
    ({"candidate_ids": torch.arange(3)}, ValueError, "`candidate_ids` must have shape (6,), got (3,)"),
    ({"transform": 3}, TypeError, "`transform` must be callable, got int"),
    ({"reference": "g.ckpt"}, TypeError, "load checkpoints with `lightning_memloc.load_encoder`"),
], ids=["batch_size-0", "batch_size-float", "top_k-0", "views-0", "views-bool", "num_workers", "pairing", "reduction",
        "negative", "candidate_ids", "transform", "reference-path"])
def test_invalid_settings(encoder, images, kwargs, error, fragment):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(error) as info:
        measure(encoder, images, **kwargs)
    assert fragment in str(info.value)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)


@pytest.mark.parametrize("candidates, error, fragment", [
    ([torch.rand(3, 16, 16)] * 4, TypeError, "`candidates` must be a tensor"),
    (torch.zeros(4, 3, 16, 16, dtype=torch.int64), TypeError, "`candidates` must be a uint8 or float tensor"),
    (torch.rand(4, 16), ValueError, "`candidates` must be (N, C, H, W) images"),
    (torch.rand(4, 2, 3, 3, 16, 16), ValueError, "`candidates` must be (N, C, H, W) images, (N, K, C, H, W) views"),
], ids=["list", "int64", "2-D", "6-D"])
def test_candidates_of_the_wrong_kind(encoder, candidates, error, fragment):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(error) as info:
        measure(encoder, candidates, views=2)
    assert fragment in str(info.value)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)


def test_precomputed_views_are_used_as_they_are(encoder):
    # `views` is ignored for a views tensor (N, K, C, H, W): K comes from the tensor
    report = measure(encoder, torch.rand(4, 3, 3, 16, 16), views=10)
    assert report.meta["views"] == 3


class _MixedSizes(Dataset):
    """Images of two sizes: 16×16 for candidates 0-1, 20×16 for the others."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.rand(3, 16 if i < 2 else 20, 16, generator=torch.Generator().manual_seed(i))


def test_candidates_of_mixed_shapes(encoder):
    snap = take_snapshot(encoder)
    with pytest.raises(ValueError) as info:
        measure(encoder, _MixedSizes(), views=2, batch_size=4)
    message = str(info.value)
    assert "candidates in a batch have different shapes" in message
    assert "(3, 16, 16) (e.g. candidate 0)" in message and "(3, 20, 16) (e.g. candidate 2)" in message
    assert "resize the images" in message and "fixed-size transform" in message
    assert_untouched(encoder, snap)
    # a fixed-size per-image transform is the fix: every view is 16×16 whatever the image size
    fixed = lambda img: torch.nn.functional.interpolate(img[None], size=(16, 16), mode="bilinear")[0]
    report = measure(encoder, _MixedSizes(), views=2, batch_size=4, transform=fixed)
    assert report.num_candidates == 4


@pytest.mark.parametrize("labels, error, fragment", [
    (torch.tensor([0, 1]), ValueError, "`labels` has 2 entries for 6 candidates: pass one class id per candidate"),
    (torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0, 2.0]), TypeError, "`labels` must hold integer class ids, got dtype torch.float32"),
    (torch.tensor([0, 1, -1, 1, 0, 1]), ValueError, "`labels` must be class ids >= 0 for ClassMem, got [-1]"),
    (torch.zeros(6, dtype=torch.long), ValueError, "`labels` hold a single class [0]"),
], ids=["wrong-length", "float", "negative", "one-class"])
def test_bad_labels_for_classmem(encoder, images, labels, error, fragment):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(error) as info:
        measure(encoder, images, views=2, labels=labels)
    assert fragment in str(info.value)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)
    with pytest.raises(error, match="`labels`"):
        MemorizationMonitor(images, views=2, labels=labels, progress=False)


def test_missing_labels_skip_classmem(encoder, images):
    report = measure(encoder, images, views=2)
    assert report.class_mem is None
    assert report.unit_mem.keys() == set(LAYERS)
    with_labels = measure(encoder, images, views=2, labels=torch.tensor([0, 1, 0, 1, 2, 2]))
    assert with_labels.class_mem.keys() == set(LAYERS)


@pytest.mark.parametrize("transform, fragment", [
    (lambda img: img.numpy(), "got ndarray"),
    (lambda img: (img * 255).to(torch.uint8), "got Tensor torch.uint8"),
    (lambda img: img[None], "(1, 3, 16, 16)"),
], ids=["ndarray", "uint8", "4-D"])
def test_transform_returning_the_wrong_type(encoder, images, transform, fragment):
    snap = take_snapshot(encoder)
    state = torch.get_rng_state()
    with counting_forwards(encoder) as calls, pytest.raises(TypeError) as info:
        measure(encoder, images, views=2, transform=transform)
    message = str(info.value)
    assert "`transform` must return a float tensor (C, H, W)" in message and fragment in message
    assert "ToDtype(torch.float32, scale=True)" in message
    assert calls["n"] == 0
    assert_untouched(encoder, snap)
    assert torch.equal(torch.get_rng_state(), state), "the training RNG was perturbed"


# ------------------------------------------------------------- activations
class _GeluNet(nn.Module):
    """A linear layer whose outputs are negative for some inputs (no ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 8)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.fc(x.flatten(1)))


def test_negative_activation_policies():
    torch.manual_seed(0)
    model = _GeluNet()
    views = torch.randn(6, 3, 12)  # (N, K, D) feature views
    for policy in ("clamp", "shift"):
        report = measure(model, views, layers=["fc"], negative=policy)
        scores = report.unit_mem["fc"]
        assert torch.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all(), policy
    snap = take_snapshot(model)
    with pytest.raises(ValueError) as info:
        measure(model, views, layers=["fc"], negative="error")
    message = str(info.value)
    assert "layer 'fc'" in message and "negative value(s)" in message
    assert "use negative='clamp' or 'shift'" in message
    assert_untouched(model, snap)


def _poisoned(value: float) -> nn.Module:
    model = mixed_encoder(2)
    with torch.no_grad():
        model.conv2.conv.weight[0, 0, 0, 0] = value
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_activations_name_the_layer(images, reference, value):
    bad = _poisoned(value)
    snap = take_snapshot(bad)
    with pytest.raises(NonFiniteActivationError) as info:
        measure(bad, images, views=2, batch_size=2)
    message = str(info.value)
    assert "encoder layers ['conv2', 'conv3']" in message and "conv1" not in message
    assert "exclude these layers with `layers=[...]`" in message
    assert isinstance(info.value, ValueError)
    assert_untouched(bad, snap)
    # a diverged reference is named as such
    with pytest.raises(NonFiniteActivationError, match=r"reference layers \['conv2', 'conv3'\]"):
        measure(mixed_encoder(3), images, reference=bad, views=2)
    assert_untouched(bad, snap)


def test_nonfinite_candidates(encoder, images):
    candidates = images.clone()
    candidates[3, 0, 5, 5] = float("inf")
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(ValueError, match=r"`candidates` holds 1 NaN or inf pixel"):
        measure(encoder, candidates, views=2, transform=lambda img: img.clone())  # an image tensor: before any work
    assert calls["n"] == 0
    views = torch.stack([candidates, candidates], 1)  # precomputed views are not scanned: the pass names the layers
    with pytest.raises(NonFiniteActivationError, match=r"encoder layers \['conv1', 'conv2', 'conv3'\].*candidates are not finite"):
        measure(encoder, views)
    assert_untouched(encoder, snap)


def test_run_pass_names_the_epoch(images, reference):
    bad = _poisoned(float("nan"))
    view_set = build_views(images, 2, None, 0, None)
    specs, units = probe_layers(bad, reference, "auto", view_set.example_batch())
    meter = MemorizationMeter(specs, units, len(view_set), reference=True, labels=False, top_k=2)
    with pytest.raises(NonFiniteActivationError, match=r"at epoch 3 in encoder layers \['conv2', 'conv3'\]"):
        run_pass(bad, reference, view_set, specs, meter, batch_size=2, epoch=3)
    assert no_hooks(bad)
    # nothing non-finite reached the metric states
    assert all(torch.isfinite(t).all() for t in meter.state_dict().values() if t.is_floating_point())


def test_bf16_model(images):
    torch.manual_seed(0)
    f32, g32 = TinyCNN(width=4).eval(), TinyCNN(width=4).eval()
    f16, g16 = copy.deepcopy(f32).to(torch.bfloat16), copy.deepcopy(g32).to(torch.bfloat16)
    low = measure(f16, images, reference=g16, views=3, top_k=2)
    full = measure(f32, images, reference=g32, views=3, top_k=2)
    assert all(p.dtype == torch.bfloat16 for p in f16.parameters())  # the model is not converted
    for layer in LAYERS:
        scores = low.unit_mem[layer]
        assert scores.dtype == torch.float32 and ((scores >= 0) & (scores <= 1)).all()
        torch.testing.assert_close(scores, full.unit_mem[layer], atol=0.05, rtol=0)
        assert np.isfinite(low.layer_mem[layer])
        assert abs(low.layer_mem[layer] - full.layer_mem[layer]) < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_candidates_and_model_on_different_devices(images):
    torch.manual_seed(0)
    f, g = TinyCNN(width=4).eval(), TinyCNN(width=4).eval()
    on_cpu = measure(f, images, reference=g, views=3, top_k=2)
    # candidates on the GPU, models on the CPU: views follow the model
    assert measure(f, images.cuda(), reference=g, views=3, top_k=2).allclose(on_cpu, atol=1e-5)
    # models on the GPU (TF32 convolutions: a looser tolerance), candidates on the CPU
    assert measure(f.cuda(), images, reference=g.cuda(), views=3, top_k=2).allclose(on_cpu, atol=1e-2)
    # encoder on the GPU, reference on the CPU
    assert measure(f.cuda(), images, reference=g.cpu(), views=3, top_k=2).allclose(on_cpu, atol=1e-2)


# ----------------------------------------------------------------- interrupts
def test_keyboard_interrupt_during_measure(encoder, reference, images):
    calls = {"n": 0}

    def transform(img):
        calls["n"] += 1
        if calls["n"] > 2 * 2 + 2 * 2:  # example batch (2 candidates x 2 views), then the 2nd batch
            raise KeyboardInterrupt
        return img.clone()

    snap, snap_ref = take_snapshot(encoder), take_snapshot(reference)
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    with pytest.raises(KeyboardInterrupt):
        measure(encoder, images, reference=reference, views=2, batch_size=2, transform=transform)
    assert calls["n"] == 2 * 2 + 2 * 2 + 1
    assert_untouched(encoder, snap)
    assert_untouched(reference, snap_ref)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1][1]) and random.getstate() == rng[2]


def test_interrupted_report_write_keeps_the_previous_file(tmp_path, encoder, images, monkeypatch):
    report = measure(encoder, images, views=2)
    path = tmp_path / "report.json"
    report.save(path)
    before = path.read_bytes()

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("lightning_memloc.io.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure(encoder, images, views=3).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files_in(tmp_path) == {"report.json"}, "a temporary file was left behind"
    assert MemorizationReport.load(path).allclose(report)


# -------------------------------------------------------------------- files
def test_report_save_to_an_unwritable_place(tmp_path, encoder, images):
    report = measure(encoder, images, views=2)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError) as info:
        report.save(blocker / "sub" / "report.json")
    message = str(info.value)
    assert "`path`=" in message and "file.txt' is a file, not a folder" in message and "pass a folder path" in message
    with pytest.raises(IsADirectoryError, match=r"`path`=.* is a folder, not a file: pass the path of a file"):
        report.save(tmp_path)
    assert files_in(tmp_path) == {"file.txt"} and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("content, error, fragment", [
    ("truncate", ReportFormatError, "corrupt or truncated"),
    ("", ReportFormatError, "corrupt or truncated"),
    (b"\xff\xfe\x00binary", ReportFormatError, "corrupt or truncated"),
    ('{"format": "something else"}', ReportFormatError, "not a MemorizationReport"),
    ("drop-field", ReportFormatError, "`unit_mem` is missing"),
    ("bad-version", ReportFormatError, "version 99 is not supported"),
    (None, FileNotFoundError, "no report file at"),
], ids=["truncated", "empty", "binary", "other-json", "missing-field", "version", "missing-file"])
def test_corrupt_or_truncated_report_file(tmp_path, encoder, images, content, error, fragment):
    good = tmp_path / "good.json"
    measure(encoder, images, views=2).save(good)
    path = tmp_path / "report.json"
    if content == "truncate":
        text = good.read_text()
        path.write_text(text[: len(text) // 2])
    elif content == "drop-field":
        data = json.loads(good.read_text())
        del data["unit_mem"]
        path.write_text(json.dumps(data))
    elif content == "bad-version":
        data = json.loads(good.read_text())
        data["version"] = 99
        path.write_text(json.dumps(data))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(error) as info:
        MemorizationReport.load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, (ValueError, FileNotFoundError))


@pytest.mark.parametrize("content, error, fragment", [
    ("garbage", CheckpointError, "is not a readable PyTorch checkpoint"),
    ("truncated", CheckpointError, "is not a readable PyTorch checkpoint"),
    ("no-tensors", CheckpointError, "holds no state dict"),
    ("other-arch", ArchitectureMismatchError, "does not fit the encoder's architecture"),
    ("missing", FileNotFoundError, "no checkpoint file at"),
], ids=["garbage", "truncated", "no-tensors", "other-arch", "missing"])
def test_a_checkpoint_that_is_not_one(tmp_path, content, error, fragment):
    path = tmp_path / "encoder.ckpt"
    if content == "garbage":
        path.write_text("this is not a checkpoint")
    elif content == "truncated":
        torch.save(TinyCNN(width=4).state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "no-tensors":
        torch.save({"epoch": 3, "note": "no weights"}, path)
    elif content == "other-arch":
        torch.save(TinyCNN(width=5).state_dict(), path)
    like = TinyCNN(width=4)
    snap = take_snapshot(like)
    with pytest.raises(error) as info:
        load_encoder(path, like=like)
    assert fragment in str(info.value) and str(path) in str(info.value)
    if error is CheckpointError:
        assert "torch.save(model.state_dict(), path)" in str(info.value)
    if error is ArchitectureMismatchError:
        assert "size mismatch" in str(info.value)
    assert isinstance(info.value, (ValueError, FileNotFoundError))
    assert_untouched(like, snap)


# ------------------------------------------------------------------ the monitor
@pytest.fixture(scope="module")
def data():
    return cotraining_split()


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_every_n_epochs_must_be_positive(data, value):
    with pytest.raises(ValueError, match=rf"`every_n_epochs` must be an int >= 1, got {value!r}"):
        pair_monitor(*data, every_n_epochs=value)


def test_monitor_setup_errors_come_before_training(tmp_path, data):
    train, split = data
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    wider = tmp_path / "wider.pt"
    torch.save(TinyCNN(width=5).state_dict(), wider)
    cases = [
        ({"output_dir": blocker / "sub"}, NotADirectoryError, ["`output_dir`=", "file.txt' is a file, not a folder"]),
        ({"reference": str(garbage)}, CheckpointError, ["`reference`=", "garbage.ckpt", "not a readable PyTorch checkpoint"]),
        ({"reference": str(tmp_path / "missing.pt")}, FileNotFoundError, ["`reference`=", "no checkpoint file"]),
        ({"reference": str(wider)}, ArchitectureMismatchError, ["`reference`=", "does not fit the encoder's architecture"]),
        ({"reference": "encoder.backbone"}, ValueError, ["`reference` resolves to the monitored encoder itself"]),
        ({"layers": ["conv_2"]}, LayerNotFoundError, ["Did you mean 'conv2'"]),
        ({"transform": lambda img: img.numpy()}, TypeError, ["`transform` must return a float tensor"]),
        ({"memory_limit": 16}, MemoryError, ["over `memory_limit`", "use fewer candidates"]),
    ]
    model = cotrained_pair()
    snap = take_snapshot(model)
    for kwargs, error, fragments in cases:
        with pytest.raises(error) as info:
            fit_pair(train, split, [pair_monitor(train, split, **kwargs)], max_epochs=1, model=model)
        for fragment in fragments:
            assert fragment in str(info.value), (kwargs, str(info.value))
        assert_untouched(model, snap)  # no training step ran, no hook is left
    assert files_in(tmp_path) == {"file.txt", "garbage.ckpt", "wider.pt"}, "the monitor wrote a file"


class _PoisonAt(pl.Callback):
    """At the end of epoch ``epoch`` (before the monitor runs), write NaN into the encoder."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.encoder.backbone.conv2.conv.weight[0, 0, 0, 0] = float("nan")


def test_monitor_failure_keeps_the_previous_checkpoint(tmp_path, data):
    train, split = data
    out, ckdir = tmp_path / "memloc", tmp_path / "ck"
    monitor = pair_monitor(train, split, output_dir=out)
    checkpoint = ModelCheckpoint(dirpath=ckdir, every_n_epochs=1, save_top_k=-1)
    with pytest.raises(NonFiniteActivationError) as info:
        fit_pair(train, split, [_PoisonAt(1), monitor, checkpoint], max_epochs=2, enable_checkpointing=True)
    assert "at epoch 1 in encoder layers ['conv2', 'conv3']" in str(info.value)
    # the training run's own checkpoint of epoch 0 is on disk and loadable
    assert [p.name for p in ckdir.iterdir()] == ["epoch=0-step=4.ckpt"]
    ckpt = ckdir / "epoch=0-step=4.ckpt"
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0
    f = load_encoder(ckpt, like=TinyCNN(width=4), prefix="encoder.backbone")
    g = load_encoder(ckpt, like=TinyCNN(width=4), prefix="reference.backbone")
    assert all(torch.isfinite(p).all() for p in f.parameters())
    # ... and it holds exactly the weights the monitor measured at epoch 0
    saved = MemorizationReport.load(out / "report_epoch=0.json")
    again = measure(f, train[split.candidates], reference=g, views=2, top_k=3)
    assert again.allclose(saved, atol=1e-5)
    # the monitor's folder holds only complete files of the completed measurements
    assert files_in(out) == {"report_epoch=0.json", "history.json", "memloc_run.json"}
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [0]
    assert [h["epoch"] for h in monitor.history] == [0]


def test_output_dir_replaced_by_a_file_during_training(tmp_path, data):
    train, split = data
    out = tmp_path / "memloc"

    class Block(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                for p in out.iterdir():
                    p.unlink()
                out.rmdir()
                out.write_text("someone else's file")

    monitor = pair_monitor(train, split, output_dir=out, reference=None)
    with pytest.raises(NotADirectoryError, match=r"`output_dir`=.*is a file, not a folder: pass a folder path"):
        fit_pair(train, split, [Block(), monitor], max_epochs=2)
    assert out.read_text() == "someone else's file"
    assert files_in(tmp_path) == {"memloc"}, "a temporary file was left behind"


def test_keyboard_interrupt_during_a_monitor_pass(tmp_path, data):
    train, split = data
    out = tmp_path / "memloc"
    seen = {}

    class Interrupt(pl.Callback):
        """At epoch 1, before the monitor: record the state and arm a hook failing the 2nd batch."""

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch != 1:
                return
            pl_module.encoder.backbone.conv1.eval()  # a mixed-mode model, like a frozen BN
            pl_module.encoder.backbone.conv3.conv.weight.requires_grad_(False)
            seen["snapshot"] = take_snapshot(pl_module)
            calls = seen["calls"] = {"n": 0}

            def hook(module, args, output):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt

            seen["handle"] = pl_module.encoder.backbone.register_forward_hook(hook)

    monitor = pair_monitor(train, split, output_dir=out)
    model = cotrained_pair()
    handler = signal.getsignal(signal.SIGINT)
    try:  # Lightning turns KeyboardInterrupt into a graceful shutdown and sys.exit(1), ignoring SIGINT
        with pytest.raises(SystemExit):
            fit_pair(train, split, [Interrupt(), monitor], max_epochs=2, model=model)
    finally:
        signal.signal(signal.SIGINT, handler)
    seen["handle"].remove()
    assert seen["calls"]["n"] == 2, "the interrupt did not come from the monitor's 2nd batch"
    assert_untouched(model, seen["snapshot"])  # modes, requires_grad, weights; library hooks removed
    assert files_in(out) == {"report_epoch=0.json", "history.json", "memloc_run.json"}, "a partial report was written"
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [0]
    assert [h["epoch"] for h in monitor.history] == [0] and monitor.report.meta["epoch"] == 0
    MemorizationReport.load(out / "report_epoch=0.json")


def test_resume_every_2_epochs_continues_the_same_history(tmp_path, data):
    # every_n_epochs=1 is covered by tests/test_monitor.py::test_resume_continues_the_same_history
    train, split = data

    def run(max_epochs, ckdir, ckpt_path=None):
        pl.seed_everything(0)
        monitor = pair_monitor(train, split, every_n_epochs=2)
        checkpoint = ModelCheckpoint(dirpath=ckdir, save_last=True, every_n_epochs=1, save_top_k=-1)
        fit_pair(train, split, [monitor, checkpoint], max_epochs=max_epochs, model=cotrained_pair(max_epochs=3),
             ckpt_path=ckpt_path, enable_checkpointing=True)
        return monitor

    full = run(3, tmp_path / "full")  # measures epoch 1 (every 2nd) and epoch 2 (the end of training)
    part = run(2, tmp_path / "part")  # stopped after epoch 1 (measured), resumed from last.ckpt
    assert [h["epoch"] for h in part.history] == [1]
    resumed = run(3, tmp_path / "part", ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert [h["epoch"] for h in full.history] == [h["epoch"] for h in resumed.history] == [1, 2]
    for a, b in zip(full.history, resumed.history):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert full.report.allclose(resumed.report, atol=1e-5)


def test_load_encoder_warns_about_a_checkpoint_of_a_larger_architecture(tmp_path):
    """A ResNet9 checkpoint shares TinyCNN's first block names: it must not load silently."""
    from lightning_memloc import load_encoder
    from lightning_memloc.models import ResNet9, TinyCNN

    path = tmp_path / "resnet9.pt"
    torch.save(ResNet9(width=4).state_dict(), path)
    with pytest.warns(UserWarning, match=r"30 tensors .* are not used by TinyCNN"):
        load_encoder(path, like=TinyCNN(width=4))
