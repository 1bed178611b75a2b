"""``setup``-time checks of the fine-tuning and pruning callbacks: catch a plan that will not do what it says.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the most
memorizing layers and prune the most memorizing units. A plan that unfreezes after the last
epoch, prunes nothing (or everything), asks for more layers than there are, or masks a conv whose
channels a BatchNorm outside the tap turns back on, would run to the end and report a result
that is not what was asked. These checks run in ``setup``, before the first training step.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_memloc.surgery import check_amount_units, following_norms  # their home was here: old imports keep working

__all__ = ["check_amount_units", "check_epoch_in_run", "check_k_layers", "following_norms"]


def check_epoch_in_run(trainer: Any, epoch: Optional[int], argument: str, consequence: str) -> None:
    """Refuse an action epoch at or after ``max_epochs`` (it would never happen).

    Args:
        trainer: the trainer being set up (``max_epochs`` of -1 / ``None`` means no limit).
        epoch: the epoch at whose start the action happens (``None``: at fit start).
        argument: the callback argument, for the message.
        consequence: what would happen instead, for the message.
    """
    max_epochs = getattr(trainer, "max_epochs", None)
    if epoch is None or max_epochs is None or max_epochs < 0 or epoch < max_epochs:
        return
    raise ValueError(f"`{argument}`={epoch} but training ends after epoch {max_epochs - 1} (max_epochs={max_epochs}): "
                     f"{consequence}. Pass `{argument}` < {max_epochs} or raise max_epochs.")


def check_k_layers(k: int, source: Any) -> None:
    """Refuse ``k`` larger than the layers a monitor will measure (known before its first report)."""
    monitor = getattr(source, "source", source)
    layers = getattr(monitor, "layer_names", None) or getattr(monitor, "layers", None)
    if not isinstance(layers, (list, tuple)) or not layers:
        return  # "auto" before the monitor's setup: checked when the report is known
    if k > len(layers):
        raise ValueError(f"`k`={k} but the monitor measures {len(layers)} layers ({list(layers)}): pass k <= "
                         f"{len(layers)}.")
