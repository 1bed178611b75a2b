"""Tests of layer selection and :class:`MemorizationFinetuning` (freezing, BN policy, resume)."""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import pytest
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_memloc import LayerNotFoundError, MemorizationReport
from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.report.selection import resolve_report, select_layers
from helpers import LitModel, make_trainer, small_monitor

LAYERS = ["conv1", "conv2", "conv3"]
WIDTHS = {"conv1": 4, "conv2": 8, "conv3": 16}
# LayerMem: conv2 > conv3 > conv1; ΔLayerMem: conv2 > conv1 > conv3.
LAYER_MEM = {"conv1": 0.1, "conv2": 0.3, "conv3": 0.2}
DELTA = {"conv1": 0.1, "conv2": 0.2, "conv3": -0.1}


def make_report(layer_mem: Optional[Dict[str, float]] = LAYER_MEM, delta: Optional[Dict[str, float]] = DELTA,
                unit_mem: Optional[Dict[str, torch.Tensor]] = None, layers: List[str] = LAYERS) -> MemorizationReport:
    unit_mem = unit_mem or {n: torch.linspace(0, 1, WIDTHS.get(n, 4)) for n in layers}
    return MemorizationReport(
        layers=list(layers), layer_kinds=dict.fromkeys(layers, "conv"), candidate_ids=torch.arange(3),
        unit_mem=unit_mem, unit_argmax={n: torch.zeros(len(v), dtype=torch.long) for n, v in unit_mem.items()},
        dead_units={n: torch.zeros(len(v), dtype=torch.bool) for n, v in unit_mem.items()},
        layer_mem=None if layer_mem is None else dict(layer_mem),
        delta_layer_mem=None if delta is None else dict(delta),
    )


class Probe(Callback):
    """Records BN modes and requires_grad flags during training."""

    def __init__(self) -> None:
        self.bn_training: Dict[int, Dict[str, bool]] = {}
        self.trainable: Dict[int, Dict[str, bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        epoch = trainer.current_epoch
        self.bn_training[epoch] = {n: m.training for n, m in pl_module.backbone.named_modules()
                                   if isinstance(m, nn.BatchNorm2d)}
        self.trainable[epoch] = {n: p.requires_grad for n, p in pl_module.named_parameters()}


def layer_params(model: LitModel, layer: str) -> Dict[str, torch.Tensor]:
    return {n: p for n, p in model.backbone.get_submodule(layer).named_parameters()}


def count_in_optimizer(optimizer, param) -> int:
    return sum(1 for g in optimizer.param_groups for p in g["params"] if p is param)


# --------------------------------------------------------------------------------- select_layers
@pytest.mark.parametrize(
    "k, by, strategy, expected",
    [
        (1, "layer_mem", "highest", ["conv2"]),
        (2, "layer_mem", "highest", ["conv2", "conv3"]),
        (1, "layer_mem", "lowest", ["conv1"]),
        (2, "delta_layer_mem", "highest", ["conv2", "conv1"]),
        (1, "delta_layer_mem", "lowest", ["conv3"]),
        (1, "layer_mem", "last", ["conv3"]),
        (2, "delta_layer_mem", "last", ["conv2", "conv3"]),
        (3, "layer_mem", "highest", ["conv2", "conv3", "conv1"]),
    ],
)
def test_select_layers_hand_cases(k, by, strategy, expected):
    assert select_layers(make_report(), k, by=by, strategy=strategy) == expected


def test_select_layers_ties_keep_layer_order_and_unit_mem_score():
    tied = make_report(layer_mem=dict.fromkeys(LAYERS, 0.5), delta=dict.fromkeys(LAYERS, 0.0))
    assert select_layers(tied, 2) == ["conv1", "conv2"]
    assert select_layers(tied, 2, strategy="lowest") == ["conv1", "conv2"]
    units = {"conv1": torch.full((4,), 0.8), "conv2": torch.full((8,), 0.1), "conv3": torch.full((16,), 0.5)}
    report = make_report(layer_mem=None, delta=None, unit_mem=units)
    assert select_layers(report, 1, by="unit_mem") == ["conv1"]
    assert select_layers(report, 1, by="unit_mem", strategy="lowest") == ["conv2"]
    assert select_layers(report, 2, strategy="last") == ["conv2", "conv3"]  # no reference needed


def test_select_layers_random_is_seeded_and_in_forward_order():
    report = make_report()
    draws = {seed: select_layers(report, 2, strategy="random", seed=seed) for seed in range(10)}
    for seed, chosen in draws.items():
        assert chosen == select_layers(report, 2, strategy="random", seed=seed)
        expected = sorted(torch.randperm(3, generator=torch.Generator().manual_seed(seed))[:2].tolist())
        assert chosen == [LAYERS[i] for i in expected]
    assert len({tuple(v) for v in draws.values()}) > 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"k": 0}, ValueError, "`k` must be an int >= 1"),
        ({"k": 4}, ValueError, r"`k` must be <= the number of layers in the report \(3"),
        ({"k": 1.5}, TypeError, "`k`"),
        ({"k": 1, "by": "nope"}, ValueError, "`by` must be one of 'layer_mem', 'delta_layer_mem', 'unit_mem'"),
        ({"k": 1, "strategy": "best"}, ValueError, "`strategy` must be one of 'highest', 'lowest', 'random', 'last'"),
        ({"k": 1, "seed": -1}, ValueError, "`seed`"),
    ],
)
def test_select_layers_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        select_layers(make_report(), **kwargs)


