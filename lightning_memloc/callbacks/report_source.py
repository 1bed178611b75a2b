"""What fine-tuning and pruning act on: the report and its source, the encoder, the evidence gate and their checks."""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lightning_memloc.models.loading import resolve_module
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.selection import resolve_report

ModuleSpec = Union[str, nn.Module, Callable[[pl.LightningModule], nn.Module], None]


class ReportSource:
    """A report, a saved report's path (loaded once) or a monitor (asked each time), read when needed."""

    def __init__(self, source: Any, argument: str = "source") -> None:
        if not (isinstance(source, (MemorizationReport, str, os.PathLike)) or hasattr(source, "report")):
            raise TypeError(f"`{argument}` must be a MemorizationMonitor, a MemorizationReport or the path of a saved "
                            f"report (report.save(path)), got {type(source).__name__}.")
        self.source, self.argument = source, argument
        self._loaded: Optional[MemorizationReport] = source if isinstance(source, MemorizationReport) else None

    @property
    def is_monitor(self) -> bool:
        return not isinstance(self.source, (MemorizationReport, str, os.PathLike))

    def bind(self, trainer: "pl.Trainer") -> None:
        """Replace ``"monitor"`` / ``"monitor:<name>"`` by that monitor of ``trainer`` (a config file's way)."""
        if isinstance(self.source, str) and self.source.partition(":")[0] == "monitor":
            self.source = find_monitor(list(trainer.callbacks), self.source, self.argument)

    def get(self) -> Optional[MemorizationReport]:
        """The report now (``None`` while a monitor has not measured)."""
        if self.is_monitor:
            return resolve_report(self.source, self.argument)
        if self._loaded is None:
            self._loaded = resolve_report(self.source, self.argument)
        return self._loaded

    def require(self, when: str) -> MemorizationReport:
        """The report, or a ``RuntimeError`` explaining how to make one available by ``when``."""
        report = self.get()
        if report is None:
            raise RuntimeError(f"`{self.argument}` is a MemorizationMonitor that has not measured yet, and a report is "
                               f"needed {when}: list the monitor before this callback in `Trainer(callbacks=[monitor, "
                               "...])` and make it measure earlier (`measure_on_train_start=True` or a smaller "
                               "`every_n_epochs`), act at a later epoch, or pass a saved report (a MemorizationReport "
                               "or the path written by `report.save(path)`).")
        return report

    def check_in_time(self, trainer: "pl.Trainer", owner: Callback, epoch: Optional[int], what: str) -> None:
        """Fail before training when a monitor without a report cannot measure before ``owner`` needs it.

        ``epoch``: the report is needed at the start of this epoch; ``None``: in ``on_train_start``.
        """
        if not self.is_monitor or self.get() is not None or trainer.ckpt_path is not None:
            return  # on resume the monitor's report comes back with its state
        monitor, callbacks = self.source, list(trainer.callbacks)
        position = {id(c): i for i, c in enumerate(callbacks)}
        if id(monitor) not in position:
            raise ValueError(f"`{self.argument}` is a MemorizationMonitor that is not in `Trainer(callbacks=...)` and "
                             f"has no report, so {what} would never get one: add the monitor to the trainer's "
                             "callbacks or pass a saved report.")
        on_start = bool(getattr(monitor, "measure_on_train_start", False))
        every = getattr(monitor, "every_n_epochs", 1)  # None: the monitor measures every N steps
        if epoch is None:
            in_time = on_start and position[id(monitor)] < position.get(id(owner), len(callbacks))
        else:
            in_time = on_start or (epoch >= 1 if every is None else int(every) <= epoch)
        if not in_time:
            when = "before training starts" if epoch is None else f"at the start of epoch {epoch}"
            raise ValueError(f"{what} needs a report {when}, but `{self.argument}` (a MemorizationMonitor with "
                             f"every_n_epochs={every}, measure_on_train_start={on_start}) will not have measured by "
                             "then: list the monitor before this callback in `Trainer(callbacks=[monitor, ...])` with "
                             "`measure_on_train_start=True`, act at a later epoch, or pass a saved report (a "
                             "MemorizationReport or the path written by `report.save(path)`).")


def check_module_spec(spec: Any, argument: str = "encoder") -> None:
    """Refuse a :data:`ModuleSpec` that is not ``None``, an attribute path, a module or a callable."""
    if spec is not None and not isinstance(spec, (str, nn.Module)) and not callable(spec):
        raise TypeError(f"`{argument}` must be None, an attribute path, an nn.Module or a callable, "
                        f"got {type(spec).__name__}.")


def resolve_encoder(pl_module: "pl.LightningModule", spec: ModuleSpec, source: ReportSource) -> nn.Module:
    """The encoder: ``spec`` (attribute path, module, callable) or, if ``None``, the monitor's encoder."""
    if spec is None and source.is_monitor and callable(getattr(source.source, "encoder", None)):
        return source.source.encoder(pl_module)
    return resolve_module(pl_module, spec, "encoder")


