"""Find, among a trainer's callbacks, the :class:`MemorizationMonitor` another callback reads from.

A configuration file (LightningCLI YAML) cannot pass one callback object to another, so
:class:`~lightning_memloc.callbacks.MemorizationFinetuning` and
:class:`~lightning_memloc.callbacks.MemorizationPruning` accept ``source="monitor"`` (the only
monitor of the trainer) or ``source="monitor:<name>"`` (the monitor constructed with that
``name=``), resolved in ``setup``. Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024) choose layers and units from such a measurement.
"""

from __future__ import annotations

from typing import Any, List, Optional

from torch import nn

__all__ = ["MONITOR_REFERENCE", "find_monitor", "is_monitor_reference", "monitor_layers"]

#: ``source=`` value naming the trainer's monitor; ``"monitor:<name>"`` names one of several.
MONITOR_REFERENCE = "monitor"


def is_monitor_reference(value: Any) -> bool:
    """Whether ``value`` is ``"monitor"`` or ``"monitor:<name>"``.

    Example:
        >>> is_monitor_reference("monitor"), is_monitor_reference("monitor:control"), is_monitor_reference("r.json")
        (True, True, False)
    """
    return isinstance(value, str) and (value == MONITOR_REFERENCE or value.startswith(MONITOR_REFERENCE + ":"))


def _is_monitor(callback: Any) -> bool:
    return hasattr(callback, "report") and hasattr(callback, "views") and hasattr(callback, "history")


def find_monitor(callbacks: List[Any], reference: str, argument: str = "source") -> Any:
    """The monitor among ``callbacks`` that ``reference`` (``"monitor"`` / ``"monitor:<name>"``) names.

    Raises:
        ValueError: no monitor matches, or ``"monitor"`` is ambiguous (several monitors).
    """
    wanted: Optional[str] = reference.partition(":")[2] or None
    monitors = [c for c in callbacks if _is_monitor(c)]
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
    measured = getattr(monitor, "layer_names", None)
    if measured:
        return list(measured)
    requested = getattr(monitor, "layers", "auto")
    if not isinstance(requested, str):
        return [getattr(n, "name", n) for n in requested]
    from lightning_memloc.taps import resolve_layers

    device = next(encoder.parameters()).device
    return [s.name for s in resolve_layers(encoder, requested, monitor.views.example_batch(device))]
