"""A fit that fails or is interrupted leaves the model as it came (issue 23 §2, rows 88-91).

``MemorizationPruning`` registers masks and ``MemorizationFinetuning`` freezes the encoder in
``setup`` (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024, prune and
fine-tune by memorization). When the fit then fails before its first optimizer step, in any
hook and with the callbacks in any order, the model's state-dict keys and values, parameter
objects, ``requires_grad``, train/eval modes, BatchNorm ``track_running_stats`` and hooks are
those it had before ``fit``; an interrupt after training started gives every flag back.
"""

from __future__ import annotations

import itertools
import signal
from typing import Any, Dict

import pytest
import pytorch_lightning as pl
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import LitModel, make_trainer
from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.callbacks.pruning import MemorizationPruning
from test_pruning import make_report


def _model() -> LitModel:
    torch.manual_seed(0)
    model = LitModel()
    model.backbone.conv2.eval()  # a mixed state that must survive: an eval block, a frozen head bias
    model.head.bias.requires_grad_(False)
    return model


def _snapshot(model: torch.nn.Module) -> Dict[str, Any]:
    return {"keys": list(model.state_dict()), "state": {k: v.clone() for k, v in model.state_dict().items()},
            "objects": [(n, id(p)) for n, p in model.named_parameters()],
            "grads": {n: p.requires_grad for n, p in model.named_parameters()},
            "modes": {n: m.training for n, m in model.named_modules()},
            "stats": {n: m.track_running_stats for n, m in model.named_modules() if isinstance(m, _BatchNorm)},
            "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())}


def _flags(snapshot: Dict[str, Any]) -> Dict[str, Any]:
    return {k: snapshot[k] for k in ("grads", "modes", "stats", "hooks")}


def _assert_as_before(model: torch.nn.Module, before: Dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["keys"] == before["keys"]  # no *_orig / *_mask key, and the original order
    assert after["objects"] == before["objects"]  # the very parameter objects (an optimizer holding them stays valid)
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert _flags(after) == _flags(before)


class _Fail(pl.Callback):
    """Raises ``error`` in the hook ``at``."""

    def __init__(self, at: str, error: type = RuntimeError) -> None:
        self.at, self.error = at, error

    def _maybe(self, hook: str) -> None:
        if hook == self.at:
            raise self.error(f"failure in {hook}")

    def setup(self, trainer, pl_module, stage):
        self._maybe("setup")

    def on_fit_start(self, trainer, pl_module):
        self._maybe("on_fit_start")

    def on_train_start(self, trainer, pl_module):
        self._maybe("on_train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._maybe("first_batch" if trainer.global_step == 0 else "later_batch" if trainer.global_step == 3 else "")


def _callbacks():
    report = make_report()
    pruning = MemorizationPruning(report, amount=0.5, encoder="backbone", require_evidence="off")
    finetuning = MemorizationFinetuning(report, k=1, encoder="backbone", head="head", require_evidence="off")
    return pruning, finetuning


def _fit(callbacks, model, max_epochs: int = 2) -> None:
    handler = signal.getsignal(signal.SIGINT)
    try:  # Lightning turns KeyboardInterrupt into sys.exit(1) and ignores SIGINT from then on
        make_trainer(callbacks, max_epochs=max_epochs).fit(model)
    finally:
        signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("at, error", [("setup", RuntimeError), ("on_fit_start", RuntimeError),
                                       ("on_train_start", RuntimeError), ("first_batch", KeyboardInterrupt)])
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=lambda o: "".join("PFX"[i] for i in o))
def test_a_fit_failing_before_its_first_step_leaves_the_model_as_it_came(at, error, order):
    model = _model()
    before = _snapshot(model)
    pruning, finetuning = _callbacks()
    callbacks = [pruning, finetuning, _Fail(at, error)]
    with pytest.raises(SystemExit if error is KeyboardInterrupt else error):
        _fit([callbacks[i] for i in order], model)
    _assert_as_before(model, before)
    assert pruning.pruned_units is None and finetuning.chosen_layers is None  # no choice carried into the next fit
    # the same callbacks then work in a fit that succeeds (nothing left half-registered)
    _fit([pruning, finetuning], model, max_epochs=1)
    assert model.backbone.conv1.conv.weight[[1, 2]].abs().sum() == 0  # highest-UnitMem half pruned
    assert finetuning.chosen_layers == ["conv3"]


@pytest.mark.parametrize("monitor_first", [False, True])
def test_a_monitor_refusing_its_output_dir_at_fit_start_leaves_no_mask_and_no_frozen_parameter(tmp_path, monitor_first):
    from helpers import small_monitor

    (tmp_path / "memloc").mkdir()
    (tmp_path / "memloc" / "history.json").write_text("[]")  # another run's files: refused in on_fit_start
    model = _model()
    before = _snapshot(model)
    pruning, finetuning = _callbacks()
    monitor = small_monitor(output_dir=tmp_path / "memloc")
    callbacks = [monitor, pruning, finetuning] if monitor_first else [pruning, finetuning, monitor]
    with pytest.raises(FileExistsError, match="holds another run's files"):
        _fit(callbacks, model)
    _assert_as_before(model, before)
    assert (tmp_path / "memloc" / "history.json").read_text() == "[]"


def test_an_interrupt_after_training_started_gives_the_flags_back_and_keeps_the_trained_masks():
    model = _model()
    before = _snapshot(model)
    pruning, finetuning = _callbacks()
    with pytest.raises(SystemExit):
        _fit([pruning, finetuning, _Fail("later_batch", KeyboardInterrupt)], model)
    after = _snapshot(model)
    grads = {name.replace("_orig", ""): flag for name, flag in after["grads"].items()}  # masked: w is w_orig now
    assert {**_flags(after), "grads": grads} == {**_flags(before), "hooks": after["hooks"]}  # every flag as before
    # the model trained with its masks for 3 steps: they stay (like its checkpoints), the pruned units stay 0
    assert "backbone.conv1.conv.weight_orig" in after["keys"] and after["hooks"] > before["hooks"]
    assert model.backbone.conv1.conv.weight[[1, 2]].abs().sum() == 0
    assert finetuning.chosen_layers == ["conv3"]  # chosen at epoch 0 and trained with


def test_ctrl_c_during_fine_tuning_gives_back_batchnorm_modes_and_statistics_tracking():
    """The case of issue 23: BatchNorms left in eval, parameters frozen, and (BaseFinetuning.freeze) running
    statistics no longer tracked, which would silently stop the next fit from updating them."""
    model = _model()
    before = _snapshot(model)
    _, finetuning = _callbacks()
    with pytest.raises(SystemExit):
        _fit([finetuning, _Fail("later_batch", KeyboardInterrupt)], model)
    assert _flags(_snapshot(model)) == _flags(before)
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm))


