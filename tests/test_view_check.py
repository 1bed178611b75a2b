"""Views that look like the training batches: ``normalize=``, the views' statistics, ``check_views``.

Issue 23, section 1: an encoder trained on ImageNet-normalised batches (lightly's
``SimCLRTransform``) measured on [0, 1] views gives plausible, wrong figures. The monitor compares
the per-channel mean / std of its views with those of the encoder's first training batches and
says so; ``measure()``, the monitor and ``memloc analyze`` take ``normalize=``; every report
records the statistics of its views.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, List

import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import DataLoader

from helpers import counting_forwards, no_hooks
from lightning_memloc import BatchedSimCLRAugment, MemorizationMonitor, MemorizationReport, measure
from lightning_memloc.callbacks.view_check import CHECK_STEPS, TrainingInputs
from lightning_memloc.data import TensorImageDataset
from lightning_memloc.states.meter import ViewMoments
from lightning_memloc.models import TinyCNN
from lightning_memloc.views.stats import (NORMALIZE_PRESETS, SCALE_TOLERANCE, SHIFT_TOLERANCE, ViewStatistics, gaps,
                                          mismatch, normalize_views)
from lightning_memloc.models.ssl import SimCLR
from lightning_memloc.views.seeded import SeededViews, make_views

lightly_transforms = pytest.importorskip("lightly.transforms")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The function `to_tensor")]  # raised inside lightly
MISMATCH = "do not look like the batches the encoder trains on"
S = 16


def _stats(x: torch.Tensor) -> ViewStatistics:
    """The slow reference: per-channel float64 mean and (population) std over every pixel of (..., C, H, W)."""
    flat = x.double().movedim(-3, 0).reshape(x.shape[-3], -1)
    return ViewStatistics(tuple(flat.mean(1).tolist()), tuple(flat.std(1, unbiased=False).tolist()))


def _close(a: ViewStatistics, b: ViewStatistics, tol: float = 1e-6) -> bool:
    """Equal up to float32 rounding: squares are taken in float32 (a view batch is never copied to float64)."""
    return all(math.isclose(u, v, rel_tol=tol, abs_tol=tol) for u, v in zip(a.mean + a.std, b.mean + b.std))


# ----------------------------------------------------------------------------------- normalize
def test_normalize_views_by_hand():
    x = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(2, 3, 1, 2)
    out = normalize_views(x, ((0.5, 0.5, 0.0), (0.25, 0.5, 2.0)))
    assert out[:, :, 0, 0].tolist() == [[-2.0, 0.0, 0.5]] * 2
    assert normalize_views(x, ((0.5,), (0.5,)))[0, :, 0, 0].tolist() == [-1.0, 0.0, 1.0]  # one value, every channel


@pytest.mark.parametrize("spec, error, match", [
    ("imagenett", ValueError, r"`normalize` must be one of \('imagenet', 'cifar10'\)"),
    (((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)), ValueError, "std must be > 0"),
    (((0.5, 0.5, 0.5), (0.2, 0.2)), ValueError, "3 means but 2 stds"),
    (((float("nan"),), (1.0,)), ValueError, "must be finite"),
    (3, TypeError, "`normalize` must be None, a preset name"),
    ((("a",), (1.0,)), TypeError, "must hold numbers"),
    (((0.5, 0.5), (0.2, 0.2)), ValueError, "has 2 channels but the views have 3"),
])
def test_bad_normalize_is_refused_before_any_forward(spec, error, match):
    torch.manual_seed(0)
    f, g = TinyCNN(), TinyCNN()
    with counting_forwards(f) as calls, pytest.raises(error, match=match):
        measure(f, torch.rand(4, 3, S, S), reference=g, views=2, normalize=spec)
    assert calls["n"] == 0 and no_hooks(f)
    if "channels" not in match:  # known only once the views exist; the constructor checks the value itself
        with pytest.raises(error, match=match):
            MemorizationMonitor(torch.rand(4, 3, S, S), views=2, normalize=spec)


def test_normalising_twice_or_feature_views_are_refused():
    with pytest.raises(ValueError, match="normalises already .* `normalize` would normalise again"):
        measure(TinyCNN(), torch.rand(4, 3, S, S), views=2, transform=BatchedSimCLRAugment(S, mean=(0.5,) * 3,
                                                                                         std=(0.2,) * 3),
                normalize="imagenet")
    with pytest.raises(ValueError, match="feature views"):
        SeededViews(torch.rand(4, 2, 8), views=None, normalize=((0.5,), (0.2,)))


@pytest.mark.parametrize("spec", ["cifar10", ((0.4, 0.5, 0.6), (0.2, 0.3, 0.25))])
def test_measure_with_normalize_equals_measuring_the_normalised_views(spec):
    """normalize= is exactly (x − mean) / std on every view, after the augmentation, before the encoder."""
    torch.manual_seed(0)
    f, g = TinyCNN(), TinyCNN()
    images = torch.rand(6, 3, S, S)
    mean, std = NORMALIZE_PRESETS[spec] if isinstance(spec, str) else spec
    by_hand = (make_views(images, 3, seed=5) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    ours = measure(f, images, reference=g, views=3, seed=5, top_k=2, bootstrap=0, normalize=spec)
    expected = measure(f, by_hand, reference=g, views=3, seed=5, top_k=2, bootstrap=0)
    assert ours.allclose(expected, atol=1e-6)
    assert not ours.allclose(measure(f, images, reference=g, views=3, seed=5, top_k=2, bootstrap=0), atol=1e-3)
    # pairing="anchor": the un-augmented image is normalised like the views
    view_set = SeededViews(images, views=3, seed=5, normalize=spec)
    assert torch.allclose(view_set.anchor(2), (images[2] - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))


def test_report_meta_records_the_statistics_of_every_measured_view(tmp_path):
    """meta["view_stats"]: per-channel mean / std over every view of the pass (candidates, control and
    unseen), against a float64 reference; the same for any batch size; saved and loaded with the report."""
    torch.manual_seed(0)
    f, g = TinyCNN(), TinyCNN()
    cands, control, unseen = torch.rand(5, 3, S, S), torch.rand(3, 3, S, S), torch.rand(4, 3, S, S) * 0.5
    reports = [measure(f, cands, reference=g, views=3, seed=1, top_k=2, bootstrap=0, normalize="imagenet",
                       control=control, unseen=unseen, batch_size=b) for b in (2, 32)]
    pooled = make_views(torch.cat([cands, control, unseen]), 3, seed=1)  # the pass's views, by pooled position
    expected = _stats(normalize_views(pooled, NORMALIZE_PRESETS["imagenet"]))
    for report in reports:
        assert _close(ViewStatistics(**{k: tuple(v) for k, v in report.meta["view_stats"].items()}), expected)
        assert report.meta["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                            "preset": "imagenet"}
    reports[0].save(tmp_path / "r.json")
    assert MemorizationReport.load(tmp_path / "r.json").meta["view_stats"] == reports[0].meta["view_stats"]
    plain = measure(f, cands, views=3, seed=1, bootstrap=0)
    assert plain.meta["normalize"] is None and _close(
        ViewStatistics(**{k: tuple(v) for k, v in plain.meta["view_stats"].items()}), _stats(make_views(cands, 3, seed=1)))
    with pytest.raises(ValueError, match="`meta` would overwrite the recorded settings \\['view_stats'\\]"):
        measure(f, cands, views=3, meta={"view_stats": "mine"})


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), k=st.integers(1, 3), c=st.integers(1, 3), batches=st.lists(st.integers(1, 4), min_size=1),
       repeat=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_view_moments_equal_a_float64_reference_for_any_batching_and_padding(n, k, c, batches, repeat, seed):
    """Batch sizes, order and candidates seen twice (DistributedSampler padding) never change the result."""
    gen = torch.Generator().manual_seed(seed)
    views = torch.randn(n, k, c, 3, 2, generator=gen) * 3 + 1
    order = torch.cat([torch.randperm(n, generator=gen), torch.arange(min(repeat, n))])  # a padded shard
    metric, start, i = ViewMoments(n, c), 0, 0
    while start < len(order):
        rows = order[start:start + batches[i % len(batches)]]
        metric.update(views[rows], rows)
        start, i = start + len(rows), i + 1
    assert _close(metric.compute(), _stats(views))


# ------------------------------------------------------------------------ statistic, tolerance
def test_gaps_and_tolerance_by_hand():
    views = ViewStatistics(mean=(0.5, 0.5), std=(0.25, 0.25))
    batches = ViewStatistics(mean=(0.0, 0.5), std=(1.0, 0.25))
    ratio, shift = gaps(views, batches)
    assert ratio.tolist() == [4.0, 1.0] and shift.tolist() == [0.5, 0.0]
    message = mismatch(views, batches)
    assert "std ratio 4.00, tolerance 1.5" in message and "mean [0.5, 0.5] and std [0.25, 0.25] in the views" in message
    assert mismatch(views, views) is None
    just_in = ViewStatistics(mean=(0.5 + SHIFT_TOLERANCE * 0.25,) * 2, std=(0.25 * SCALE_TOLERANCE,) * 2)
    assert mismatch(views, ViewStatistics(just_in.mean, (0.25, 0.25))) is None  # a shift of exactly 0.5 std
    assert mismatch(views, ViewStatistics((0.5, 0.5), just_in.std)) is None  # a ratio of exactly 1.5
    constant = ViewStatistics(mean=(0.3,), std=(0.0,))
    assert mismatch(constant, constant) is None and mismatch(constant, ViewStatistics((0.3,), (0.1,))) is not None
    assert mismatch(views, ViewStatistics((0.5,), (0.25,))) is None  # other channel counts are not compared


@settings(max_examples=50, deadline=None)
@given(mean=st.lists(st.floats(-2, 2), min_size=3, max_size=3), std=st.lists(st.floats(0.05, 3), min_size=3, max_size=3),
       other=st.lists(st.floats(-2, 2), min_size=3, max_size=3), other_std=st.lists(st.floats(0.05, 3), min_size=3, max_size=3),
       scale=st.floats(0.01, 100), offset=st.floats(-10, 10))
def test_gaps_are_invariant_to_a_common_change_of_units(mean, std, other, other_std, scale, offset):
    a, b = ViewStatistics(tuple(mean), tuple(std)), ViewStatistics(tuple(other), tuple(other_std))
    moved = [ViewStatistics(tuple(m * scale + offset for m in s.mean), tuple(v * scale for v in s.std)) for s in (a, b)]
    for before, after in zip(gaps(a, b), gaps(*moved)):
        assert torch.allclose(before, after, rtol=1e-6, atol=1e-9)


def test_training_inputs_record_training_forwards_with_gradients_only():
    layer = nn.Conv2d(2, 1, 1)
    inputs = TrainingInputs(channels=2).attach(layer)
    x = torch.randn(3, 2, 4, 5)
    layer.eval()
    layer(x + 100)  # eval mode: the monitor's own passes
    layer.train()
    with torch.no_grad():
        layer(x + 100)  # no gradients: BatchNorm recalibration, frozen features
    layer(torch.empty(0, 2, 4, 5))  # an empty batch
    layer(x)
    assert _close(inputs.statistics(), _stats(x))
    assert inputs.detach().attached is False and not layer._forward_pre_hooks
    layer(x + 100)
    assert _close(inputs.statistics(), _stats(x))
    assert TrainingInputs(channels=3).statistics() is None


# ----------------------------------------------------------------------------------- the monitor
class LightlySimCLR(pl.LightningModule):
    """SimCLR as a lightly user writes it: batches ``((x0, x1), labels)`` of SimCLRTransform views
    (or raw images, augmented inside ``training_step`` by ``augment``)."""

    def __init__(self, augment: Any = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = SimCLR(TinyCNN(width=4), feature_dim=16, hidden_dim=16, out_dim=8, augment=augment)

    def training_step(self, batch, batch_idx):
        return self.model.training_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _images(n: int = 48) -> torch.Tensor:
    """Smooth coloured blobs of random brightness and contrast: per-image statistics vary as in photographs."""
    gen = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=(S, S), mode="bilinear")
    contrast, brightness = torch.rand(n, 1, 1, 1, generator=gen), torch.rand(n, 1, 1, 1, generator=gen)
    images = brightness * (1 - contrast) + contrast * blobs
    return (images * 255).round().to(torch.uint8)


def _fit(monitor: MemorizationMonitor, training: Any, *, augment: Any = None, epochs: int = 1, batch_size: int = 8,
         n: int = 48) -> tuple:
    """Fit a LightlySimCLR on ``n - 8`` images through ``training`` (a lightly transform, or None for raw
    images with ``augment``); returns ``(model, trainer, the monitor's mismatch warnings)``."""
    images = _images(n)
    loader = DataLoader(TensorImageDataset(images[8:], transform=training), batch_size=batch_size)
    model = LightlySimCLR(augment)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[monitor], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    return model, trainer, [w for w in caught if MISMATCH in str(w.message)]


def _monitor(**kwargs: Any) -> MemorizationMonitor:
    return MemorizationMonitor(_images()[:8], views=2, encoder="model.backbone", progress=False, grid_size=0,
                               log_histograms=False, **kwargs)


def test_default_views_against_lightly_normalised_batches_warn_once_with_both_figures_and_the_fix():
    monitor = _monitor()
    model, trainer, found = _fit(monitor, lightly_transforms.SimCLRTransform(input_size=S), epochs=2)
    assert len(found) == 1 and found[0].category is UserWarning
    message = str(found[0].message)
    check = monitor.view_check
    for figure in (*check.views.mean, *check.training.std):
        assert f"{figure:.3g}" in message
    assert "transform=" in message and "normalize='imagenet'" in message and "check_views='off'" in message
    assert max(check.training.std) > 0.8 and max(check.views.std) < 0.35  # ImageNet-normalised vs [0, 1]
    assert check.batches == CHECK_STEPS and no_hooks(model)


@pytest.mark.parametrize("case", ["lightly-view-transform", "default-views-normalized", "lightly-unnormalised",
                                  "batched-in-training-step", "lightly-strong-vs-default"])
def test_views_of_the_training_pipeline_never_warn(case):
    """Same pipeline, or the same value space with other augmentation details: no warning (the check ran)."""
    lightly = lightly_transforms.SimCLRTransform(input_size=S)
    plain = lightly_transforms.SimCLRTransform(input_size=S, normalize=None)
    monitor, training, augment = {
        "lightly-view-transform": (_monitor(transform=lightly.transforms[0]), lightly, None),
        "default-views-normalized": (_monitor(normalize="imagenet"), lightly, None),
        "lightly-unnormalised": (_monitor(transform=plain.transforms[0]), plain, None),
        "batched-in-training-step": (_monitor(), None, BatchedSimCLRAugment(S)),
        "lightly-strong-vs-default": (_monitor(), lightly_transforms.SimCLRTransform(
            input_size=S, normalize=None, min_scale=0.08, cj_strength=1.0, gaussian_blur=0.5), None),
    }[case]
    model, _, found = _fit(monitor, training, augment=augment)
    assert found == [] and monitor.view_check.training is not None and no_hooks(model)


def test_the_training_statistics_are_those_of_the_encoders_first_training_inputs():
    """Exactly the first CHECK_STEPS batches' encoder inputs: the monitor's own passes (a
    before-training measurement with BatchNorm recalibration) are not counted."""
    seen: List[torch.Tensor] = []

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.handle = pl_module.model.backbone.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))

        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == CHECK_STEPS:
                self.handle.remove()

    monitor = _monitor(normalize="imagenet", measure_on_train_start=True, every_n_epochs=1)
    images = _images()
    loader = DataLoader(TensorImageDataset(images[8:], transform=lightly_transforms.SimCLRTransform(input_size=S)),
                        batch_size=8)
    trainer = pl.Trainer(max_epochs=1, callbacks=[monitor, Spy()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(LightlySimCLR(), loader)
    assert len(seen) == 2 * CHECK_STEPS  # two views per step
    assert _close(monitor.view_check.training, _stats(torch.cat(seen)))
    assert _close(monitor.view_check.views, _stats(normalize_views(make_views(images[:8], 2), NORMALIZE_PRESETS["imagenet"])))
    assert len(monitor.history) == 2  # measured before training and after the epoch


def test_an_epoch_shorter_than_the_check_is_compared_at_its_last_batch():
    monitor = _monitor()
    _, trainer, found = _fit(monitor, lightly_transforms.SimCLRTransform(input_size=S), n=8 + 16)  # 2 batches
    assert trainer.num_training_batches == 2 and monitor.view_check.batches == 2 and len(found) == 1


def test_check_views_error_stops_the_fit_at_the_check_and_leaves_no_hook():
    monitor = _monitor(check_views="error")
    with pytest.raises(ValueError, match=f"check_views='error': the monitor's views {MISMATCH}"):
        _fit(monitor, lightly_transforms.SimCLRTransform(input_size=S), epochs=3)
    assert monitor.history == []  # stopped after CHECK_STEPS steps, before the first measurement


def test_check_views_off_never_hooks_the_encoder():
    hooked: List[int] = []

    class Probe(LightlySimCLR):
        def training_step(self, batch, batch_idx):
            hooked.append(len(self.model.backbone._forward_pre_hooks))
            return super().training_step(batch, batch_idx)

    monitor = _monitor(check_views="off")
    images = _images()
    loader = DataLoader(TensorImageDataset(images[8:], transform=lightly_transforms.SimCLRTransform(input_size=S)),
                        batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(max_epochs=1, callbacks=[monitor], logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(Probe(), loader)
    assert hooked == [0] * 5 and not [w for w in caught if MISMATCH in str(w.message)]
    assert monitor.view_check.training is None
    with pytest.raises(ValueError, match="`check_views` must be one of \\('warn', 'error', 'off'\\)"):
        _monitor(check_views="raise")


def test_an_encoder_not_trained_in_the_first_batches_is_not_compared_and_the_log_says_so(caplog):
    """A frozen backbone (called under no_grad) gives the check nothing to compare: no warning, one info line."""
    import logging

    class Frozen(LightlySimCLR):
        def training_step(self, batch, batch_idx):
            (first, _), _ = batch
            with torch.no_grad():
                features = self.model.backbone(first.float())
            return self.model.projection_head(features.flatten(1)).square().mean()

    monitor = _monitor()
    images = _images()
    loader = DataLoader(TensorImageDataset(images[8:], transform=lightly_transforms.SimCLRTransform(input_size=S)),
                        batch_size=8)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(max_epochs=1, callbacks=[monitor], logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(Frozen(), loader)
    assert not [w for w in caught if MISMATCH in str(w.message)] and monitor.view_check.training is None
    assert "the encoder received no float image batches with 3 channel(s) in training mode" in caplog.text


def test_the_resume_fingerprint_covers_normalize():
    from lightning_memloc.callbacks.monitor_checks import check_same_fingerprint, fingerprint

    plain, normed, same = _monitor(), _monitor(normalize="imagenet"), _monitor(normalize=NORMALIZE_PRESETS["imagenet"])
    assert fingerprint(normed) == fingerprint(same)  # a preset and its numbers are one setting
    with pytest.raises(ValueError, match="normalize: None there"):
        check_same_fingerprint(fingerprint(plain), fingerprint(normed), "the checkpoint's monitor state")


# ------------------------------------------------------------------------------ memloc analyze
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """f.pt, g.pt (TinyCNN width 4) and d.npz (8 images of 16 x 16)."""
    import numpy as np

    root = tmp_path_factory.mktemp("cli_views")
    torch.manual_seed(0)
    for name in ("f", "g"):
        torch.save(TinyCNN(3, 4).state_dict(), root / f"{name}.pt")
    np.savez(root / "d.npz", x=_images(8).permute(0, 2, 3, 1).numpy())
    return root


def _analyze(ws, out, *extra):
    from helpers import run_cli

    return run_cli(["analyze", "--arch", "tiny", "--size", str(S), "--views", "3", "--top-k", "3", "--bootstrap", "200",
                    "--no-progress", "--encoder", ws / "f.pt", "--reference", ws / "g.pt", "--data", ws / "d.npz",
                    "--output-dir", out, *extra])


@pytest.mark.slow  # two full analyses with their figures
def test_analyze_with_a_transform_factory_and_normalize_equals_measure(ws, tmp_path):
    """`--transform pkg.module:factory` (+ `--transform-kwargs`) and `--normalize` reproduce measure()
    with the same transform / normalisation, and the report records them and its view statistics."""
    from lightning_memloc import load_encoder

    kwargs = '{"input_size": 16, "gaussian_blur": 0.0}'
    code, _, err = _analyze(ws, tmp_path / "t", "--transform", "lightly.transforms:SimCLRViewTransform",
                            "--transform-kwargs", kwargs)
    assert code == 0, err
    f, g = load_encoder(ws / "f.pt", TinyCNN(3, 4)), load_encoder(ws / "g.pt", TinyCNN(3, 4))
    images = _images(8)
    common = dict(reference=g, views=3, top_k=3, bootstrap=200, candidate_ids=torch.arange(8))
    direct = measure(f, images, transform=lightly_transforms.SimCLRViewTransform(input_size=16, gaussian_blur=0.0),
                     **common)
    report = MemorizationReport.load(tmp_path / "t" / "report.json")
    assert report.allclose(direct, atol=1e-6)
    assert report.meta["transform"] == "lightly.transforms:SimCLRViewTransform" and report.meta["transform_kwargs"] == kwargs
    assert all(report.meta["view_stats"][k] == pytest.approx(direct.meta["view_stats"][k]) for k in ("mean", "std"))
    assert report.meta["normalize"] is None
    assert max(report.meta["view_stats"]["std"]) > 0.8  # lightly's ImageNet normalisation

    code, _, err = _analyze(ws, tmp_path / "n", "--normalize", "0.5,0.4,0.3/0.2,0.25,0.3")
    assert code == 0, err
    normed = MemorizationReport.load(tmp_path / "n" / "report.json")
    assert normed.allclose(measure(f, images, normalize=((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), **common), atol=1e-6)
    assert normed.meta["normalize"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


@pytest.mark.parametrize("extra, flag, text", [
    (["--transform", "no_such_module_xyz:f"], "--transform", "cannot import"),
    (["--transform", "math:pi"], "--transform", "not a callable returning the view transform"),
    (["--transform", "lightly.transforms:SimCLRViewTransform", "--transform-kwargs", "[1]"], "--transform-kwargs",
     "expected a JSON object"),
    (["--transform", "lightly.transforms:SimCLRTransform", "--transform-kwargs", '{"input_size": 16}'], "--transform",
     "returned several views"),
    (["--transform", "torchvision.transforms.v2:Identity"], "--transform", "must return a float tensor"),
    (["--normalize", "imagenett"], "--normalize", "expected one of imagenet, cifar10 or MEAN/STD"),
    (["--normalize", "0.5,0.5/0.2,0.2"], "--normalize", "has 2 channels but the views have 3"),
])
def test_bad_view_flags_name_the_flag_before_any_work(ws, tmp_path, extra, flag, text):
    code, _, err = _analyze(ws, tmp_path / "o", *extra)
    assert code == 2 and flag in err.splitlines()[-1] and text in err, err
    assert not (tmp_path / "o" / "report.json").exists()
