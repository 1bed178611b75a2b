"""``lightning_memloc.distributed``: one sync per metric in ``MemorizationMeter.compute_report``.

A one-rank gloo process group makes torchmetrics sync for real (in this process, no spawn): the
number of ``all_reduce`` calls is counted and the results compared with the unsynced ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lightning_memloc.distributed import is_distributed, max_across_ranks, sum_across_ranks
from lightning_memloc.evidence import EvidenceOptions
from lightning_memloc.meter import MemorizationMeter
from lightning_memloc.taps import LayerSpec

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is unavailable")

LAYERS = [LayerSpec("a", "conv"), LayerSpec("b", "linear")]
UNITS = {"a": 3, "b": 2}


def _filled_meter(n: int = 6) -> MemorizationMeter:
    gen = torch.Generator().manual_seed(0)
    meter = MemorizationMeter(LAYERS, UNITS, n, reference=True, labels=False, top_k=2, groups={"unseen": 4})
    index = torch.arange(n + 4)
    units = {k: torch.rand(n + 4, u, generator=gen) for k, u in UNITS.items()}
    align_f = {k: torch.rand(n + 4, generator=gen) for k in UNITS}
    align_g = {k: torch.rand(n + 4, generator=gen) for k in UNITS}
    meter.update(index, units, align_f, align_g)
    return meter


@pytest.fixture
def one_rank_group(tmp_path):
    """A real one-rank gloo process group in this process (torchmetrics then syncs for real)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _count_all_reduce(monkeypatch) -> list:
    calls: list = []
    original = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counted)
    return calls


def test_compute_report_syncs_each_metric_once(tmp_path, monkeypatch):
    options = EvidenceOptions(bootstrap=200, seed=0)
    plain = _filled_meter().compute_report(torch.arange(6), evidence=options)  # one process: no sync
    calls = _count_all_reduce(monkeypatch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        synced = _filled_meter().compute_report(torch.arange(6), evidence=options)
        with_evidence = list(calls)
        calls.clear()
        _filled_meter().compute_report(torch.arange(6))
        without_evidence = list(calls)
    finally:
        dist.destroy_process_group()
    # One sync per candidate metric: UnitMem of a and b (counts, sums), LayerMem (counts, 2 sums).
    assert without_evidence == [(6,), (6, 3), (6,), (6, 2), (6,), (2, 6), (2, 6)]
    # The evidence's per-candidate means come from the same sync as compute() (before: the
    # candidates' UnitMem states were synced a second time); it adds only the unseen group's
    # metrics (4 images), each synced once.
    assert with_evidence[:7] == without_evidence
    assert sorted(with_evidence[7:]) == sorted([(4,), (4, 3), (4,), (4, 2), (4,), (2, 4), (2, 4)])
    # results unchanged by the (one-rank) sync
    for name in ("a", "b"):
        assert torch.equal(synced.unit_mem[name], plain.unit_mem[name])
        assert torch.equal(synced.sslmem_raw[name], plain.sslmem_raw[name])
    assert synced.evidence.to_dict() == plain.evidence.to_dict()


def test_helpers_are_no_ops_in_one_process():
    assert not is_distributed(1)
    flags = torch.tensor([0, 1], dtype=torch.uint8)
    assert max_across_ranks(flags, 1) is flags and flags.tolist() == [0, 1]
    counts = torch.tensor([2.0, 3.0])
    assert sum_across_ranks(counts, 1) is counts and counts.tolist() == [2.0, 3.0]


def test_helpers_reduce_in_a_process_group(one_rank_group):
    assert is_distributed(2) and not is_distributed(1)
    flags = torch.tensor([0, 1], dtype=torch.uint8)
    assert max_across_ranks(flags, 2).tolist() == [0, 1]
