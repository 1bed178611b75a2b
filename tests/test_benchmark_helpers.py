"""The benchmark's baselines compute what they claim: truncated forwards, the authors' loops, the cost split."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from authors_procedure import authors_procedure, forward_ceiling, truncated_forward, truncation_fractions  # noqa: E402
from cost_split import cost_split, reduction_split, unfused_forward_reduce  # noqa: E402

from lightning_memloc.taps.probe import probe_layers  # noqa: E402
from lightning_memloc.models import TinyCNN  # noqa: E402
from lightning_memloc.reductions.hook import forward_reduce  # noqa: E402
from lightning_memloc.views.seeded import SeededViews  # noqa: E402


def test_truncated_forward_stops_at_the_layer():
    torch.manual_seed(0)
    model = TinyCNN(width=2).eval()
    x = torch.rand(1, 3, 8, 8)
    ran = []
    model.conv3.register_forward_hook(lambda *a: ran.append("conv3"))
    out = truncated_forward(model, model.conv2, x)
    assert torch.equal(out, model.conv2(model.pool1(model.conv1(x))))
    assert ran == []  # the rest of the network never ran


def test_authors_procedure_matches_a_direct_computation():
    torch.manual_seed(0)
    f, g = TinyCNN(width=2).eval(), TinyCNN(width=2).eval()
    images, views = torch.rand(3, 3, 8, 8), torch.rand(3, 4, 3, 8, 8)
    out = authors_procedure(f, g, images, views, ["conv1", "conv3"], [0, 2], unit_views=3, anchor_views=2)
    with torch.no_grad():
        act = f.conv1(views[2, :3])  # conv1 is the first layer: its output is the module's own
        assert out["conv1"]["mu"][1] == pytest.approx(act.mean(dim=(2, 3)).mean(0).double().numpy(), abs=1e-6)

        def rep(model, x):
            r = model.conv3(model.pool2(model.conv2(model.pool1(model.conv1(x))))).flatten(1)
            return r / r.norm(dim=1, keepdim=True)

        dist = {id(m): sum(float((rep(m, images[0:1]) - rep(m, views[0, v:v + 1])).norm()) for v in range(2)) / 2
                for m in (f, g)}
    assert out["conv3"]["sslmem_raw"][0] == pytest.approx(dist[id(g)] - dist[id(f)], abs=1e-6)


def test_truncation_fractions_and_ceiling():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Conv2d(1, 1, 1, bias=False), nn.ReLU())
    fractions = truncation_fractions(model, ["1", "3"], torch.rand(1, 1, 4, 4))
    assert fractions == {"1": 0.5, "3": 1.0}  # two equal convs
    ceiling = forward_ceiling(fractions, views=10, batch1_factor=2.0)
    assert ceiling["procedure_forwards"] == 45.0 and ceiling["ceiling"] == 4.5  # 30 x 1.5 x 2 / 20


def test_cost_split_parts_are_non_negative_and_add_up():
    torch.manual_seed(0)
    f, g = TinyCNN(width=2), TinyCNN(width=2)
    views = SeededViews(torch.rand(5, 3, 8, 8), views=3, seed=0)
    specs, units = probe_layers(f, g, "auto", views.example_batch(torch.device("cpu")))
    split = cost_split(f, g, views, specs, units, 2, torch.device("cpu"))
    parts = {k: v for k, v in split.items() if k != "pass (estimated)"}
    assert set(parts) == {"views", "forward f", "forward g", "hooks f", "hooks g", "checks", "metric updates",
                          "compute", "sync"}
    assert split["pass (estimated)"] == pytest.approx(sum(parts.values()))
    assert all(parts[k] > 0 for k in ("views", "forward f", "forward g"))


def test_unfused_forward_reduce_is_the_former_path_and_matches_the_fused_one():
    torch.manual_seed(0)
    model, x = TinyCNN(width=2).eval(), torch.rand(3 * 4, 3, 8, 8)
    names = ["conv1", "conv2", "conv3"]
    with torch.no_grad():
        units, aligns = unfused_forward_reduce(model, x, names, 3, 4, units=True, align=True, anchor=False)
        f_units, f_aligns = forward_reduce(model, x, names, 3, 4, units=True, align=True, anchor=False)
    for name in names:
        assert torch.equal(units[name], f_units[name])
        torch.testing.assert_close(aligns[name], f_aligns[name], rtol=0, atol=1e-7)


def test_reduction_split_times_every_layer_and_part():
    torch.manual_seed(0)
    model, x = TinyCNN(width=2).eval(), torch.rand(2 * 3, 3, 8, 8)
    split = reduction_split(model, x, ["conv1", "conv3"], 2, 3, repeats=2)
    assert set(split) == {"conv1", "conv3", "all layers"}
    for name in ("conv1", "conv3"):
        assert set(split[name]) == {"units", "gram", "gram32", "finish", "unfused"} and all(v > 0 for v in split[name].values())
    assert set(split["all layers"]) == {"finish stacked", "forward"}


def test_monitor_share_counts_the_passes_of_a_fit():
    from bench_monitor_share import monitor_share

    # 10 epochs of 9 s, a pass of 1 s every epoch: 10 / (90 + 10)
    assert monitor_share([1.0], 9.0, 1, 10) == pytest.approx(0.1)
    # every 5 epochs: 2 passes; a frozen reference's first pass costs 3 s, the next 1 s
    assert monitor_share([3.0, 1.0], 9.0, 5, 10) == pytest.approx(4.0 / 94.0)
    assert monitor_share([3.0, 1.0], 9.0, 1, 10) == pytest.approx(12.0 / 102.0)
    with pytest.raises(ValueError, match="every_n"):
        monitor_share([1.0], 9.0, 5, 4)


def test_unfused_reductions_patch_is_undone():
    from bench_overhead import unfused_reductions

    module = sys.modules["lightning_memloc.measurement"]
    with unfused_reductions():
        assert module.forward_reduce is unfused_forward_reduce
    assert module.forward_reduce is forward_reduce
