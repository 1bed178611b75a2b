"""Tests of unit selection, :class:`MemorizationPruning` and :func:`prune_units`."""

from __future__ import annotations

from typing import Dict, List, Optional

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_memloc import MemorizationReport, measure
from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.callbacks.pruning import MemorizationPruning, find_unit_targets, prune_units
from lightning_memloc.models import TinyCNN, TinyMLP
from lightning_memloc.report.selection import select_units
from helpers import LitModel, gloo_spawn, make_trainer, small_monitor

LAYERS = ["conv1", "conv2", "conv3"]
WIDTHS = {"conv1": 4, "conv2": 8, "conv3": 16}
# Highest half per layer: conv1 [1, 2], conv2 [4..7], conv3 [8..15]; lowest half: the rest.
UNIT_MEM = {"conv1": torch.tensor([0.1, 0.9, 0.5, 0.0]), "conv2": torch.linspace(0, 1, 8), "conv3": torch.linspace(0, 1, 16)}
HIGH_HALF = {"conv1": [1, 2], "conv2": [4, 5, 6, 7], "conv3": list(range(8, 16))}


def make_report(unit_mem: Optional[Dict[str, torch.Tensor]] = None, layer_mem: bool = True) -> MemorizationReport:
    unit_mem = dict(UNIT_MEM if unit_mem is None else unit_mem)
    layers = list(unit_mem)
    return MemorizationReport(
        layers=layers, layer_kinds=dict.fromkeys(layers, "conv"), candidate_ids=torch.arange(3), unit_mem=unit_mem,
        unit_argmax={n: torch.zeros(len(v), dtype=torch.long) for n, v in unit_mem.items()},
        dead_units={n: v == 0 for n, v in unit_mem.items()},
        layer_mem={n: 0.1 * (i + 1) for i, n in enumerate(layers)} if layer_mem else None,
        delta_layer_mem={n: 0.1 for n in layers} if layer_mem else None,
    )


def small_report() -> MemorizationReport:
    return make_report({"a": torch.tensor([0.1, 0.9, 0.5, 0.0]), "b": torch.tensor([0.7, 0.2])})


def block_outputs(encoder: nn.Module, x: torch.Tensor, train: bool = False) -> Dict[str, torch.Tensor]:
    grabbed: Dict[str, torch.Tensor] = {}
    hooks = [encoder.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: grabbed.__setitem__(n, o.detach()))
             for n in LAYERS]
    encoder.train(train)
    with torch.no_grad():
        encoder(x)
    for h in hooks:
        h.remove()
    return grabbed


def assert_pruned(encoder: nn.Module, pruned: Dict[str, List[int]]) -> None:
    """Pruned channels output exactly 0 (eval and train mode); masks and weights elsewhere untouched."""
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for train in (False, True):
        outputs = block_outputs(encoder, x, train)
        for layer, units in pruned.items():
            kept = [u for u in range(WIDTHS[layer]) if u not in units]
            assert torch.count_nonzero(outputs[layer][:, units]) == 0, layer
            assert torch.count_nonzero(outputs[layer][:, kept]) > 0, layer
    for layer, units in pruned.items():
        block = encoder.get_submodule(layer)
        kept = [u for u in range(WIDTHS[layer]) if u not in units]
        for module, names in ((block.conv, ("weight",)), (block.bn, ("weight", "bias"))):
            for name in names:
                value = getattr(module, name)
                assert torch.count_nonzero(value[units]) == 0, (layer, name)
                if hasattr(module, name + "_mask"):
                    mask = getattr(module, name + "_mask")
                    assert torch.all(mask[units] == 0) and torch.all(mask[kept] == 1), (layer, name)
                    assert torch.equal(value[kept], getattr(module, name + "_orig")[kept]), (layer, name)


def as_lists(units: Dict[str, torch.Tensor]) -> Dict[str, List[int]]:
    return {k: v.tolist() for k, v in units.items()}


