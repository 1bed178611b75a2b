"""Inputs that used to end in a raw traceback (or a wrong number) now get a message naming the argument.

Rows 100+ of docs/reliability.md: damaged ``.npz`` files, non-finite or 0-255 control / unseen
images, class names as labels, sparse / nested / meta tensors, ``meta`` values JSON cannot hold.
Each error comes before any forward pass (the tests count forward calls) and leaves the model as it was.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_memloc import MemorizationMonitor, MemorizationReport, measure
from lightning_memloc.data import load_npz
from helpers import assert_untouched, counting_forwards, files_in, run_cli, take_snapshot


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good_npz() -> bytes:
    rng = np.random.default_rng(0)
    return _npz_bytes(x=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), y=np.arange(8) % 2)


def _flipped(data: bytes, *positions: int) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p] ^= 0xFF
    return bytes(out)


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 8, 8, 3), np.uint8))
    return buffer.getvalue()


BAD_NPZ = {
    "truncated": (lambda: _good_npz()[: len(_good_npz()) // 2], "not a readable .npz file.*BadZipFile"),
    "empty": (lambda: b"", "not a readable .npz file.*EOFError"),
    "not-an-archive": (lambda: b"hello world" * 20, "neither a zip archive nor a .npy array"),
    "damaged-member": (lambda: _flipped(_good_npz(), 200, 300), "Bad CRC-32"),
    "object-array": (lambda: _npz_bytes(x=np.array([1, "a"], dtype=object)), "Object arrays"),
    "npy-renamed": (_npy_bytes, "holds a single array.*not an .npz archive"),
    "string-labels": (lambda: _npz_bytes(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array(["cat"] * 4)),
                      "labels must be integer class ids.*numpy.unique"),
    "nan-labels": (lambda: _npz_bytes(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0.0, 1.0, math.nan, 1.0])),
                   "labels must be integer class ids.*-1 where a label is missing"),
    "no-images": (lambda: _npz_bytes(x=np.zeros((0, 8, 8, 3), np.uint8)), "holds no images"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_a_damaged_or_foreign_npz_names_the_file_and_the_fix(tmp_path, case):
    make, pattern = BAD_NPZ[case]
    path = tmp_path / f"{case}.npz"
    path.write_bytes(make())
    with pytest.raises(ValueError, match=pattern) as err:
        load_npz(path)
    assert str(path) in str(err.value)
    torch.manual_seed(0)
    from lightning_memloc.models import TinyCNN

    torch.save(TinyCNN(3, 4).state_dict(), tmp_path / "f.pt")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["analyze", "--arch", "tiny", "--encoder", tmp_path / "f.pt", "--data", path,
                               "--output-dir", out, "--no-progress"])
    assert code == 2 and stderr.startswith("memloc analyze: error: --data:") and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and not files_in(out)


def test_an_npz_with_integral_float_labels_still_loads(tmp_path):
    path = tmp_path / "f.npz"
    path.write_bytes(_npz_bytes(x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([0.0, 2.0, -1.0])))
    assert load_npz(path)[1].tolist() == [0, 2, -1]


# ------------------------------------------------------------- control / unseen images
def _bad_group(kind: str) -> torch.Tensor:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    if kind == "nan":
        images[1, 0, 2, 2] = math.nan
    elif kind == "inf":
        images[0, 2, 0, 0] = math.inf
    else:  # 0-255 floats
        images = images * 255
    return images


@pytest.mark.parametrize("kind", ["nan", "inf", "0-255"])
@pytest.mark.parametrize("name", ["control", "unseen"])
def test_bad_control_or_unseen_images_are_named_before_any_work(encoder, reference, images, name, kind):
    snap = take_snapshot(encoder)
    pattern = "holds 1 NaN or inf pixel" if kind != "0-255" else r"is a float tensor with values in .*0-255"
    with counting_forwards(encoder) as calls, pytest.raises(ValueError, match=rf"^`{name}` {pattern}") as err:
        measure(encoder, images, reference=reference, views=2, bootstrap=0, **{name: _bad_group(kind)})
    assert calls["n"] == 0 and "`candidates`" not in str(err.value)
    assert_untouched(encoder, snap)


def test_channels_last_control_is_named(encoder, reference, images):
    with pytest.raises(ValueError, match=r"`control` has shape \(3, 16, 16, 3\).*channels-last.*control.permute"):
        measure(encoder, images, reference=reference, views=2, bootstrap=0,
                control=torch.rand(3, 16, 16, 3))


# ----------------------------------------------------------------------- labels
@pytest.mark.parametrize("labels", [
    ["cat", "dog", "cat", "dog", "cat", "dog"],
    np.array(["cat", "dog"] * 3),
    np.array(["cat", 1, 2, 3, 4, 5], dtype=object),
], ids=["list", "numpy", "object"])
def test_class_names_as_labels_get_the_mapping_fix(encoder, images, labels):
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(TypeError, match=r"`labels` must be integer class ids, "
                                                                             r"got (string|object) values \(e.g. 'cat'\).*numpy.unique"):
        measure(encoder, images, views=2, labels=labels)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)
    with pytest.raises(TypeError, match="`labels` must be integer class ids"):
        MemorizationMonitor(images, labels=labels, views=2, progress=False)


def test_ragged_labels_are_named(encoder, images):
    with pytest.raises(TypeError, match="`labels` must be a sequence of integer class ids"):
        measure(encoder, images, views=2, labels=[[0, 1], [1], 0, 1, 0, 1])


# -------------------------------------------------------- sparse, nested, meta tensors
def _sparse(t: torch.Tensor) -> torch.Tensor:
    return t.to_sparse()


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta")


@pytest.mark.parametrize("argument", ["candidates", "labels", "control", "unseen"])
@pytest.mark.parametrize("form", ["sparse", "meta"])
def test_sparse_or_meta_tensors_are_named_before_any_work(encoder, reference, images, argument, form):
    make = _sparse if form == "sparse" else _meta
    kwargs = {"candidates": images, "labels": torch.tensor([0, 1, 0, 1, 0, 1]), "control": images[:3].clone(),
              "unseen": images[3:].clone()}
    kwargs[argument] = make(kwargs[argument])
    error, pattern = (TypeError, "is a sparse_coo tensor: pass a dense one") if form == "sparse" else \
        (ValueError, "is on the meta device, which holds shapes but no values")
    snap = take_snapshot(encoder)
    with counting_forwards(encoder) as calls, pytest.raises(error, match=rf"^`{argument}` {pattern}"):
        measure(encoder, kwargs.pop("candidates"), reference=reference, views=2, bootstrap=0, **kwargs)
    assert calls["n"] == 0
    assert_untouched(encoder, snap)


def test_nested_candidates_are_named(encoder):
    nested = torch.nested.nested_tensor([torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    with pytest.raises(TypeError, match="`candidates` is a nested tensor"):
        measure(encoder, nested, views=2)


# ------------------------------------------------------------------------- meta=
@pytest.mark.parametrize("meta, where", [
    ({"obj": object()}, r"`meta\['obj'\]` is a object"),
    ({"lr": torch.tensor(0.1)}, r"`meta\['lr'\]` is a Tensor \(use .item\(\) or .tolist\(\)\)"),
    ({"lr": np.float32(0.1)}, r"`meta\['lr'\]` is a float32 \(use .item\(\)"),
    ({"run": {"sizes": [1, np.int64(2)]}}, r"`meta\['run'\]\['sizes'\]\[1\]` is a int64"),
    ({1: "a"}, r"`meta` has the key 1 \(int; it would come back as a string\)"),
    ({"run": {2: "b"}}, r"`meta\['run'\]` has the key 2"),
], ids=["object", "tensor", "numpy-scalar", "nested", "int-key", "nested-int-key"])
def test_meta_json_cannot_hold_is_refused_before_the_pass(encoder, images, tmp_path, meta, where):
    with counting_forwards(encoder) as calls, pytest.raises(TypeError, match=where + ".*cannot store: pass plain numbers"):
        measure(encoder, images, views=2, meta=meta)
    assert calls["n"] == 0


def test_meta_json_can_hold_round_trips(encoder, images, tmp_path):
    meta = {"note": "run 3", "lr": np.float64(0.5), "nan": math.nan, "ok": True, "none": None,
            "nested": {"sizes": [1, 2, (3, 4)]}}
    report = measure(encoder, images, views=2, meta=meta)
    loaded = MemorizationReport.load(report.save(Path(tmp_path) / "r.json"))
    assert loaded.meta["note"] == "run 3" and loaded.meta["lr"] == 0.5 and math.isnan(loaded.meta["nan"])
    assert loaded.meta["nested"] == {"sizes": [1, 2, [3, 4]]} and loaded.meta["ok"] is True and loaded.meta["none"] is None
