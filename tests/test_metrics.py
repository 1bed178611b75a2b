"""Tests of the torchmetrics classes: hand-computed tiny cases, label checks, the sync path, validation.

Equality with the functional core and a float64 reference over random batches, repeats, sparse
ids, every option and state dtype, ``reset()`` and merged / DDP shards: ``test_metric_harness.py``.
"""

from __future__ import annotations

import pytest
import torch

from lightning_memloc.states import ClassMem, LayerMem, UnitMem

N, U, L = 9, 6, 3


def _data(seed: int = 0):
    torch.manual_seed(seed)
    acts = torch.relu(torch.randn(N, U))
    acts[:, 0] = 0.0  # a dead unit
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1])
    enc = torch.rand(L, N)
    ref = torch.rand(L, N)
    return acts, labels, enc, ref


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].shape == b[key].shape, key
            torch.testing.assert_close(a[key], b[key], msg=key)
        else:
            assert a[key] == b[key], key


# --------------------------------------------------------------------------- hand-computed


def test_unitmem_hand_computed():
    metric = UnitMem(num_candidates=4, num_units=2)
    metric.update(torch.tensor([[3.0, 0.0], [1.0, 2.0]]), torch.tensor([0, 1]))
    metric.update(torch.tensor([[2.0, 2.0]]), torch.tensor([3]))  # id 2 never updated
    out = metric.compute()
    torch.testing.assert_close(out["unit_mem"], torch.tensor([1 / 3, 1 / 3]))
    assert out["unit_argmax"].tolist() == [0, 1]
    assert out["dead_units"].tolist() == [False, False]
    assert out["num_candidates"] == 3


