"""``MemorizationFinetuning``: fine-tune only the layers where an encoder memorizes most (or least); what a callback
changes on a model before training is kept so that a failed ``fit`` can give it back."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from lightning_memloc.callbacks.report_source import (EVIDENCE_POLICIES, ModuleSpec, ReportSource, check_epoch_in_run,
                                                      check_module_spec, gate, monitor_layers, resolve_encoder,
                                                      test_for)
from lightning_memloc.checks import check_choice, check_int, check_layers_exist
from lightning_memloc.models.loading import resolve_module
from lightning_memloc.report.selection import LAYER_SCORES, LAYER_STRATEGIES, layer_score, select_layers
from lightning_memloc.taps.producers import count_parameters, trainable_map


class TrainableState:
    """``requires_grad``, train/eval mode and BatchNorm ``track_running_stats`` of a model, by object.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> state = TrainableState(model)
        >>> _ = model.requires_grad_(False).eval()
        >>> state.restore()
        >>> model.training, model[0].weight.requires_grad
        (True, True)
    """

    def __init__(self, model: nn.Module) -> None:
        self.grads: List[Tuple[nn.Parameter, bool]] = [(p, p.requires_grad) for p in model.parameters()]
        self.modes: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
        self.stats: List[Tuple[_BatchNorm, bool]] = [(m, m.track_running_stats) for m in model.modules()
                                                    if isinstance(m, _BatchNorm)]

    def restore(self) -> None:
        """Set every captured flag back."""
        for parameter, flag in self.grads:
            parameter.requires_grad_(flag)
        for module, flag in self.modes:
            module.training = flag  # not train(): each module's own flag, children included in the list
        self.restore_statistics_tracking()

    def restore_statistics_tracking(self) -> None:
        """Set every BatchNorm's ``track_running_stats`` back (``BaseFinetuning.freeze`` turns it off)."""
        for norm, flag in self.stats:
            norm.track_running_stats = flag


def started_training(trainer: Any, start_step: Optional[int]) -> bool:
    """Whether this ``fit`` took an optimizer step (``start_step``: the global step at ``on_train_start``)."""
    return start_step is not None and int(trainer.global_step) > start_step


HeadSpec = Union[str, nn.Module, Sequence[Union[str, nn.Module]], None]
_AUTO_WHY = {"excess": "the report measured a control", "layer_mem": "the report has a reference but no control",
             "align_gap": "the report has unseen images but no reference", "unit_mem": "the report has no reference"}


