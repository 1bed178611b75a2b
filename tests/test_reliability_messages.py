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
from lightning_memloc.models import TinyCNN
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


# ------------------------------------------------- found by the generated cases and after them
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_candidates_give_the_views_of_their_float32_values(encoder, reference, images, dtype):
    """The augmentation ran in the images' dtype: bf16 candidates moved LayerMem by up to 0.05."""
    half = images.to(dtype)
    report = measure(encoder, half, reference=reference, views=3, bootstrap=0, top_k=2)
    same = measure(encoder, half.float(), reference=reference, views=3, bootstrap=0, top_k=2)
    assert report.allclose(same, atol=1e-6)


def test_an_unreadable_image_in_a_folder_is_named(tmp_path):
    from PIL import Image

    from lightning_memloc.data import load_data

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    broken = tmp_path / "b" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"{broken}' is not a readable image.*remove it from the folder"):
        load_data(tmp_path, size=8)


def test_a_history_with_values_that_are_not_numbers_is_refused(tmp_path):
    from lightning_memloc import ReportFormatError
    from lightning_memloc.plots import load_history

    good = [{"epoch": 0, "global_step": 4, "memloc.layer_mem/conv1": 0.1, "memloc.excess/conv1": None}]
    assert load_history(good) == good
    for entry in ({"epoch": 0, "memloc.layer_mem/conv1": "0.1"}, {"epoch": "0", "memloc.layer_mem/conv1": 0.1},
                  {"epoch": 0, "memloc.layer_mem/conv1": True}, {"epoch": 0, "memloc.layer_mem/conv1": [0.1]}):
        with pytest.raises(ReportFormatError, match="holds values that are not numbers"):
            load_history([entry])


def _report(**changes) -> MemorizationReport:
    fields = dict(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.tensor([3, 5, 8]),
                  unit_mem={"a": torch.tensor([0.1, 0.7])}, unit_argmax={"a": torch.tensor([3, 8])},
                  dead_units={"a": torch.tensor([False, False])}, sslmem={"a": torch.tensor([0.0, 0.5, 1.0])},
                  sslmem_raw={"a": torch.tensor([0.0, 0.1, 0.2])}, layer_mem={"a": 0.5}, delta_layer_mem={"a": 0.5},
                  layer_mem_top={"a": 1.0}, layer_mem_least={"a": 0.0}, top_ids=torch.tensor([8]),
                  least_ids=torch.tensor([3]))
    fields.update(changes)
    return MemorizationReport(**fields)


@pytest.mark.parametrize("changes, pattern", [
    ({"layer_mem": {"a": math.nan}}, r"`layer_mem\['a'\]` is not finite"),
    ({"unit_mem": {"a": torch.tensor([0.1, 1.5])}}, r"outside \[0, 1\]"),
    ({"top_ids": torch.tensor([4])}, "`top_ids` holds ids that are not in `candidate_ids`"),
], ids=["nan-layer-mem", "unit-mem-range", "unknown-top-id"])
def test_save_refuses_a_report_load_would_refuse(tmp_path, changes, pattern):
    from lightning_memloc import ReportFormatError

    with pytest.raises(ReportFormatError, match=pattern):
        _report(**changes).save(tmp_path / "report.json")
    assert not list(tmp_path.iterdir())  # nothing written


def test_save_names_what_json_cannot_store(tmp_path):
    with pytest.raises(TypeError, match=r"`analyses\['table'\]` is a Tensor"):
        _report(analyses={"table": torch.zeros(2)}).save(tmp_path / "report.json")
    assert not list(tmp_path.iterdir())


def test_a_report_file_with_fractional_or_nested_ids_is_refused(tmp_path):
    import json

    from lightning_memloc import ReportFormatError

    path = _report().save(tmp_path / "report.json")
    for field, value in (("top_ids", [7.5]), ("candidate_ids", [[3, 5, 8]])):
        data = json.loads(path.read_text())
        data[field] = value
        path.write_text(json.dumps(data))
        with pytest.raises(ReportFormatError, match=rf"`{field}` must be a flat list of integer ids"):
            MemorizationReport.load(path)


