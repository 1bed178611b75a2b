"""Data loaders (offline), the shared / candidate / independent split and TensorImageDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_memloc.data import (
    SplitIndices,
    TensorImageDataset,
    load_data,
    load_digits,
    load_image_folder,
    load_npz,
    load_torchvision,
    as_float_image,
    split_candidates,
    split_item,
)


def test_load_digits() -> None:
    x, y = load_digits(size=16, channels=3)
    assert x.shape == (1797, 3, 16, 16) and x.dtype == torch.uint8
    assert y.shape == (1797,) and y.dtype == torch.long and y.unique().tolist() == list(range(10))
    assert torch.equal(x[:, 0], x[:, 2]) and int(x.max()) >= 250 and int(x.min()) == 0
    x1, _ = load_digits(size=8, channels=1)
    assert x1.shape == (1797, 1, 8, 8) and int(x1.max()) == 255
    with pytest.raises(ValueError, match="size"):
        load_digits(size=0)
    with pytest.raises(ValueError, match="channels"):
        load_digits(channels=0)


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)  # N×H×W×C
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(5))
    images, labels = load_npz(tmp_path / "a.npz")
    assert images.shape == (5, 3, 6, 4) and images.dtype == torch.uint8 and labels.dtype == torch.long
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), x) and labels.tolist() == list(range(5))
    np.savez(tmp_path / "b.npz", images=x[..., 0], labels=np.ones(5))  # N×H×W, other key names
    images, labels = load_npz(str(tmp_path / "b.npz"))
    assert images.shape == (5, 1, 6, 4) and labels.tolist() == [1] * 5
    np.savez(tmp_path / "c.npz", x=x)
    assert load_npz(tmp_path / "c.npz")[1].tolist() == [-1] * 5
    resized, _ = load_data(str(tmp_path / "a.npz"), size=8)
    assert resized.shape == (5, 3, 8, 8) and resized.dtype == torch.uint8


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "k.npz", data=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match="found \\['data'\\]"):
        load_npz(tmp_path / "k.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 4, 4, 3), np.float32), y=np.zeros(2))
    with pytest.raises(TypeError, match="uint8"):
        load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "n.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(3))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        load_npz(tmp_path / "n.npz")


def test_load_torchvision_offline_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_torchvision("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True.*npz"):
        load_torchvision("CIFAR10", tmp_path, download=False)


def _png_folder(root: Path) -> Path:
    for cls, sizes in (("cat", [(20, 12), (10, 10)]), ("dog", [(9, 14)])):
        (root / cls).mkdir(parents=True)
        for n, (w, h) in enumerate(sizes):
            Image.fromarray(np.full((h, w, 3), 40 * (n + 1), np.uint8)).save(root / cls / f"{n}.png")
    (root / "dog" / "gray.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(root / "dog" / "gray.png")
    return root


def test_load_image_folder(tmp_path: Path) -> None:
    folder = _png_folder(tmp_path / "imgs")
    x, y = load_image_folder(folder, size=8)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 1, 1]
    assert int(x[0].min()) == int(x[0].max()) == 40
    assert torch.equal(load_data(str(folder), size=8)[0], x)
    with pytest.raises(ValueError, match="size"):
        load_data(folder)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_image_folder(tmp_path / "nope", 8)


def test_load_data_dispatch(tmp_path: Path) -> None:
    x, y = load_data("digits", size=8)
    assert x.shape == (1797, 3, 8, 8) and len(y) == 1797
    with pytest.raises(ValueError, match="unknown data spec 'imagenet'"):
        load_data("imagenet")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_data(str(tmp_path / "absent.npz"))


def test_split_candidates() -> None:
    s = split_candidates(100)
    assert isinstance(s, SplitIndices) and [len(t) for t in s] == [80, 10, 10]
    everything = torch.cat(list(s))
    assert everything.unique().numel() == 100 and int(everything.min()) == 0 and int(everything.max()) == 99
    assert all(torch.equal(a, b) for a, b in zip(s, split_candidates(100)))
    assert not torch.equal(s.candidates, split_candidates(100, seed=1).candidates)
    assert torch.equal(s.encoder, torch.cat([s.shared, s.candidates]).sort().values)
    assert set(s.reference.tolist()).isdisjoint(s.candidates.tolist())
    paper = split_candidates(50_000, 40_000, 5_000, 5_000)
    assert [len(t) for t in paper] == [40_000, 5_000, 5_000]
    assert [len(t) for t in split_candidates(50_000)] == [40_000, 5_000, 5_000]
    part = split_candidates(20, shared=0.5, candidates=3, independent=0)
    assert [len(t) for t in part] == [10, 3, 0]
    assert [len(t) for t in split_candidates(1797)] == [1437, 179, 179]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(shared=60, candidates=30, independent=20), ValueError, "exceeds n=100"),
        (dict(shared=-1), ValueError, "shared"),
        (dict(independent=1.5), ValueError, "independent"),
        (dict(candidates=0), ValueError, "candidates"),
        (dict(candidates=True), TypeError, "candidates"),
        (dict(shared="half"), TypeError, "shared"),
    ],
)
def test_split_candidates_validation(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        split_candidates(100, **kwargs)


def test_tensor_image_dataset() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ds = TensorImageDataset(images, labels=[1, 2, 3, 4])
    x, y = ds[2]
    assert len(ds) == 4 and y == 3 and torch.equal(x, images[2])
    flipped = TensorImageDataset(images, transform=lambda img: img.flip(-1))
    assert torch.equal(flipped[0][0], images[0].flip(-1)) and flipped[0][1] == -1
    with pytest.raises(TypeError, match="images"):
        TensorImageDataset(images.float())
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(images, labels=[1])


def test_item_helpers() -> None:
    pil = Image.fromarray(np.full((3, 5, 3), 255, np.uint8))
    assert as_float_image(pil).shape == (3, 3, 5) and float(as_float_image(pil).max()) == 1.0
    assert as_float_image(torch.zeros(1, 2, 2)).dtype == torch.float32
    with pytest.raises(TypeError, match="candidates"):
        as_float_image(np.zeros((3, 2, 2)))
    with pytest.raises(TypeError, match="candidates"):
        as_float_image(torch.zeros(2, 2))
    assert split_item(("img", torch.tensor(4), "x")) == ("img", 4)
    assert split_item(("img",)) == ("img", -1) and split_item("img") == ("img", -1)
    assert split_item(("img", {"boxes": 1})) == ("img", -1)
