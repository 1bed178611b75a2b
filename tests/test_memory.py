"""Bounded memory: the metric states are the only candidate-sized memory, and they are known up front.

``state_bytes`` is exact (it is what the monitor's ``memory_limit`` checks), a 50,000-candidate ×
2,048-unit layer holds ~410 MB of float32 states and nothing else, an update costs O(B·U) whatever
N is, and a measurement pass never holds more than one batch of views (no N × K × activation
buffer). Allocations are observed with a ``TorchFunctionMode`` that records every tensor a torch
call returns.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.overrides import TorchFunctionMode
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_sum

from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.models.cotrain import cotraining_loader
from lightning_memloc.data import split_candidates
from lightning_memloc.measurement import build_views, run_pass
from lightning_memloc.taps.probe import probe_layers
from lightning_memloc.states.meter import MemorizationMeter, state_bytes
from lightning_memloc.models import TinyCNN
from lightning_memloc.taps.hooks import LayerSpec
from helpers import cotrained_pair


pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(meter: MemorizationMeter):
    return [m for m in meter.modules() if isinstance(m, Metric)]


def _states(meter: MemorizationMeter):
    return [t for m in _metrics(meter) for t in m.metric_state.values()]


class NewTensors(TorchFunctionMode):
    """Records the size of every tensor returned by a torch call, except those sharing storage
    with ``exclude`` (the metric states: ``index_add_`` returns the state it updated)."""

    def __init__(self, exclude=()):
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.shapes: list[tuple[int, ...]] = []
        self.bytes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.exclude:
                self.shapes.append(tuple(t.shape))
                self.bytes.append(t.numel() * t.element_size())
        return out


UNITS = {"conv1": 7, "conv2": 3, "conv3": 5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("labels", [False, True])
def test_state_bytes_is_exactly_the_meters_states(dtype, reference, labels):
    n = 11
    meter = MemorizationMeter([LayerSpec(k, "conv") for k in UNITS], UNITS, n, reference=reference, labels=labels,
                              state_dtype=dtype)
    held = sum(t.numel() * t.element_size() for t in _states(meter))
    assert held == state_bytes(n, UNITS, reference=reference, labels=labels, dtype=dtype)
    # the formula of docs/ddp.md
    item = torch.empty((), dtype=dtype).element_size()
    formula = sum(n * (u + 1) * item for u in UNITS.values()) + (16 * n * len(UNITS) if labels else 0)
    formula += (2 * len(UNITS) + 1) * n * item if reference else 0
    assert held == formula


def test_every_float_state_is_summed_across_processes():
    """Sharded (DDP) passes and padding rely on it, and so does the in-place all-reduce sync."""
    meter = MemorizationMeter([LayerSpec(k, "conv") for k in UNITS], UNITS, 5, reference=True, labels=True)
    for metric in _metrics(meter):
        for name, default in metric._defaults.items():
            if default.is_floating_point():
                assert metric._reductions[name] is dim_zero_sum, (type(metric).__name__, name)


def _update_allocations(meter: MemorizationMeter, batch: int, units: int, steps: int = 3) -> list[int]:
    gen = torch.Generator().manual_seed(0)
    largest = []
    for _ in range(steps):
        index = torch.randint(0, meter.num_candidates, (batch,), generator=gen)
        acts = torch.rand(batch, units, generator=gen)
        with NewTensors(exclude=_states(meter)) as spy:
            meter.update(index, {"fc": acts})
        largest.append(max(spy.bytes))
    return largest


def test_50k_candidates_2048_units_hold_only_the_states():
    n, u, batch = 50_000, 2_048, 256
    meter = MemorizationMeter([LayerSpec("fc", "linear")], {"fc": u}, n, reference=False, labels=False)
    states = _states(meter)
    assert sorted(tuple(t.shape) for t in states) == [(n,), (n, u)]
    held = sum(t.numel() * t.element_size() for t in states)
    assert held == state_bytes(n, {"fc": u}, reference=False, labels=False) == n * (u + 1) * 4 == 409_800_000

    # An update allocates O(B·U) (a few (B, U) temporaries at most), the same as with 100x fewer
    # candidates: no N-sized buffer is made per batch.
    largest = _update_allocations(meter, batch, u)
    assert max(largest) <= 2 * batch * u * 4 < held // 50
    small = MemorizationMeter([LayerSpec("fc", "linear")], {"fc": u}, 500, reference=False, labels=False)
    assert _update_allocations(small, batch, u) == largest
    assert int(meter.units[0].counts.sum()) == 3 * batch
    assert all(t.data_ptr() == s.data_ptr() for t, s in zip(_states(meter), states)), "states were reallocated"

    # compute works on the candidates seen so far
    seen = int((meter.units[0].counts > 0).sum())
    report = meter.compute_report(torch.arange(n))
    assert report.unit_mem["fc"].shape == (u,)
    assert 0 <= float(report.unit_mem["fc"].min()) and float(report.unit_mem["fc"].max()) <= 1
    assert seen > 1
    del meter, states, small


@pytest.mark.parametrize("with_reference", [False, True])
def test_pass_never_holds_more_than_one_batch_of_views(with_reference):
    """The largest tensor made during a pass is one batch's worth whatever N is: nothing of size
    N × K × activation is kept, and the metric states are the only candidate-sized tensors."""
    torch.manual_seed(0)
    f, g = TinyCNN(width=4), TinyCNN(width=4)
    reference = g if with_reference else None
    views_per, batch = 4, 8
    largest, leading = {}, {}
    for n in (24, 96):
        images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8)
        views = build_views(images, views_per, None, 0, None)
        specs, units = probe_layers(f, reference, "auto", views.example_batch())
        meter = MemorizationMeter(specs, units, n, reference=with_reference, labels=False)
        for t in _states(meter):
            assert n in t.shape
        with NewTensors(exclude=_states(meter)) as spy:
            run_pass(f, reference, views, specs, meter, batch_size=batch)
        largest[n] = max(spy.bytes)
        leading[n] = max(s[0] for s in spy.shapes if len(s) > 0)
        assert int(meter.units[0].counts.sum()) == n
    assert largest[24] == largest[96]
    # at most the B·K views of one batch go through the encoder at once
    assert leading[24] == leading[96] == batch * views_per


def test_run_pass_works_on_the_meters_device():
    """Views are made and reduced on the device of the metric states (torchmetrics states are not
    registered buffers, so ``meter.buffers()`` is empty and cannot tell)."""
    torch.manual_seed(0)
    f = TinyCNN(width=2)
    views = build_views(torch.rand(4, 3, 8, 8), 2, None, 0, None)
    specs, units = probe_layers(f, None, "auto", views.example_batch())
    meter = MemorizationMeter(specs, units, 4, reference=False, labels=False).to(torch.device("cpu"))
    assert meter.device == meter.units[0].counts.device
    seen = []
    finalize = views.finalize
    views.finalize = lambda x, index, device=None: seen.append(torch.device(device)) or finalize(x, index, device)
    run_pass(f, None, views, specs, meter, batch_size=2)
    assert seen and all(d == meter.device for d in seen)


# ---------------------------------------------------------------------------------------------
# The monitor's up-front check


class CountBatches(pl.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1


def _fit_with_limit(tmp_path, limit):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=gen)
    split = split_candidates(32, shared=16, candidates=8, independent=8, seed=0)
    monitor = MemorizationMonitor(images[split.candidates], views=2, encoder="encoder.backbone",
                                  reference="reference.backbone", top_k=2, progress=False, memory_limit=limit)
    counter = CountBatches()
    model = cotrained_pair(max_epochs=1)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=1, logger=False,
                         callbacks=[monitor, counter], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    return trainer, model, monitor, counter, cotraining_loader(images, split, batch_size=8)


def test_memory_limit_raises_before_training(tmp_path):
    need = state_bytes(8, {"conv1": 4, "conv2": 8, "conv3": 16}, reference=True, labels=False)
    assert need == 8 * (5 + 9 + 17) * 4 + 7 * 8 * 4

    trainer, model, monitor, counter, loader = _fit_with_limit(tmp_path, need - 1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MemoryError) as err:
        trainer.fit(model, loader)
    message = str(err.value)
    # names the size (readable even for tiny sets), the argument, and the fixes
    assert f"{need:,} bytes" in message and f"{need - 1:,} bytes" in message
    assert "memory_limit" in message and "layers" in message and "candidates" in message
    assert counter.batches == 0 and trainer.global_step == 0 and not monitor.history
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "training ran before the error"

    # exactly enough is enough
    trainer, model, monitor, counter, loader = _fit_with_limit(tmp_path, need)
    trainer.fit(model, loader)
    assert counter.batches == 1 and [h["epoch"] for h in monitor.history] == [0]
