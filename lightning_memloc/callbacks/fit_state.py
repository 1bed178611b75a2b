"""What a callback changes on a model before training, kept so that a failed ``fit`` can give it back."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class TrainableState:
    """``requires_grad``, train/eval mode and BatchNorm ``track_running_stats`` of a model, by object.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> state = TrainableState(model)
        >>> _ = model.requires_grad_(False).eval()
        >>> state.restore()
        >>> model.training, model[0].weight.requires_grad
        (True, True)
    """

    def __init__(self, model: nn.Module) -> None:
        self.grads: List[Tuple[nn.Parameter, bool]] = [(p, p.requires_grad) for p in model.parameters()]
        self.modes: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
        self.stats: List[Tuple[_BatchNorm, bool]] = [(m, m.track_running_stats) for m in model.modules()
                                                    if isinstance(m, _BatchNorm)]

    def restore(self) -> None:
        """Set every captured flag back."""
        for parameter, flag in self.grads:
            parameter.requires_grad_(flag)
        for module, flag in self.modes:
            module.training = flag  # not train(): each module's own flag, children included in the list
        self.restore_statistics_tracking()

    def restore_statistics_tracking(self) -> None:
        """Set every BatchNorm's ``track_running_stats`` back (``BaseFinetuning.freeze`` turns it off)."""
        for norm, flag in self.stats:
            norm.track_running_stats = flag


def started_training(trainer: Any, start_step: Optional[int]) -> bool:
    """Whether this ``fit`` took an optimizer step (``start_step``: the global step at ``on_train_start``)."""
    return start_step is not None and int(trainer.global_step) > start_step
