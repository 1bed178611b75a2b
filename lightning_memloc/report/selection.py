"""Choose layers and units of a :class:`~lightning_memloc.MemorizationReport` (fine-tuning / pruning callbacks)."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_memloc.checks import check_choice, check_int
from lightning_memloc.report.report import MemorizationReport

__all__ = ["LAYER_SCORES", "LAYER_STRATEGIES", "SCOPES", "UNIT_STRATEGIES", "layer_score", "resolve_report",
           "select_layers", "select_units"]

LAYER_SCORES = ("layer_mem", "delta_layer_mem", "unit_mem", "excess", "align_gap", "auto")
#: Layer scores read from the report's evidence, and what each needs.
_EVIDENCE_SCORES = {"excess": "LayerMem's excess over a control set, which this report lacks: measure with `control=...` "
                              "(images both encoders trained on)",
                    "align_gap": "the candidates' alignment gap under the encoder against unseen images, which this "
                                 "report lacks: measure with `unseen=...` (images the encoder never trained on; no "
                                 "reference needed)"}
LAYER_STRATEGIES = ("highest", "lowest", "random", "last")
UNIT_STRATEGIES = ("highest", "lowest", "random")
SCOPES = ("layer", "global")

ReportSource = Union[MemorizationReport, str, "os.PathLike[str]", Any]


def _check_report(report: object) -> MemorizationReport:
    if not isinstance(report, MemorizationReport):
        raise TypeError(f"`report` must be a MemorizationReport, got {type(report).__name__}.")
    if not report.layers:
        raise ValueError("`report` has no layers to choose from.")
    return report


def resolve_report(source: ReportSource, argument: str = "source") -> Optional[MemorizationReport]:
    """The report ``source`` (a report, a saved report's path, or a monitor's ``.report``) holds; ``None`` before
    a monitor's first measurement. ``argument`` names ``source`` in error messages.
    """
    if isinstance(source, MemorizationReport):
        return source
    if isinstance(source, (str, os.PathLike)):
        return MemorizationReport.load(source)
    if hasattr(source, "report"):
        report = source.report
        if report is not None and not isinstance(report, MemorizationReport):
            raise TypeError(f"`{argument}.report` is a {type(report).__name__}, expected a MemorizationReport.")
        return report
    raise TypeError(f"`{argument}` must be a MemorizationMonitor, a MemorizationReport or the path of a saved report, "
                    f"got {type(source).__name__}.")


def layer_score(report: MemorizationReport, by: str) -> str:
    """The score ``by`` resolves to: ``"auto"`` is the first of ``"excess"``, ``"layer_mem"``,
    ``"align_gap"``, ``"unit_mem"`` that ``report`` has; any other ``by`` is itself.

    Example:
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.zeros(1)}, unit_argmax={"a": torch.zeros(1, dtype=torch.long)},
        ...     dead_units={"a": torch.zeros(1, dtype=torch.bool)}, layer_mem={"a": 0.2})
        >>> layer_score(r, "auto"), layer_score(r, "unit_mem")
        ('layer_mem', 'unit_mem')
    """
    if by != "auto":
        return by
    if report.evidence is not None and report.evidence.has("excess"):
        return "excess"
    if report.layer_mem is not None:
        return "layer_mem"
    return "align_gap" if report.evidence is not None and report.evidence.has("align_gap") else "unit_mem"


def select_layers(report: MemorizationReport, k: int, by: str = "layer_mem", strategy: str = "highest",
                  seed: int = 0) -> List[str]:
    """Choose ``k`` layers of ``report`` (e.g. to fine-tune): best first, or forward order for "random" / "last".

    Args:
        by: one of :data:`LAYER_SCORES` (``"layer_mem"`` / ``"delta_layer_mem"`` need a reference,
            ``"excess"`` ``control=``, ``"align_gap"`` ``unseen=``; ``"auto"``: :func:`layer_score`).
        strategy: ``"highest"`` / ``"lowest"`` by ``by`` (ties by layer order), ``"random"`` (seeded) or ``"last"``.

    Example:
        >>> z = {n: torch.zeros(1) for n in "abc"}
        >>> r = MemorizationReport(layers=list("abc"), layer_kinds=dict.fromkeys("abc", "conv"),
        ...     candidate_ids=torch.arange(2), unit_mem=z, unit_argmax={n: torch.zeros(1, dtype=torch.long) for n in "abc"},
        ...     dead_units={n: torch.zeros(1, dtype=torch.bool) for n in "abc"},
        ...     layer_mem={"a": 0.1, "b": 0.3, "c": 0.2}, delta_layer_mem={"a": 0.1, "b": 0.2, "c": -0.1})
        >>> select_layers(r, 2), select_layers(r, 2, strategy="last"), select_layers(r, 1, by="delta_layer_mem", strategy="lowest")
        (['b', 'c'], ['b', 'c'], ['c'])
    """
    report = _check_report(report)
    by = layer_score(report, check_choice("by", by, LAYER_SCORES, as_tuple=False))
    strategy = check_choice("strategy", strategy, LAYER_STRATEGIES, as_tuple=False)
    check_int("seed", seed, 0, type_error=True)
    n_layers = len(report.layers)
    k = check_int("k", k, 1, type_error=True)
    if k > n_layers:
        raise ValueError(f"`k` must be <= the number of layers in the report ({n_layers}: {report.layers}), got {k}.")
    if strategy == "last":
        chosen = list(range(n_layers - k, n_layers))
    elif strategy == "random":
        chosen = sorted(torch.randperm(n_layers, generator=torch.Generator().manual_seed(seed))[:k].tolist())
    else:
        if by == "unit_mem":
            scores = report.unit_mem_mean()
        elif by in _EVIDENCE_SCORES:
            if report.evidence is None or not report.evidence.has(by):
                raise ValueError(f"`by`={by!r} ranks layers by {_EVIDENCE_SCORES[by]}.")
            scores = {layer: report.evidence.layers[layer][by] for layer in report.layers}
        else:
            scores = getattr(report, by)
            if scores is None:
                raise ValueError(f"`by`={by!r} needs LayerMem, which this report lacks (it was measured without a "
                                 "reference encoder): measure with `reference=...`, rank by `by='unit_mem'`, or use "
                                 "strategy 'last' or 'random'.")
        values = [float(scores[name]) for name in report.layers]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"the report's `{by}` scores are not all finite: {dict(zip(report.layers, values))}.")
        sign = -1.0 if strategy == "highest" else 1.0
        chosen = sorted(range(n_layers), key=lambda i: (sign * values[i], i))[:k]
    return [report.layers[i] for i in chosen]


def _how_many(fraction: Optional[float], count: Optional[int], total: int, where: str) -> int:
    if count is not None:
        if count > total:
            raise ValueError(f"`count`={count} exceeds the {total} units of {where}.")
        return count
    return int(round(float(fraction) * total))


def select_units(report: MemorizationReport, fraction: Optional[float] = None, count: Optional[int] = None,
                 strategy: str = "highest", scope: str = "layer", layers: Optional[Sequence[str]] = None,
                 seed: int = 0) -> Dict[str, Tensor]:
    """Choose units of ``report`` by UnitMem (e.g. to prune): ``{layer: ascending unit indices}`` per layer in scope.

    Args:
        fraction: share of the units in ``(0, 1]`` (``round(fraction * units)``); or ``count`` (>= 1), not both.
        strategy: ``"highest"`` / ``"lowest"`` UnitMem (dead: 0; ties: earlier ``(layer, unit)``), or ``"random"``.
        scope: ``"layer"`` (per layer) or ``"global"`` (all units of ``layers``, default all, ranked together).

    Example:
        >>> r = MemorizationReport(layers=["a", "b"], layer_kinds={"a": "conv", "b": "conv"},
        ...     candidate_ids=torch.arange(2), unit_mem={"a": torch.tensor([0.1, 0.9, 0.5, 0.0]),
        ...     "b": torch.tensor([0.7, 0.2])}, unit_argmax={"a": torch.zeros(4, dtype=torch.long),
        ...     "b": torch.zeros(2, dtype=torch.long)}, dead_units={"a": torch.zeros(4, dtype=torch.bool),
        ...     "b": torch.zeros(2, dtype=torch.bool)})
        >>> {k: v.tolist() for k, v in select_units(r, fraction=0.5, strategy="lowest").items()}
        {'a': [0, 3], 'b': [1]}
    """
    report = _check_report(report)
    if (fraction is None) == (count is None):
        raise ValueError(f"give exactly one of `fraction` and `count`, got fraction={fraction!r}, count={count!r}.")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"`fraction` must be a float in (0, 1], got {fraction!r}.")
    else:
        check_int("count", count, 1, type_error=True)
    strategy = check_choice("strategy", strategy, UNIT_STRATEGIES, as_tuple=False)
    scope = check_choice("scope", scope, SCOPES, as_tuple=False)
    check_int("seed", seed, 0, type_error=True)
    if layers is not None:
        if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
            raise ValueError(f"`layers` must be None or a non-empty sequence of layer names, got {layers!r}.")
        missing = [name for name in layers if name not in report.layers]
        if missing:
            raise ValueError(f"`layers` names {missing} are not in the report; its layers are {report.layers}.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"`layers` has duplicate names: {list(layers)}.")
    names = [name for name in report.layers if layers is None or name in layers]
    scores = {name: report.unit_mem[name].detach().float().cpu().reshape(-1) for name in names}
    for name, value in scores.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"UnitMem of layer {name!r} is not all finite.")
    generator = torch.Generator().manual_seed(seed)

    def pick(values: Tensor, n: int) -> Tensor:
        if strategy == "random":
            return torch.randperm(values.numel(), generator=generator)[:n]
        # A stable sort keeps the original (layer, unit) order among equal scores.
        return torch.sort(values, descending=strategy == "highest", stable=True).indices[:n]

    if scope == "layer":
        sizes = {name: _how_many(fraction, count, scores[name].numel(), f"layer {name!r}") for name in names}
        return {name: torch.sort(pick(scores[name], n)).values.long() for name, n in sizes.items()}
    flat = torch.cat([scores[name] for name in names])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[pick(flat, _how_many(fraction, count, flat.numel(), f"the layers {names}"))] = True
    parts = chosen.split([scores[name].numel() for name in names])
    return {name: part.nonzero().flatten() for name, part in zip(names, parts)}