def test_select_layers_without_reference_explains():
    with pytest.raises(ValueError, match="reference"):
        select_layers(make_report(layer_mem=None, delta=None), 1, by="layer_mem")


def test_resolve_report(tmp_path):
    report = make_report()
    path = report.save(tmp_path / "r.json")
    assert resolve_report(report) is report
    assert resolve_report(str(path)).allclose(report)
    with pytest.raises(TypeError, match="`source` must be a MemorizationMonitor"):
        resolve_report(3)


# ------------------------------------------------------------------------ constructor checks
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"source": 3}, TypeError, "`source` must be a MemorizationMonitor, a MemorizationReport or the path"),
        ({"k": 0}, ValueError, "`k` must be an int >= 1"),
        ({"unfreeze_at_epoch": -1}, ValueError, "`unfreeze_at_epoch` must be an int >= 0"),
        ({"by": "x"}, ValueError, "`by` must be one of"),
        ({"strategy": "x"}, ValueError, "`strategy` must be one of 'highest', 'lowest', 'random', 'last'"),
        ({"train_bn": 1}, TypeError, "`train_bn` must be a bool"),
        ({"lr": 0}, ValueError, "`lr` must be None or a number > 0"),
        ({"head": [3]}, TypeError, "`head` must be"),
        ({"encoder": 3}, TypeError, "`encoder` must be"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    kwargs = {"source": make_report(), **kwargs}
    with pytest.raises(error, match=match):
        MemorizationFinetuning(**kwargs)


# -------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("strategy", ["highest", "lowest", "last", "random"])
def test_fit_unfreezes_the_chosen_layer_only(strategy):
    torch.manual_seed(0)
    report = make_report()
    expected = select_layers(report, 1, strategy=strategy, seed=3)
    assert expected == {"highest": ["conv2"], "lowest": ["conv1"], "last": ["conv3"]}.get(strategy, expected)
    model = LitModel()
    before = copy.deepcopy(model.state_dict())
    finetuning = MemorizationFinetuning(report, k=1, strategy=strategy, encoder="backbone", head="head", seed=3)
    probe = Probe()
    trainer = make_trainer([finetuning, probe])
    trainer.fit(model)

    assert finetuning.chosen_layers == expected
    chosen = expected[0]
    for name, parameter in model.named_parameters():
        trainable = name.startswith("head.") or name.startswith(f"backbone.{chosen}.")
        assert parameter.requires_grad == trainable, name
        changed = not torch.equal(parameter.detach(), before[name])
        assert changed == trainable, name
    # Frozen BatchNorm layers ran in eval mode with unchanged statistics; the chosen one trained.
    for epoch in (0, 1):
        for name, training in probe.bn_training[epoch].items():
            assert training == name.startswith(f"{chosen}."), (epoch, name)
    for layer in LAYERS:
        bn = model.backbone.get_submodule(layer).bn
        stats_changed = not torch.equal(bn.running_mean, before[f"backbone.{layer}.bn.running_mean"])
        assert stats_changed == (layer == chosen), layer
        assert bn.training  # train mode handed back at the end of fit
    # The optimizer holds every trainable parameter exactly once and no frozen one.
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 2
    for name, parameter in model.named_parameters():
        assert count_in_optimizer(optimizer, parameter) == int(parameter.requires_grad), name


def test_optimizer_with_all_parameters_gets_no_duplicates():
    torch.manual_seed(0)
    model = LitModel(optimize_all=True)
    finetuning = MemorizationFinetuning(make_report(), k=2, encoder="backbone", head="head")
    trainer = make_trainer([finetuning], max_epochs=1)
    trainer.fit(model)
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 1
    assert all(count_in_optimizer(optimizer, p) == 1 for p in model.parameters())
    assert finetuning.chosen_layers == ["conv2", "conv3"]


def test_unfreeze_at_epoch_and_lr():
    torch.manual_seed(0)
    model = LitModel()
    finetuning = MemorizationFinetuning(make_report(), k=1, encoder="backbone", head="head", unfreeze_at_epoch=1, lr=0.01)
    probe = Probe()
    trainer = make_trainer([finetuning, probe])
    trainer.fit(model)
    assert not any(v for n, v in probe.trainable[0].items() if n.startswith("backbone."))
    assert all(v for n, v in probe.trainable[0].items() if n.startswith("head."))
    assert probe.trainable[1]["backbone.conv2.conv.weight"] and not probe.trainable[1]["backbone.conv3.conv.weight"]
    assert not probe.bn_training[0]["conv2.bn"] and probe.bn_training[1]["conv2.bn"]
    assert trainer.optimizers[0].param_groups[1]["lr"] == 0.01


def test_train_bn_true_keeps_frozen_batchnorm_training():
    torch.manual_seed(0)
    model = LitModel()
    before = copy.deepcopy(model.state_dict())
    probe = Probe()
    trainer = make_trainer([MemorizationFinetuning(make_report(), k=1, encoder="backbone", head="head", train_bn=True),
                            probe], max_epochs=1)
    trainer.fit(model)
    assert all(probe.bn_training[0].values())
    assert not torch.equal(model.backbone.conv1.bn.running_mean, before["backbone.conv1.bn.running_mean"])
    assert model.backbone.conv1.bn.weight.requires_grad and not model.backbone.conv1.conv.weight.requires_grad


def test_resume_keeps_choice_trainable_and_in_optimizer_once(tmp_path):
    torch.manual_seed(0)
    model = LitModel()
    first = MemorizationFinetuning(make_report(), k=1, encoder="backbone", head="head", unfreeze_at_epoch=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=-1, every_n_epochs=1)
    make_trainer([first, checkpoint], max_epochs=2, checkpoint=True).fit(model)
    assert first.chosen_layers == ["conv2"]
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "MemorizationFinetuning" in k)
    assert state["chosen_layers"] == ["conv2"]

    # A different report (it would pick conv3) must not change the recorded choice.
    other = make_report(layer_mem={"conv1": 0.0, "conv2": 0.1, "conv3": 0.9})
    resumed_model = LitModel()
    second = MemorizationFinetuning(other, k=1, encoder="backbone", head="head", unfreeze_at_epoch=1)
    probe = Probe()
    trainer = make_trainer([second, probe], max_epochs=3)
    trainer.fit(resumed_model, ckpt_path=tmp_path / "last.ckpt")
    assert second.chosen_layers == ["conv2"]
    assert probe.trainable[2]["backbone.conv2.conv.weight"] and not probe.trainable[2]["backbone.conv3.conv.weight"]
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 2
    for name, parameter in resumed_model.named_parameters():
        assert count_in_optimizer(optimizer, parameter) == int(parameter.requires_grad), name
    weights = saved["state_dict"]
    assert not torch.equal(resumed_model.backbone.conv2.conv.weight, weights["backbone.conv2.conv.weight"])
    assert torch.equal(resumed_model.backbone.conv3.conv.weight, weights["backbone.conv3.conv.weight"])
    assert torch.equal(resumed_model.backbone.conv1.bn.running_mean, weights["backbone.conv1.bn.running_mean"])


