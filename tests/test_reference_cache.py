"""Frozen-reference cache: cached results equal uncached ones exactly, and any key change is a miss."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_memloc import BatchedSimCLRAugment, ReferenceCache, measure
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.cotrain import cotraining_loader
from lightning_memloc.data import split_candidates
from lightning_memloc.models import TinyCNN
from lightning_memloc.reference_cache import frozen_reference, model_digest, tensor_digest
from helpers import cotrained_pair


def _models(seed: int = 0):
    torch.manual_seed(seed)
    f, g = TinyCNN(width=3), TinyCNN(width=3)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in g.modules():  # non-default BatchNorm statistics, so that buffers matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return f, g


def _images(n: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _same(a, b, meta: bool = True) -> bool:
    """Exact equality of two reports (JSON text: NaN compares equal to NaN), ``meta`` included or not."""
    da, db = a.to_dict(), b.to_dict()
    if not meta:
        da.pop("meta"), db.pop("meta")
    return json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)


KW = dict(views=3, top_k=2, batch_size=3, bootstrap=200)


def test_cached_equals_uncached_exactly_and_reuses():
    f, g = _models()
    x = _images()
    cache = ReferenceCache()
    first = measure(f, x, reference=g, reference_cache=cache, **KW)
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)  # 7 candidates, 3 a batch
    second = measure(f, x, reference=g, reference_cache=cache, **KW)
    assert (cache.hits, cache.misses) == (3, 3)
    plain = measure(f, x, reference=g, **KW)
    assert _same(first, plain) and _same(second, plain)
    # another encoder against the same g: g is not run again, results equal an uncached call
    f2, _ = _models(5)
    assert _same(measure(f2, x, reference=g, reference_cache=cache, **KW), measure(f2, x, reference=g, **KW))
    assert cache.hits == 6


def test_cached_with_pooled_control_and_unseen_groups():
    f, g = _models()
    x, control, unseen = _images(6, 0), _images(4, 1), _images(5, 2)
    cache = ReferenceCache()
    kw = dict(KW, control=control, unseen=unseen)
    measure(f, x, reference=g, reference_cache=cache, **kw)
    cached = measure(f, x, reference=g, reference_cache=cache, **kw)
    assert cache.misses == 5 and cache.hits == 5  # 15 pooled images, 3 a batch
    assert _same(cached, measure(f, x, reference=g, **kw))
    # another control set: the pooled batches that contain it miss, and results stay exact
    other = _images(4, 9)
    changed = measure(f, x, reference=g, reference_cache=cache, **dict(kw, control=other))
    assert cache.misses > 5
    assert _same(changed, measure(f, x, reference=g, **dict(kw, control=other)))


def _perturb_weight(g):
    with torch.no_grad():
        g.conv3.conv.weight[0, 0, 0, 0] += 1e-3


def _perturb_buffer(g):
    bn = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    bn.running_var[0] += 1e-3


@pytest.mark.parametrize(
    "change",
    ["weight", "buffer", "seed", "views", "layers", "pairing", "candidates", "transform", "batch_size"],
)
def test_any_key_change_is_a_miss_and_exact(change):
    f, g = _models()
    x = _images()
    base = dict(KW, seed=0, layers=["conv1", "conv2", "conv3"])
    cache = ReferenceCache()
    measure(f, x, reference=g, reference_cache=cache, **base)
    misses = cache.misses
    kw = dict(base)
    if change == "weight":
        _perturb_weight(g)
    elif change == "buffer":
        _perturb_buffer(g)
    elif change == "seed":
        kw["seed"] = 1
    elif change == "views":
        kw["views"] = 4
    elif change == "layers":
        kw["layers"] = ["conv1", "conv3"]
    elif change == "pairing":
        kw["pairing"] = "anchor"
    elif change == "candidates":
        x = x.clone()
        x[6, 0, 0, 0] ^= 1  # one pixel of the last candidate: only its batch changes
    elif change == "transform":
        kw["transform"] = BatchedSimCLRAugment(12, scale=(0.5, 1.0))
    elif change == "batch_size":
        kw["batch_size"] = 4  # (2 would re-form the last batch [6] exactly: a legitimate hit)
    cached = measure(f, x, reference=g, reference_cache=cache, **kw)
    assert cache.misses > misses
    if change == "candidates":
        assert cache.hits == 2 and cache.misses == misses + 1  # the two unchanged batches are reused
    else:
        assert cache.hits == 0
    assert _same(cached, measure(f, x, reference=g, **kw))


def test_model_digest_sees_non_persistent_buffers_and_class():
    g = TinyCNN(width=2)
    g.register_buffer("scale", torch.ones(2), persistent=False)
    before = model_digest(g)
    g.scale[0] = 2.0
    assert model_digest(g) != before
    assert tensor_digest(torch.zeros(2)) != tensor_digest(torch.zeros(2, dtype=torch.float64))
    assert tensor_digest(torch.zeros(4)) != tensor_digest(torch.zeros(2, 2))


def test_two_model_states_kept_and_oldest_dropped():
    f, g = _models()
    x = _images()
    cache = ReferenceCache(max_models=2)
    measure(f, x, reference=g, reference_cache=cache, **KW)
    saved = {k: v.clone() for k, v in g.state_dict().items()}
    _perturb_weight(g)
    measure(f, x, reference=g, reference_cache=cache, **KW)
    g.load_state_dict(saved)  # back to the first state: still cached
    measure(f, x, reference=g, reference_cache=cache, **KW)
    assert (cache.hits, cache.misses) == (3, 6)
    with pytest.raises(ValueError, match="max_models"):
        ReferenceCache(max_models=0)


def test_bad_reference_cache_argument():
    f, g = _models()
    with pytest.raises(TypeError, match="reference_cache"):
        measure(f, _images(), reference=g, reference_cache={}, **KW)


def test_frozen_reference_rule():
    owner = nn.Module()
    owner.reference = TinyCNN(width=2)
    outside = TinyCNN(width=2)
    assert not frozen_reference(owner, owner.reference)  # co-trained: never cached
    for p in owner.reference.parameters():
        p.requires_grad_(False)
    assert not frozen_reference(owner, owner.reference)  # e.g. an EMA target: still part of the trained module
    assert frozen_reference(owner, outside) and not frozen_reference(owner, None)


@pytest.mark.parametrize("frozen", [True, False])
def test_monitor_caches_a_frozen_reference_only(tmp_path, frozen):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=gen)
    split = split_candidates(32, shared=16, candidates=8, independent=8, seed=0)
    reference = cotrained_pair(1, max_epochs=2).reference.backbone if frozen else "reference.backbone"
    monitor = MemorizationMonitor(images[split.candidates], every_n_epochs=1, views=3, encoder="encoder.backbone",
                                  reference=reference, top_k=3, grid_size=4, progress=False, batch_size=4,
                                  unseen=images[split.independent][:4])
    pl.seed_everything(0)
    model = cotrained_pair(max_epochs=2)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[monitor], enable_progress_bar=False,
                         enable_model_summary=False, logger=False, enable_checkpointing=False, deterministic=True)
    trainer.fit(model, cotraining_loader(images, split, batch_size=8))
    cache = monitor._reference_cache
    if frozen:
        assert (cache.misses, cache.hits) == (3, 3)  # 12 pooled images, 4 a batch: epoch 0 misses, epoch 1 hits
        again = measure(model.encoder.backbone, images[split.candidates], reference=reference, views=3, top_k=3,
                        batch_size=4, unseen=images[split.independent][:4])
        assert _same(again, monitor.report, meta=False)  # meta: epoch, global step
    else:
        assert (cache.misses, cache.hits, len(cache)) == (0, 0, 0)


def test_save_load_round_trip_and_bad_file(tmp_path):
    f, g = _models()
    x = _images()
    cache = ReferenceCache()
    first = measure(f, x, reference=g, reference_cache=cache, **KW)
    path = cache.save(tmp_path / "g.cache")
    loaded = ReferenceCache.load(path)
    again = measure(f, x, reference=g, reference_cache=loaded, **KW)
    assert (loaded.hits, loaded.misses) == (3, 0) and _same(first, again)
    assert len(ReferenceCache.load(tmp_path / "absent", missing_ok=True)) == 0
    (tmp_path / "bad").write_text("not a cache")
    with pytest.raises(ValueError, match="not a reference cache"):
        ReferenceCache.load(tmp_path / "bad")


@pytest.mark.slow
def test_cli_analyze_reuses_the_reference_cache_across_checkpoints(tmp_path):
    import numpy as np

    from lightning_memloc import MemorizationReport
    from lightning_memloc.cli import main

    torch.manual_seed(0)
    f1, f2, g = TinyCNN(3, 4), TinyCNN(3, 4), TinyCNN(3, 4)
    for name, model in (("f1", f1), ("f2", f2), ("g", g)):
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    base = ["analyze", "--arch", "tiny", "--size", "16", "--views", "3", "--top-k", "3", "--no-progress",
            "--data", tmp_path / "d.npz", "--reference", tmp_path / "g.pt"]
    cache = tmp_path / "g.cache"
    for name in ("f1", "f2"):
        for cached in (True, False):
            out = tmp_path / f"{name}{cached}"
            extra = ["--reference-cache", cache] if cached else []
            assert main([str(a) for a in base + ["--encoder", tmp_path / f"{name}.pt", "--out", out] + extra]) == 0
    assert cache.is_file() and len(ReferenceCache.load(cache)) == 1  # 8 candidates, one batch
    for name in ("f1", "f2"):
        a, b = (MemorizationReport.load(tmp_path / f"{name}{c}" / "report.json") for c in (True, False))
        assert _same(a, b)
    assert main([str(a) for a in base[:-2] + ["--encoder", tmp_path / "f1.pt", "--out", tmp_path / "x",
                                              "--reference-cache", cache]]) == 2
