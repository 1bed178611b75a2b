"""``MemorizationPruning`` and ``prune_units``: structured pruning of units chosen by UnitMem.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) localize
memorization in individual units (UnitMem) and show that removing the most memorizing units
hurts more than removing random or the least memorizing ones. Here a unit is an output channel
of a conv layer or an output feature of a linear layer; pruning it zeroes the rows of the
producing weight (and bias) and, when a BatchNorm follows in the same block, its affine weight
and bias too, so the unit's output is exactly zero after the block's ReLU.

Lightning's ``ModelPruning`` cannot take a score-driven structured mask, so masks are
``torch.nn.utils.prune.identity`` reparametrisations registered in ``setup`` (before checkpoint
restore and before DDP wraps the model, so resume restores the ``*_mask`` buffers) whose
buffers receive zeros when the pruning point is reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune

from lightning_memloc.callbacks.finetuning import ModuleSpec, ReportSource, check_layers_exist, resolve_encoder
from lightning_memloc.callbacks.setup_checks import check_amount_units, check_epoch_in_run, following_norms
from lightning_memloc.checks import as_python_number, check_int
from lightning_memloc.report import MemorizationReport
from lightning_memloc.callbacks.evidence_gate import EVIDENCE_POLICIES, gate
from lightning_memloc.selection import SCOPES, UNIT_STRATEGIES, select_units
from lightning_memloc.taps import resolve_layers

__all__ = ["MemorizationPruning", "UnitTargets", "find_unit_targets", "prune_units"]

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Amount = Union[int, float]  # int first: a config's `1` is a count, not the fraction 1.0


def _width(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


@dataclass(frozen=True)
class UnitTargets:
    """The modules whose parameters carry the units of one tapped layer.

    Attributes:
        layer: the tapped layer's name in the encoder.
        producer: the conv / linear module whose output channels / features are the units.
        norms: BatchNorm layers that follow the producer before the tap (masked too).
        num_units: number of units (the producer's output width).
    """

    layer: str
    producer: nn.Module
    norms: Tuple[nn.Module, ...]
    num_units: int

    def parameters(self) -> List[Tuple[nn.Module, str]]:
        """``(module, name)`` of every parameter masked per unit (weight, bias if any, BN affine)."""
        out = []
        for module in (self.producer, *self.norms):
            for name in ("weight", "bias"):
                if module._parameters.get(name) is not None or hasattr(module, name + "_orig"):
                    out.append((module, name))
        return out


_SHORTCUTS = ("downsample", "shortcut", "skip")  # a residual block's projection shortcut produces no unit


def _last_producer(block: nn.Module, num_units: Optional[int]) -> Optional[Tuple[nn.Module, Tuple[nn.Module, ...]]]:
    named = [m for name, m in block.named_modules() if not set(name.split(".")) & set(_SHORTCUTS)]
    positions = [i for i, m in enumerate(named)
                 if isinstance(m, _PRODUCERS) and (num_units is None or _width(m) == num_units)]
    if not positions:
        return None
    producer = named[positions[-1]]
    norms = tuple(m for m in named[positions[-1] + 1:] if isinstance(m, _BatchNorm) and m.num_features == _width(producer)
                  or isinstance(m, nn.GroupNorm) and m.affine and m.num_channels == _width(producer))  # norm="group"
    return producer, norms


def find_unit_targets(encoder: nn.Module, layer: str, num_units: Optional[int] = None) -> UnitTargets:
    """Find the module producing the units of ``layer`` (and the BatchNorm layers after it).

    A block tap (``ConvBlock``: Conv2d → BatchNorm2d → ReLU) uses its last conv / linear module
    with ``num_units`` outputs and the BatchNorm layers registered after it. A parameter-free tap
    (a ReLU module, as in ``TinyMLP`` or a torchvision stem) looks back over its preceding
    siblings, across parameter-free modules and BatchNorm layers, for that producer.

    Args:
        encoder: the encoder the layer names refer to.
        layer: the tapped layer's module name.
        num_units: the report's number of units (``None``: any width).

    Raises:
        LayerNotFoundError: ``layer`` is not a module of ``encoder``.
        ValueError: no producing conv / linear module with ``num_units`` outputs was found.
    """
    check_layers_exist(encoder, [layer])
    tap = encoder.get_submodule(layer)
    found = _last_producer(tap, num_units)
    if found is None and layer:
        parent = encoder.get_submodule(layer.rpartition(".")[0])
        children = list(parent.named_children())
        index = [name for name, _ in children].index(layer.rpartition(".")[2])
        norms: List[nn.Module] = []
        for _, sibling in reversed(children[:index]):
            found = _last_producer(sibling, num_units)
            if found is not None:
                width = _width(found[0])
                found = (found[0], found[1] + tuple(n for n in reversed(norms) if n.num_features == width))
                break
            if isinstance(sibling, _BatchNorm):
                norms.append(sibling)
            elif any(True for _ in sibling.parameters()):
                break
    if found is None:
        wanted = "" if num_units is None else f" with {num_units} outputs"
        raise ValueError(
            f"cannot find the conv / linear module producing the units of layer {layer!r}: no Conv1d/2d/3d or Linear"
            f"{wanted} inside it or before it among its siblings. Prune layers that are (or end in) such a module."
        )
    after = tuple(m for m in following_norms(encoder, layer, _width(found[0])) if all(m is not n for n in found[1]))
    return UnitTargets(layer, found[0], found[1] + after, _width(found[0]))  # + BatchNorms after the tap


def _mask(module: nn.Module, name: str) -> Tensor:
    if not hasattr(module, name + "_mask"):
        prune.identity(module, name)
    return getattr(module, name + "_mask")


def register_masks(targets: UnitTargets) -> None:
    """Register all-ones ``prune.identity`` masks on every parameter of ``targets`` (idempotent)."""
    for module, name in targets.parameters():
        _mask(module, name)


def zero_units(targets: UnitTargets, units: Tensor) -> None:
    """Write zeros for ``units`` (output indices) into the masks of ``targets`` (idempotent)."""
    with torch.no_grad():
        for module, name in targets.parameters():
            mask = _mask(module, name)
            mask[units.to(mask.device)] = 0
            setattr(module, name, getattr(module, name + "_orig") * mask)  # visible before the next forward


def remove_masks(targets: UnitTargets) -> None:
    """Bake the masks into the weights (``prune.remove``): plain parameters again."""
    for module, name in targets.parameters():
        if hasattr(module, name + "_mask"):
            prune.remove(module, name)


def _check_amount(amount: object) -> Dict[str, Amount]:
    amount = as_python_number(amount)  # NumPy integers / floats behave as int / float
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"`amount` must be a float in (0, 1) (a fraction) or an int >= 1 (a count), got {amount!r}.")
    if isinstance(amount, int):
        if amount < 1:
            raise ValueError(f"`amount` must be a float in (0, 1) (a fraction) or an int >= 1 (a count), got {amount}.")
        return {"count": amount}
    if not 0.0 < amount < 1.0:
        raise ValueError(f"`amount` must be a float in (0, 1) (a fraction) or an int >= 1 (a count), got {amount}.")
    return {"fraction": float(amount)}


def _check_choice(argument: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"`{argument}` must be one of {', '.join(map(repr, allowed))}, got {value!r}.")


def _choose(report: MemorizationReport, targets: Dict[str, UnitTargets], amount: Amount, strategy: str, scope: str,
            seed: int) -> Dict[str, Tensor]:
    missing = [layer for layer in targets if layer not in report.layers]
    if missing:
        raise ValueError(f"layers {missing} are not in the report; its layers are {report.layers}.")
    for layer, target in targets.items():
        if report.unit_mem[layer].numel() != target.num_units:
            raise ValueError(
                f"layer {layer!r} has {report.unit_mem[layer].numel()} units in the report but its producer "
                f"{type(target.producer).__name__} has {target.num_units} outputs: the report was measured on another encoder."
            )
    return select_units(report, strategy=strategy, scope=scope, layers=list(targets), seed=seed, **_check_amount(amount))


def prune_units(
    module: nn.Module,
    report: MemorizationReport,
    amount: Amount,
    strategy: str = "lowest",
    scope: str = "layer",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    permanent: bool = True,
) -> Dict[str, Tensor]:
    """Prune units of a bare encoder, chosen from a report by UnitMem.

    Args:
        module: the encoder the report was measured on (report layer names are its modules).
        report: the measurement.
        amount: a fraction in (0, 1) or a count >= 1 (per layer or in all, see ``scope``).
        strategy: ``"highest"``, ``"lowest"`` or ``"random"`` UnitMem.
        scope: ``"layer"`` or ``"global"`` (see :func:`~lightning_memloc.selection.select_units`).
        layers: restrict pruning to these report layers.
        seed: seed of ``"random"``.
        permanent: bake the masks into the weights (``prune.remove``); ``False`` keeps the
            ``*_orig`` / ``*_mask`` reparametrisation.

    Returns:
        ``{layer: LongTensor of pruned unit indices}``.

    Example:
        >>> import torch
        >>> from lightning_memloc import measure
        >>> from lightning_memloc.models import TinyCNN
        >>> encoder = TinyCNN(width=2)
        >>> report = measure(encoder, torch.rand(4, 3, 8, 8), views=2, progress=False)
        >>> pruned = prune_units(encoder, report, amount=1, strategy="highest")
        >>> [len(v) for v in pruned.values()]
        [1, 1, 1]
    """
    if not isinstance(report, MemorizationReport):
        raise TypeError(f"`report` must be a MemorizationReport, got {type(report).__name__}.")
    amount = next(iter(_check_amount(amount).values()))
    _check_choice("strategy", strategy, UNIT_STRATEGIES)
    _check_choice("scope", scope, SCOPES)
    names = list(report.layers if layers is None else layers)
    missing = [name for name in names if name not in report.layers]
    if missing:
        raise ValueError(f"`layers` names {missing} are not in the report; its layers are {report.layers}.")
    targets = {name: find_unit_targets(module, name, report.unit_mem[name].numel()) for name in names}
    check_amount_units(amount, scope, {name: t.num_units for name, t in targets.items()})
    units = _choose(report, targets, amount, strategy, scope, seed)
    for layer, index in units.items():
        zero_units(targets[layer], index)
        if permanent:
            remove_masks(targets[layer])
    return units


class MemorizationPruning(Callback):
    r"""Prune the units a memorization report picks, as a structured mask, during ``fit``.

    In ``setup`` every layer in scope gets all-ones ``torch.nn.utils.prune.identity`` masks on
    the producing conv / linear weight and bias and on the affine parameters of a following
    BatchNorm (:func:`find_unit_targets`). When the pruning point is reached the units chosen by
    :func:`~lightning_memloc.selection.select_units` get zeros in those masks: their outputs are
    exactly 0 from then on (after the block's ReLU), and their gradients are 0.

    The choice is recorded in the callback's ``state_dict``; a resumed run reuses it (the masks
    themselves come back with the model's state dict) even if the monitor's report changed. It
    depends only on the (rank-synced) report and ``seed``, so all DDP ranks prune the same units.

    Args:
        source: a :class:`~lightning_memloc.callbacks.MemorizationMonitor` (its latest report at
            the pruning point), a :class:`~lightning_memloc.MemorizationReport` or the path of a
            saved report.
        amount: a fraction in (0, 1) (``round(fraction * units)``) or a count >= 1.
        strategy: ``"highest"``, ``"lowest"`` or ``"random"`` UnitMem (the paper prunes the most
            memorizing units against random and least memorizing baselines).
        scope: ``"layer"`` (``amount`` of every layer) or ``"global"`` (all units ranked together).
        encoder: the encoder inside the LightningModule (attribute path, module or callable;
            ``None``: the monitor's encoder when ``source`` is a monitor, else the module itself).
        layers: prune only these report layers (default: all the report's layers).
        prune_at: ``"fit_start"`` (in ``on_fit_start`` if a report is available then, else in
            ``on_train_start`` after a monitor with ``measure_on_train_start=True`` listed before
            this callback) or an epoch (>= 0): at the start of that training epoch.
        permanent: at the end of ``fit``, bake the masks into the weights (``prune.remove``).
        seed: seed of ``"random"``.
        require_evidence: when pruning by UnitMem (``"highest"`` / ``"lowest"``) and the report's
            membership test finds no layer whose units prefer training images (Holm-corrected,
            needs ``unseen=``): ``"warn"`` logs that the choice may follow noise, ``"error"``
            refuses, ``"off"`` stays silent.

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_memloc import MemorizationReport
        >>> from lightning_memloc.callbacks.pruning import MemorizationPruning
        >>> names = ["conv1", "conv2", "conv3"]
        >>> report = MemorizationReport(layers=names, layer_kinds=dict.fromkeys(names, "conv"),
        ...     candidate_ids=torch.arange(2), unit_mem={"conv1": torch.rand(4), "conv2": torch.rand(8),
        ...     "conv3": torch.rand(16)}, unit_argmax={n: torch.zeros(w, dtype=torch.long) for n, w in
        ...     zip(names, (4, 8, 16))}, dead_units={n: torch.zeros(w, dtype=torch.bool) for n, w in zip(names, (4, 8, 16))})
        >>> pruning = MemorizationPruning(report, amount=0.25, strategy="highest", encoder="backbone")
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[pruning], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False)
        >>> # trainer.fit(model) zeroes the quarter most memorizing channels of each backbone layer
    """

    def __init__(
        self,
        source: Any,
        amount: Amount = 0.1,
        strategy: str = "highest",
        scope: str = "layer",
        encoder: ModuleSpec = None,
        layers: Optional[Sequence[str]] = None,
        prune_at: Union[int, str] = "fit_start",
        permanent: bool = False,
        seed: int = 0,
        require_evidence: str = "warn",
    ) -> None:
        super().__init__()
        if require_evidence not in EVIDENCE_POLICIES:
            raise ValueError(f"`require_evidence` must be one of {EVIDENCE_POLICIES}, got {require_evidence!r}.")
        self.require_evidence = require_evidence
        self.source = ReportSource(source)
        amount = next(iter(_check_amount(amount).values()))
        _check_choice("strategy", strategy, UNIT_STRATEGIES)
        _check_choice("scope", scope, SCOPES)
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence) or not layers
                                   or not all(isinstance(n, str) for n in layers) or len(set(layers)) != len(layers)):
            raise ValueError(f"`layers` must be None or a non-empty sequence of distinct layer names, got {layers!r}.")
        if not (prune_at == "fit_start" or (isinstance(prune_at, int) and not isinstance(prune_at, bool) and prune_at >= 0)):
            raise ValueError(f"`prune_at` must be 'fit_start' or an epoch (int >= 0), got {prune_at!r}.")
        if not isinstance(permanent, bool):
            raise TypeError(f"`permanent` must be a bool, got {permanent!r}.")
        seed = check_int("seed", seed, 0)
        if encoder is not None and not isinstance(encoder, (str, nn.Module)) and not callable(encoder):
            raise TypeError(f"`encoder` must be None, an attribute path, an nn.Module or a callable, got {type(encoder).__name__}.")
        self.amount, self.strategy, self.scope, self.encoder_spec = amount, strategy, scope, encoder
        self.layers = None if layers is None else list(layers)
        self.prune_at, self.permanent, self.seed = prune_at, permanent, seed
        self.pruned_units: Optional[Dict[str, Tensor]] = None
        self.targets: Dict[str, UnitTargets] = {}
        self._applied = False

    @property
    def _epoch(self) -> int:
        return 0 if self.prune_at == "fit_start" else int(self.prune_at)

    def encoder(self, pl_module: "pl.LightningModule") -> nn.Module:
        """The encoder inside ``pl_module`` whose layers the report names."""
        return resolve_encoder(pl_module, self.encoder_spec, self.source)

    def _scope_layers(self, encoder: nn.Module, report: Optional[MemorizationReport]) -> Tuple[List[str], Dict[str, int]]:
        """Layers to register masks on, with their unit counts where the report is known."""
        if report is not None:
            names = list(report.layers) if self.layers is None else list(self.layers)
            missing = [n for n in names if n not in report.layers]
            if missing:
                raise ValueError(f"`layers` names {missing} are not in the report; its layers are {report.layers}.")
            return names, {n: report.unit_mem[n].numel() for n in names}
        if self.layers is not None:
            return list(self.layers), {}
        if self.pruned_units is not None:
            return list(self.pruned_units), {}
        monitor = self.source.source
        specs = getattr(monitor, "_specs", None)
        if specs:
            return [s.name for s in specs], {}
        requested = getattr(monitor, "layers", "auto")
        if not isinstance(requested, str):
            return [getattr(n, "name", n) for n in requested], {}
        device = next(encoder.parameters()).device
        return [s.name for s in resolve_layers(encoder, requested, monitor.views.example_batch(device))], {}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Register all-ones masks on every layer in scope (before restore and before DDP)."""
        if stage != "fit" and self.permanent:
            return  # masks were baked in at the end of fit: validate / test see plain weights
        self.source.bind(trainer)
        encoder = self.encoder(pl_module)
        report = self.source.get()
        names, units = self._scope_layers(encoder, report)
        self.targets = {name: find_unit_targets(encoder, name, units.get(name)) for name in names}
        if stage == "fit":  # every check before the first mask is registered: a failure leaves the model as it was
            check_amount_units(self.amount, self.scope, {n: t.num_units for n, t in self.targets.items()})
            check_epoch_in_run(trainer, None if self.prune_at == "fit_start" else self._epoch, "prune_at",
                               "nothing would be pruned")
            if report is not None:
                _choose(report, self.targets, self.amount, self.strategy, self.scope, self.seed)  # validates early
                if self.strategy != "random" and self.require_evidence == "error":  # refuse before any mask or step
                    gate(report, "membership", "error", f"pruning the {self.strategy}-UnitMem units")
            self.source.check_in_time(trainer, self, None if self.prune_at == "fit_start" else self._epoch,
                                      "MemorizationPruning")
        for target in self.targets.values():
            register_masks(target)
        self._applied = False

    def _apply(self, when: str) -> None:
        if self.pruned_units is None:
            report = self.source.require(f"to choose the units to prune {when}")
            if self.strategy != "random":
                gate(report, "membership", self.require_evidence, f"pruning the {self.strategy}-UnitMem units")
            self.pruned_units = _choose(report, self.targets, self.amount, self.strategy, self.scope, self.seed)
            total = sum(int(v.numel()) for v in self.pruned_units.values())
            rank_zero_info(f"[memloc] pruned {total} units {when} (strategy={self.strategy!r}, scope={self.scope!r}).")
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
        if self.prune_at == "fit_start" and not self._applied:
            self._apply("at train start")

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._applied and trainer.current_epoch >= self._epoch:
            self._apply(f"at epoch {trainer.current_epoch}")

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.permanent:
            for target in self.targets.values():
                remove_masks(target)

    # ------------------------------------------------------------- checkpoint
    def state_dict(self) -> Dict[str, Any]:
        units = None if self.pruned_units is None else {k: v.tolist() for k, v in self.pruned_units.items()}
        return {"pruned_units": units, "layers": list(self.targets)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        units = state_dict.get("pruned_units")
        self.pruned_units = None if units is None else {k: torch.tensor(v, dtype=torch.long) for k, v in units.items()}
