"""Reliability round 2, ``measure()`` and its inputs (docs/reliability.md, rows 35 on).

Each failure case checks the error type, fragments of the message (argument and fix), that no
forward pass ran where the check is up front, and that the encoder is untouched (weights,
buffers, modes, ``requires_grad``, hooks).
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lightning_memloc import MemorizationReport, ReportFormatError, measure
from lightning_memloc.checks import check_candidate_ids, check_index_values, check_seed
from lightning_memloc.views import SeededViews
from helpers import assert_untouched, counting_forwards, take_snapshot


def _refused(encoder, error, fragments, *args, **kwargs):
    """``measure`` raises ``error`` with every fragment, before any forward pass, leaving the encoder as it was."""
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(error) as info:
        measure(encoder, *args, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert calls["n"] == 0, "a forward pass ran before the error"
    assert_untouched(encoder, snap)
    return info.value


# ------------------------------------------------------------ input value range
@pytest.mark.parametrize("scale, shift, kind", [(255.0, 0.0, "0-255 values"), (4.0, -2.0, "normalised values")],
                         ids=["0-255", "normalised"])
def test_float_candidates_outside_0_1_are_refused(encoder, images, scale, shift, kind):
    _refused(encoder, ValueError, ["`candidates` is a float tensor with values in", kind, "must be in [0, 1]",
                                   "divide 0-255 values by 255", "mean=..., std=..."], images * scale + shift, views=2)
    # the fix works: the same images in [0, 1] measure fine
    measure(encoder, images, views=2, top_k=2)


def test_resampling_overshoot_is_tolerated(encoder, images):
    measure(encoder, (images * 1.005).clamp(max=1.005), views=2, top_k=2)  # within the documented 0.01 tolerance


def test_custom_transform_gets_a_warning_not_an_error(encoder, images):
    transform = lambda img: img[:, :12, :12].float() / 255  # expects 0-255 floats: allowed, but warned about
    with pytest.warns(UserWarning, match="float images must be in \\[0, 1\\].*custom `transform`"):
        measure(encoder, images * 255, views=2, transform=transform, top_k=2)


def test_dataset_items_outside_0_1_are_refused_at_the_probe(encoder, images):
    class Items(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return images[i] * 255, 0

    _refused(encoder, ValueError, ["`candidates[0]` is a float tensor", "divide 0-255 values by 255"], Items(), views=2)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_channels_last_images_get_a_layout_message(encoder, dtype):
    x = torch.zeros(6, 16, 16, 3, dtype=dtype)
    _refused(encoder, ValueError, ["looks channels-last (N, H, W, C)", "candidates.permute(0, 3, 1, 2)"], x, views=2)

    class Items(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return x[i]

    _refused(encoder, ValueError, ["looks channels-last (H, W, C)", "permute(2, 0, 1)"], Items(), views=2)


# ------------------------------------------------------------ candidate identity
@pytest.mark.parametrize("ids, error, fragment", [
    (torch.tensor([0, 1, 2, 3, 4, 4]), ValueError, "duplicated ids [4]"),
    (torch.tensor([0.0, 1.5, 2, 3, 4, 5]), TypeError, "must hold integer ids, got dtype torch.float32"),
    (np.array([0, 1, 2, 3, 4, 5.5]), TypeError, "integer ids, got dtype torch.float64"),
    (torch.tensor([-1, 1, 2, 3, 4, 5]), ValueError, "ids >= 0"),
], ids=["duplicate", "float", "numpy-float", "negative"])
def test_candidate_ids_must_be_distinct_integers(encoder, images, ids, error, fragment):
    _refused(encoder, error, ["`candidate_ids`", fragment], images, views=2, candidate_ids=ids)


def test_numpy_candidate_ids_are_used_by_position(encoder, images):
    ids = np.array([10, 11, 12, 13, 14, 15], dtype=np.int32)
    report = measure(encoder, images, views=2, top_k=2, candidate_ids=ids)
    assert report.candidate_ids.tolist() == ids.tolist()
    assert set(torch.cat(list(report.unit_argmax.values())).tolist()) - {-1} <= set(ids.tolist())  # -1: dead unit


@pytest.mark.parametrize("values, error, fragment", [
    ([3, 1, 3], ValueError, "repeats indices [3]"),
    ([0.5, 1], ValueError, "non-integer values"),
    (["1", "2.5"], ValueError, "non-integer values"),
    (["1", "x"], ValueError, "not numbers"),
    ([True, False], TypeError, "integer indices"),
])
def test_index_files_must_hold_distinct_integers(values, error, fragment):
    with pytest.raises(error, match="`--indices`"):
        check_index_values(values)
    with pytest.raises(error) as info:
        check_index_values(values)
    assert fragment in str(info.value)
    assert check_index_values([2.0, 0]).tolist() == [2, 0]  # integral floats are integers


# ------------------------------------------------------------ references that cannot show memorization
def test_a_copy_of_the_encoder_is_refused_as_reference(encoder, images):
    _refused(encoder, ValueError, ["`reference` has exactly the encoder's weights", "trained without the candidates"],
             images, reference=copy.deepcopy(encoder), views=2)


def test_a_reference_sharing_layers_is_refused(encoder, images, reference):
    reference.conv2 = encoder.conv2  # e.g. a reference assembled from the encoder's blocks
    snap_ref = take_snapshot(reference)
    _refused(encoder, ValueError, ["`reference` shares", "parameter(s) with the encoder", "conv2"],
             images, reference=reference, views=2)
    assert_untouched(reference, snap_ref)


# ------------------------------------------------------------ metadata
def test_meta_cannot_overwrite_recorded_settings(encoder, images):
    _refused(encoder, ValueError, ["`meta` would overwrite the recorded settings ['num_candidates', 'views']",
                                   "rename these keys"], images, views=2, meta={"views": 10, "num_candidates": 99})
    report = measure(encoder, images, views=2, top_k=2, meta={"views": 2, "run": "a"})  # same value / new key: fine
    assert report.meta["views"] == 2 and report.meta["run"] == "a"


def _saved(tmp_path, encoder, images, edit):
    report = measure(encoder, images, views=2, top_k=2)
    data = report.to_dict()
    edit(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["unit_argmax"]["conv1"].__setitem__(0, 99), "points to candidate ids [99]"),
    (lambda d: d["unit_mem"]["conv2"].__setitem__(1, 1.5), "outside [0, 1]"),
    (lambda d: d["unit_mem"]["conv2"].__setitem__(1, -0.25), "outside [0, 1]"),
    (lambda d: d.__setitem__("candidate_ids", [0, 1, 2, 3, 4, 4]), "duplicated ids"),
], ids=["unknown-argmax", "unitmem-above-1", "unitmem-negative", "duplicate-ids"])
def test_reports_with_impossible_values_fail_to_load(tmp_path, encoder, images, edit, fragment):
    path = _saved(tmp_path, encoder, images, edit)
    with pytest.raises(ReportFormatError) as info:
        MemorizationReport.load(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_dead_units_may_have_no_argmax(tmp_path, encoder, images):
    def dead(d):
        d["unit_argmax"]["conv1"][0] = -1
        d["dead_units"]["conv1"][0] = True
        d["unit_mem"]["conv1"][0] = 0.0
    assert MemorizationReport.load(_saved(tmp_path, encoder, images, dead)).unit_argmax["conv1"][0] == -1

    def alive(d):
        d["unit_argmax"]["conv1"][0] = -1
        d["dead_units"]["conv1"][0] = False
    with pytest.raises(ReportFormatError, match=r"-1 is allowed for dead units only"):
        MemorizationReport.load(_saved(tmp_path, encoder, images, alive))


# ------------------------------------------------------------ seeds and transforms
@pytest.mark.parametrize("seed, fragment", [(2**64, "same views as seed=0"), (-1, "same views as seed=18446744073709551615")])
def test_seeds_outside_64_bits_are_refused(encoder, images, seed, fragment):
    _refused(encoder, ValueError, ["`seed` must be in [0, 2**64)", fragment], images, views=2, seed=seed)


def test_seed_range_edges_and_numpy_seeds():
    assert check_seed(2**64 - 1) == 2**64 - 1 and check_seed(np.uint64(5)) == 5
    with pytest.raises(TypeError, match="`seed` must be an int"):
        check_seed(1.0)


class _OwnGenerator:
    """A transform drawing from its own generator: ignores the measurement's seeds."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, img):
        return img[:, :12, :12] + 0.01 * torch.rand(img.shape[0], 12, 12, generator=self.generator)


