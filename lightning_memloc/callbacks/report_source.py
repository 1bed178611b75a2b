"""Where a callback gets its report and its encoder: a report, a saved report's path or a monitor.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the most
memorizing layers and prune the most memorizing units; both callbacks
(:class:`~lightning_memloc.callbacks.finetuning.MemorizationFinetuning`,
:class:`~lightning_memloc.callbacks.pruning.MemorizationPruning`) read the report they act on
through a :class:`ReportSource` and find the encoder it was measured on with :func:`resolve_encoder`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import nn

from lightning_memloc.callbacks.sources import find_monitor, is_monitor_reference
from lightning_memloc.loading import resolve_module
from lightning_memloc.report import MemorizationReport
from lightning_memloc.selection import resolve_report

__all__ = ["ModuleSpec", "ReportSource", "check_module_spec", "resolve_encoder"]

ModuleSpec = Union[str, nn.Module, Callable[[pl.LightningModule], nn.Module], None]


class ReportSource:
    """A report, a saved report's path or a monitor, read when a callback needs the report.

    A path is loaded once (on first use) and cached; a monitor is asked for its latest
    ``report`` every time. Shared by the fine-tuning and pruning callbacks.
    """

    def __init__(self, source: Any, argument: str = "source") -> None:
        is_path = isinstance(source, (str, os.PathLike))
        if not (isinstance(source, MemorizationReport) or is_path or hasattr(source, "report")):
            raise TypeError(
                f"`{argument}` must be a MemorizationMonitor, a MemorizationReport or the path of a saved report "
                f"(report.save(path)), got {type(source).__name__}."
            )
        self.source, self.argument = source, argument
        self._loaded: Optional[MemorizationReport] = source if isinstance(source, MemorizationReport) else None

    @property
    def is_monitor(self) -> bool:
        return not isinstance(self.source, (MemorizationReport, str, os.PathLike))

    def bind(self, trainer: "pl.Trainer") -> None:
        """Replace ``"monitor"`` / ``"monitor:<name>"`` by that monitor of ``trainer`` (a config file's way)."""
        if is_monitor_reference(self.source):
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
            raise RuntimeError(
                f"`{self.argument}` is a MemorizationMonitor that has not measured yet, and a report is needed {when}: "
                "list the monitor before this callback in `Trainer(callbacks=[monitor, ...])` and make it measure earlier "
                "(`measure_on_train_start=True` or a smaller `every_n_epochs`), act at a later epoch, or pass a saved "
                "report (a MemorizationReport or the path written by `report.save(path)`)."
            )
        return report

    def check_in_time(self, trainer: "pl.Trainer", owner: Callback, epoch: Optional[int], what: str) -> None:
        """Fail before training when a monitor without a report cannot have measured in time.

        Args:
            trainer: the trainer being set up.
            owner: the callback that needs the report (its position among the callbacks matters).
            epoch: the report is needed at the start of this training epoch; ``None``: in
                ``on_train_start`` (before the first epoch).
            what: what needs it, for the message.
        """
        if not self.is_monitor or self.get() is not None or trainer.ckpt_path is not None:
            return  # on resume the monitor's report comes back with its state
        monitor, callbacks = self.source, list(trainer.callbacks)
        position = {id(c): i for i, c in enumerate(callbacks)}
        if id(monitor) not in position:
            raise ValueError(
                f"`{self.argument}` is a MemorizationMonitor that is not in `Trainer(callbacks=...)` and has no report, "
                f"so {what} would never get one: add the monitor to the trainer's callbacks or pass a saved report."
            )
        on_start = bool(getattr(monitor, "measure_on_train_start", False))
        every = getattr(monitor, "every_n_epochs", 1)  # None: the monitor measures every N steps
        if epoch is None:
            in_time = on_start and position[id(monitor)] < position.get(id(owner), len(callbacks))
        else:
            in_time = on_start or (epoch >= 1 if every is None else int(every) <= epoch)
        if not in_time:
            when = "before training starts" if epoch is None else f"at the start of epoch {epoch}"
            raise ValueError(
                f"{what} needs a report {when}, but `{self.argument}` (a MemorizationMonitor with "
                f"every_n_epochs={every}, measure_on_train_start={on_start}) will not have measured by then: "
                "list the monitor before this callback in `Trainer(callbacks=[monitor, ...])` with "
                "`measure_on_train_start=True`, act at a later epoch, or pass a saved report "
                "(a MemorizationReport or the path written by `report.save(path)`)."
            )


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
