"""The reference cache sees every change of g that leaves its state dict alone (issue 23 §2, row 84).

SSLMem (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024) compares f
with a frozen reference g; a cached g value that no longer matches g gives a plausible, wrong
LayerMem. Each case: fill the cache with g, change g without touching a tensor of its state
dict, measure again: the cached result equals an uncached one exactly, and differs from before.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from lightning_memloc import ReferenceCache, measure
from lightning_memloc.models import TinyCNN
from lightning_memloc.models.resnet9 import ConvBlock
from lightning_memloc.checks.module_digest import UnkeyableModuleError, structure_digest

KW = dict(views=3, top_k=2, batch_size=4, bootstrap=0)
_HANDLES: list = []  # global hooks a case registered, removed after it


def _same(a, b) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)


def _setup():
    torch.manual_seed(0)
    f, g = TinyCNN(width=3), TinyCNN(width=3)
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return f, g, x


class _Scaled(ConvBlock):
    """A ConvBlock whose forward shifts its output (a class swapped in on one instance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


def _change(case: str, g: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "activation-module":
        g.conv2.relu = nn.LeakyReLU(0.3)  # no parameters: the state dict is the same
    elif case == "activation-setting":
        g.conv2.relu = nn.LeakyReLU(0.3)
        g.conv2.relu.negative_slope = 0.05  # (the cache was filled with slope 0.3 in this case)
    elif case == "dilation":
        g.conv2.conv.dilation, g.conv2.conv.padding = (2, 2), (2, 2)  # same output size
    elif case == "padding-mode":
        g.conv1.conv.padding_mode = "reflect"
    elif case == "instance-forward":
        inner = g.conv2.forward
        g.conv2.forward = lambda x: inner(x).sqrt()
    elif case == "class-method":
        monkeypatch.setattr(nn.MaxPool2d, "forward", lambda self, x: nn.functional.avg_pool2d(x, self.kernel_size))
    elif case == "class-swap":
        g.conv3.__class__ = _Scaled
    elif case == "forward-hook":
        g.conv1.register_forward_hook(lambda module, args, out: out * 0.5 + out.flip(-1))
    elif case == "forward-pre-hook":
        g.conv2.register_forward_pre_hook(lambda module, args: (args[0].flip(-2),))
    elif case == "hook-closure":
        g.gain["value"] = 3.0  # read by a hook registered before the cache was filled
    elif case == "plain-tensor-attribute":
        g.conv2.offset += 0.25  # a tensor attribute (not a buffer) read by a patched forward
    elif case == "global-hook":
        handle = nn.modules.module.register_module_forward_hook(
            lambda module, args, out: out * 1.5 if isinstance(module, ConvBlock) else None)
        _HANDLES.append(handle)
    else:
        raise AssertionError(case)


def _prepare(case: str, g: nn.Module) -> None:
    """State g has before the cache is filled (for changes of a setting that must exist first)."""
    if case == "activation-setting":
        g.conv2.relu = nn.LeakyReLU(0.3)
    elif case == "hook-closure":
        g.gain = {"value": 1.0}
        gain = g.gain
        g.conv1.register_forward_hook(lambda module, args, out: out * gain["value"] + out.roll(1, -1))
    elif case == "plain-tensor-attribute":
        block = g.conv2
        block.offset = torch.zeros(())
        block.forward = types.MethodType(lambda self, x: ConvBlock.forward(self, x) + self.offset * x.mean(), block)


CASES = ["activation-module", "activation-setting", "dilation", "padding-mode", "instance-forward", "class-method",
         "class-swap", "forward-hook", "forward-pre-hook", "hook-closure", "plain-tensor-attribute", "global-hook"]


@pytest.mark.parametrize("case", CASES)
def test_a_change_of_g_that_keeps_its_state_dict_is_a_miss_and_exact(case, monkeypatch):
    f, g, x = _setup()
    _prepare(case, g)
    cache = ReferenceCache()
    state = {k: v.clone() for k, v in g.state_dict().items()}
    before = measure(f, x, reference=g, reference_cache=cache, **KW)
    misses = cache.misses
    try:
        _change(case, g, monkeypatch)
        assert g.state_dict().keys() == state.keys()
        assert all(torch.equal(g.state_dict()[k], v) for k, v in state.items())  # no tensor changed
        cached = measure(f, x, reference=g, reference_cache=cache, **KW)
        assert cache.hits == 0 and cache.misses > misses  # was: every batch a (stale) hit
        assert _same(cached, measure(f, x, reference=g, **KW))
        assert not _same(cached, before)  # the change matters: a stale value would be wrong
    finally:
        while _HANDLES:
            _HANDLES.pop().remove()


def test_an_identical_structure_still_hits():
    """Fresh modules of the same class and settings (a reloaded g) key the same: the cache stays useful."""
    f, g, x = _setup()
    cache = ReferenceCache()
    measure(f, x, reference=g, reference_cache=cache, **KW)
    again = TinyCNN(width=3)
    again.load_state_dict(g.state_dict())
    def hook(module, args, out):  # one hook function on both: same code, same closure
        return out

    g.conv1.register_forward_hook(hook)
    again.conv1.register_forward_hook(hook)
    assert structure_digest(again) == structure_digest(g)
    misses = cache.misses
    measure(f, x, reference=again, reference_cache=cache, **KW)  # (g's first pass had no hook: a miss)
    hits = cache.hits
    measure(f, x, reference=g, reference_cache=cache, **KW)
    assert cache.misses == misses + 2 and cache.hits == hits + 2  # 8 candidates, 4 a batch


class _Opaque:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 1.0


def test_a_reference_the_cache_cannot_key_is_not_cached_with_a_warning():
    f, g, x = _setup()
    g.conv2.opaque = _Opaque()  # no __dict__, an address as repr: its effect cannot be keyed
    with pytest.raises(UnkeyableModuleError, match=r"TinyCNN\.conv2\.opaque is a _Opaque"):
        structure_digest(g)
    cache = ReferenceCache()
    with pytest.warns(UserWarning, match="the reference is not cached, g runs at every pass: .*conv2.opaque"):
        first = measure(f, x, reference=g, reference_cache=cache, **KW)
    second = measure(f, x, reference=g, reference_cache=cache, **KW)
    assert cache.hits == 0 and len(cache) == 0 and cache.refused
    assert _same(first, measure(f, x, reference=g, **KW)) and _same(second, first)


def test_structure_digest_hand_cases():
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert structure_digest(a) == structure_digest(b)  # weights are not part of the structure
    b[1].inplace = True
    assert structure_digest(a) != structure_digest(b)
    c = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    c.train(False)  # train/eval is not part of it: the measurement runs every module in eval
    assert structure_digest(a) == structure_digest(c)
    cycle = nn.Sequential(nn.ReLU())
    cycle.owner = {"me": cycle}  # a module refers to itself: named, not followed
    structure_digest(cycle)


def test_a_traced_reference_is_keyed_by_its_program():
    """torchvision's feature extractors are FX GraphModules: their program, not only their weights, decides g."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    one = torch.fx.symbolic_trace(model)
    two = torch.fx.symbolic_trace(model)
    assert structure_digest(one) == structure_digest(two)
    relu = next(n for n in two.graph.nodes if n.target == "1")
    relu.target = "0"  # the same modules, wired otherwise: the same state dict
    two.recompile()
    assert structure_digest(one) != structure_digest(two)


@pytest.mark.slow
def test_digests_are_the_same_in_every_process():
    """`memloc analyze --reference-cache FILE` and a resumed run compare digests made by other processes:
    nothing may depend on the string hash seed (a frozenset constant's order does) or on addresses."""
    import os
    import subprocess
    import sys

    code = ("import torch; from torchvision.transforms import v2; "
            "from lightning_memloc.checks.module_digest import structure_digest, settings_digest; "
            "from lightning_memloc.models import ResNet9; from lightning_memloc import BatchedSimCLRAugment; "
            "print(structure_digest(ResNet9(width=4)), settings_digest(BatchedSimCLRAugment(16)), "
            "settings_digest(v2.Compose([v2.RandomResizedCrop(16), v2.ToDtype(torch.float32, scale=True)])))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1, outputs
