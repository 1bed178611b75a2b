"""Timers for a monitored fit, shared by ``bench_measure.py`` (d) and ``bench_monitor_share.py``.

``EpochTimer`` times each training epoch; ``TimedMonitor`` is a ``MemorizationMonitor`` that
times each of its measurement passes. Whether an epoch's time includes the monitor's pass is set
by the order of the callbacks: the timer after the monitor (its ``on_train_epoch_end`` runs
later) includes it, the timer before it does not. On CUDA both synchronise before reading the
clock (``timing.sync``).
"""

from __future__ import annotations

import time
from typing import Any, List

import torch
from pytorch_lightning.callbacks import Callback

from lightning_memloc import MemorizationMonitor
from timing import sync

CPU = torch.device("cpu")



class EpochTimer(Callback):
    """Seconds of every training epoch, in ``times``."""

    def __init__(self, device: torch.device = CPU) -> None:
        self.clock_device = device
        self.times: List[float] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        sync(self.clock_device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        sync(self.clock_device)
        self.times.append(time.perf_counter() - self.start)


class TimedMonitor(MemorizationMonitor):
    """A ``MemorizationMonitor`` that records the seconds of each measurement pass in ``pass_times``."""

    def __init__(self, *args: Any, device: torch.device = CPU, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock_device = device
        self.pass_times: List[float] = []

    def _measure(self, trainer: Any, pl_module: Any, epoch: int) -> Any:
        sync(self.clock_device)
        start = time.perf_counter()
        out = super()._measure(trainer, pl_module, epoch)
        sync(self.clock_device)
        self.pass_times.append(time.perf_counter() - start)
        return out