def test_classmem_hand_computed_and_label_checks():
    metric = ClassMem(num_candidates=3, num_units=2)
    metric.update(torch.tensor([[4.0, 1.0], [2.0, 1.0]]), torch.tensor([0, 1]), torch.tensor([5, 5]))
    metric.update(torch.tensor([[1.0, 1.0]]), torch.tensor([2]), torch.tensor([8]))
    out = metric.compute()
    torch.testing.assert_close(out["class_mem"], torch.tensor([0.5, 0.0]))
    assert out["class_argmax"].tolist() == [5, 5]
    with pytest.raises(ValueError, match="disagree"):
        metric.update(torch.tensor([[1.0, 1.0]]), torch.tensor([2]), torch.tensor([5]))
    with pytest.raises(ValueError, match="labels.*>= 0"):
        metric.update(torch.tensor([[1.0, 1.0]]), torch.tensor([2]), torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"labels.*\(1,\)"):
        metric.update(torch.tensor([[1.0, 1.0]]), torch.tensor([2]), torch.tensor([8, 8]))
    one_class = ClassMem(3, 2)
    one_class.update(torch.rand(3, 2), torch.arange(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="2 distinct classes"):
        one_class.compute()


def test_classmem_conflicting_labels_across_ranks_detected():
    a, b = ClassMem(3, 2), ClassMem(3, 2)
    x = torch.rand(3, 2)
    a.update(x, torch.arange(3), torch.tensor([0, 1, 1]))
    b.update(x[:1], torch.tensor([0]), torch.tensor([1]))  # candidate 0 with another label
    a.merge_state(b)
    with pytest.raises(ValueError, match="different `labels`"):
        a.compute()


def test_layermem_hand_computed_and_shapes():
    metric = LayerMem(num_candidates=5, num_layers=1, top_k=1)
    metric.update(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([3, 1]))
    out = metric.compute()
    # ids in order [1, 3]: m = [0, 0.5], range 0.5 -> [0, 1]
    assert out["candidate_ids"].tolist() == [1, 3]
    torch.testing.assert_close(out["sslmem_raw"], torch.tensor([[0.0, 0.5]]))
    torch.testing.assert_close(out["sslmem"], torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(out["layer_mem"], torch.tensor([0.5]))  # 1-D even with L = 1
    torch.testing.assert_close(out["delta_layer_mem"], torch.tensor([0.5]))
    torch.testing.assert_close(out["layer_mem_top"], torch.tensor([1.0]))
    torch.testing.assert_close(out["layer_mem_least"], torch.tensor([0.0]))
    assert out["top_ids"].tolist() == [3] and out["least_ids"].tolist() == [1]
    big_k = LayerMem(5, 1, top_k=50)
    big_k.update(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([3, 1]))
    assert big_k.compute()["top_ids"].tolist() == [3, 1]  # k' = min(top_k, N')


def test_single_unit_stays_one_dimensional():
    metric = UnitMem(3, 1)
    metric.update(torch.tensor([[1.0], [3.0], [1.0]]), torch.arange(3))
    out = metric.compute()
    assert out["unit_mem"].shape == (1,) and out["unit_argmax"].tolist() == [1] and out["dead_units"].shape == (1,)


# --------------------------------------------------------------------------- torchmetrics' sync path, without processes


def _all_metrics(**kwargs):
    return UnitMem(N, U, **kwargs), ClassMem(N, U, **kwargs), LayerMem(N, L, top_k=3, **kwargs)


def _feed(metrics, ids, acts, labels, enc, ref):
    unit, cls, lay = metrics
    unit.update(acts[ids], ids)
    cls.update(acts[ids], ids, labels[ids])
    lay.update(enc[:, ids], ref[:, ids], ids)


def _computed(metrics):
    return [m.compute() for m in metrics]


class _FakeGather:
    """``dist_sync_fn`` of one simulated rank: all_gather gives [this rank's state, the other's]."""

    def __init__(self) -> None:
        self.mine: list = []
        self.theirs: list = []

    def __call__(self, tensor, group=None):
        for me, other in zip(self.mine, self.theirs):
            for name in me._defaults:
                if getattr(me, name) is tensor:
                    return [tensor, getattr(other, name)]
        raise AssertionError("unknown state")


def test_compute_through_dist_sync_equals_single_process():
    """Two simulated ranks whose compute() goes through torchmetrics' real sync/reduce path."""
    acts, labels, enc, ref = _data(6)
    single = _all_metrics()
    _feed(single, torch.arange(N), acts, labels, enc, ref)
    expected = _computed(single)
    gathers = [_FakeGather(), _FakeGather()]
    ranks = [_all_metrics(dist_sync_fn=g, distributed_available_fn=lambda: True) for g in gathers]
    gathers[0].mine, gathers[0].theirs = ranks
    gathers[1].theirs, gathers[1].mine = ranks
    padded = torch.cat([torch.arange(N), torch.tensor([0])])  # DistributedSampler padding
    _feed(ranks[0], padded[0::2], acts, labels, enc, ref)
    _feed(ranks[1], padded[1::2], acts, labels, enc, ref)
    for metrics in ranks:
        for metric, exp in zip(metrics, expected):
            local = metric.counts.clone()
            _assert_same(metric.compute(), exp)
            assert torch.equal(metric.counts, local)  # states back to their local values


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: UnitMem(0, 3), "num_candidates"),
        (lambda: UnitMem(2.5, 3), "num_candidates"),
        (lambda: UnitMem(True, 3), "num_candidates"),
        (lambda: UnitMem(4, 0), "num_units"),
        (lambda: UnitMem(4, 3, reduction="max"), r"reduction.*'mean', 'median'"),
        (lambda: UnitMem(4, 3, negative="relu"), r"negative.*'clamp', 'shift', 'error'"),
        (lambda: ClassMem(4, 3, reduction="avg"), "reduction"),
        (lambda: ClassMem(-1, 3), "num_candidates"),
        (lambda: LayerMem(4, 2, top_k=0), "top_k"),
        (lambda: LayerMem(4, 0), "num_layers"),
        (lambda: UnitMem(4, 3, state_dtype=torch.float16), "state_dtype"),
    ],
)
def test_constructor_validation(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_update_validation():
    metric = UnitMem(4, 3)
    with pytest.raises(ValueError, match=r"index.*\[0, 3\]"):
        metric.update(torch.rand(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"index.*\[0, 3\]"):
        metric.update(torch.rand(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"index.*\(2,\)"):
        metric.update(torch.rand(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="index"):
        metric.update(torch.rand(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="activations.*num_units = 3"):
        metric.update(torch.rand(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="activations"):
        metric.update(torch.rand(2, 1, 1, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.tensor([[float("nan"), 0.0, 0.0]]), torch.tensor([0]))
    layer = LayerMem(4, 2)
    with pytest.raises(ValueError, match=r"align_encoder.*num_layers = 2"):
        layer.update(torch.rand(3, 2), torch.rand(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        layer.update(torch.rand(2, 2), torch.rand(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="index"):
        layer.update(torch.rand(2, 2), torch.rand(2, 2), torch.tensor([0, 9]))


def test_compute_needs_two_candidates():
    for metric, update in (
        (UnitMem(4, 3), lambda m: m.update(torch.rand(2, 3), torch.tensor([1, 1]))),
        (ClassMem(4, 3), lambda m: m.update(torch.rand(1, 3), torch.tensor([1]), torch.tensor([0]))),
        (LayerMem(4, 2), lambda m: m.update(torch.rand(2, 1), torch.rand(2, 1), torch.tensor([2]))),
    ):
        update(metric)
        with pytest.raises(ValueError, match="at least 2 candidates"):
            metric.compute()
