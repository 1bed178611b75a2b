"""``check_views``: do the monitor's views look like the batches the encoder trains on (first :data:`CHECK_STEPS`)?"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_memloc.checks import check_choice
from lightning_memloc.taps.probe import model_device_dtype
from lightning_memloc.views.stats import ViewStatistics, channel_sums, mismatch, sample_statistics, statistics_from_sums

#: ``check_views=`` choices: warn (the default), raise, or do not look.
CHECK_VIEWS = ("warn", "error", "off")
#: Training batches whose encoder inputs are compared with the views.
CHECK_STEPS = 4

FIX = ("Every figure depends on what the encoder is fed: measure on views made like the training batches, with the "
       "training pipeline's per-image view transform (`transform=`, e.g. lightly's "
       "SimCLRTransform(...).transforms[0]) or its normalisation (`normalize='imagenet'` or `normalize=(mean, std)`). "
       "check_views='off' silences this check; check_views='error' makes it an error.")


class TrainingInputs:
    """Per-channel ``Σx``, ``Σx²`` and pixel count of the float (B, C, H, W) inputs a module gets while training.

    Example:
        >>> layer = nn.Conv2d(1, 1, 1)
        >>> inputs = TrainingInputs(channels=1).attach(layer)
        >>> _ = layer(torch.tensor([[[[1.0, 3.0]]]]))
        >>> inputs.detach().statistics()
        ViewStatistics(mean=(2.0,), std=(1.0,))
    """

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.sums = torch.zeros(2, channels, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self._handle: Any = None

    def attach(self, module: nn.Module) -> "TrainingInputs":
        """Start recording ``module``'s inputs (one hook; attaching again replaces it)."""
        self.detach()
        self._handle = module.register_forward_pre_hook(self._record)
        return self

    def detach(self) -> "TrainingInputs":
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return self

    @property
    def attached(self) -> bool:
        """Whether the hook is on a module."""
        return self._handle is not None

    def _record(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if not (module.training and torch.is_grad_enabled() and isinstance(x, Tensor) and x.is_floating_point()
                and x.ndim == 4 and x.shape[1] == self.channels and x.numel() > 0):
            return
        s, q, n = channel_sums(x)
        if self.sums.device != s.device:
            self.sums, self.count = self.sums.to(s.device), self.count.to(s.device)
        self.sums += torch.stack([s, q])
        self.count += n

    def reduce(self, reduce: Callable[[Tensor], Tensor]) -> "TrainingInputs":
        """Sums replaced by ``reduce`` of them (e.g. a sum over DDP ranks); collective when ``reduce`` is."""
        total = reduce(torch.cat([self.sums.reshape(-1), self.count.reshape(1)]))
        self.sums, self.count = total[:-1].reshape(2, self.channels), total[-1]
        return self

    def statistics(self) -> Optional[ViewStatistics]:
        """The statistics of what was recorded (``None`` if nothing was)."""
        count = float(self.count)
        return None if count == 0 else statistics_from_sums(self.sums[0], self.sums[1], count)


class ViewCheck:
    """One ``fit``'s comparison of a monitor's views with the encoder's training inputs (``monitor.view_check``).

    ``training`` / ``views``: the statistics of both (all ranks; first 64 candidates), ``None`` until compared.
    """

    def __init__(self, mode: str = "warn") -> None:
        self.mode = check_choice("check_views", mode, CHECK_VIEWS)
        self.inputs: Optional[TrainingInputs] = None
        self.batches, self.views, self.training = 0, None, None

    def start(self, encoder: nn.Module, view_shape: Tuple[int, ...]) -> None:
        """At the start of training: hook ``encoder`` (image views only; nothing when ``mode="off"``)."""
        self.stop()
        self.batches, self.views, self.training = 0, None, None
        if self.mode != "off" and len(view_shape) == 3:
            self.inputs = TrainingInputs(view_shape[0]).attach(encoder)

    def stop(self) -> None:
        """Remove the hook (end of fit, exception)."""
        if self.inputs is not None:
            self.inputs.detach()

    @property
    def pending(self) -> bool:
        """Whether the hook records and the comparison is still to come."""
        return self.inputs is not None and self.inputs.attached

    def step(self, trainer: Any, pl_module: Any, monitor: Any) -> None:
        """After a training batch: compare after :data:`CHECK_STEPS` batches or at the run's last, on every rank."""
        if not self.pending:
            return
        self.batches += 1
        max_steps = getattr(trainer, "max_steps", -1)
        if (self.batches >= min(CHECK_STEPS, trainer.num_training_batches)
                or (max_steps is not None and 0 < max_steps <= trainer.global_step)):
            device = model_device_dtype(monitor.encoder(pl_module))[0]
            self.finish(trainer, lambda: sample_statistics(monitor.views, device, batch_size=monitor.batch_size))

    def finish(self, trainer: Any, view_statistics: Callable[[], ViewStatistics]) -> None:
        """Remove the hook, add the sums over the ranks, compare; warn or raise on a mismatch (collective)."""
        if not self.pending:
            return
        inputs = self.inputs.detach()  # type: ignore[union-attr]
        if trainer.world_size > 1:  # the sums of every rank's batches (on the device the collective needs)
            inputs.reduce(lambda t: trainer.strategy.reduce(t.to(trainer.strategy.root_device), reduce_op="sum"))
        self.training = inputs.statistics()
        if self.training is None:
            rank_zero_info(f"[memloc] check_views: the encoder received no float image batches with "
                           f"{inputs.channels} channel(s) in training mode in the first {self.batches} training "
                           "batches: the views were not compared with them.")
            return
        self.views = view_statistics()
        problem = mismatch(self.views, self.training)
        if problem is None:
            return
        message = (f"the monitor's views do not look like the batches the encoder trains on: {problem}, over the "
                   f"first {self.batches} training batches. {FIX}")
        if self.mode == "error":
            raise ValueError(f"check_views='error': {message}")
        rank_zero_warn(message, category=UserWarning)