class MemorizationFinetuning(BaseFinetuning):
    r"""Freeze an encoder and fine-tune only the layers a memorization report picks.

    Freezes the encoder (heads stay trainable); from ``unfreeze_at_epoch`` on, the ``k`` layers ``strategy``
    picks train in a new param group of the first optimizer. The choice is made once, kept in ``state_dict``
    and is the same on every DDP rank. With ``train_bn=False`` frozen BatchNorm layers run in eval mode.
    LR schedulers from ``configure_optimizers`` do not schedule the added param group.

    Args:
        source: a ``MemorizationMonitor``, a :class:`~lightning_memloc.MemorizationReport` or a saved report's path.
        k: number of layers to unfreeze.
        by: the ranking score (:func:`~lightning_memloc.report.selection.layer_score`); ``"auto"`` picks one.
        strategy: ``"highest"``, ``"lowest"``, ``"random"`` (seeded) or ``"last"`` (the last ``k`` layers).
        encoder: attribute path, module or callable; ``None``: the monitor's encoder, else the LightningModule.
        head: attribute path(s) or module(s) that always train.
        train_bn: whether BatchNorm layers of frozen parts keep training.
        lr: learning rate of the added param group; ``None``: the first group's.
        require_evidence: ``"warn"``, ``"error"`` or ``"off"`` when the report's tests find no memorization to rank by.

    Example:
        >>> import torch
        >>> from lightning_memloc import MemorizationReport
        >>> from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
        >>> names = ["conv1", "conv2", "conv3"]
        >>> report = MemorizationReport(layers=names, layer_kinds=dict.fromkeys(names, "conv"),
        ...     candidate_ids=torch.arange(2), unit_mem={n: torch.zeros(4) for n in names},
        ...     unit_argmax={n: torch.zeros(4, dtype=torch.long) for n in names},
        ...     dead_units={n: torch.zeros(4, dtype=torch.bool) for n in names},
        ...     layer_mem={"conv1": 0.1, "conv2": 0.3, "conv3": 0.2})
        >>> finetuning = MemorizationFinetuning(report, k=1, encoder="backbone", head="head")
        >>> # pl.Trainer(callbacks=[finetuning]).fit(model) trains model.head and, from epoch 0, model.backbone.conv2
    """

    def __init__(self, source: Any, k: int = 2, by: str = "auto", strategy: str = "highest", encoder: ModuleSpec = None,
                 head: HeadSpec = None, unfreeze_at_epoch: int = 0, train_bn: bool = False, seed: int = 0,
                 lr: Optional[float] = None, require_evidence: str = "warn") -> None:
        super().__init__()
        self.source = ReportSource(source)
        k, unfreeze_at_epoch, seed = (check_int(name, value, minimum) for name, value, minimum in  # NumPy ints too
                                      (("k", k, 1), ("unfreeze_at_epoch", unfreeze_at_epoch, 0), ("seed", seed, 0)))
        check_choice("by", by, LAYER_SCORES, as_tuple=False)
        check_choice("strategy", strategy, LAYER_STRATEGIES, as_tuple=False)
        if not isinstance(train_bn, bool):
            raise TypeError(f"`train_bn` must be a bool, got {train_bn!r}.")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ValueError(f"`lr` must be None or a number > 0, got {lr!r}.")
        check_module_spec(encoder, "encoder")
        heads = [] if head is None else [head] if isinstance(head, (str, nn.Module)) else list(head)
        if not all(isinstance(h, (str, nn.Module)) for h in heads):
            raise TypeError(f"`head` must be None, an attribute path, an nn.Module or a sequence of those, got {head!r}.")
        self.k, self.by, self.strategy, self.encoder_spec, self.head_specs = k, by, strategy, encoder, heads
        self.unfreeze_at_epoch, self.train_bn, self.seed, self.lr = unfreeze_at_epoch, train_bn, seed, lr
        self.require_evidence = check_choice("require_evidence", require_evidence, EVIDENCE_POLICIES)
        self.chosen_layers: Optional[List[str]] = None
        #: ``{chosen layer: [names of the encoder modules trained for it]}`` (:mod:`lightning_memloc.taps.producers`).
        self.trainable_modules: Optional[Dict[str, List[str]]] = None
        self._bn_in_eval: Dict[int, _BatchNorm] = {}
        self._optimizers: List[Optimizer] = []
        self._before_fit: Optional[Tuple[TrainableState, Optional[List[str]], Any]] = None
        self._start_step: Optional[int] = None

    def encoder(self, pl_module: "pl.LightningModule") -> nn.Module:
        """The encoder inside ``pl_module`` whose layers the report names."""
        return resolve_encoder(pl_module, self.encoder_spec, self.source)

    def heads(self, pl_module: "pl.LightningModule") -> List[nn.Module]:
        """The modules that always train."""
        return [resolve_module(pl_module, spec, "head") for spec in self.head_specs]

    def _choose(self, pl_module: "pl.LightningModule", epoch: int) -> List[str]:
        if self.chosen_layers is None:
            report = self.source.require(f"to choose the layers to unfreeze at epoch {epoch}")
            encoder = self.encoder(pl_module)
            check_layers_exist(encoder, report.layers)
            by = layer_score(report, self.by)
            if self.strategy in ("highest", "lowest"):  # rankings by memorization need memorization to rank
                gate(report, test_for(by), self.require_evidence, f"fine-tuning the {self.k} layers by {by!r}")
            self.chosen_layers = select_layers(report, self.k, by=by, strategy=self.strategy, seed=self.seed)
            self.trainable_modules = trainable_map(encoder, self.chosen_layers)
            names = [n for names in self.trainable_modules.values() for n in names]
            how = f"by={by!r}" + (" (by='auto': " + _AUTO_WHY[by] + ")" if self.by == "auto" else "")
            rank_zero_info(f"[memloc] fine-tuning layers {self.chosen_layers} (strategy={self.strategy!r}, {how}): "
                           f"training {self.trainable_modules}, {count_parameters(encoder, names):,} parameters.")
        return self.chosen_layers

    def _trainable_modules(self, pl_module: "pl.LightningModule", epoch: int) -> List[nn.Module]:
        modules = self.heads(pl_module)
        if epoch >= self.unfreeze_at_epoch and self.chosen_layers is not None:
            encoder = self.encoder(pl_module)
            check_layers_exist(encoder, self.chosen_layers)
            if self.trainable_modules is None:  # resumed from a checkpoint written before the mapping was recorded
                self.trainable_modules = trainable_map(encoder, self.chosen_layers)
            modules += [encoder.get_submodule(n) for layer in self.chosen_layers for n in self.trainable_modules[layer]]
        return modules

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Resolve encoder and head, check the report against the encoder, then freeze."""
        self._before_fit = None
        self.source.bind(trainer)
        encoder = self.encoder(pl_module)
        self.heads(pl_module)
        if stage == "fit":
            report = self.source.get()
            if report is not None:
                check_layers_exist(encoder, report.layers)
                if self.strategy in ("highest", "lowest") and self.require_evidence == "error":  # refuse before any step
                    by = layer_score(report, self.by)
                    gate(report, test_for(by), "error", f"fine-tuning the {self.k} layers by {by!r}")
                chosen = select_layers(report, self.k, by=self.by, strategy=self.strategy, seed=self.seed)  # checks k / by
                trainable_map(encoder, self.chosen_layers or chosen)  # a choice training nothing fails here
            else:  # "auto" layers before the monitor's setup: k is checked when the report is known
                monitor = self.source.source
                layers = getattr(monitor, "layer_names", None) or getattr(monitor, "layers", None)
                if isinstance(layers, (list, tuple)) and 0 < len(layers) < self.k:
                    raise ValueError(f"`k`={self.k} but the monitor measures {len(layers)} layers ({list(layers)}): "
                                     f"pass k <= {len(layers)}.")
                if self.chosen_layers is None:
                    trainable_map(encoder, monitor_layers(monitor, encoder))  # any layer may be chosen
            check_epoch_in_run(trainer, self.unfreeze_at_epoch, "unfreeze_at_epoch",
                               "the encoder would stay frozen for the whole run")
            self.source.check_in_time(trainer, self, self.unfreeze_at_epoch, "MemorizationFinetuning")
        # given back in on_exception: requires_grad, modes, BatchNorm statistics tracking
        self._before_fit, self._start_step = (TrainableState(pl_module), self.chosen_layers, self.trainable_modules), None
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: "pl.LightningModule") -> None:
        """Freeze the whole encoder (BatchNorm too unless ``train_bn``); heads stay trainable."""
        self.freeze(self.encoder(pl_module), train_bn=self.train_bn)
        self.make_trainable(self.heads(pl_module))

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._optimizers = list(trainer.optimizers)
        super().on_train_epoch_start(trainer, pl_module)  # calls finetune_function per optimizer
        self._sync_bn_modes(pl_module, trainer.current_epoch)

    def finetune_function(self, pl_module: "pl.LightningModule", epoch: int, optimizer: Optimizer) -> None:
        """Re-enable the chosen layers; add to the first optimizer only parameters no optimizer holds (by identity)."""
        if self._optimizers and optimizer is not self._optimizers[0]:
            return
        if epoch >= self.unfreeze_at_epoch:
            self._choose(pl_module, epoch)
        modules = self._trainable_modules(pl_module, epoch)
        self.make_trainable(modules)
        held = {id(p) for opt in (self._optimizers or [optimizer]) for group in opt.param_groups for p in group["params"]}
        new = {id(p): p for m in modules for p in m.parameters() if p.requires_grad and id(p) not in held}
        if new:
            lr = optimizer.param_groups[0]["lr"] if self.lr is None else float(self.lr)
            optimizer.add_param_group({"params": list(new.values()), "lr": lr})

    def _sync_bn_modes(self, pl_module: "pl.LightningModule", epoch: int) -> None:
        """Frozen BatchNorm to eval (``train_bn=False``); BatchNorm we froze but now train back to train."""
        if self.train_bn:
            return
        trainable = {id(m) for root in self._trainable_modules(pl_module, epoch) for m in root.modules()}
        for module in [m for m in self.encoder(pl_module).modules() if isinstance(m, _BatchNorm)]:
            if id(module) in trainable and self._bn_in_eval.pop(id(module), None) is not None:
                module.train()
            elif id(module) not in trainable and module.training:
                module.eval()
                self._bn_in_eval[id(module)] = module

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._start_step = int(trainer.global_step)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Give frozen BatchNorm layers their train mode and ``track_running_stats`` back (frozen parts stay frozen)."""
        for module in self._bn_in_eval.values():
            module.train()
        self._bn_in_eval.clear()
        if self._before_fit is not None:
            self._before_fit[0].restore_statistics_tracking()
        self._before_fit = None

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Restore the model as before ``setup``; before the first optimizer step, forget the choice too."""
        if self._before_fit is not None:
            state, chosen, mapping = self._before_fit
            state.restore()
            if not started_training(trainer, self._start_step):
                self.chosen_layers, self.trainable_modules = chosen, mapping
        self._bn_in_eval.clear()
        self._before_fit = None

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "chosen_layers": self.chosen_layers, "trainable_modules": self.trainable_modules}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        chosen, mapping = state.pop("chosen_layers", None), state.pop("trainable_modules", None)
        super().load_state_dict(state)
        self.chosen_layers = None if chosen is None else [str(name) for name in chosen]
        self.trainable_modules = None if mapping is None else {str(k): [str(n) for n in v] for k, v in mapping.items()}
