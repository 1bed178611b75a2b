"""Reliability round 2: the monitor, pruning, fine-tuning and the command line (docs/reliability.md, rows 35 on).

Failure paths assert that training never started (model weights, buffers, modes,
``requires_grad`` and hooks as before) and that no file was written, replaced or left half-written.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from lightning_memloc import MemorizationReport
from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.callbacks.monitor import MemorizationMonitor
from lightning_memloc.callbacks.pruning import MemorizationPruning, prune_units
from lightning_memloc.cli import main
from lightning_memloc.models import TinyCNN
from test_pruning import make_report
from helpers import (
    assert_untouched, cotrained_pair, cotraining_split, files_in, fit_pair, LitModel, make_trainer, pair_monitor,
    take_snapshot,
)

MARKER = "memloc_run.json"


@pytest.fixture(scope="module")
def data():
    return cotraining_split()


def _contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


# ------------------------------------------------------------ resume and reuse
def _first_run(tmp_path, data, **kwargs):
    train, split = data
    ckdir = tmp_path / "ck"
    monitor = pair_monitor(train, split, **kwargs)
    fit_pair(train, split, [monitor, ModelCheckpoint(dirpath=ckdir, save_last=True)], max_epochs=1, enable_checkpointing=True)
    return ckdir / "last.ckpt"


@pytest.mark.parametrize("change, fragment", [
    (lambda train, split: dict(candidates=train[split.independent]), "candidates: "),
    (lambda train, split: dict(views=3), "views: 2 there, 3 now"),
    (lambda train, split: dict(seed=5), "seed: 0 there, 5 now"),
    (lambda train, split: dict(layers=["conv1", "conv3"]), "layers: ['conv1', 'conv2', 'conv3'] there"),
    (lambda train, split: dict(candidates=train[split.candidates[:7]]), "num_candidates: 8 there, 7 now"),
], ids=["other-candidates-same-n", "views", "seed", "layers", "other-n"])
def test_resume_with_other_measurement_settings_is_refused(tmp_path, data, change, fragment):
    train, split = data
    last = _first_run(tmp_path, data)
    kwargs = change(train, split)
    candidates = kwargs.pop("candidates", train[split.candidates])
    defaults = dict(every_n_epochs=1, views=2, encoder="encoder.backbone", reference="reference.backbone", top_k=3,
                    grid_size=0, progress=False, batch_size=4)
    monitor = MemorizationMonitor(candidates, **{**defaults, **kwargs})
    with pytest.raises(ValueError) as info:
        fit_pair(train, split, [monitor], max_epochs=2, model=cotrained_pair(max_epochs=3), ckpt_path=str(last))
    assert "measured with other settings" in str(info.value) and fragment in str(info.value), str(info.value)
    assert "start a new run" in str(info.value)
    assert monitor.history == [], "the old history was mixed into the new monitor"


def test_resume_into_its_own_folder_continues(tmp_path, data):
    train, split = data
    out = tmp_path / "memloc"
    last = _first_run(tmp_path, data, output_dir=out)
    monitor = pair_monitor(train, split, output_dir=out)  # a new process: a new monitor object, same settings
    fit_pair(train, split, [monitor], max_epochs=2, model=cotrained_pair(max_epochs=3), ckpt_path=str(last))
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [0, 1]
    assert files_in(out) == {"report_epoch=0.json", "report_epoch=1.json", "history.json", MARKER}


def test_a_new_run_never_replaces_another_runs_files(tmp_path, data):
    train, split = data
    out = tmp_path / "memloc"
    fit_pair(train, split, [pair_monitor(train, split, output_dir=out)], max_epochs=2)
    before = _contents(out)
    assert set(before) == {"report_epoch=0.json", "report_epoch=1.json", "history.json", MARKER}
    model = cotrained_pair()
    snap = take_snapshot(model)
    with pytest.raises(FileExistsError) as info:
        fit_pair(train, split, [pair_monitor(train, split, output_dir=out)], max_epochs=1, model=model)
    assert "holds another run's files" in str(info.value) and "overwrite=True" in str(info.value)
    assert _contents(out) == before, "the old run's files changed"
    assert_untouched(model, snap)  # refused in setup: no training step
    # with consent, the old files go and no stale report stays beside the new ones
    fit_pair(train, split, [pair_monitor(train, split, output_dir=out, overwrite=True)], max_epochs=1)
    assert files_in(out) == {"report_epoch=0.json", "history.json", MARKER}
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [0]


def test_two_monitors_cannot_share_a_folder(tmp_path, data):
    train, split = data
    out = tmp_path / "shared"
    model = cotrained_pair()
    snap = take_snapshot(model)
    first = pair_monitor(train, split, output_dir=out)
    second = pair_monitor(train, split, output_dir=out, seed=1)
    with pytest.raises(ValueError, match="already used by another MemorizationMonitor: .* its own folder"):
        fit_pair(train, split, [first, second], max_epochs=1, model=model)
    assert files_in(out) == set() and first.history == []
    assert_untouched(model, snap)
    fit_pair(train, split, [pair_monitor(train, split, output_dir=out)], max_epochs=1)  # the claim was released


# ------------------------------------------------------------ monitor settings
def test_monitor_refuses_a_frozen_copy_of_the_encoder_as_reference(data):
    train, split = data
    model = cotrained_pair()
    frozen = copy.deepcopy(model.encoder.backbone).requires_grad_(False)
    snap = take_snapshot(model)
    with pytest.raises(ValueError, match="`reference` has exactly the encoder's weights"):
        fit_pair(train, split, [pair_monitor(train, split, reference=frozen)], max_epochs=1, model=model)
    assert_untouched(model, snap)


def test_monitor_int_options_and_memory_limit(data):
    train, split = data
    with pytest.raises(TypeError, match=r"`memory_limit` must be a number of bytes.*2\*\*30 for 1 GiB"):
        pair_monitor(train, split, memory_limit="1GB")
    monitor = pair_monitor(train, split, batch_size=np.int64(4), top_k=np.int32(3), views=np.int64(2),
                       memory_limit=np.int64(2**30), reference=None)
    fit_pair(train, split, [monitor], max_epochs=1)
    assert monitor.report.meta["views"] == 2 and monitor.report.meta["top_k"] == 3


def test_monitor_without_encoder_names_the_fix(data):
    train, split = data
    model = cotrained_pair()
    snap = take_snapshot(model)
    with pytest.raises(ValueError) as info:
        fit_pair(train, split, [pair_monitor(train, split, encoder=None, reference=None)], max_epochs=1, model=model)
    assert "`encoder` is None, so the monitor measures the whole CoTrainedPair" in str(info.value)
    assert "pass `encoder=`" in str(info.value) and "['encoder', 'reference']" in str(info.value)
    assert_untouched(model, snap)


def test_monitor_reference_checkpoint_with_any_extension(tmp_path, data, monkeypatch):
    train, split = data
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(7)
    torch.save(TinyCNN(width=4).state_dict(), "reference.weights")  # no known extension, no path separator
    monitor = pair_monitor(train, split, reference="reference.weights")
    fit_pair(train, split, [monitor], max_epochs=1)
    assert monitor.report.has_reference
    with pytest.raises(AttributeError, match=r"No file 'missing.bin' exists either: pass the path of an existing"):
        fit_pair(train, split, [pair_monitor(train, split, reference="missing.bin")], max_epochs=1)


def test_monitor_measures_a_compiled_encoder(data):
    train, split = data
    monitor = pair_monitor(train, split, encoder=lambda m: torch.compile(m.encoder.backbone), reference=None)
    fit_pair(train, split, [monitor], max_epochs=1)
    assert monitor.report.layers == ["conv1", "conv2", "conv3"]


# ------------------------------------------------------------ pruning and fine-tuning
class _ConvThenNorm(nn.Module):
    """A tap on a bare conv whose BatchNorm (or GroupNorm) lies outside the tap."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = norm
        self.relu = nn.ReLU()
        with torch.no_grad():
            for p in norm.parameters():
                p.fill_(0.5)

    def forward(self, x):
        return self.relu(self.norm(self.conv(x)))


