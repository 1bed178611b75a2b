"""``MemorizationMonitor``: UnitMem and LayerMem of a held-out candidate set while an SSL encoder trains.

Runs :func:`~lightning_memloc.measure.run_pass` (as :func:`~lightning_memloc.measure` does) every N
epochs or steps, logs it, keeps a history that survives checkpoint/resume, and shards the candidates
across DDP ranks with single-process results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

from lightning_memloc.callbacks import monitor_checks as guard
from lightning_memloc.callbacks.logging import MonitorLoggers, report_scalars
from lightning_memloc.checks import check_int, check_memory_limit, check_reference, check_views_memory, unwrap_compiled
from lightning_memloc.callbacks.naming import check_name
from lightning_memloc.callbacks.schedule import check_schedule, step_due
from lightning_memloc.callbacks.view_check import ViewCheck
from lightning_memloc.candidates import IndexSpec, LabelSpec, load_candidates
from lightning_memloc.errors import ArchitectureMismatchError, CheckpointError
from lightning_memloc.io import atomic_write_text, check_writable_dir
from lightning_memloc.loading import load_encoder, resolve_module
from lightning_memloc.baseline import INIT_BATCHNORM, recalibrated_batchnorm
from lightning_memloc.distributed import rank_zero_buffers  # re-exported (documented here before)
from lightning_memloc.evidence import EvidenceOptions
from lightning_memloc.reference_cache import ReferenceCache, frozen_reference
from lightning_memloc.measure import keeps_alignment, model_device_dtype, prepare_views, probe_layers, run_pass
from lightning_memloc.meter import MemorizationMeter, check_state_memory
from lightning_memloc.options import MeasureOptions, option_property
from lightning_memloc.precision import check_autocast
from lightning_memloc.report import MemorizationReport
from lightning_memloc.tags import upgrade_tag
from lightning_memloc.taps import LayerSpec

ModuleSpec = Union[str, nn.Module, Callable[[pl.LightningModule], nn.Module], None]


class MemorizationMonitor(Callback):
    r"""Measure UnitMem / ClassMem / SSLMem / LayerMem on held-out candidates during training.

    Measures at the end of every ``every_n_epochs``-th training epoch and, if the last epoch was
    not measured, at the end of training (optionally also before the first epoch). Results:

    - ``monitor.report``: the latest :class:`~lightning_memloc.MemorizationReport`;
    - ``monitor.meter``: the torchmetrics (``UnitMem`` per layer, ``LayerMem``) of the latest pass;
    - ``monitor.options``: the validated settings (:class:`~lightning_memloc.options.MeasureOptions`;
      ``monitor.top_k``, ``monitor.pairing``, ... read them, and setting one validates it);
    - ``monitor.history``: one dict of scalars per measurement (epoch, global step, per-layer
      LayerMem, ΔLayerMem, mean UnitMem, fraction above ``threshold``, dead units);
    - logged scalars (``memloc.<quantity>/<layer>`` tags, also in ``trainer.callback_metrics``),
      TensorBoard histograms, figures, image grids and a custom-scalars layout, all at ``trainer.global_step``.

    Args:
        candidates: held-out candidate images (N, C, H, W), precomputed views (N, K, C, H, W),
            a ``Dataset`` (see :func:`~lightning_memloc.measure`), or a path: a ``.pt`` tensor file,
            an ``.npz`` file, an image folder (see :func:`~lightning_memloc.candidates.load_candidates`).
        every_n_epochs: measure every N training epochs (≥ 1; default 1 unless ``every_n_train_steps``).
        views: K augmented views per candidate.
        transform: view transform (per-image or batched); ``None`` for the default batched
            SimCLR augmentation.
        layers: ``"auto"`` or module names of the encoder.
        encoder: the encoder inside the LightningModule: an attribute path (``"backbone"``,
            ``"model.encoder"``), a callable ``pl_module -> nn.Module``, a module, or ``None``
            for the LightningModule itself.
        reference: the reference encoder ``g`` for LayerMem: ``None`` (UnitMem only), a frozen
            ``nn.Module``, a checkpoint path (loaded with ``weights_only=True`` into a copy of
            the encoder; ``"pair.ckpt:reference.backbone"`` names a prefix inside it), or an
            attribute path on the LightningModule (a co-trained reference).
        seed: view seed; the same views at every measurement, on every device and rank.
        batch_size: candidates per forward step (each contributes K views).
        labels: (N,) labels for ClassMem: a tensor, ``True`` (those stored with a candidates path)
            or a ``.pt`` / ``.npy`` path.
        pairing, reduction, negative, top_k: see :func:`~lightning_memloc.measure`.
        threshold: UnitMem above which a unit counts as highly memorizing in the logs.
        measure_on_train_start: also measure before the first epoch (the untrained baseline).
        grid_size: images in each TensorBoard grid of most / least memorized candidates (0: none).
        log_histograms: log a UnitMem histogram per layer to TensorBoard.
        log_figures: log the profile by depth and the layer × measurement heat maps to TensorBoard.
        layer_runs: on TensorBoard, also write each layer into its own run
            ``memloc_layers/<NN>_<layer>`` (depth order), so that each quantity's section starts with one
            chart of every layer, one line per run (:mod:`~lightning_memloc.callbacks.layer_runs`).
        output_dir: if set, rank 0 writes ``report_epoch=<E>.json`` and ``history.json`` there.
        progress: show a progress bar during each measurement pass.
        num_workers: DataLoader workers generating views.
        memory_limit: bytes the metric states may take; a larger candidate set raises before
            training starts (``None``: 25 % of the device memory, warning only).
        control: images **both** encoders trained on (needs ``reference``): the null of
            LayerMem; reports, logs and plots give the candidates' excess over it with its
            interval and a one-sided permutation p-value, Holm-corrected in the overall verdict.
        unseen: images the encoder never trained on (the reference's independent part when
            co-training, or a test split): UnitMem seen vs unseen, the argmax membership test and,
            with no reference needed, the alignment gap under ``f`` (``memloc/align_gap/...``).
            Control and unseen images are measured in the same pass as the candidates; both
            may also be paths, read like ``candidates`` (``size`` applies).
        bootstrap, confidence, alpha: resamples, coverage and significance level of the
            intervals and tests (see :func:`~lightning_memloc.measure`; ``bootstrap=0``: none).
        autocast: ``None`` (float32), ``"bf16"`` or ``"fp16"``: the pass's forwards under
            ``torch.autocast``, reductions in float32 (see :func:`~lightning_memloc.measure`);
            part of the resume fingerprint.
        init_batchnorm: the before-training point (``measure_on_train_start``):
            ``"recalibrate"`` measures copies whose BatchNorm statistics are estimated on the
            measured views (an untrained model's default statistics inflate UnitMem), or
            ``"default"`` measures the model as it is.
        overwrite: let a new run delete another run's files in ``output_dir`` (at its first write);
            without it such a folder is refused (a resumed run continues its own folder).
        name: tells several monitors apart: tags ``memloc-<name>.../...`` instead of ``memloc.../...``,
            files in ``output_dir/<name>``, and part of ``state_key`` (checkpoints hold each
            monitor's state; ``history`` keeps the plain ``memloc...`` keys). Fine-tuning and
            pruning find it as ``source="monitor:<name>"``.
        every_n_train_steps: measure every N optimizer steps instead of every N epochs (not both).
        size: resize the images of a candidates path to ``size`` × ``size``.
        indices: the candidates among the images of ``candidates``: ints, a slice ``"start:stop"``
            or a ``.json`` / ``.npy`` / ``.txt`` / ``.pt`` file.
        normalize: per-channel normalisation of the views (see :func:`~lightning_memloc.measure`).
        check_views: ``"warn"`` (once), ``"error"`` or ``"off"`` when the views' per-channel mean / std differ
            from those of the first training batches (:mod:`~lightning_memloc.callbacks.view_check`).

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_memloc import MemorizationMonitor
        >>> monitor = MemorizationMonitor(torch.rand(8, 3, 16, 16), every_n_epochs=1, views=2,
        ...                               encoder="backbone", reference="reference")
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[monitor], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        candidates: Union[Tensor, Dataset, str, os.PathLike],
        *,
        every_n_epochs: Optional[int] = None,
        views: int = 10,
        transform: Optional[Callable] = None,
        layers: Union[str, Sequence[str]] = "auto",
        encoder: ModuleSpec = None,
        reference: Union[ModuleSpec, os.PathLike] = None,
        seed: int = 0,
        batch_size: int = 32,
        labels: LabelSpec = None,
        pairing: str = "all",
        reduction: str = "mean",
        negative: str = "clamp",
        top_k: int = 50,
        threshold: float = 0.5,
        measure_on_train_start: bool = False,
        grid_size: int = 8,
        log_histograms: bool = True,
        log_figures: bool = True,
        output_dir: Optional[Union[str, os.PathLike]] = None,
        progress: bool = True,
        num_workers: int = 0,
        memory_limit: Optional[int] = None,
        control: Optional[Union[Tensor, Dataset, str, os.PathLike]] = None,
        unseen: Optional[Union[Tensor, Dataset, str, os.PathLike]] = None,
        bootstrap: int = 1000,
        confidence: float = 0.95,
        alpha: float = 0.05,
        autocast: Optional[str] = None,
        init_batchnorm: str = "recalibrate",
        overwrite: bool = False,
        layer_runs: bool = True,
        name: Optional[str] = None,
        every_n_train_steps: Optional[int] = None,
        size: Optional[int] = None,
        indices: IndexSpec = None,
        normalize: Any = None,
        check_views: str = "warn",
    ) -> None:
        super().__init__()
        every_n_epochs, every_n_train_steps = check_schedule(  # NumPy integers accepted
            None if every_n_epochs is None else check_int("every_n_epochs", every_n_epochs, 1),
            None if every_n_train_steps is None else check_int("every_n_train_steps", every_n_train_steps, 1))
        self.name, self.every_n_train_steps = check_name(name), every_n_train_steps
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"`threshold` must be in [0, 1] (UnitMem's range), got {threshold!r}.")
        grid_size = check_int("grid_size", grid_size, 0)
        if reference is not None and not isinstance(reference, (str, os.PathLike, nn.Module)) and not callable(reference):
            raise TypeError(
                f"`reference` must be None, an nn.Module, a checkpoint path or an attribute name, got {type(reference).__name__}."
            )
        # The reference may still be a path or an attribute: only whether there is one matters here.
        self.options = MeasureOptions(views=views, seed=seed, batch_size=batch_size, pairing=pairing, reduction=reduction,
                                      negative=negative, top_k=top_k, num_workers=num_workers, progress=progress,
                                      bootstrap=bootstrap, confidence=confidence, alpha=alpha, autocast=autocast,
                                      normalize=normalize, with_reference=reference is not None)
        candidates, labels = load_candidates(candidates, labels, size=size, indices=indices)
        control = None if control is None else load_candidates(control, size=size)[0]  # paths too (LightningCLI)
        unseen = None if unseen is None else load_candidates(unseen, size=size)[0]
        if init_batchnorm not in INIT_BATCHNORM:
            raise ValueError(f"`init_batchnorm` must be one of {INIT_BATCHNORM}, got {init_batchnorm!r}.")
        self.init_batchnorm = init_batchnorm
        # candidates, then control and unseen images: one view set, one pass, one sampler under DDP
        self.views, self.group_sizes, self.pool = prepare_views(candidates, self.options, transform=transform,
                                                                labels=labels, control=control, unseen=unseen)
        memory_limit = check_memory_limit(memory_limit)
        if not isinstance(overwrite, bool):
            raise TypeError(f"`overwrite` must be a bool, got {overwrite!r}.")
        self.overwrite, self._run_id, self._candidates_digest = overwrite, os.urandom(8).hex(), None
        self._foreign_files: List[str] = []  # another run's files in output_dir (refused in on_fit_start)
        self.every_n_epochs = every_n_epochs
        self.layers = layers
        self.encoder_spec = encoder
        self.reference_spec = reference
        self.threshold, self.grid_size = float(threshold), grid_size
        self.measure_on_train_start, self.log_histograms, self.log_figures = measure_on_train_start, log_histograms, log_figures
        self.output_dir = None if output_dir is None else Path(output_dir) / (name or "")
        self.memory_limit = memory_limit
        self.history: List[Dict[str, Any]] = []
        self.report: Optional[MemorizationReport] = None
        self.meter: Optional[MemorizationMeter] = None
        self._specs: Optional[List[LayerSpec]] = None
        self._num_units: Dict[str, int] = {}
        self._reference: Optional[nn.Module] = None
        self.encoder_id: Optional[str] = None  # which encoder and reference are measured (setup): fingerprint
        self.reference_id: Optional[str] = None
        self._reference_cache = ReferenceCache()  # used only for a frozen reference (never a co-trained one)
        self.layer_runs, self.view_check = bool(layer_runs), ViewCheck(check_views)
        self._loggers = MonitorLoggers(name)  # keeps what was written once (layout, per-layer writers)

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

    @property
    def candidates_digest(self) -> str:
        """A digest of the candidate set (part of the resume fingerprint; computed once)."""
        if self._candidates_digest is None:
            self._candidates_digest = guard.candidates_digest(self.views)
        return self._candidates_digest

    @property
    def layer_names(self) -> Optional[List[str]]:
        """The measured layers, resolved (``None`` until ``setup`` or the first measurement)."""
        return None if not self._specs else [spec.name for spec in self._specs]

    @property
    def state_key(self) -> str:
        extra = {k: v for k, v in (("name", self.name), ("every_n_train_steps", self.every_n_train_steps)) if v}
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, seed=self.views.seed,
                                         num_candidates=len(self.views), **extra)

    def encoder(self, pl_module: pl.LightningModule) -> nn.Module:
        """The encoder being monitored inside ``pl_module``."""
        return unwrap_compiled(resolve_module(pl_module, self.encoder_spec, "encoder"))

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
        encoder = self.encoder(pl_module)
        reference = self.reference(pl_module)
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
            self._specs, self._num_units = probe_layers(encoder, reference, self.layers, self.views.example_batch(device))
        note = check_state_memory(len(self.pool), self._num_units, reference=reference is not None,
                                  labels=self.views.has_labels, limit=self.memory_limit, device=device,
                                  num_candidates=len(self.views),
                                  alignment=keeps_alignment(self.group_sizes, self.views.views, self.pairing))
        if note:
            rank_zero_info(note)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.measure_on_train_start and not self.history and trainer.global_step == 0:  # not in a resumed run
            if self.init_batchnorm == "recalibrate":
                # BatchNorm of an untrained encoder still holds its default statistics (mean 0,
                # var 1), unlike every later measurement: measure with statistics from the pool's
                # views (see lightning_memloc.baseline); the models' own are restored afterwards.
                with recalibrated_batchnorm(self.encoder(pl_module), self.reference(pl_module), views=self.pool,
                                            batch_size=self.batch_size):
                    self._measure(trainer, pl_module, epoch=-1)
            else:
                self._measure(trainer, pl_module, epoch=-1)
        self.view_check.start(self.encoder(pl_module), self.views.view_shape)  # after the monitor's own forwards

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.view_check.step(trainer, pl_module, self)  # before a measurement of this step
        if step_due(self.every_n_train_steps, trainer.global_step, self.history):
            self._measure(trainer, pl_module, epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._measure(trainer, pl_module, epoch=epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.current_epoch - 1 if trainer.current_epoch > 0 else 0
        measured = [h["epoch"] for h in self.history]
        if self.every_n_train_steps is not None:
            if step_due(1, trainer.global_step, self.history):
                self._measure(trainer, pl_module, epoch=last)
        elif trainer.global_step > 0 and (not measured or max(measured) < last):
            self._measure(trainer, pl_module, epoch=last)

    # ------------------------------------------------------------ measurement
    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> MemorizationReport:
        encoder, reference = self.encoder(pl_module), self.reference(pl_module)
        check_reference(encoder, reference, same_weights=epoch >= 0)  # after training, a copy is an error
        device, _ = model_device_dtype(encoder)
        if reference is not None and reference not in list(pl_module.modules()):
            reference.to(device)
        if self._specs is None:
            self._specs, self._num_units = probe_layers(encoder, reference, self.layers, self.views.example_batch(device))
        meter = MemorizationMeter(self._specs, self._num_units, len(self.views), reference=reference is not None,
                                  labels=self.views.has_labels, groups=self.group_sizes, view_shape=self.views.view_shape,
                                  alignment=keeps_alignment(self.group_sizes, self.views.views, self.pairing),
                                  **self.options.meter_kwargs()).to(device)
        sampler = None
        if trainer.world_size > 1:
            sampler = DistributedSampler(self.pool, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        cache = self._reference_cache if frozen_reference(pl_module, reference) else None
        with rank_zero_buffers(trainer.world_size, encoder, reference):
            run_pass(encoder, reference, self.pool, self._specs, meter, reference_cache=cache, sampler=sampler,
                     progress=self.progress and trainer.is_global_zero, desc=f"memloc epoch {epoch}", epoch=epoch,
                     world_size=trainer.world_size, **self.options.pass_kwargs())
        meta = {**self.options.meta(views=self.views.views, seed=self.views.seed, num_candidates=len(self.views),
                                    groups=self.group_sizes, epoch=epoch, global_step=trainer.global_step),
                "init_batchnorm": self.init_batchnorm if epoch < 0 and self.init_batchnorm == "recalibrate" else "model"}
        report = meter.compute_report(torch.arange(len(self.views)), meta, evidence=self.options.evidence)
        self.report, self.meter = report, meter
        scalars = report_scalars(report, self.threshold)
        self.history.append({"epoch": epoch, "global_step": trainer.global_step, **scalars})
        grids = self.grid_size and len(self.views.view_shape) == 3  # image grids of image candidates only
        self._loggers.log(trainer, report, scalars, images=self.views.display_images if grids else None,
                          grid_size=self.grid_size, histograms=self.log_histograms, layer_runs=self.layer_runs,
                          history=self.history if self.log_figures else None)
        if self.output_dir is not None and trainer.is_global_zero:
            # Checked again (setup checked it): a folder removed during training is re-created, and a
            # path that became unusable gets an error naming `output_dir`. Writes are atomic.
            check_writable_dir(self.output_dir, argument="output_dir")
            guard.check_owner(self, self.output_dir)
            step = "" if self.every_n_train_steps is None else f"_step={trainer.global_step}"
            report.save(self.output_dir / f"report_epoch={epoch}{step}.json")
            atomic_write_text(self.output_dir / "history.json", json.dumps(self.history, indent=1))
        return report

    # ------------------------------------------------------------ checkpoint
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
