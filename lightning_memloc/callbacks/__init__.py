"""Lightning callbacks: the memorization monitor (and, built on it, fine-tuning and pruning)."""

from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.callbacks.monitor import MemorizationMonitor
from lightning_memloc.callbacks.pruning import MemorizationPruning, prune_units
from lightning_memloc.callbacks.utility import UtilityMonitor

__all__ = ["MemorizationFinetuning", "MemorizationMonitor", "MemorizationPruning", "prune_units", "UtilityMonitor"]
