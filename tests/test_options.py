"""``MeasureOptions``: one validated home for the settings of ``measure()`` and the monitor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lightning_memloc import measure
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.callbacks.monitor_checks import fingerprint
from lightning_memloc.evidence import EvidenceOptions
from lightning_memloc.models import TinyCNN
from lightning_memloc.options import MeasureOptions


def test_options_are_frozen_and_normalised():
    options = MeasureOptions(views=np.int64(3), batch_size=np.int32(2), top_k=np.int16(4), seed=np.uint8(7))
    assert (options.views, options.batch_size, options.top_k, options.seed) == (3, 2, 4, 7)
    assert all(type(v) is int for v in (options.views, options.batch_size, options.top_k, options.seed))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.views = 5  # type: ignore[misc]
    assert options.replace(top_k=9).top_k == 9 and options.top_k == 4


@pytest.mark.parametrize("kwargs, match", [
    ({"views": 0}, "`views` must be an int >= 1"),
    ({"batch_size": 1.5}, "`batch_size` must be an int"),
    ({"top_k": True}, "`top_k` must be an int"),
    ({"num_workers": -1}, "`num_workers` must be an int >= 0"),
    ({"pairing": "pairs"}, "`pairing` must be one of"),
    ({"reduction": "max"}, "`reduction` must be one of"),
    ({"negative": "abs"}, "`negative` must be one of"),
    ({"views": 1, "with_reference": True}, "needs `views` >= 2"),
    ({"seed": -1}, "`seed` must be in"),
    ({"bootstrap": -1}, "`bootstrap` must be an int >= 0"),
    ({"bootstrap": 1}, "`bootstrap` must be 0 .no intervals or tests. or at least 200, got 1"),
    ({"bootstrap": 199}, "or at least 200, got 199.*Pass bootstrap=200 or more"),
    ({"confidence": 1.0}, "`confidence` must be in"),
    ({"alpha": 0.0}, "`alpha` must be in"),
])
def test_bad_values_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MeasureOptions(**kwargs)


def test_one_view_is_fine_without_reference_or_with_anchor_pairing():
    assert MeasureOptions(views=1).views == 1
    assert MeasureOptions(views=1, pairing="anchor", with_reference=True).views == 1


def test_meta_evidence_and_kwargs():
    options = MeasureOptions(views=4, seed=3, top_k=10, bootstrap=200, confidence=0.9, alpha=0.1)
    meta = options.meta(views=4, seed=3, num_candidates=6, groups={"control": 5}, epoch=2)
    assert meta == {"views": 4, "seed": 3, "pairing": "all", "reduction": "mean", "negative": "clamp", "top_k": 6,
                    "epoch": 2, "num_candidates": 6, "num_control": 5, "bootstrap": 200, "confidence": 0.9, "alpha": 0.1,
                    "normalize": None}
    assert options.evidence == EvidenceOptions(bootstrap=200, confidence=0.9, alpha=0.1, seed=3)
    assert options.meter_kwargs() == {"reduction": "mean", "negative": "clamp", "top_k": 10}
    assert options.pass_kwargs() == {"batch_size": 32, "pairing": "all", "num_workers": 0}


def test_measure_and_monitor_record_the_same_settings():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    f, g = TinyCNN(), TinyCNN()
    kwargs = dict(views=3, seed=4, top_k=2, reduction="median", bootstrap=200, confidence=0.9, alpha=0.1)
    report = measure(f, images, reference=g, **kwargs)
    monitor = MemorizationMonitor(images, reference=g, progress=False, **kwargs)
    expected = monitor.options.meta(views=3, seed=4, num_candidates=6)
    assert {k: v for k, v in report.meta.items() if k != "view_stats"} == expected  # + the measured view statistics
    assert monitor.options == MeasureOptions(with_reference=True, progress=False, **kwargs)
    assert monitor.evidence_options == EvidenceOptions(bootstrap=200, confidence=0.9, alpha=0.1, seed=4)


def test_monitor_options_properties_validate_on_set():
    monitor = MemorizationMonitor(torch.rand(4, 3, 16, 16), views=2, top_k=3, progress=False)
    before = fingerprint(monitor)
    assert (monitor.top_k, monitor.pairing, monitor.progress) == (3, "all", False)
    monitor.top_k = np.int64(5)
    assert monitor.top_k == 5 and monitor.options.top_k == 5
    assert fingerprint(monitor)["top_k"] == 5 and before["top_k"] == 3
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        monitor.reduction = "max"
    assert monitor.reduction == "mean"


def test_monitor_refuses_bad_options_before_loading_candidates():
    with pytest.raises(ValueError, match="`pairing` must be one of"):
        MemorizationMonitor("no/such/file.pt", pairing="pairs")


def test_measure_kwargs_round_trip_through_measure():
    torch.manual_seed(0)
    options = MeasureOptions(views=3, seed=2, top_k=2, bootstrap=0, reduction="median")
    assert set(options.measure_kwargs()) == set(MeasureOptions.keywords())
    assert "with_reference" not in MeasureOptions.keywords()
    report = measure(TinyCNN(), torch.rand(5, 3, 16, 16), **options.measure_kwargs())
    assert {k: v for k, v in report.meta.items() if k != "view_stats"} == options.meta(views=3, seed=2, num_candidates=5)
