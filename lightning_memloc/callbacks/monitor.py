"""``MemorizationMonitor``: UnitMem and LayerMem of held-out candidates, measured while an SSL encoder trains."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

from lightning_memloc.callbacks import monitor_checks as guard
from lightning_memloc.callbacks.logging import MonitorLoggers, report_scalars
from lightning_memloc.callbacks.report_source import ModuleSpec
from lightning_memloc.checks import (check_choice, check_int, check_memory_limit, check_reference, check_views_memory,
                                     unwrap_compiled)
from lightning_memloc.callbacks.view_check import ViewCheck
from lightning_memloc.data.candidates import IndexSpec, LabelSpec, load_groups
from lightning_memloc.errors import ArchitectureMismatchError, CheckpointError
from lightning_memloc.io import atomic_write_text, check_writable_dir
from lightning_memloc.models.loading import load_encoder, resolve_module
from lightning_memloc.reductions.baseline import INIT_BATCHNORM, recalibrated_batchnorm
from lightning_memloc.states.distributed import rank_zero_buffers
from lightning_memloc.states.reference_cache import ReferenceCache, frozen_reference
from lightning_memloc.measurement import Measurement
from lightning_memloc.report.evidence import EvidenceOptions
from lightning_memloc.views.seeded import SeededViews
from lightning_memloc.taps.probe import model_device_dtype
from lightning_memloc.states.meter import MemorizationMeter, check_state_memory
from lightning_memloc.options import DEFAULT, MeasureOptions, option_property, options_doc
from lightning_memloc.reductions.hook import check_autocast
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.report.tags import check_name, upgrade_tag


class ScheduledCallback(Callback):
    """Calls ``_measure`` every ``every_n_epochs`` epochs or ``every_n_train_steps`` steps (no step twice)."""

    def encoder(self, pl_module: pl.LightningModule) -> nn.Module:
        """The encoder measured inside ``pl_module`` (``encoder_spec``)."""
        return unwrap_compiled(resolve_module(pl_module, self.encoder_spec, "encoder"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if guard.step_due(self.every_n_train_steps, trainer.global_step, self.history):
            self._measure(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._measure(trainer, pl_module, epoch=trainer.current_epoch)


class MemorizationMonitor(ScheduledCallback):
    r"""Measure UnitMem / ClassMem / SSLMem / LayerMem on held-out candidates during training.

    Results: ``report`` (latest :class:`~lightning_memloc.MemorizationReport`), ``meter`` (its torchmetrics),
    ``options`` (validated settings; ``monitor.top_k`` etc. read and set them), ``history`` (one dict of
    scalars per measurement), and logged ``memloc.<quantity>/<layer>`` scalars, histograms, figures and grids.

    Args:
        candidates: images (N, C, H, W), views (N, K, C, H, W), a ``Dataset``, or a ``.pt`` / ``.npz`` / folder path.
        every_n_epochs: measure every N training epochs (default 1 unless ``every_n_train_steps``).
        transform: view transform; ``None`` for the default batched SimCLR augmentation.
        layers: ``"auto"`` or module names of the encoder.
        encoder: attribute path, callable ``pl_module -> nn.Module``, module, or ``None`` (the LightningModule).
        reference: encoder ``g``: a module, a checkpoint path (``"pair.ckpt:prefix"``) or an attribute (co-trained).
        labels: (N,) labels for ClassMem: a tensor, ``True`` (stored with the candidates) or a path.
        threshold: UnitMem above which a unit counts as highly memorizing in the logs.
        measure_on_train_start: also measure before the first epoch.
        grid_size: images per TensorBoard grid of most / least memorized candidates (0: none).
        log_figures: log the depth profile and layer × measurement heat maps.
        layer_runs: also write each layer into its own TensorBoard run ``memloc_layers/<NN>_<layer>``.
        output_dir: rank 0 writes ``report_epoch=<E>.json`` and ``history.json`` there.
        progress: ``None`` follows the Trainer's bar; ``True`` / ``False`` always / never.
        memory_limit: bytes the metric states may take (``None``: 25 % of device memory, warning only).
        control: images both encoders trained on (needs ``reference``): LayerMem's null.
        unseen: images the encoder never trained on: seen vs unseen UnitMem and membership test.
        init_batchnorm: ``"recalibrate"`` (BatchNorm statistics from the views) or ``"default"`` before training.
        overwrite: let a new run delete another run's files in ``output_dir``.
        name: tells monitors apart (tags ``memloc-<name>...``, ``output_dir/<name>``, ``state_key``).
        every_n_train_steps: measure every N optimizer steps instead of epochs.
        size: resize the images of a candidates path to ``size`` × ``size``.
        indices, control_indices, unseen_indices: each group's images: ints, a slice ``"a:b"`` or a file.
        check_views: ``"warn"``, ``"error"`` or ``"off"`` when the views' statistics differ from training's.