def test_a_transform_with_its_own_generator_is_warned_about(encoder, images):
    with pytest.warns(UserWarning, match="made other views from the same seeds on a second call"):
        measure(encoder, images, views=2, transform=_OwnGenerator(), top_k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a transform drawing from torch's global RNG: no warning
        measure(encoder, images, views=2, transform=lambda img: img[:, :12, :12] + 0.01 * torch.rand(3, 12, 12),
                top_k=2)


# ------------------------------------------------------------ internal errors made clear
def test_a_million_views_fail_up_front(encoder):
    x = torch.rand(4, 3, 32, 32)
    _refused(encoder, MemoryError, ["batch_size·views = 32·1000000 views", "lower `views`"], x, views=10**6)


def test_numpy_integers_are_accepted_for_int_options(encoder, images):
    plain = measure(encoder, images, views=2, batch_size=4, top_k=2, seed=3)
    numpy = measure(encoder, images, views=np.int64(2), batch_size=np.int32(4), top_k=np.int64(2), seed=np.int64(3))
    assert plain.allclose(numpy) and numpy.meta["views"] == 2 and type(numpy.meta["views"]) is int


def test_a_compiled_encoder_is_measured_eagerly(encoder, images, reference):
    compiled = torch.compile(encoder)
    eager = measure(encoder, images, reference=reference, views=2, top_k=2, layers=["conv1", "conv3"])
    report = measure(compiled, images, reference=reference, views=2, top_k=2, layers=["conv1", "conv3"])
    assert report.layers == ["conv1", "conv3"] and report.allclose(eager)


class _LabelFirst(Dataset):
    def __init__(self, images, one_hot=False):
        self.images, self.one_hot = images, one_hot

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.one_hot:
            return self.images[i], torch.nn.functional.one_hot(torch.tensor(i % 3), 3)
        return i % 3, self.images[i]


def test_label_image_items_and_one_hot_labels_say_what_is_wrong(encoder, images):
    _refused(encoder, TypeError, ["look like (label, image)", "must be (image, label, ...)"], _LabelFirst(images),
             views=2)
    _refused(encoder, ValueError, ["one-hot labels (3 classes)", "label.argmax()"], _LabelFirst(images, True), views=2)
    one_hot = torch.nn.functional.one_hot(torch.arange(6) % 3, 3)
    _refused(encoder, ValueError, ["`labels` has shape (6, 3)", "looks one-hot", "labels.argmax(1)"], images, views=2,
             labels=one_hot)


def test_a_multi_view_transform_is_pointed_to_its_first_view(encoder, images):
    lightly = pytest.importorskip("lightly.transforms")
    whole = lightly.SimCLRTransform(input_size=16, gaussian_blur=0.0, normalize=None)
    _refused(encoder, TypeError, ["got list", "several views", "`transform.transforms[0]`"],
             (images * 255).to(torch.uint8), views=2, transform=whole)
    measure(encoder, (images * 255).to(torch.uint8), views=2, transform=whole.transforms[0], top_k=2)  # the fix


def test_seeded_views_check_their_settings_without_touching_anything(images):
    with pytest.raises(ValueError, match="`views` must be an int >= 1, got 2.0"):
        SeededViews(images, views=2.0)
    assert SeededViews(images, views=np.int16(3)).views == 3
    assert check_candidate_ids(None, 3).tolist() == [0, 1, 2]
