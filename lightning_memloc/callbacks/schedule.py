"""When a :class:`~lightning_memloc.callbacks.MemorizationMonitor` measures: every N epochs or every N steps.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) track memorization
over training; on large data one epoch is long, so a monitor can measure every
``every_n_train_steps`` optimizer steps instead of every ``every_n_epochs`` epochs (as Lightning's
``ModelCheckpoint``, the two are exclusive). :func:`show_progress` says whether a measurement
shows a progress bar.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

__all__ = ["check_schedule", "final_epoch_due", "show_progress", "step_due"]


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r} (or None, the default).")


def check_schedule(every_n_epochs: Optional[int], every_n_train_steps: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
    """Validate the schedule; neither given means every epoch.

    Returns:
        ``(every_n_epochs, every_n_train_steps)``, exactly one of them ``None``.

    Example:
        >>> check_schedule(None, None), check_schedule(None, 50), check_schedule(2, None)
        ((1, None), (None, 50), (2, None))
    """
    _check_positive("every_n_epochs", every_n_epochs)
    _check_positive("every_n_train_steps", every_n_train_steps)
    if every_n_epochs is not None and every_n_train_steps is not None:
        raise ValueError(f"pass either `every_n_epochs` ({every_n_epochs}) or `every_n_train_steps` "
                         f"({every_n_train_steps}), not both.")
    return (1 if every_n_train_steps is None and every_n_epochs is None else every_n_epochs), every_n_train_steps


def step_due(every_n_train_steps: Optional[int], global_step: int, history: List[Dict[str, Any]]) -> bool:
    """Whether a step-scheduled monitor measures now: a multiple of N not measured yet (steps > 0).

    Lightning calls ``on_train_batch_end`` once per batch, but ``global_step`` counts optimizer
    steps (gradient accumulation repeats it): a step already in ``history`` is not measured twice.

    Example:
        >>> step_due(2, 4, []), step_due(2, 4, [{"global_step": 4}]), step_due(2, 3, []), step_due(None, 4, [])
        (True, False, False, False)
    """
    if every_n_train_steps is None or global_step <= 0 or global_step % every_n_train_steps:
        return False
    return all(entry.get("global_step") != global_step for entry in history)


def final_epoch_due(every_n_train_steps: Optional[int], current_epoch: int, global_step: int,
                    history: List[Dict[str, Any]]) -> Optional[int]:
    """The epoch to measure at the end of training, or ``None`` when the last one was measured.

    Step-scheduled: the last step unless in ``history``; epoch-scheduled: the last epoch
    (``current_epoch - 1`` once training ran) unless measured, and nothing after zero steps.

    Example:
        >>> final_epoch_due(None, 3, 30, [{"epoch": 1}]), final_epoch_due(None, 3, 30, [{"epoch": 2}])
        (2, None)
        >>> final_epoch_due(5, 3, 30, [{"global_step": 30}]), final_epoch_due(5, 3, 32, [{"global_step": 30}])
        (None, 2)
    """
    last = current_epoch - 1 if current_epoch > 0 else 0
    if every_n_train_steps is not None:
        return last if step_due(1, global_step, history) else None
    measured = [entry["epoch"] for entry in history]
    return last if global_step > 0 and (not measured or max(measured) < last) else None


def show_progress(progress: Optional[bool], trainer: Any) -> bool:
    """Whether a measurement shows a progress bar: ``progress`` when given, else as the Trainer
    (``enable_progress_bar=False`` leaves ``trainer.progress_bar_callback`` ``None``); rank 0 only.

    Example:
        >>> from types import SimpleNamespace
        >>> quiet = SimpleNamespace(progress_bar_callback=None, is_global_zero=True)
        >>> show_progress(None, quiet), show_progress(True, quiet)
        (False, True)
    """
    wanted = getattr(trainer, "progress_bar_callback", None) is not None if progress is None else bool(progress)
    return wanted and bool(trainer.is_global_zero)
