"""Candidates, labels and index selections given as paths (a config file needs no Python)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_memloc.callbacks.monitor import MemorizationMonitor
from lightning_memloc.data.candidates import load_candidates, read_indices
from lightning_memloc.models.datamodule import CoTrainingData

IMAGES = torch.arange(5 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(5, 3, 4, 4)
LABELS = torch.tensor([3, 1, 4, 1, 5])


def test_pt_tensor_and_dict(tmp_path):
    torch.save(IMAGES, tmp_path / "x.pt")
    torch.save({"images": IMAGES, "labels": LABELS}, tmp_path / "xy.pt")
    x, y = load_candidates(str(tmp_path / "x.pt"))
    assert torch.equal(x, IMAGES) and y is None
    x, y = load_candidates(tmp_path / "xy.pt", labels=True, indices=[4, 0])
    assert torch.equal(x, IMAGES[[4, 0]]) and y.tolist() == [5, 3]
    with pytest.raises(ValueError, match="`labels`=True .* have none"):
        load_candidates(tmp_path / "x.pt", labels=True)


def test_npz_with_size_and_labels_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=IMAGES.permute(0, 2, 3, 1).numpy(), y=LABELS.numpy())
    np.save(tmp_path / "y.npy", np.array([9, 8, 7, 6, 5]))
    x, y = load_candidates(str(tmp_path / "d.npz"), labels=True, size=2, indices="1:3")
    assert tuple(x.shape) == (2, 3, 2, 2) and y.tolist() == [1, 4]
    from lightning_memloc.data.loaders import resize_images

    assert torch.equal(x, resize_images(IMAGES, 2)[1:3])  # load_data's resize, then the selection
    _, y = load_candidates(str(tmp_path / "d.npz"), labels=str(tmp_path / "y.npy"), indices=[0])
    assert y.tolist() == [9]


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, color in (("a", 10), ("b", 200)):
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.new("RGB", (6, 6), (color, color, color)).save(tmp_path / "f" / cls / "0.png")
    x, y = load_candidates(str(tmp_path / "f"), labels=True, size=3)
    assert tuple(x.shape) == (2, 3, 3, 3) and y.tolist() == [0, 1] and x[1].unique().tolist() == [200]


@pytest.mark.parametrize("kind", ["json", "npy", "txt", "pt"])
def test_index_files(tmp_path, kind):
    path = tmp_path / f"i.{kind}"
    if kind == "json":
        path.write_text(json.dumps({"candidates": [2, 0]}))
    elif kind == "npy":
        np.save(path, np.array([2, 0]))
    elif kind == "txt":
        path.write_text("2, 0\n")
    else:
        torch.save(torch.tensor([2, 0]), path)
    assert read_indices(str(path), 5).tolist() == [2, 0]


def test_indices_and_arguments_are_checked(tmp_path):
    assert read_indices("-2:", 5).tolist() == [3, 4] and read_indices([-1], 5).tolist() == [4]
    with pytest.raises(ValueError, match="index 5 is outside the 5 images"):
        read_indices([5], 5)
    with pytest.raises(ValueError, match="selects no image"):
        read_indices("3:3", 5)
    with pytest.raises(ValueError, match="`size` resizes candidates read from a path"):
        load_candidates(IMAGES, size=2)
    with pytest.raises(ValueError, match="`labels` has 2 entries for 5"):
        load_candidates(IMAGES, labels=torch.tensor([0, 1]))
    with pytest.raises(FileNotFoundError, match="`candidates`: nothing at"):
        load_candidates(str(tmp_path / "missing.npz"))
    same, labels = load_candidates(IMAGES)
    assert same is IMAGES and labels is None  # tensors pass through untouched


def test_monitor_takes_a_path(tmp_path):
    torch.save({"x": IMAGES, "y": LABELS}, tmp_path / "c.pt")
    monitor = MemorizationMonitor(str(tmp_path / "c.pt"), labels=True, indices="0:4", views=2, progress=False)
    assert len(monitor.views) == 4 and monitor.views.has_labels
    assert torch.allclose(monitor.views.display_images([3]), IMAGES[3:4].float() / 255)


def test_datamodule_split_from_indices(tmp_path):
    torch.save(IMAGES, tmp_path / "c.pt")
    data = CoTrainingData(str(tmp_path / "c.pt"), candidates=[0, 1], independent="4:", batch_size=1)
    data.setup("fit")
    assert [t.tolist() for t in data.split] == [[2, 3], [0, 1], [4]]
    assert sorted(data.train_dataloader().iterables) == ["encoder", "reference"]
    with pytest.raises(ValueError, match="share images \\[1\\]"):
        CoTrainingData(str(tmp_path / "c.pt"), candidates="0:2", independent="1:3").setup("fit")


def test_groups_are_indices_into_one_data_set_and_name_the_candidates(tmp_path):
    """LightningCLI: candidates, control and unseen as index selections of one file; ids are the dataset indices."""
    from lightning_memloc.data.candidates import load_groups
    from lightning_memloc.models import TinyCNN
    from helpers import LitModel, make_trainer

    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.save({"x": images, "y": torch.arange(12) % 3}, tmp_path / "d.pt")
    torch.save(images.flip(0), tmp_path / "other.pt")
    g = load_groups(str(tmp_path / "d.pt"), True, indices="2:6", control_indices=[7, 8, 9], unseen_indices="-2:")
    assert torch.equal(g.candidates, images[2:6]) and g.labels.tolist() == [2, 0, 1, 2]
    assert torch.equal(g.control, images[7:10]) and torch.equal(g.unseen, images[10:])
    assert g.candidate_ids.tolist() == [2, 3, 4, 5] and g.meta == {"control_indices": [7, 8, 9], "unseen_indices": [10, 11]}
    other = load_groups(images, control=str(tmp_path / "other.pt"), control_indices=[0, 1])  # indices into control's file
    assert torch.equal(other.control, images[[11, 10]]) and other.unseen is None
    assert other.candidate_ids.tolist() == list(range(12)) and other.meta == {"control_indices": [0, 1]}
    with pytest.raises(ValueError, match="`indices` repeat images"):
        load_groups(images, indices=[1, 2, 1])
    with pytest.raises(ValueError, match="`control_indices` select from a path"):
        load_groups(images, control=images, control_indices=[0])
    with pytest.raises(ValueError, match="`unseen_indices`: index 12 is outside the 12 images"):
        load_groups(images, unseen_indices=[12])

    reference = TinyCNN(width=4).requires_grad_(False)
    monitor = MemorizationMonitor(str(tmp_path / "d.pt"), indices="2:6", control_indices="7:10", unseen_indices="10:",
                                  views=2, encoder="backbone", reference=reference, progress=False, grid_size=0,
                                  bootstrap=200, top_k=2, output_dir=tmp_path / "run")
    make_trainer([monitor], max_epochs=1).fit(LitModel())
    from lightning_memloc import MemorizationReport

    saved = MemorizationReport.load(tmp_path / "run" / "report_epoch=0.json")
    for report in (monitor.report, saved):
        assert report.candidate_ids.tolist() == [2, 3, 4, 5]  # not positions 0..3
        assert report.meta["control_indices"] == [7, 8, 9] and report.meta["unseen_indices"] == [10, 11]
        assert report.evidence.meta["groups"] == {"candidates": 4, "control": 3, "unseen": 2}
        assert set(report.top_ids.tolist()) <= {2, 3, 4, 5}