<options>

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_memloc import MemorizationMonitor
        >>> monitor = MemorizationMonitor(torch.rand(8, 3, 16, 16), every_n_epochs=1, views=2,
        ...                               encoder="backbone", reference="reference")
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[monitor], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False)
    """

    def __init__(self, candidates: Union[Tensor, Dataset, str, os.PathLike], *, every_n_epochs: Optional[int] = None,
                 views: int = DEFAULT.views, transform: Optional[Callable] = None,
                 layers: Union[str, Sequence[str]] = "auto", encoder: ModuleSpec = None,
                 reference: Union[ModuleSpec, os.PathLike] = None, seed: int = DEFAULT.seed,
                 batch_size: int = DEFAULT.batch_size, labels: LabelSpec = None, pairing: str = DEFAULT.pairing,
                 reduction: str = DEFAULT.reduction, negative: str = DEFAULT.negative, top_k: int = DEFAULT.top_k,
                 threshold: float = 0.5, measure_on_train_start: bool = False, grid_size: int = 8,
                 log_histograms: bool = True, log_figures: bool = True,
                 output_dir: Optional[Union[str, os.PathLike]] = None, progress: Optional[bool] = None,
                 num_workers: int = DEFAULT.num_workers, memory_limit: Optional[int] = None,
                 control: Optional[Union[Tensor, Dataset, str, os.PathLike]] = None,
                 unseen: Optional[Union[Tensor, Dataset, str, os.PathLike]] = None, bootstrap: int = DEFAULT.bootstrap,
                 confidence: float = DEFAULT.confidence, alpha: float = DEFAULT.alpha,
                 autocast: Optional[str] = DEFAULT.autocast, init_batchnorm: str = "recalibrate",
                 overwrite: bool = False, layer_runs: bool = True, name: Optional[str] = None,
                 every_n_train_steps: Optional[int] = None, size: Optional[int] = None,
                 indices: IndexSpec = None, control_indices: IndexSpec = None, unseen_indices: IndexSpec = None,
                 normalize: Any = DEFAULT.normalize, check_views: str = "warn") -> None:
        super().__init__()
        every_n_epochs, every_n_train_steps = guard.check_schedule(every_n_epochs, every_n_train_steps)
        self.name, self.every_n_train_steps = check_name(name), every_n_train_steps
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"`threshold` must be in [0, 1] (UnitMem's range), got {threshold!r}.")
        grid_size = check_int("grid_size", grid_size, 0)
        if reference is not None and not isinstance(reference, (str, os.PathLike, nn.Module)) and not callable(reference):
            raise TypeError(f"`reference` must be None, an nn.Module, a checkpoint path or an attribute name, got "
                            f"{type(reference).__name__}.")
        # The reference may still be a path or an attribute: only whether there is one matters here.
        options = MeasureOptions(views=views, seed=seed, batch_size=batch_size, pairing=pairing, reduction=reduction,
                                 negative=negative, top_k=top_k, num_workers=num_workers, progress=progress,
                                 bootstrap=bootstrap, confidence=confidence, alpha=alpha, autocast=autocast,
                                 normalize=normalize, with_reference=reference is not None)
        groups = load_groups(candidates, labels, size, indices, control, control_indices, unseen, unseen_indices)
        candidates, labels, control, unseen, self._ids, self._group_meta = groups  # paths too (LightningCLI)
        self.init_batchnorm = check_choice("init_batchnorm", init_batchnorm, INIT_BATCHNORM)
        self.measurement = Measurement.prepare(candidates, options, transform=transform, labels=labels, control=control,
                                               unseen=unseen)
        self.memory_limit = check_memory_limit(memory_limit)
        if not isinstance(overwrite, bool):
            raise TypeError(f"`overwrite` must be a bool, got {overwrite!r}.")
        self.overwrite, self._run_id = overwrite, os.urandom(8).hex()
        self._foreign_files: List[str] = []  # another run's files in output_dir (refused in on_fit_start)
        self.every_n_epochs, self.layers = every_n_epochs, layers
        self.encoder_spec, self.reference_spec = encoder, reference
        self.threshold, self.grid_size = float(threshold), grid_size
        self.measure_on_train_start, self.log_histograms, self.log_figures = measure_on_train_start, log_histograms, log_figures
        self.output_dir = None if output_dir is None else Path(output_dir) / (name or "")
        self.history: List[Dict[str, Any]] = []
        self.report: Optional[MemorizationReport] = None
        self.meter: Optional[MemorizationMeter] = None
        self._reference: Optional[nn.Module] = None
        self.encoder_id: Optional[str] = None  # which encoder and reference are measured (setup): fingerprint
        self.reference_id: Optional[str] = None
        self._reference_cache = ReferenceCache()  # used only for a frozen reference (never a co-trained one)
        self.layer_runs, self.view_check = bool(layer_runs), ViewCheck(check_views)
        self._loggers = MonitorLoggers(name)  # keeps what was written once (layout, per-layer writers)

    @property
    def views(self) -> SeededViews:
        """The candidates' seeded views (of :attr:`measurement`)."""
        return self.measurement.views

    @property
    def pool(self) -> SeededViews:
        """The pooled views of a pass: candidates, then control and unseen images."""
        return self.measurement.pool

    @property
    def group_sizes(self) -> Dict[str, int]:
        """Sizes of the control / unseen sets, by name."""
        return self.measurement.group_sizes

    @property
    def options(self) -> MeasureOptions:
        """The validated settings (``monitor.top_k`` and the other option attributes read and set them)."""
        return self.measurement.options

    @options.setter
    def options(self, value: MeasureOptions) -> None:
        self.measurement.options = value

    batch_size, pairing, reduction, negative = (option_property(k) for k in ("batch_size", "pairing", "reduction", "negative"))
    top_k, num_workers, progress, autocast = (option_property(k) for k in ("top_k", "num_workers", "progress", "autocast"))

    @property
    def evidence_options(self) -> EvidenceOptions:
        """How the report's intervals and tests are computed (from :attr:`options`)."""
        return self.options.evidence

    @property
    def run_id(self) -> str:
        """The id of this run, written into ``output_dir``'s marker (a resumed run takes over its folder's)."""
        return self._run_id

    @cached_property
    def candidates_digest(self) -> str:
        """A digest of the candidate set (part of the resume fingerprint; computed once)."""
        return guard.candidates_digest(self.views)

    @property
    def layer_names(self) -> Optional[List[str]]:
        """The measured layers, resolved (``None`` until ``setup`` or the first measurement)."""
        return None if not self.measurement.specs else [spec.name for spec in self.measurement.specs]

    @property
    def state_key(self) -> str:
        extra = {k: v for k, v in (("name", self.name), ("every_n_train_steps", self.every_n_train_steps)) if v}
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, seed=self.views.seed,
                                         num_candidates=len(self.views), **extra)

    def reference(self, pl_module: pl.LightningModule) -> Optional[nn.Module]:
        """The reference encoder (``None`` without one)."""
        spec = self.reference_spec
        if spec is None:
            return None
        if guard.is_checkpoint_path(spec):  # a known extension, a path separator, or an existing file
            if self._reference is None:
                try:
                    self._reference = load_encoder(spec, like=self.encoder(pl_module))
                except (FileNotFoundError, CheckpointError, ArchitectureMismatchError) as err:
                    raise type(err)(f"`reference`={str(spec)!r}: {err}") from err
            return self._reference
        with guard.reference_hint(spec):
            return unwrap_compiled(resolve_module(pl_module, spec, "reference"))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve encoder, reference and layers and check every setting before training starts."""
        if stage != "fit":
            return
        if self.output_dir is not None and trainer.is_global_zero:
            check_writable_dir(self.output_dir, argument="output_dir")
        encoder, reference = self.encoder(pl_module), self.reference(pl_module)
        self.encoder_id, self.reference_id = guard.module_identities(self, pl_module, encoder, reference)  # fingerprint
        if self.output_dir is not None and trainer.is_global_zero:
            self._run_id, self._foreign_files = guard.claim_output_dir(
                self, self.output_dir, resuming=trainer.ckpt_path is not None, overwrite=self.overwrite)
        if reference is encoder:
            raise ValueError("`reference` resolves to the monitored encoder itself: pass a separately trained encoder.")
        trained = reference is not None and any(p.requires_grad for p in reference.parameters())
        check_reference(encoder, reference, same_weights=not trained)  # a co-trained one is checked when measured
        device, _ = model_device_dtype(encoder)
        check_views_memory(self.batch_size, self.views.views, self.views.input_shape, device)
        with guard.encoder_hint(self.encoder_spec, pl_module):
            self.measurement.probe(encoder, reference, self.layers, device)
        note = check_state_memory(len(self.pool), self.measurement.num_units, reference=reference is not None,
                                  labels=self.views.has_labels, limit=self.memory_limit, device=device,
                                  num_candidates=len(self.views), alignment=self.measurement.keeps_alignment)
        if note:
            rank_zero_info(note)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.measure_on_train_start and not self.history and trainer.global_step == 0:  # not in a resumed run
            # an untrained BatchNorm's default statistics inflate UnitMem; the models' own are restored after
            recalibrate = self.init_batchnorm == "recalibrate"
            with (recalibrated_batchnorm(self.encoder(pl_module), self.reference(pl_module), views=self.pool,
                                         batch_size=self.batch_size) if recalibrate else nullcontext()):
                self._measure(trainer, pl_module, epoch=-1)
        self.view_check.start(self.encoder(pl_module), self.views.view_shape)  # after the monitor's own forwards

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.view_check.step(trainer, pl_module, self)  # before a measurement of this step
        super().on_train_batch_end(trainer, pl_module, *args)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = guard.final_epoch_due(self.every_n_train_steps, trainer.current_epoch, trainer.global_step, self.history)
        if last is not None:
            self._measure(trainer, pl_module, epoch=last)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> MemorizationReport:
        encoder, reference = self.encoder(pl_module), self.reference(pl_module)
        check_reference(encoder, reference, same_weights=epoch >= 0)  # after training, a copy is an error
        device, _ = model_device_dtype(encoder)
        if reference is not None and reference not in list(pl_module.modules()):
            reference.to(device)
        if self.measurement.specs is None:
            self.measurement.probe(encoder, reference, self.layers, device)
        sampler = DistributedSampler(self.pool, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                     shuffle=False) if trainer.world_size > 1 else None
        cache = self._reference_cache if frozen_reference(pl_module, reference) else None
        with rank_zero_buffers(trainer.world_size, encoder, reference):
            meter = self.measurement.run(encoder, reference, reference_cache=cache, sampler=sampler, epoch=epoch,
                                         progress=guard.show_progress(self.progress, trainer),
                                         desc=f"memloc epoch {epoch}", world_size=trainer.world_size)
        meta = {**self.measurement.meta(epoch=epoch, global_step=trainer.global_step),
                "init_batchnorm": self.init_batchnorm if epoch < 0 and self.init_batchnorm == "recalibrate" else "model",
                **self._group_meta}
        report = self.measurement.report(meter, self._ids, meta)
        self.report, self.meter = report, meter
        scalars = report_scalars(report, self.threshold)
        self.history.append({"epoch": epoch, "global_step": trainer.global_step, **scalars})
        grids = self.grid_size and len(self.views.view_shape) == 3  # image grids of image candidates only
        self._loggers.log(trainer, report, scalars, images=self.views.display_images if grids else None,
                          grid_size=self.grid_size, histograms=self.log_histograms, layer_runs=self.layer_runs,
                          history=self.history if self.log_figures else None)
        if self.output_dir is not None and trainer.is_global_zero:
            # again: the folder may have been removed or made unusable during training
            check_writable_dir(self.output_dir, argument="output_dir")
            guard.check_owner(self, self.output_dir)
            step = "" if self.every_n_train_steps is None else f"_step={trainer.global_step}"
            report.save(self.output_dir / f"report_epoch={epoch}{step}.json")
            atomic_write_text(self.output_dir / "history.json", json.dumps(self.history, indent=1))
        return report

    def attach_scalars(self, by_step: Mapping[int, Mapping[str, float]]) -> None:
        """Add other callbacks' scalars (``UtilityMonitor``'s kNN accuracy) to the history entries of the same global step."""
        for entry in self.history:
            entry.update(by_step.get(entry.get("global_step"), {}))

    def state_dict(self) -> Dict[str, Any]:
        return {"history": list(self.history), "report": None if self.report is None else self.report.to_dict(),
                "fingerprint": guard.fingerprint(self)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Dict[str, Any]) -> None:
        guard.check_checkpoint_states(self, trainer, checkpoint)
        if self.output_dir is not None and self._foreign_files:
            run_id = guard.adopt(self, self.output_dir)  # resuming: continue the folder of the same run
            if run_id is not None:
                self._run_id, self._foreign_files = run_id, []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        guard.check_no_foreign_files(self._foreign_files, self.output_dir)  # another run's files, and not a resume of it
        check_autocast(self.autocast, self.encoder(pl_module))  # on its training device, before the first step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        guard.release_output_dir(self)
        self._loggers.close()
        self.view_check.stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        guard.release_output_dir(self)
        self.view_check.stop()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        guard.check_same_fingerprint(state_dict.get("fingerprint"), guard.fingerprint(self), "the checkpoint's monitor state")
        self.history = [{upgrade_tag(k): v for k, v in h.items()} for h in state_dict.get("history", [])]  # older tag names
        report = state_dict.get("report")
        self.report = None if report is None else MemorizationReport.from_dict(report)


MemorizationMonitor.__doc__ = (MemorizationMonitor.__doc__ or "").replace(
    "<options>", options_doc(8, skip=("progress",)))  # the options, from their one source