# ------------------------------------------------------------------------ errors before training
def test_missing_layer_and_too_large_k_fail_before_training():
    report = make_report(layers=["conv1", "convX"], layer_mem={"conv1": 0.1, "convX": 0.2},
                         delta={"conv1": 0.1, "convX": 0.1})
    with pytest.raises(LayerNotFoundError, match=r"\['convX'\]"):
        make_trainer([MemorizationFinetuning(report, k=1, encoder="backbone", head="head")]).fit(LitModel())
    with pytest.raises(ValueError, match="`k` must be <= the number of layers"):
        make_trainer([MemorizationFinetuning(make_report(), k=4, encoder="backbone", head="head")]).fit(LitModel())
    with pytest.raises(AttributeError, match="`head`='heads'"):
        make_trainer([MemorizationFinetuning(make_report(), k=1, encoder="backbone", head="heads")]).fit(LitModel())


def test_monitor_without_report_in_time_is_an_error():
    monitor = small_monitor(every_n_epochs=1)
    finetuning = MemorizationFinetuning(monitor, k=1, by="unit_mem", head="head")
    with pytest.raises(ValueError, match="measure_on_train_start=True"):
        make_trainer([monitor, finetuning]).fit(LitModel())
    with pytest.raises(ValueError, match="not in `Trainer\\(callbacks=...\\)`"):
        make_trainer([MemorizationFinetuning(small_monitor(), k=1, by="unit_mem", head="head", unfreeze_at_epoch=1)]).fit(LitModel())