# --------------------------------------------------------------------------------- select_units
@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"fraction": 0.5}, {"a": [1, 2], "b": [0]}),
        ({"fraction": 0.5, "strategy": "lowest"}, {"a": [0, 3], "b": [1]}),
        ({"count": 1}, {"a": [1], "b": [0]}),
        ({"count": 2, "strategy": "lowest"}, {"a": [0, 3], "b": [0, 1]}),
        ({"fraction": 0.3}, {"a": [1], "b": [0]}),  # round(1.2) = 1, round(0.6) = 1
        ({"count": 3, "scope": "global"}, {"a": [1, 2], "b": [0]}),  # 0.9, 0.7, 0.5
        ({"fraction": 0.5, "scope": "global", "strategy": "lowest"}, {"a": [0, 3], "b": [1]}),  # 0.0, 0.1, 0.2
        ({"count": 1, "scope": "global", "strategy": "lowest"}, {"a": [3], "b": []}),
        ({"count": 1, "layers": ["b"]}, {"b": [0]}),
        ({"fraction": 1.0}, {"a": [0, 1, 2, 3], "b": [0, 1]}),
    ],
)
def test_select_units_hand_cases(kwargs, expected):
    assert as_lists(select_units(small_report(), **kwargs)) == expected


def test_select_units_ties_break_by_layer_then_unit():
    tied = make_report({"a": torch.full((3,), 0.5), "b": torch.full((2,), 0.5)})
    for strategy in ("highest", "lowest"):
        assert as_lists(select_units(tied, count=4, scope="global", strategy=strategy)) == {"a": [0, 1, 2], "b": [0]}
        assert as_lists(select_units(tied, count=1, strategy=strategy)) == {"a": [0], "b": [0]}


def test_select_units_random_is_seeded():
    report = small_report()
    for scope in ("layer", "global"):
        draws = [as_lists(select_units(report, count=2, strategy="random", scope=scope, seed=s)) for s in range(8)]
        assert draws == [as_lists(select_units(report, count=2, strategy="random", scope=scope, seed=s)) for s in range(8)]
        assert len({str(d) for d in draws}) > 1
    g = torch.Generator().manual_seed(4)
    expected = {"a": sorted(torch.randperm(4, generator=g)[:2].tolist()), "b": sorted(torch.randperm(2, generator=g)[:2].tolist())}
    assert as_lists(select_units(report, count=2, strategy="random", seed=4)) == expected
    flat = sorted(torch.randperm(6, generator=torch.Generator().manual_seed(4))[:3].tolist())
    expected = {"a": [i for i in flat if i < 4], "b": [i - 4 for i in flat if i >= 4]}
    assert as_lists(select_units(report, count=3, strategy="random", scope="global", seed=4)) == expected


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one of `fraction` and `count`"),
        ({"fraction": 0.5, "count": 1}, ValueError, "exactly one of `fraction` and `count`"),
        ({"fraction": 0.0}, ValueError, r"`fraction` must be a float in \(0, 1\]"),
        ({"fraction": 1.5}, ValueError, r"`fraction` must be a float in \(0, 1\]"),
        ({"count": 0}, ValueError, "`count` must be an int >= 1"),
        ({"count": 3}, ValueError, "`count`=3 exceeds the 2 units of layer 'b'"),
        ({"count": 7, "scope": "global"}, ValueError, "`count`=7 exceeds the 6 units"),
        ({"count": 1, "strategy": "max"}, ValueError, "`strategy` must be one of 'highest', 'lowest', 'random'"),
        ({"count": 1, "scope": "all"}, ValueError, "`scope` must be one of 'layer', 'global'"),
        ({"count": 1, "layers": ["c"]}, ValueError, r"`layers` names \['c'\] are not in the report"),
        ({"count": 1, "layers": "a"}, ValueError, "`layers` must be None or a non-empty sequence"),
    ],
)
def test_select_units_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        select_units(small_report(), **kwargs)


# ------------------------------------------------------------------------------ unit targets
def test_find_unit_targets():
    cnn = TinyCNN(width=4)
    target = find_unit_targets(cnn, "conv2", 8)
    assert target.producer is cnn.conv2.conv and target.norms == (cnn.conv2.bn,) and target.num_units == 8
    mlp = TinyMLP(12, hidden=(6, 4))
    target = find_unit_targets(mlp, "relu2")  # parameter-free tap: the preceding Linear
    assert target.producer is mlp.fc2 and target.norms == ()
    with pytest.raises(ValueError, match="cannot find the conv / linear module producing the units of layer 'conv2'"):
        find_unit_targets(cnn, "conv2", 5)