def test_a_successful_fine_tuning_fit_gives_batchnorm_statistics_tracking_back():
    """BaseFinetuning.freeze turns track_running_stats off: left so, a later fit would not update the statistics."""
    model = _model()
    before = _snapshot(model)
    _, finetuning = _callbacks()
    _fit([finetuning], model, max_epochs=1)
    after = _snapshot(model)
    assert after["stats"] == before["stats"] and after["modes"] == before["modes"]
    chosen = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert chosen and all(n.startswith("conv3.") for n in chosen)  # the choice stays trainable, the rest frozen


@pytest.mark.parametrize("at, error", [("setup", RuntimeError), ("on_fit_start", RuntimeError),
                                       ("first_batch", KeyboardInterrupt)])
def test_overwrite_deletes_another_runs_files_only_when_the_new_run_writes(tmp_path, at, error):
    from helpers import small_monitor

    out = tmp_path / "memloc"
    _fit([small_monitor(output_dir=out, bootstrap=0)], _model(), max_epochs=2)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"report_epoch=0.json", "report_epoch=1.json", "history.json", "memloc_run.json"} == set(old)
    monitor = small_monitor(output_dir=out, overwrite=True, bootstrap=0)
    with pytest.raises(SystemExit if error is KeyboardInterrupt else error):
        _fit([monitor, _Fail(at, error)], _model())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # was: deleted in setup, nothing written
    _fit([small_monitor(output_dir=out, overwrite=True, bootstrap=0)], _model(), max_epochs=1)
    assert {p.name for p in out.iterdir()} == {"report_epoch=0.json", "history.json", "memloc_run.json"}
    assert {p.name: p.read_bytes() for p in out.iterdir()} != {k: v for k, v in old.items() if k != "report_epoch=1.json"}