def test_monitor_source_uses_the_report_of_the_unfreeze_epoch(tmp_path):
    torch.manual_seed(0)
    monitor = small_monitor(every_n_epochs=1, output_dir=tmp_path)
    finetuning = MemorizationFinetuning(monitor, k=1, by="unit_mem", head="head", unfreeze_at_epoch=1)
    model = LitModel()
    make_trainer([monitor, finetuning]).fit(model)
    expected = select_layers(MemorizationReport.load(tmp_path / "report_epoch=0.json"), 1, by="unit_mem")
    assert finetuning.chosen_layers == expected
    assert all(p.requires_grad for p in model.backbone.get_submodule(expected[0]).parameters())


class BNHeadModel(LitModel):
    """The head holds a BatchNorm1d(8): its fresh weight (ones) equals conv2.bn.weight in value."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_duplicate_check_is_by_identity_not_value():
    torch.manual_seed(0)
    model = BNHeadModel()
    assert torch.equal(model.head[1].weight, model.backbone.conv2.bn.weight)
    trainer = make_trainer([MemorizationFinetuning(make_report(), k=1, encoder="backbone", head="head")], max_epochs=1)
    trainer.fit(model)
    optimizer = trainer.optimizers[0]
    assert count_in_optimizer(optimizer, model.backbone.conv2.bn.weight) == 1
    assert count_in_optimizer(optimizer, model.head[1].weight) == 1
    assert not torch.equal(model.backbone.conv2.bn.weight, torch.ones(8))  # it trained