# --------------------------------------------------------------------------------- prune_units
@pytest.mark.parametrize("permanent", [True, False])
def test_prune_units_on_a_bare_encoder(permanent):
    torch.manual_seed(0)
    encoder = TinyCNN(width=4)
    pruned = prune_units(encoder, make_report(), amount=0.5, strategy="highest", permanent=permanent)
    assert as_lists(pruned) == HIGH_HALF
    assert_pruned(encoder, HIGH_HALF)
    has_orig = any(name.endswith("_orig") for name, _ in encoder.named_parameters())
    assert has_orig != permanent


def test_prune_units_on_a_measured_mlp():
    torch.manual_seed(0)
    encoder = TinyMLP(48, hidden=(6, 4))
    report = measure(encoder, torch.rand(5, 3, 4, 4), views=2)
    pruned = prune_units(encoder, report, amount=2, strategy="lowest", scope="global")
    assert sum(len(v) for v in pruned.values()) == 2
    out = {}
    hooks = [getattr(encoder, n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)) for n in pruned]
    encoder(torch.rand(3, 3, 4, 4))
    for h in hooks:
        h.remove()
    for layer, units in pruned.items():
        assert torch.count_nonzero(out[layer][:, units]) == 0


# ------------------------------------------------------------------------------- the callback
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"source": None}, TypeError, "`source` must be a MemorizationMonitor"),
        ({"amount": 0.0}, ValueError, r"`amount` must be a float in \(0, 1\) \(a fraction\) or an int >= 1"),
        ({"amount": 1.0}, ValueError, r"`amount` must be a float in \(0, 1\)"),
        ({"amount": 0}, ValueError, "`amount` must be"),
        ({"amount": True}, TypeError, "`amount` must be"),
        ({"strategy": "last"}, ValueError, "`strategy` must be one of 'highest', 'lowest', 'random'"),
        ({"scope": "net"}, ValueError, "`scope` must be one of 'layer', 'global'"),
        ({"layers": "conv1"}, ValueError, "`layers` must be None or a non-empty sequence of distinct layer names"),
        ({"prune_at": "start"}, ValueError, "`prune_at` must be 'fit_start' or an epoch"),
        ({"prune_at": -1}, ValueError, "`prune_at` must be 'fit_start' or an epoch"),
        ({"permanent": 1}, TypeError, "`permanent` must be a bool"),
        ({"seed": -2}, ValueError, "`seed` must be an int >= 0"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    kwargs = {"source": make_report(), **kwargs}
    with pytest.raises(error, match=match):
        MemorizationPruning(**kwargs)


class MaskProbe(Callback):
    """Records, per epoch, how many zeros the conv1 weight mask holds."""

    def __init__(self) -> None:
        self.zeros: Dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        mask = pl_module.backbone.conv1.conv.weight_mask
        self.zeros[trainer.current_epoch] = int((mask == 0).sum())


def test_fit_prunes_at_fit_start():
    torch.manual_seed(0)
    model = LitModel()
    pruning = MemorizationPruning(make_report(), amount=0.5, strategy="highest", encoder="backbone")
    probe = MaskProbe()
    make_trainer([pruning, probe]).fit(model)
    assert as_lists(pruning.pruned_units) == HIGH_HALF
    assert probe.zeros[0] == 2 * 3 * 9  # two output channels of a 3-in 3x3 conv
    assert_pruned(model.backbone, HIGH_HALF)
    assert not model.head.weight.isnan().any()


def test_fit_prunes_at_an_epoch_with_global_scope_and_layers():
    torch.manual_seed(0)
    model = LitModel()
    pruning = MemorizationPruning(make_report(), amount=3, strategy="highest", scope="global", layers=["conv1", "conv2"],
                                  encoder="backbone", prune_at=1)
    probe = MaskProbe()
    make_trainer([pruning, probe]).fit(model)
    expected = {"conv1": [1], "conv2": [6, 7]}  # 1.0, 0.9 (conv1[1]), 0.857 (conv2[6])
    assert as_lists(pruning.pruned_units) == expected
    assert probe.zeros == {0: 0, 1: 27}
    assert_pruned(model.backbone, expected)
    assert not hasattr(model.backbone.conv3.conv, "weight_mask")


def test_masks_survive_checkpoint_and_resume(tmp_path):
    torch.manual_seed(0)
    model = LitModel()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer([MemorizationPruning(make_report(), amount=0.5, encoder="backbone"), checkpoint], max_epochs=1,
                 checkpoint=True).fit(model)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    mask = saved["state_dict"]["backbone.conv1.conv.weight_mask"]
    assert torch.count_nonzero(mask[[1, 2]]) == 0 and torch.all(mask[[0, 3]] == 1)

    # The resumed run uses the recorded units, not those of a new report.
    flipped = {k: 1 - v for k, v in UNIT_MEM.items()}
    resumed = LitModel()
    pruning = MemorizationPruning(make_report(flipped), amount=0.5, encoder="backbone")
    make_trainer([pruning], max_epochs=2).fit(resumed, ckpt_path=tmp_path / "last.ckpt")
    assert as_lists(pruning.pruned_units) == HIGH_HALF
    assert_pruned(resumed.backbone, HIGH_HALF)


def test_permanent_removes_the_reparametrisation():
    torch.manual_seed(0)
    model = LitModel()
    make_trainer([MemorizationPruning(make_report(), amount=0.5, encoder="backbone", permanent=True)]).fit(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert_pruned(model.backbone, HIGH_HALF)
    plain = TinyCNN(width=4)
    plain.load_state_dict(model.backbone.state_dict())
    assert_pruned(plain, HIGH_HALF)


def test_saved_report_path_drives_both_callbacks(tmp_path):
    torch.manual_seed(0)
    path = str(make_report().save(tmp_path / "report.json"))
    model = LitModel()
    finetuning = MemorizationFinetuning(path, k=1, encoder="backbone", head="head")  # LayerMem: conv3 highest
    pruning = MemorizationPruning(path, amount=0.5, strategy="lowest", encoder="backbone")
    make_trainer([pruning, finetuning]).fit(model)
    assert finetuning.chosen_layers == ["conv3"]
    low_half = {k: [u for u in range(WIDTHS[k]) if u not in v] for k, v in HIGH_HALF.items()}
    assert as_lists(pruning.pruned_units) == low_half
    assert_pruned(model.backbone, low_half)
    assert model.backbone.conv3.conv.weight_orig.requires_grad and not model.backbone.conv2.conv.weight_orig.requires_grad


def test_monitor_source_order_and_timing():
    torch.manual_seed(0)
    monitor = small_monitor(measure_on_train_start=True)
    pruning = MemorizationPruning(monitor, amount=1, strategy="highest")
    with pytest.raises(ValueError, match="list the monitor before this callback"):
        make_trainer([pruning, monitor], max_epochs=1).fit(LitModel())

    monitor = small_monitor(measure_on_train_start=True)
    pruning = MemorizationPruning(monitor, amount=1, strategy="highest")  # encoder: the monitor's
    model = LitModel()
    make_trainer([monitor, pruning], max_epochs=1).fit(model)
    assert [len(v) for v in pruning.pruned_units.values()] == [1, 1, 1]
    assert_pruned(model.backbone, as_lists(pruning.pruned_units))

    monitor = small_monitor(every_n_epochs=1)
    pruning = MemorizationPruning(monitor, amount=1, prune_at=1)
    model = LitModel()
    make_trainer([pruning, monitor]).fit(model)  # measured at the end of epoch 0: in time for epoch 1
    assert_pruned(model.backbone, as_lists(pruning.pruned_units))


class SameUnitsProbe(Callback):
    """Under DDP: whether every rank recorded the same pruned units as rank 0 (1.0) or not (0.0)."""

    def __init__(self, pruning: MemorizationPruning) -> None:
        self.pruning = pruning

    def on_train_end(self, trainer, pl_module):
        mine = as_lists(self.pruning.pruned_units)
        same = float(trainer.strategy.broadcast(mine, src=0) == mine)
        total = trainer.strategy.reduce(torch.tensor(same), reduce_op="sum")
        trainer.callback_metrics["same_units_ranks"] = total


@pytest.mark.slow
def test_ddp_spawn_prunes_identically_on_every_rank():
    torch.manual_seed(0)
    model = LitModel()
    pruning = MemorizationPruning(make_report(), amount=0.5, strategy="random", seed=7, encoder="backbone", permanent=True)
    trainer = pl.Trainer(max_epochs=1, callbacks=[pruning, SameUnitsProbe(pruning)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=2, strategy=gloo_spawn())
    trainer.fit(model)
    assert float(trainer.callback_metrics["same_units_ranks"]) == 2.0
    # Only weights come back from spawned workers: permanent=True gives plain, pruned weights.
    expected = as_lists(select_units(make_report(), fraction=0.5, strategy="random", seed=7))
    assert_pruned(model.backbone, expected)
