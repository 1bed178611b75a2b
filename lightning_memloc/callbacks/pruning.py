"""``MemorizationPruning``: structured pruning of units chosen by UnitMem, during ``fit``."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_memloc.callbacks.finetuning import started_training
from lightning_memloc.callbacks.report_source import (EVIDENCE_POLICIES, ModuleSpec, ReportSource, check_epoch_in_run,
                                                      check_module_spec, gate, monitor_layers, resolve_encoder,
                                                      test_for)
from lightning_memloc.checks import check_choice, check_int
from lightning_memloc.models.pruned import MaskUndo
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.selection import LAYER_SCORES, SCOPES, UNIT_STRATEGIES, layer_score, select_layers
from lightning_memloc.models.surgery import (Amount, UnitTargets, check_amount, check_amount_units, choose_units,
                                             find_unit_targets, prune_units, register_masks, remove_masks, zero_units)

__all__ = ["MemorizationPruning", "UnitTargets", "find_unit_targets", "prune_units"]


class MemorizationPruning(Callback):
    r"""Prune the units a memorization report picks, as a structured mask, during ``fit``.

    Chosen units get zeros in the masks of their conv / linear weight and bias and following BatchNorm
    (:func:`find_unit_targets`): their outputs and gradients are 0 from then on. The choice is kept in
    ``state_dict`` and is the same on every DDP rank.

    Args:
        source: a ``MemorizationMonitor``, a :class:`~lightning_memloc.MemorizationReport` or a saved report's path.
        amount: a fraction in (0, 1) (``round(fraction * units)``) or a count >= 1.
        strategy: ``"highest"``, ``"lowest"`` or ``"random"`` UnitMem.
        scope: ``"layer"`` (``amount`` of every layer) or ``"global"`` (all units ranked together).
        encoder: attribute path, module or callable; ``None``: the monitor's encoder, else the module itself.
        layers: prune only these report layers (default: all).
        prune_at: ``"fit_start"`` (or ``on_train_start``, after a monitor's first measurement) or an epoch.
        permanent: at the end of ``fit``, bake the masks into the weights (``prune.remove``).
        require_evidence: ``"warn"``, ``"error"`` or ``"off"`` when the membership test finds no memorizing layer.
        top_layers: prune only in the ``top_layers`` layers in scope ranked highest by ``by``.
        by: the layer ranking of ``top_layers`` (see :func:`~lightning_memloc.report.selection.layer_score`).

    Example:
        >>> import torch
        >>> from lightning_memloc import MemorizationReport
        >>> from lightning_memloc.callbacks.pruning import MemorizationPruning
        >>> names = ["conv1", "conv2", "conv3"]
        >>> report = MemorizationReport(layers=names, layer_kinds=dict.fromkeys(names, "conv"),
        ...     candidate_ids=torch.arange(2), unit_mem={"conv1": torch.rand(4), "conv2": torch.rand(8),
        ...     "conv3": torch.rand(16)}, unit_argmax={n: torch.zeros(w, dtype=torch.long) for n, w in
        ...     zip(names, (4, 8, 16))}, dead_units={n: torch.zeros(w, dtype=torch.bool) for n, w in zip(names, (4, 8, 16))})
        >>> pruning = MemorizationPruning(report, amount=0.25, strategy="highest", encoder="backbone")
        >>> # pl.Trainer(callbacks=[pruning]).fit(model) zeroes the quarter most memorizing channels of each layer
    """

    def __init__(self, source: Any, amount: Amount = 0.1, strategy: str = "highest", scope: str = "layer",
                 encoder: ModuleSpec = None, layers: Optional[Sequence[str]] = None,
                 prune_at: Union[int, str] = "fit_start", permanent: bool = False, seed: int = 0,
                 require_evidence: str = "warn", top_layers: Optional[int] = None, by: str = "auto") -> None:
        super().__init__()
        self.require_evidence = check_choice("require_evidence", require_evidence, EVIDENCE_POLICIES)
        self.top_layers = None if top_layers is None else check_int("top_layers", top_layers, 1)
        self.by = check_choice("by", by, LAYER_SCORES, as_tuple=False)
        self.source = ReportSource(source)
        amount = next(iter(check_amount(amount).values()))
        check_choice("strategy", strategy, UNIT_STRATEGIES, as_tuple=False)
        check_choice("scope", scope, SCOPES, as_tuple=False)
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence) or not layers
                                   or not all(isinstance(n, str) for n in layers) or len(set(layers)) != len(layers)):
            raise ValueError(f"`layers` must be None or a non-empty sequence of distinct layer names, got {layers!r}.")
        if not (prune_at == "fit_start" or (isinstance(prune_at, int) and not isinstance(prune_at, bool) and prune_at >= 0)):
            raise ValueError(f"`prune_at` must be 'fit_start' or an epoch (int >= 0), got {prune_at!r}.")
        if not isinstance(permanent, bool):
            raise TypeError(f"`permanent` must be a bool, got {permanent!r}.")
        seed = check_int("seed", seed, 0)
        check_module_spec(encoder, "encoder")
        self.amount, self.strategy, self.scope, self.encoder_spec = amount, strategy, scope, encoder
        self.layers = None if layers is None else list(layers)
        self.prune_at, self.permanent, self.seed = prune_at, permanent, seed
        self.pruned_units: Optional[Dict[str, Tensor]] = None
        self.targets: Dict[str, UnitTargets] = {}
        self._applied, self._undo, self._before_fit, self._start_step = False, MaskUndo(), None, None

    def encoder(self, pl_module: "pl.LightningModule") -> nn.Module:
        """The encoder inside ``pl_module`` whose layers the report names."""
        return resolve_encoder(pl_module, self.encoder_spec, self.source)

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Register all-ones masks on the layers in scope before restore and DDP, so that a resume restores them."""
        if stage != "fit" and self.permanent:
            return  # masks were baked in at the end of fit: validate / test see plain weights
        self.source.bind(trainer)
        encoder = self.encoder(pl_module)
        report = self.source.get()
        units: Dict[str, int] = {}  # of the layers in scope, where the report is known
        if report is not None:
            names = list(report.layers) if self.layers is None else list(self.layers)
            missing = [n for n in names if n not in report.layers]
            if missing:
                raise ValueError(f"`layers` names {missing} are not in the report; its layers are {report.layers}.")
            units = {n: report.unit_mem[n].numel() for n in names}
        else:
            known = self.layers if self.layers is not None else self.pruned_units  # then: what the monitor measures
            names = list(known) if known is not None else monitor_layers(self.source.source, encoder)
        self.targets = {name: find_unit_targets(encoder, name, units.get(name)) for name in names}
        if stage == "fit":  # every check before the first mask is registered: a failure leaves the model as it was
            check_amount_units(self.amount, self.scope, {n: t.num_units for n, t in self.targets.items()})
            epoch = None if self.prune_at == "fit_start" else int(self.prune_at)
            check_epoch_in_run(trainer, epoch, "prune_at", "nothing would be pruned")
            if self.top_layers is not None and self.top_layers > len(self.targets):
                raise ValueError(f"`top_layers`={self.top_layers} exceeds the {len(self.targets)} layers in scope "
                                 f"{list(self.targets)}: pass at most {len(self.targets)}.")
            if report is not None:
                choose_units(report, self._ranked(report), self.amount, self.strategy, self.scope, self.seed)  # validates early
                if self.top_layers is not None and self.require_evidence == "error":
                    by = layer_score(report, self.by)
                    gate(report, test_for(by), "error", f"pruning in the {self.top_layers} layers by {by!r}")
                if self.strategy != "random" and self.require_evidence == "error":  # refuse before any mask or step
                    gate(report, "membership", "error", f"pruning the {self.strategy}-UnitMem units")
            self.source.check_in_time(trainer, self, epoch, "MemorizationPruning")
        self._undo, self._before_fit, self._start_step = MaskUndo(), self.pruned_units, None
        for target in self.targets.values():
            for module, name in target.parameters():
                self._undo.remember(module, name)  # taken back if the fit fails before it trains
            register_masks(target)
        self._applied = False

    def _ranked(self, report: MemorizationReport) -> Dict[str, UnitTargets]:
        """The targets to prune in: every layer in scope, or its ``top_layers`` best by ``by``."""
        if self.top_layers is None:
            return self.targets
        ranked = [n for n in select_layers(report, len(report.layers), by=layer_score(report, self.by)) if n in self.targets]
        return {n: self.targets[n] for n in ranked[:self.top_layers]}

    def _apply(self, when: str) -> None:
        if self.pruned_units is None:
            report = self.source.require(f"to choose the units to prune {when}")
            if self.strategy != "random":
                gate(report, "membership", self.require_evidence, f"pruning the {self.strategy}-UnitMem units")
            by = layer_score(report, self.by)
            if self.top_layers is not None:
                gate(report, test_for(by), self.require_evidence, f"pruning in the {self.top_layers} layers by {by!r}")
            self.pruned_units = choose_units(report, self._ranked(report), self.amount, self.strategy, self.scope, self.seed)
            total = sum(int(v.numel()) for v in self.pruned_units.values())
            layers = "" if self.top_layers is None else f", in the {self.top_layers} layers ranked by {by!r}"
            rank_zero_info(f"[memloc] pruned {total} units {when} (strategy={self.strategy!r}, scope={self.scope!r}{layers}).")
        unknown = [layer for layer in self.pruned_units if layer not in self.targets]
        if unknown:
            raise ValueError(f"recorded pruned layers {unknown} have no masks; this callback's layers are {list(self.targets)}.")
        for layer, units in self.pruned_units.items():
            zero_units(self.targets[layer], units)
        self._applied = True

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.prune_at == "fit_start" and (self.pruned_units is not None or self.source.get() is not None):
            self._apply("at fit start")

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._start_step = int(trainer.global_step)
        if self.prune_at == "fit_start" and not self._applied:
            self._apply("at train start")

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._applied and (self.prune_at == "fit_start" or trainer.current_epoch >= self.prune_at):
            self._apply(f"at epoch {trainer.current_epoch}")

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._undo = MaskUndo()  # the fit trained with the masks: they stay
        if self.permanent:
            for target in self.targets.values():
                remove_masks(target)

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """Before the first optimizer step, give the model back unmasked; after it, the masks stay."""
        if not started_training(trainer, self._start_step):
            self._undo.undo()
            self.pruned_units, self._applied = self._before_fit, False

    def state_dict(self) -> Dict[str, Any]:
        units = None if self.pruned_units is None else {k: v.tolist() for k, v in self.pruned_units.items()}
        return {"pruned_units": units, "layers": list(self.targets)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        units = state_dict.get("pruned_units")
        self.pruned_units = None if units is None else {k: torch.tensor(v, dtype=torch.long) for k, v in units.items()}
