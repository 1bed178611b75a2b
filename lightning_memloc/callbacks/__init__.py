"""Lightning callbacks: the memorization monitor (and, built on it, fine-tuning and pruning)."""

from lightning_memloc.callbacks.monitor import MemorizationMonitor

__all__ = ["MemorizationMonitor"]