def _conv_report():
    return make_report({"conv": torch.tensor([0.9, 0.1, 0.2, 0.3])}, layer_mem=False)


def test_pruning_a_conv_tap_silences_the_batchnorm_after_it():
    model = _ConvThenNorm(nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model.norm.running_mean.fill_(-0.3)
    pruned = prune_units(model, _conv_report(), amount=1, strategy="highest")
    assert pruned["conv"].tolist() == [0]
    out = model(torch.rand(2, 3, 8, 8))
    assert bool((out[:, 0] == 0).all()), "the pruned channel still fires after the BatchNorm"
    assert bool((out[:, 1:] != 0).any())


def test_pruning_a_tap_followed_by_a_channel_mixing_norm_is_refused():
    model = _ConvThenNorm(nn.GroupNorm(2, 4))
    snap = take_snapshot(model)
    with pytest.raises(ValueError, match="followed by GroupNorm 'norm', which mixes its channels"):
        prune_units(model, _conv_report(), amount=1)
    assert_untouched(model, snap)


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(amount=0.99), ValueError, "would prune all 4 units of layer 'conv1'"),
    (dict(amount=4), ValueError, "would prune all 4 units of layer 'conv1'"),
    (dict(amount=0.99, scope="global"), ValueError, "would prune all 28 units of all layers in scope"),
    (dict(prune_at=2, amount=0.5), ValueError, "`prune_at`=2 but training ends after epoch 1 (max_epochs=2): nothing would be"),
], ids=["fraction-all", "count-all", "global-all", "epoch-after-last"])
def test_pruning_plans_that_cannot_work_fail_in_setup(kwargs, error, fragment):
    model = LitModel()
    snap = take_snapshot(model)
    with pytest.raises(error) as info:
        make_trainer([MemorizationPruning(make_report(), encoder="backbone", **kwargs)]).fit(model)
    assert fragment in str(info.value), str(info.value)
    assert_untouched(model, snap)  # no mask registered, no step taken


