"""A second probe of unchanged models runs no forward; any change that can change its result probes again.

``probe_layers`` resolves the tapped layers, counts their units and checks the reference's
architecture with three forwards; ``measure()`` calls it every time (issue 27: the fixed cost of a
call). Its cache is keyed by the models' identity and content (structure digest, tensor shapes),
the layers and the view shape; a stale probe would tap the wrong layers or miss a mismatch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict

import pytest
import torch
from torch import nn

from lightning_memloc import measure
from lightning_memloc.errors import ArchitectureMismatchError
from lightning_memloc.models import TinyCNN
from lightning_memloc.checks.module_digest import structure_digest
from lightning_memloc.taps.probe import PROBE_CACHE_SIZE, clear_probe_cache, probe_key, probe_layers


CALLS: Dict[int, int] = defaultdict(int)  # forwards per model, outside the model (its attributes are digested)


class Counted(nn.Module):
    """A small encoder that counts its forwards."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.act2 = nn.ReLU()
        self.flat = nn.Flatten(1)

    @property
    def calls(self) -> int:
        return CALLS[id(self)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CALLS[id(self)] += 1
        return self.flat(self.act2(self.conv2(self.act1(self.conv1(x)))))


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_probe_cache()
    CALLS.clear()
    yield
    clear_probe_cache()


def probe(f, g, layers="auto", size=8):
    return probe_layers(f, g, layers, torch.rand(4, 3, size, size))


def test_a_second_probe_runs_no_forward_and_gives_the_same_result():
    torch.manual_seed(0)
    f, g = Counted(), Counted()
    first = probe(f, g)
    assert (f.calls, g.calls) == (2, 1)  # resolve + shapes on f, shapes on g
    second = probe(f, g)
    assert (f.calls, g.calls) == (2, 1) and second == first
    assert [s.name for s in first[0]] == ["act1", "act2"] and first[1] == {"act1": 3, "act2": 6}
    second[0].clear()  # the caller gets copies
    second[1].clear()
    assert probe(f, g) == first


def test_new_weights_of_the_same_shapes_hit():
    torch.manual_seed(1)
    f, g = Counted(), Counted()
    first = probe(f, g)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(1.0)  # a later checkpoint of f: same layers, same shapes
    assert probe(f, g) == first and f.calls == 2


def _module(f):
    f.conv2 = nn.Conv2d(3, 5, 3, padding=1)


def _parameter(f):
    f.conv2.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
    f.conv2.bias = nn.Parameter(torch.zeros(4))
    f.conv2.out_channels = 4


def _setting(f):
    f.flat.start_dim = 2  # (B, C, H·W): a 3-D output, another kind of layer


def _instance_forward(f):
    inner = f.act2.forward
    f.act2.forward = lambda x: inner(x).mean(dim=(2, 3))  # 2-D output


def _hook(f):
    f.act2.register_forward_hook(lambda module, args, out: out[:, :2])  # 2 units instead of 6


def _class_method(f):
    nn.Flatten.forward = lambda self, x: x.flatten(2)  # (B, C, H·W): another kind, other units


CHANGES = {"module": _module, "parameter": _parameter, "setting": _setting, "instance-forward": _instance_forward,
           "hook": _hook, "class-method": _class_method}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_encoder_is_probed_again(change, monkeypatch):
    torch.manual_seed(2)
    f = Counted()
    layers = ["act1", "act2", "flat"] if change in ("setting", "class-method") else "auto"
    before = probe(f, None, layers)
    monkeypatch.setattr(nn.Flatten, "forward", nn.Flatten.forward)  # undone after the test
    CHANGES[change](f)
    after = probe(f, None, layers)
    assert f.calls == 4  # probed again: resolve + shapes
    clear_probe_cache()
    assert probe(f, None, layers) == after != before  # what an uncached probe gives


def test_a_reference_changed_after_a_probe_is_checked_again():
    torch.manual_seed(3)
    f, g = Counted(), Counted()
    probe(f, g)
    g.conv2 = nn.Conv2d(3, 4, 3, padding=1)  # another width than f's
    with pytest.raises(ArchitectureMismatchError, match="act2"):
        probe(f, g)


def test_another_view_shape_layers_or_reference_is_another_key():
    torch.manual_seed(4)
    f, g, h = Counted(), Counted(), Counted()
    probe(f, g)
    probe(f, g, size=10)
    probe(f, g, ["act2"])
    probe(f, h)
    probe(f, None)
    assert f.calls == 2 * 5


def test_the_cache_keeps_the_most_recent_probes():
    torch.manual_seed(5)
    f = Counted()
    for size in range(4, 5 + PROBE_CACHE_SIZE):
        probe(f, None, size=size)
    calls = f.calls
    probe(f, None, size=4 + PROBE_CACHE_SIZE)  # the most recent: cached
    probe(f, None, size=4)  # the oldest: dropped
    assert f.calls == calls + 2


def test_an_undigestible_model_is_probed_every_time():
    torch.manual_seed(6)
    f = Counted()
    f.act1.opaque = object()  # an attribute structure_digest cannot key
    with pytest.raises(ValueError):
        structure_digest(f)
    assert probe_key(f, None, "auto", torch.rand(2, 3, 8, 8)) is None
    first = probe(f, None)
    assert probe(f, None) == first and f.calls == 4


def test_a_second_measure_call_skips_the_probe_forwards():
    torch.manual_seed(7)
    f, g = Counted(), Counted()
    images = torch.rand(6, 3, 8, 8)
    kwargs = dict(reference=g, views=2, batch_size=3, top_k=2, bootstrap=0)
    first = measure(f, images, **kwargs)
    assert f.calls == 2 + 2  # probe (2) + pass (2 batches)
    second = measure(f, images, **kwargs)
    assert f.calls == 4 + 2 and g.calls == 1 + 2 + 2
    assert second.to_dict() == first.to_dict()


def test_tiny_cnn_probe_is_cached_too():
    torch.manual_seed(8)
    f, g = TinyCNN(width=2), TinyCNN(width=2)
    assert probe(f, g, size=16) == probe(f, g, size=16)
    assert probe_key(f, g, "auto", torch.rand(2, 3, 16, 16)) == probe_key(f, g, "auto", torch.rand(5, 3, 16, 16))


def test_a_second_measure_call_rescans_no_layers_and_registers_only_the_pass_hooks(monkeypatch):
    """Counts, not times: the probe's layer scan and its taps run on the first call only."""
    import lightning_memloc.taps.probe as probe_module
    from lightning_memloc.taps.hooks import LayerTaps

    scans, taps = [], []
    resolve = probe_module.resolve_layers
    monkeypatch.setattr(probe_module, "resolve_layers", lambda *a, **k: scans.append(1) or resolve(*a, **k))
    enter = LayerTaps.__enter__
    monkeypatch.setattr(LayerTaps, "__enter__", lambda self: taps.append(len(self.names)) or enter(self))
    torch.manual_seed(9)
    f, g = Counted(), Counted()
    images = torch.rand(6, 3, 8, 8)
    kwargs = dict(reference=g, views=2, batch_size=3, top_k=2, bootstrap=0)
    first = measure(f, images, **kwargs)
    layers = len(first.layers)
    assert len(scans) == 1 and len(taps) == 3 + 2 * 2  # probe: the scan of every module, f and g shapes; pass: 2 batches x (f, g)
    scans.clear(), taps.clear()
    second = measure(f, images, **kwargs)
    assert scans == [] and taps == [layers] * 4  # the pass's taps only: no probe, no layer scan
    assert second.to_dict() == first.to_dict()
