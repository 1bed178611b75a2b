"""Seeded views: the same seed gives the same views everywhere, and training RNG is untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_memloc.views.seeded import BatchedSimCLRAugment, SeededViews, make_views, seeded_rng, view_seed

N, C, S, K = 8, 3, 16, 3


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(N, C, S, S, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def images_u8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


def v2_transform():
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(S, scale=(0.3, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                       v2.ToDtype(torch.float32, scale=True)])


def lightly_transform():
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=S, gaussian_blur=0.5).transforms[0]


def collect(ds: SeededViews, **loader_kwargs) -> torch.Tensor:
    """Views of every candidate, keyed by the returned candidate index."""
    out = torch.full((len(ds), ds.views, *ds.view_shape), float("nan"))
    for index, x, _ in DataLoader(ds, collate_fn=ds.collate, **loader_kwargs):
        out[index] = ds.finalize(x, index, "cpu")
    return out


# ----------------------------------------------------------------------------- view_seed / seeded_rng


def test_view_seed_int_and_tensor_agree() -> None:
    idx = torch.tensor([0, 1, 7, 2**40, 12345])
    vec = view_seed(3, idx, 2)
    assert isinstance(vec, torch.Tensor) and vec.dtype == torch.long
    assert vec.tolist() == [view_seed(3, int(i), 2) for i in idx]
    grid = view_seed(0, torch.arange(20).view(-1, 1), torch.arange(10).view(1, -1))
    assert grid.shape == (20, 10) and grid.unique().numel() == 200 and bool((grid >= 0).all())
    assert int(view_seed(2**64 - 1, torch.tensor(5), -2)) == view_seed(-1, 5, -2)  # seeds wrap modulo 2**64
    s = view_seed(2**62, 5, 9)
    assert isinstance(s, int) and 0 <= s < 2**63
    assert view_seed(0, 1, 0) != view_seed(1, 1, 0) != view_seed(1, 0, 1)
    with pytest.raises(TypeError, match="index"):
        view_seed(0, torch.tensor([1.0]), 0)


def test_seeded_rng_reproducible_and_restores_state() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    draws = []
    for _ in range(2):
        with seeded_rng(2**62 + 5):
            draws.append((torch.rand(2), np.random.rand(2), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and np.array_equal(draws[0][1], draws[1][1])
    assert draws[0][2] == draws[1][2]
    with pytest.raises(RuntimeError, match="boom"):
        with seeded_rng(3):
            torch.rand(5)
            raise RuntimeError("boom")
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    with pytest.raises(ValueError, match="`s`"):
        with seeded_rng(-1):
            pass


# ----------------------------------------------------------------------------- BatchedSimCLRAugment


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_augment_shapes_and_range(channels: int) -> None:
    x = torch.rand(6, channels, 20, 12)
    out = BatchedSimCLRAugment(size=8)(x, torch.arange(6))
    assert out.shape == (6, channels, 8, 8) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert BatchedSimCLRAugment(8)(x[:0], torch.arange(0)).shape == (0, channels, 8, 8)


def test_batched_augment_per_sample_determinism(images: torch.Tensor) -> None:
    aug = BatchedSimCLRAugment(size=S)
    x = images.repeat(4, 1, 1, 1)
    seeds = view_seed(0, torch.arange(len(x)), 0)
    full = aug(x, seeds)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(aug(x[perm], seeds[perm]), full[perm], atol=1e-6)
    assert torch.allclose(aug(x[5:9], seeds[5:9]), full[5:9], atol=1e-6)  # other batch composition
    assert torch.allclose(aug(x[3:4], seeds[3:4]), full[3:4], atol=1e-6)
    other = aug(x, seeds + 1)
    assert not torch.allclose(other, full)


def test_batched_augment_identity_flip_and_normalize(images: torch.Tensor) -> None:
    plain = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gray_p=0.0)
    seeds = torch.arange(N)
    assert torch.allclose(BatchedSimCLRAugment(S, flip_p=0.0, **plain)(images, seeds), images, atol=1e-5)
    assert torch.allclose(BatchedSimCLRAugment(S, flip_p=1.0, **plain)(images, seeds), images.flip(-1), atol=1e-5)
    norm = BatchedSimCLRAugment(S, flip_p=0.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **plain)
    assert torch.allclose(norm(images, seeds), (images - 0.5) / 0.25, atol=1e-4)
    gray = BatchedSimCLRAugment(S, flip_p=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gray_p=1.0)(images, seeds)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_batched_augment_crop_geometry() -> None:
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()  # varies along width
    aug = BatchedSimCLRAugment(16, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    out = aug(ramp, torch.arange(4))
    assert torch.allclose(out[:, :, 0], out[:, :, -1])  # still constant along height
    width = out[..., -1] - out[..., 0]  # a half-width crop spans about half the ramp
    assert bool(((width > 0.4) & (width < 0.5)).all())
    flipped = BatchedSimCLRAugment(16, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(flipped(ramp, torch.arange(4)), out.flip(-1), atol=1e-5)


def test_batched_jitter_matches_torchvision(images: torch.Tensor) -> None:
    from torchvision.transforms.v2 import functional as TF

    from lightning_memloc.views.augment import uniforms as _uniforms  # white-box: factor b of sample i is drawn at counter 24 + b

    seeds = torch.arange(N)
    u = _uniforms(seeds, 29)
    plain = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, gray_p=0.0)
    for n, adjust in enumerate((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)):
        strength = [0.0] * 4
        strength[n] = 0.4
        out = BatchedSimCLRAugment(S, jitter=tuple(strength), **plain)(images, seeds)
        factors = 0.6 + 0.8 * u[:, 24 + n]
        ref = torch.stack([adjust(img, float(f)) for img, f in zip(images, factors)])
        assert torch.allclose(out, ref, atol=1e-4), adjust.__name__
    out = BatchedSimCLRAugment(S, jitter=(0.0, 0.0, 0.0, 0.3), **plain)(images, seeds)
    hues = 0.3 * (2 * u[:, 27] - 1)  # a YIQ rotation approximates the HSV shift: closer than no change
    ref = torch.stack([TF.adjust_hue(img, float(h)) for img, h in zip(images, hues)])
    assert (out - ref).abs().mean() < 0.8 * (images - ref).abs().mean()
    gray = images.mean(1, keepdim=True).expand_as(images)
    assert torch.allclose(BatchedSimCLRAugment(S, jitter=(0.0, 0.0, 0.0, 0.3), **plain)(gray, seeds), gray, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_same_on_cuda(images_u8: torch.Tensor) -> None:
    ds = SeededViews(images_u8, views=K, seed=0)
    index, x, _ = next(iter(ds.dataloader(batch_size=N)))
    assert torch.allclose(ds.finalize(x, index, "cuda").cpu(), ds.finalize(x, index, "cpu"), atol=1e-4)


def test_batched_augment_validation(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="size"):
        BatchedSimCLRAugment(0)
    with pytest.raises(ValueError, match="scale"):
        BatchedSimCLRAugment(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="flip_p"):
        BatchedSimCLRAugment(8, flip_p=1.5)
    with pytest.raises(ValueError, match="mean"):
        BatchedSimCLRAugment(8, mean=(0.5,))
    aug = BatchedSimCLRAugment(8)
    with pytest.raises(ValueError, match="seeds"):
        aug(images, torch.arange(3))
    with pytest.raises(TypeError, match="images"):
        aug((images * 255).to(torch.uint8), torch.arange(N))
    with pytest.raises(TypeError, match="seeds"):
        aug(images, torch.rand(N))


# ----------------------------------------------------------------------------- SeededViews, batched default


def test_default_views_reproducible_and_seed_dependent(images_u8: torch.Tensor) -> None:
    a = make_views(images_u8, K, seed=0)
    assert a.shape == (N, K, C, S, S) and a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, make_views(images_u8, K, seed=0))
    b = make_views(images_u8, K, seed=1)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[:, 0], a[:, 1])  # views of one candidate differ
    ds = SeededViews(images_u8, views=K, seed=0)
    for loader_kwargs in (dict(batch_size=3), dict(batch_size=1), dict(batch_size=5, sampler=[7, 2, 5, 0, 1, 6, 3, 4])):
        assert torch.allclose(collect(ds, **loader_kwargs), a, atol=1e-6)
    assert torch.allclose(ds.anchors([2, 5]), images_u8[[2, 5]].float() / 255)


def test_views_same_with_worker_processes(images: torch.Tensor) -> None:
    for transform in (None, v2_transform()):
        ds = SeededViews(images, views=2, transform=transform, seed=4)
        assert torch.allclose(collect(ds, batch_size=3, num_workers=2), collect(ds, batch_size=4), atol=1e-6)


@pytest.mark.filterwarnings("ignore:The function `to_tensor")
def test_training_rng_unaffected(images_u8: torch.Tensor) -> None:
    def draws() -> tuple:
        return torch.rand(4), np.random.rand(4), random.random()

    for transform in (None, v2_transform(), lightly_transform()):
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        expected = draws()
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        make_views(images_u8, 2, transform=transform, seed=3)
        got = draws()
        assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


# ----------------------------------------------------------------------------- per-image transforms


@pytest.mark.filterwarnings("ignore:The function `to_tensor")  # raised inside lightly
@pytest.mark.parametrize("make_transform", [v2_transform, lightly_transform], ids=["torchvision-v2", "lightly"])
def test_per_image_transform_reproducible(images_u8: torch.Tensor, make_transform) -> None:
    tf = make_transform()
    a = make_views(images_u8, K, transform=tf, seed=0)
    assert a.shape == (N, K, C, S, S) and type(a) is torch.Tensor
    assert torch.equal(a, make_views(images_u8, K, transform=make_transform(), seed=0))
    assert not torch.allclose(a, make_views(images_u8, K, transform=tf, seed=1))
    assert not torch.allclose(a[:, 0], a[:, 1])
    ds = SeededViews(images_u8, views=K, transform=tf, seed=0)
    assert not ds.is_batched
    assert torch.equal(collect(ds, batch_size=5, sampler=[3, 1, 4, 0, 2, 7, 6, 5]), a)
    assert torch.equal(ds[6][1], a[6])


@pytest.mark.filterwarnings("ignore:The function `to_tensor")
def test_lightly_transform_on_pil_dataset(images_u8: torch.Tensor) -> None:
    class PilData(Dataset):
        def __len__(self) -> int:
            return N

        def __getitem__(self, i: int):
            return Image.fromarray(images_u8[i].permute(1, 2, 0).numpy()), i % 3

    ds = SeededViews(PilData(), views=2, transform=lightly_transform(), seed=0)
    index, x, labels = next(iter(ds.dataloader(batch_size=N)))
    assert x.shape == (N, 2, C, S, S) and labels.tolist() == [i % 3 for i in range(N)]
    assert torch.equal(ds.finalize(x, index, "cpu"), make_views(PilData(), 2, transform=lightly_transform(), seed=0))


def test_transform_must_return_float_tensor(images_u8: torch.Tensor) -> None:
    from torchvision.transforms import v2

    with pytest.raises(TypeError, match="`transform`.*uint8"):
        SeededViews(images_u8, views=2, transform=v2.RandomHorizontalFlip())[0]
    with pytest.raises(TypeError, match="`transform`.*list"):
        SeededViews(images_u8, views=2, transform=lambda img: [img])[0]
    with pytest.raises(TypeError, match="transform"):
        SeededViews(images_u8, views=2, transform=3)


# ----------------------------------------------------------------------------- precomputed, datasets, errors


def test_precomputed_views_pass_through(images: torch.Tensor) -> None:
    pre = torch.rand(N, 4, C, S, S)
    assert torch.equal(make_views(pre, None), pre)
    ds = SeededViews(pre, views=4, labels=torch.arange(N))
    assert ds.views == 4 and ds[3][2] == 3 and torch.equal(ds[3][1], pre[3])
    pre_u8 = (pre * 255).to(torch.uint8)
    assert torch.equal(make_views(pre_u8, 4), pre_u8.float() / 255)
    with pytest.raises(ValueError, match="views=None"):
        SeededViews(pre, views=10)
    with pytest.raises(ValueError, match="transform"):
        SeededViews(pre, views=None, transform=BatchedSimCLRAugment(S))
    with pytest.raises(ValueError, match="anchor"):
        ds.anchor(0)
    features = torch.randn(N, 2, 12)  # (N, K, D) feature views for MLP encoders
    assert torch.equal(make_views(features, 2), features) and SeededViews(features, None).view_shape == (12,)


def test_dataset_candidates_labels_and_anchor(images: torch.Tensor) -> None:
    class Pairs(Dataset):
        def __len__(self) -> int:
            return N

        def __getitem__(self, i: int):
            return images[i], torch.tensor(i % 2), "extra"

    ds = SeededViews(Pairs(), views=2, seed=0)
    assert ds.is_batched and ds[5][2] == 1 and ds.has_labels
    assert ds.example_batch().shape == (4, C, S, S)
    assert not SeededViews(images).has_labels and SeededViews(images, labels=[0] * N).has_labels
    assert torch.equal(ds.anchor(5), images[5])
    assert torch.equal(make_views(Pairs(), 2), make_views(images, 2))
    labelled = SeededViews(images, views=2, labels=list(range(10, 10 + N)))
    i, x, label = labelled[-1]
    assert (i, label) == (N - 1, 10 + N - 1) and torch.equal(x, images[-1])
    assert SeededViews(images, views=2)[0][2] == -1
    with pytest.raises(IndexError):
        labelled[N]


def test_anchor_shape_must_match_views(images: torch.Tensor) -> None:
    from torchvision.transforms import v2

    ds = SeededViews(images, views=2, transform=v2.RandomResizedCrop(8, antialias=True))
    assert ds.view_shape == (C, 8, 8)
    with pytest.raises(ValueError, match="anchor.*view"):
        ds.anchors([0, 1])
    assert SeededViews(images, views=2, transform=BatchedSimCLRAugment(8)).view_shape == (C, 8, 8)


def test_mixed_shapes_detected_when_collating() -> None:
    class Mixed(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return torch.rand(3, 16 if i < 2 else 12, 16)

    ds = SeededViews(Mixed(), views=2)
    with pytest.raises(ValueError, match="different shapes.*candidate 2"):
        next(iter(ds.dataloader(batch_size=4)))


def test_input_validation(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="empty"):
        SeededViews(images[:0])
    with pytest.raises(ValueError, match="empty"):
        SeededViews(torch.utils.data.TensorDataset(images[:0]))
    with pytest.raises(ValueError, match="views"):
        SeededViews(images, views=0)
    with pytest.raises(ValueError, match="candidates"):
        SeededViews(images[0, 0])
    with pytest.raises(TypeError, match="candidates"):
        SeededViews(images.to(torch.int32))
    with pytest.raises(TypeError, match="candidates"):
        SeededViews([images[0], images[1]])
    with pytest.raises(ValueError, match="labels"):
        SeededViews(images, labels=[0, 1])
    with pytest.raises(TypeError, match="candidates"):
        SeededViews(torch.utils.data.TensorDataset(torch.zeros(2, 3)))  # items are not images
    ds = SeededViews(images, views=2)
    with pytest.raises(ValueError, match="index"):
        ds.finalize(images[:2], [0], "cpu")
