"""A resumed monitor continues only a history measured the same way (issue 23 §2, rows 85-87).

The monitor's history is one curve of LayerMem / UnitMem (Wang et al., *Localizing Memorization
in SSL Vision Encoders*, NeurIPS 2024) over training: a resume with another reference, threshold,
transform or encoder would mix two curves under one name. Every constructor argument either
changes the resume fingerprint or is in ``FINGERPRINT_EXEMPT`` with the reason it changes no number.
"""

from __future__ import annotations

import inspect
import types

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from helpers import cotrained_pair, cotraining_split, fit_pair, pair_monitor
from lightning_memloc import BatchedSimCLRAugment, MemorizationMonitor
from lightning_memloc.callbacks.monitor_checks import FINGERPRINT_EXEMPT, fingerprint
from lightning_memloc.models import TinyCNN


class _Pair(nn.Module):
    """Two encoders of one architecture, as a LightningModule would hold them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone, self.other = TinyCNN(width=2), TinyCNN(width=2)


def _frozen(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(width=2).eval().requires_grad_(False)


_G = _frozen(1)
_IMAGES = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _alternatives(tmp_path):
    """``{argument: (another value, the fingerprint entry it must change)}`` for every number-changing argument."""
    return {
        "candidates": (_IMAGES.flip(0), "candidates"),
        "labels": (torch.tensor([0, 1, 0, 1, 0, 1]), "candidates"),
        "size": (6, "candidates"),  # candidates read from a path, resized
        "indices": ("0:5", "candidates"),
        "views": (3, "views"),
        "transform": (BatchedSimCLRAugment(8, scale=(0.5, 1.0)), "transform_digest"),
        "layers": (["conv1", "conv2"], "layers"),
        "encoder": ("other", "encoder"),
        "reference": (_frozen(2), "reference_id"),
        "seed": (1, "seed"),
        "pairing": ("anchor", "pairing"),
        "reduction": ("median", "reduction"),
        "negative": ("shift", "negative"),
        "top_k": (2, "top_k"),
        "threshold": (0.7, "threshold"),
        "control": (torch.rand(4, 3, 8, 8), "groups"),
        "unseen": (torch.rand(4, 3, 8, 8), "groups"),
        "control_indices": ([4, 5], "groups"),  # images of the candidates' file
        "unseen_indices": ("3:", "groups"),
        "bootstrap": (200, "evidence"),
        "confidence": (0.9, "evidence"),
        "alpha": (0.01, "evidence"),
        "autocast": ("bf16", "autocast"),
        "normalize": ("imagenet", "normalize"),
    }


_EXEMPT_VALUES = {"every_n_epochs": 2, "every_n_train_steps": 3, "batch_size": 3, "num_workers": 1, "progress": True,
                  "grid_size": 0, "log_histograms": False, "log_figures": False, "layer_runs": False, "output_dir": "elsewhere",
                  "overwrite": True, "name": "second", "memory_limit": 2 ** 30, "measure_on_train_start": True,
                  "init_batchnorm": "default", "check_views": "off"}


def _fingerprint(tmp_path, **changes):
    if not (tmp_path / "x.pt").exists():
        torch.save(_IMAGES, tmp_path / "x.pt")
    kwargs = dict(candidates=tmp_path / "x.pt", views=2, encoder="backbone", reference=_G, progress=False, top_k=3,
                  batch_size=2, bootstrap=0)
    if "candidates" in changes and "size" not in changes and "indices" not in changes:
        kwargs["candidates"] = _IMAGES
    kwargs.update(changes)
    if kwargs.get("every_n_train_steps") is not None:
        kwargs["every_n_epochs"] = None
    if "output_dir" in kwargs:
        kwargs["output_dir"] = tmp_path / kwargs["output_dir"]
    monitor = MemorizationMonitor(**kwargs)
    monitor.setup(types.SimpleNamespace(is_global_zero=True, ckpt_path=None), _Pair(), "fit")  # resolves layers, g
    return fingerprint(monitor)


def test_every_monitor_argument_changes_the_fingerprint_or_is_exempt_with_a_reason(tmp_path):
    parameters = set(inspect.signature(MemorizationMonitor.__init__).parameters) - {"self"}
    changing = set(_alternatives(tmp_path))
    unclassified = parameters - changing - set(FINGERPRINT_EXEMPT)
    assert not unclassified, (f"new MemorizationMonitor argument(s) {sorted(unclassified)}: put each in the resume "
                              "fingerprint (monitor_checks.fingerprint, or MeasureOptions.fingerprint for an option) "
                              "and give it another value here, or add it to FINGERPRINT_EXEMPT with why it changes "
                              "no measured or logged number")
    assert not (changing | set(FINGERPRINT_EXEMPT)) - parameters, "a listed argument is no longer an argument"
    assert not changing & set(FINGERPRINT_EXEMPT)
    assert all(len(reason) > 10 for reason in FINGERPRINT_EXEMPT.values())


@pytest.mark.parametrize("argument", ["candidates", "labels", "size", "indices", "views", "transform", "layers",
                                      "encoder", "reference", "seed", "pairing", "reduction", "negative", "top_k",
                                      "threshold", "control", "unseen", "control_indices", "unseen_indices", "bootstrap",
                                      "confidence", "alpha", "autocast", "normalize"])
def test_a_number_changing_argument_changes_its_fingerprint_entry(tmp_path, argument):
    base = _fingerprint(tmp_path)
    value, entry = _alternatives(tmp_path)[argument]
    changed = _fingerprint(tmp_path, **{argument: value})
    assert changed.get(entry) != base.get(entry), (argument, entry)


def test_other_indices_of_the_same_size_change_the_pooled_images_digest(tmp_path):
    """``groups`` holds the sizes; the images a slice selects reach the fingerprint through ``pool``."""
    base = _fingerprint(tmp_path, control_indices=[4, 5], unseen_indices="3:")
    for changes in ({"control_indices": [3, 5]}, {"unseen_indices": [0, 1, 2]}):
        changed = _fingerprint(tmp_path, **{"control_indices": [4, 5], "unseen_indices": "3:", **changes})
        assert changed["groups"] == base["groups"] and changed["pool"] != base["pool"], changes
    assert _fingerprint(tmp_path, control_indices=[4, 5], unseen_indices="3:") == base


@pytest.mark.parametrize("argument", sorted(_EXEMPT_VALUES))
def test_an_exempt_argument_leaves_the_fingerprint_alone(tmp_path, argument):
    assert argument in FINGERPRINT_EXEMPT
    assert _fingerprint(tmp_path, **{argument: _EXEMPT_VALUES[argument]}) == _fingerprint(tmp_path)


def test_the_encoder_is_named_by_where_it_is_not_by_how_it_was_given(tmp_path):
    by_path = _fingerprint(tmp_path, encoder="backbone")
    assert by_path["encoder"] == "backbone"
    assert _fingerprint(tmp_path, encoder=lambda module: module.backbone) == by_path
    assert _fingerprint(tmp_path, encoder=lambda module: module.other)["encoder"] == "other"


def test_equal_settings_in_a_new_process_give_the_same_fingerprint(tmp_path):
    """The new entries digest settings, not object identities: a resumed run (new objects) matches."""
    a = _fingerprint(tmp_path, transform=BatchedSimCLRAugment(8, scale=(0.5, 1.0)), reference=_frozen(2))
    b = _fingerprint(tmp_path, transform=BatchedSimCLRAugment(8, scale=(0.5, 1.0)), reference=_frozen(2))
    assert a == b


def test_the_parameters_of_library_transforms_reach_the_digest():
    from lightly.transforms import SimCLRViewTransform
    from torchvision.transforms import v2

    from lightning_memloc.checks.module_digest import settings_digest

    assert settings_digest(SimCLRViewTransform(input_size=8, cj_strength=0.5)) == settings_digest(
        SimCLRViewTransform(input_size=8, cj_strength=0.5))
    assert settings_digest(SimCLRViewTransform(input_size=8, cj_strength=0.5)) != settings_digest(
        SimCLRViewTransform(input_size=8, cj_strength=0.3))
    assert settings_digest(v2.Normalize([0.5] * 3, [0.2] * 3)) != settings_digest(v2.Normalize([0.5] * 3, [0.25] * 3))


# ----------------------------------------------------------------------------------- end to end
def _jitter(strength: float):
    """A per-image transform whose parameter lives in its closure (another strength: another function value)."""
    def transform(image: torch.Tensor) -> torch.Tensor:
        return (image.float() / 255 * (1 - strength) + strength * torch.rand(1)).clamp(0, 1)
    return transform


def _reference_file(tmp_path, seed: int) -> str:
    path = tmp_path / f"g{seed}.pt"
    torch.save(_frozen_pair_reference(seed).state_dict(), path)
    return str(path)


def _frozen_pair_reference(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(width=4).eval().requires_grad_(False)


def _leaky(seed: int) -> nn.Module:
    g = _frozen_pair_reference(seed)
    g.conv2.relu = nn.LeakyReLU(0.1)
    return g


CASES = {  # name: (first run's monitor arguments, the resumed run's, the entry named in the error)
    "reference-weights": ({"reference": lambda p: _frozen_pair_reference(1)},
                          {"reference": lambda p: _frozen_pair_reference(2)}, "reference_id"),
    "reference-architecture": ({"reference": lambda p: _frozen_pair_reference(1)}, {"reference": lambda p: _leaky(1)},
                               "reference_id"),
    "reference-file": ({"reference": lambda p: _reference_file(p, 1)}, {"reference": lambda p: _reference_file(p, 2)},
                       "reference_id"),
    "threshold": ({}, {"threshold": lambda p: 0.7}, "threshold: 0.5 there, 0.7 now"),
    "transform-parameter": ({"transform": lambda p: _jitter(0.1)}, {"transform": lambda p: _jitter(0.3)},
                            "transform_digest"),
    "encoder": ({}, {"encoder": lambda p: "reference.backbone", "reference": lambda p: "encoder.backbone"},
                "encoder: 'encoder.backbone' there, 'reference.backbone' now"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_with_another_reference_threshold_transform_or_encoder_is_refused(tmp_path, case):
    train, split = cotraining_split()
    first, resumed, fragment = CASES[case]
    ckdir = tmp_path / "ck"
    monitor = pair_monitor(train, split, bootstrap=0, **{k: v(tmp_path) for k, v in first.items()})
    fit_pair(train, split, [monitor, ModelCheckpoint(dirpath=ckdir, save_last=True)], max_epochs=1,
             enable_checkpointing=True)
    same = pair_monitor(train, split, bootstrap=0, **{k: v(tmp_path) for k, v in first.items()})
    fit_pair(train, split, [same], max_epochs=2, model=cotrained_pair(max_epochs=3), ckpt_path=str(ckdir / "last.ckpt"))
    assert [h["epoch"] for h in same.history] == [0, 1]  # the same settings (new objects) resume
    other = pair_monitor(train, split, bootstrap=0, **{k: v(tmp_path) for k, v in {**first, **resumed}.items()})
    with pytest.raises(ValueError, match="measured with other settings") as info:
        fit_pair(train, split, [other], max_epochs=2, model=cotrained_pair(max_epochs=3), ckpt_path=str(ckdir / "last.ckpt"))
    assert fragment in str(info.value), str(info.value)
    assert other.history == []


def test_a_resumed_run_measures_no_before_training_point(tmp_path):
    """A monitor added to a resumed run with measure_on_train_start: the model has trained, so no 'epoch -1'."""
    train, split = cotraining_split()
    ckdir = tmp_path / "ck"
    fit_pair(train, split, [ModelCheckpoint(dirpath=ckdir, save_last=True)], max_epochs=1, enable_checkpointing=True)
    monitor = pair_monitor(train, split, bootstrap=0, measure_on_train_start=True)
    fit_pair(train, split, [monitor], max_epochs=2, model=cotrained_pair(max_epochs=3), ckpt_path=str(ckdir / "last.ckpt"))
    assert [h["epoch"] for h in monitor.history] == [1]  # was [-1, 1]: a trained model labelled "before training"