def test_pruning_fraction_rounding_to_none_is_warned_about():
    model = LitModel()
    with pytest.warns(UserWarning, match="`amount`=0.1 rounds to 0 of the 4 units of layer 'conv1': nothing will"):
        make_trainer([MemorizationPruning(make_report(), amount=0.1, encoder="backbone")], max_epochs=1).fit(model)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(unfreeze_at_epoch=2), "`unfreeze_at_epoch`=2 but training ends after epoch 1 (max_epochs=2): the encoder "
                                "would stay frozen for the whole run"),
    (dict(k=4, monitor=True), "`k`=4 but the monitor measures 3 layers"),
], ids=["unfreeze-after-last", "k-above-layers"])
def test_finetuning_plans_that_cannot_work_fail_in_setup(kwargs, fragment):
    model = LitModel()
    snap = take_snapshot(model)
    callbacks = []
    source = make_report()
    if kwargs.pop("monitor", False):
        source = MemorizationMonitor(torch.rand(4, 3, 8, 8), views=2, encoder="backbone", layers=["conv1", "conv2", "conv3"],
                                     measure_on_train_start=True, progress=False, grid_size=0)
        callbacks.append(source)
    callbacks.append(MemorizationFinetuning(source, encoder="backbone", head="head", **kwargs))
    with pytest.raises(ValueError) as info:
        make_trainer(callbacks).fit(model)
    assert fragment in str(info.value), str(info.value)
    assert_untouched(model, snap)  # nothing frozen, nothing trained


# ------------------------------------------------------------ command line
def _analyze_files(tmp_path):
    torch.manual_seed(0)
    encoder = tmp_path / "f.pt"
    torch.save(TinyCNN(width=2).state_dict(), encoder)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), y=np.arange(8) % 2)
    return encoder, data