def find_monitor(callbacks: List[Any], reference: str, argument: str = "source") -> Any:
    """The monitor among ``callbacks`` that ``reference`` (``"monitor"`` / ``"monitor:<name>"``) names."""
    wanted: Optional[str] = reference.partition(":")[2] or None
    monitors = [c for c in callbacks if all(hasattr(c, a) for a in ("report", "views", "history"))]
    names = [getattr(m, "name", None) for m in monitors]
    matches = monitors if wanted is None else [m for m, n in zip(monitors, names) if n == wanted]
    if len(matches) == 1:
        return matches[0]
    if not monitors:
        problem = "the trainer has no MemorizationMonitor among its callbacks"
    elif not matches:
        problem = f"no MemorizationMonitor has name={wanted!r} (their names: {names})"
    else:
        problem = f"the trainer has {len(matches)} MemorizationMonitors (names {names})"
    raise ValueError(f"`{argument}`={reference!r}: {problem}: add the monitor to `Trainer(callbacks=...)`, and with "
                     "several monitors give each a `name=` and pass `monitor:<name>`.")


def monitor_layers(monitor: Any, encoder: nn.Module) -> List[str]:
    """The layer names ``monitor`` measures (or will measure) on ``encoder``."""
    if getattr(monitor, "layer_names", None):
        return list(monitor.layer_names)
    requested = getattr(monitor, "layers", "auto")
    if not isinstance(requested, str):
        return [getattr(n, "name", n) for n in requested]
    from lightning_memloc.taps.hooks import resolve_layers
    device = next(encoder.parameters()).device
    return [s.name for s in resolve_layers(encoder, requested, monitor.views.example_batch(device))]


def check_epoch_in_run(trainer: Any, epoch: Optional[int], argument: str, consequence: str) -> None:
    """Refuse an action epoch at or after ``max_epochs`` (it would never happen)."""
    max_epochs = getattr(trainer, "max_epochs", None)
    if epoch is None or max_epochs is None or max_epochs < 0 or epoch < max_epochs:
        return
    raise ValueError(f"`{argument}`={epoch} but training ends after epoch {max_epochs - 1} (max_epochs={max_epochs}): "
                     f"{consequence}. Pass `{argument}` < {max_epochs} or raise max_epochs.")


#: Choices of ``require_evidence`` of the fine-tuning and pruning callbacks.
EVIDENCE_POLICIES = ("warn", "error", "off")


def test_for(by: str) -> str:
    """The evidence test behind a ranking (``by``).

    Example:
        >>> test_for("layer_mem"), test_for("unit_mem"), test_for("align_gap")
        ('excess', 'membership', 'align_gap')
    """
    return {"unit_mem": "membership", "align_gap": "align_gap"}.get(by, "excess")


test_for.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test: pytest must not collect it


def evidence_problem(report: MemorizationReport, test: str) -> Optional[str]:
    """Why ``report`` gives no evidence for acting on ``test``, or ``None`` when a layer passes it in the verdict.

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.zeros(1)}, unit_argmax={"a": torch.zeros(1, dtype=torch.long)},
        ...     dead_units={"a": torch.zeros(1, dtype=torch.bool)})
        >>> evidence_problem(r, "excess").startswith("the report has no evidence")
        True
    """
    ev = report.evidence
    if ev is None:
        return "the report has no evidence (no intervals, control or tests were measured)"
    if not ev.has(f"{test}_p_holm"):
        if ev.has(test):
            return "the report was measured with bootstrap=0, so no test says whether its figures exceed noise"
        need = "a control set (control=)" if test == "excess" else "an unseen set (unseen=)"
        return f"the report was measured without {need}, so no test says whether its figures exceed noise"
    verdict = ev.meta.get("verdict") or {}
    alpha, m = ev.meta.get("alpha", 0.05), verdict.get("family_size", 0)
    if not ev.significant_layers(test):
        what = {"excess": "LayerMem exceeds the control's", "membership": "units prefer training images",
                "align_gap": "the encoder aligns its candidates' views more tightly than unseen images'"}[test]
        problem = (f"no layer shows significant memorization (no layer where {what}, Holm p >= {alpha:g} over the "
                   f"verdict's {m} tests x layers)")
        if verdict.get("attainable") is False:
            problem += (f"; with bootstrap={ev.meta.get('bootstrap')} no test can reach that level: use bootstrap >= "
                        f"{verdict.get('needs_bootstrap')}")
        elif verdict.get("memorization"):
            others = [t for t, layers in verdict.get("layers", {}).items() if layers]
            problem += f"; the verdict is positive through {', '.join(others)}, which this choice does not use"
        return problem
    return None


def gate(report: MemorizationReport, test: str, policy: str, action: str) -> None:
    """Warn, raise ``ValueError`` or stay silent (``policy``) when :func:`evidence_problem` finds one."""
    problem = None if policy == "off" else evidence_problem(report, test)
    if problem is None:
        return
    message = (f"{action}: {problem}; the choice may follow noise rather than memorization. Measure with "
               "control= / unseen= (and more candidates), or pass require_evidence='off' to act anyway.")
    if policy == "error":
        raise ValueError(f"[memloc] refusing to act — {message}")
    rank_zero_warn(f"[memloc] {message}")