def test_the_largest_seeds_work_with_an_unseen_set(encoder, images):
    """Seeds are valid up to 2**64 - 1; the evidence's own offset seeds overflowed torch after the whole pass."""
    for seed in (2**64 - 1, 2**64 - 14, 2**63):
        report = measure(encoder, images[:4], views=2, seed=seed, unseen=images[4:], bootstrap=200)
        assert report.meta["seed"] == seed and report.evidence.layers["conv3"]["unit_mem_seen"] is not None


def test_a_model_without_weights_is_named_before_any_work(images):
    meta_model = TinyCNN(3, 4).to("meta")
    with pytest.raises(ValueError, match=r"`encoder` has parameters or buffers on the meta device.*to_empty"):
        measure(meta_model, images, views=2)
    with pytest.raises(ValueError, match=r"`reference` has parameters or buffers on the meta device"):
        measure(TinyCNN(3, 4), images, reference=meta_model, views=2)


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0


@pytest.mark.parametrize("name", ["control", "unseen"])
def test_bad_items_of_a_control_or_unseen_dataset_are_named(encoder, reference, images, name):
    bad = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    bad[2, 1, 4, 4] = math.nan
    with pytest.raises(ValueError, match=rf"^`{name}\[2\]` holds 1 NaN or inf pixel"):
        measure(encoder, images, reference=reference, views=2, bootstrap=0, **{name: _Images(bad)})
    with pytest.raises(ValueError, match=rf"^`{name}\[0\]` is a float tensor with values in .*0-255"):
        measure(encoder, images, reference=reference, views=2, bootstrap=0, **{name: _Images(bad[:2] * 255)})


def test_numpy_evidence_settings_are_recorded_as_python_numbers(encoder, reference, images, tmp_path):
    report = measure(encoder, images, reference=reference, views=2, bootstrap=np.int64(200), confidence=np.float32(0.9),
                     alpha=np.float64(0.1), unseen=images[:3])
    assert type(report.meta["bootstrap"]) is int and type(report.meta["confidence"]) is float
    assert report.meta["confidence"] == pytest.approx(0.9) and report.meta["bootstrap"] == 200
    assert MemorizationReport.load(report.save(tmp_path / "r.json")).meta["alpha"] == 0.1


def test_shift_treats_a_unit_constant_up_to_float32_rounding_as_constant():
    """One ulp between candidates (the batch size decides it) gave UnitMem 1.0 under negative='shift'."""
    from lightning_memloc.functional import unitmem

    one_ulp = torch.tensor([[0.17147639], [0.17147642], [0.17147639]])  # a unit constant over 3 candidates
    assert unitmem(one_ulp, negative="shift").tolist() == [0.0]
    assert float(unitmem(one_ulp, negative="clamp")) < 1e-6
    real = torch.tensor([[0.10], [0.12], [0.10]])  # a 20 % spread is kept: (0.02 - 0) / (0.02 + 0) = 1
    assert unitmem(real, negative="shift").tolist() == [1.0]


class _MinusHalf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.5


def test_negative_error_on_the_unseen_images_names_them_and_the_layer():
    from collections import OrderedDict

    model = torch.nn.Sequential(OrderedDict(minus=_MinusHalf(), pool=torch.nn.AdaptiveAvgPool2d(1),
                                            flat=torch.nn.Flatten()))
    bright, dark = torch.full((4, 3, 8, 8), 0.9), torch.full((3, 3, 8, 8), 0.1)  # means +0.4 and -0.4
    measure(model, bright, views=2, layers=["minus"], negative="error", transform=lambda img: img.clone())
    with pytest.raises(ValueError, match=r"^the `unseen` images, layer 'minus': `mean_activations` has 9 negative"):
        measure(model, bright, views=2, layers=["minus"], negative="error", unseen=dark, transform=lambda img: img.clone())


def test_a_report_with_part_of_the_sslmem_fields_is_drawn(tmp_path, images):
    """LayerMem without top / least / ΔLayerMem / per-candidate SSLMem (a hand-made report): plot crashed."""
    from helpers import assert_png
    from lightning_memloc.plots import plot_report

    report = _report(layer_mem_top=None, layer_mem_least=None, delta_layer_mem=None, sslmem=None, sslmem_raw=None)
    loaded = MemorizationReport.load(report.save(tmp_path / "report.json"))
    written = plot_report(loaded, tmp_path / "figures", images=images[:3])
    assert sorted(p.name for p in written) == ["candidates.png", "layer_mem.png", "unit_mem.png"]
    for path in written:
        assert_png(path)