@pytest.mark.parametrize("content, fragment", [
    ("[0, 1, 1, 2]", "repeats indices [1]"), ("[0.5, 1]", "non-integer values"), ("[true, false]", "integer indices"),
])
def test_cli_indices_must_be_distinct_integers(tmp_path, capsys, content, fragment):
    encoder, data = _analyze_files(tmp_path)
    (tmp_path / "i.json").write_text(content)
    out = tmp_path / "out"
    code = main(["analyze", "--encoder", str(encoder), "--arch", "tiny", "--width", "2", "--data", str(data),
                 "--size", "8", "--indices", str(tmp_path / "i.json"), "--output-dir", str(out), "--no-progress", "--views", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--indices" in err and fragment in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--epochs", "0"], "argument --epochs: must be >= 1"),
    (["--size", "0"], "argument --size: must be >= 1"),
    (["--views", "1"], "argument --views: must be >= 2"),
    (["--split-candidates", "0"], "argument --split-candidates: must be > 0"),
    (["--split-candidates", "1"], "argument --split-candidates: must be a count >= 2"),
    (["--subset", "-5"], "argument --subset: must be >= 0"),
    (["--lr", "0"], "argument --lr: must be a positive number"),
    (["--canaries", "1"], "argument --canaries: must be >= 2"),
    (["--repeat", "0"], "argument --repeat: must be >= 1"),
    (["--bootstrap", "-1"], "argument --bootstrap: must be >= 0"),
])
def test_demo_arguments_are_argparse_errors(tmp_path, capsys, argv, fragment):
    pytest.importorskip("lightning_memloc.cli.demo")
    code = main(["demo", "--output-dir", str(tmp_path / "demo"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "usage: memloc demo" in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()


def test_report_validation_accepts_measured_reports(data):
    """The new load-time checks never refuse what the library writes (measured and saved reports)."""
    train, split = data
    monitor = pair_monitor(train, split, reference=None)
    fit_pair(train, split, [monitor], max_epochs=1)
    MemorizationReport.from_dict(json.loads(json.dumps(monitor.report.to_dict())))


def test_a_co_trained_reference_that_stays_a_copy_fails_at_the_first_measurement(data):
    """Identical weights are allowed at the start (the same initialisation) but not once training ran."""
    from lightning_memloc.models.cotrain import CoTrainedPair

    train, split = data
    pair = cotrained_pair()
    frozen_lr = CoTrainedPair(pair.encoder, copy.deepcopy(pair.encoder), lr=0.0, warmup_epochs=1, max_epochs=3)
    monitor = pair_monitor(train, split, measure_on_train_start=True)
    with pytest.raises(ValueError, match="`reference` has exactly the encoder's weights"):
        fit_pair(train, split, [monitor], max_epochs=1, model=frozen_lr)
    assert [h["epoch"] for h in monitor.history] == [-1]  # the untrained baseline was measured


@pytest.mark.parametrize("flag", ["--seed", "--split-seed"])
def test_cli_seeds_outside_64_bits_are_argparse_errors(tmp_path, capsys, flag):
    encoder, data = _analyze_files(tmp_path)
    out = tmp_path / "out"
    code = main(["analyze", "--encoder", str(encoder), "--arch", "tiny", "--width", "2", "--data", str(data),
                 "--size", "8", "--output-dir", str(out), "--no-progress", "--views", "2", "--indices-from-split", flag, "-1"])
    err = capsys.readouterr().err
    assert code == 2 and f"argument {flag}: expected an integer seed in [0, 2**64), got '-1'" in err
    assert "Traceback" not in err and not out.exists()


def test_monitor_refuses_views_that_cannot_fit_before_training(data):
    train, split = data
    model = cotrained_pair()
    snap = take_snapshot(model)
    with pytest.raises(MemoryError, match=r"batch_size·views = 32·10000000 views .* lower `views`"):
        fit_pair(train, split, [pair_monitor(train, split, views=10**7, batch_size=32)], max_epochs=1, model=model)
    assert_untouched(model, snap)


def test_numpy_integers_work_for_the_callbacks_int_options(data):
    from lightning_memloc.report.selection import select_layers

    report = make_report()
    assert select_layers(report, np.int64(2)) == select_layers(report, 2)
    model = LitModel()
    pruned = prune_units(model.backbone, report, amount=np.int64(1), strategy="highest")
    assert [len(v) for v in pruned.values()] == [1, 1, 1]
    assert prune_units(LitModel().backbone, report, amount=np.float32(0.5))["conv2"].numel() == 4
    callbacks = [MemorizationFinetuning(report, k=np.int64(1), unfreeze_at_epoch=np.int32(0), encoder="backbone",
                                        head="head"),
                 MemorizationPruning(report, amount=np.int64(1), seed=np.int64(0), encoder="backbone")]
    make_trainer(callbacks, max_epochs=1).fit(LitModel())
    assert callbacks[0].chosen_layers == ["conv3"] and callbacks[1].pruned_units["conv1"].tolist() == [1]
    train, split = data
    assert pair_monitor(train, split, every_n_epochs=np.int64(2), grid_size=np.int32(0)).every_n_epochs == 2
