"""``MemorizationMeter``: per layer a ``UnitMem`` (``ClassMem`` with labels), with a reference one ``LayerMem``; and
the views' per-channel moments, recorded in the report's ``meta``."""

from __future__ import annotations

import itertools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_memloc.checks import check_int
from lightning_memloc.functional.unitmem import apply_negative_policy, take_ids
from lightning_memloc.report.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.states import ClassMem, LayerMem, UnitMem, ViewAlignment
from lightning_memloc.states.base import CandidateIndexedMetric
from lightning_memloc.states.distributed import reduce_states_in_place, synced_states
from lightning_memloc.states.layermem import mean_alignment
from lightning_memloc.taps.hooks import LayerSpec
from lightning_memloc.views.stats import ViewStatistics, candidate_moments, statistics_from_sums


class ViewMoments(CandidateIndexedMetric):
    """Per-channel mean and std over every pixel of every view: ``std_c = sqrt(mean_i E_i[x_c²] − mean_c²)``.

    Example:
        >>> m = ViewMoments(2, 1)
        >>> m.update(torch.tensor([0.0, 2.0]).view(2, 1, 1, 1, 1), torch.tensor([0, 1]))
        >>> m.compute()
        ViewStatistics(mean=(1.0,), std=(1.0,))
    """

    sums: Tensor
    squares: Tensor

    def __init__(self, num_candidates: int, num_channels: int, **kwargs: Any) -> None:
        super().__init__(num_candidates, state_dtype=torch.float64, **kwargs)
        self.num_channels = check_int("num_channels", num_channels, 1)
        for name in ("sums", "squares"):
            self.add_state(name, torch.zeros(num_candidates, num_channels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, views: Tensor, index: Tensor) -> None:
        """Add views (B, K, C, H, W) of candidates ``index`` (B,)."""
        if views.ndim != 5 or views.shape[2] != self.num_channels:
            raise ValueError(f"`views` must be (B, K, {self.num_channels}, H, W), got {tuple(views.shape)}.")
        idx = self._check_index(index, views.shape[0], "views")
        means, squares = candidate_moments(views)
        self.sums.index_add_(0, idx, means.to(self.sums.device))
        self.squares.index_add_(0, idx, squares.to(self.sums.device))
        self._add_counts(idx)

    def compute(self) -> ViewStatistics:  # type: ignore[override]
        """The :class:`~lightning_memloc.views.stats.ViewStatistics` of the candidates seen."""
        ids = self._seen()
        counts = self.counts[ids].unsqueeze(1)  # the mean of per-candidate means, as one "pixel" each
        return statistics_from_sums((self.sums[ids] / counts).mean(0), (self.squares[ids] / counts).mean(0), 1)


#: ``compute()`` keys that are not report fields (every other key is one, under the same name).
METRIC_ONLY_KEYS: Dict[str, Tuple[str, ...]] = {"UnitMem": ("num_candidates",), "ClassMem": ("class_argmax",),
                                                "LayerMem": ("candidate_ids",)}


def state_bytes(num_candidates: int, num_units: Mapping[str, int], *, reference: bool, labels: bool,
                dtype: torch.dtype = torch.float32, alignment: bool = False) -> int:
    """Exact bytes of :class:`MemorizationMeter`'s metric states (every DDP rank holds them all).

    ``Σ_l N·(U_l + 1)·b`` (+ ``16·N`` per layer with labels), + ``(2·L + 1)·N·b`` with a reference
    or ``(L + 1)·N·b`` with ``alignment``.

    Example:
        >>> state_bytes(50_000, {"a": 2048}, reference=True, labels=False)  # 50,000·2049·4 + 3·50,000·4
        410400000
    """
    item = torch.empty((), dtype=dtype).element_size()
    total = sum(num_candidates * (units + 1) * item + (16 * num_candidates if labels else 0)
                for units in num_units.values())
    rows = 2 * len(num_units) + 1 if reference else len(num_units) + 1 if alignment else 0  # (L|2L + 1, N) states
    return int(total + rows * num_candidates * item)


def format_bytes(n: int) -> str:
    """Readable byte count, exact for small sizes.

    Example:
        >>> format_bytes(409_800_000), format_bytes(512)
        ('390.8 MiB (409,800,000 bytes)', '512 bytes')
    """
    size, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n:,} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({n:,} bytes)"


def check_state_memory(num_rows: int, num_units: Mapping[str, int], *, reference: bool, labels: bool,
                       limit: Optional[int], device: torch.device, num_candidates: Optional[int] = None,
                       alignment: bool = False) -> Optional[str]:
    """``MemoryError`` if the metric states (:func:`state_bytes`) exceed ``limit`` bytes, before any measurement.

    ``num_rows`` counts candidates plus control / unseen images. Returns a note to log when, with no
    limit, the states take over a quarter of a GPU, else ``None``.
    """
    need = state_bytes(num_rows, num_units, reference=reference, labels=labels, alignment=alignment)
    if limit is not None and need > limit:
        raise MemoryError(
            f"the monitor's metric states need {format_bytes(need)} for {num_rows if num_candidates is None else num_candidates} "
            f"candidates and {sum(num_units.values())} units in {len(num_units)} layers, over "
            f"`memory_limit`={format_bytes(limit)} (every DDP rank holds them all; see "
            "`lightning_memloc.states.meter.state_bytes`): use fewer candidates or fewer/narrower `layers`, "
            "or raise `memory_limit`.")
    big = limit is None and device.type == "cuda" and need > torch.cuda.get_device_properties(device).total_memory // 4
    return f"[memloc] metric states need {format_bytes(need)}, over a quarter of the GPU's memory." if big else None


class MemorizationMeter(nn.Module):
    """Streaming UnitMem / ClassMem / LayerMem states for a set of layers.

    ``reference``: alignments of a reference will be given (LayerMem); ``labels``: labels will be (ClassMem);
    ``groups``: sizes of the control / unseen sets of the same pass, by name; ``alignment``: keep the encoder's
    own alignments (reference-free evidence); ``view_shape``: (C, H, W), keeps ``meta["view_stats"]``.

    Example:
        >>> m = MemorizationMeter([LayerSpec("a", "linear")], {"a": 2}, 3, reference=False, labels=False)
        >>> m.update(torch.arange(3), {"a": torch.tensor([[1., 0.], [0., 1.], [0., 1.]])})
        >>> m.compute_report(torch.arange(3)).unit_mem["a"].tolist()
        [1.0, 0.3333333432674408]
    """

    def __init__(self, layers: Sequence[LayerSpec], num_units: Mapping[str, int], num_candidates: int, *,
                 reference: bool, labels: bool, reduction: str = "mean", negative: str = "clamp", top_k: int = 50,
                 state_dtype: torch.dtype = torch.float32, groups: Optional[Mapping[str, int]] = None,
                 alignment: bool = False, view_shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.layers = list(layers)
        self.names = [spec.name for spec in self.layers]
        self.num_candidates, self.has_reference, self.has_labels = num_candidates, reference, labels
        self.reduction, self.negative, self.top_k = reduction, negative, top_k
        sync: Dict[str, Any] = dict(dist_sync_fn=reduce_states_in_place, sync_on_compute=False)
        # With labels one ClassMem per layer serves UnitMem too (same states, stored once).
        metric_class = ClassMem if labels else UnitMem
        self.units = nn.ModuleList(metric_class(num_candidates, num_units[n], reduction=reduction, negative=negative,
                                                state_dtype=state_dtype, **sync) for n in self.names)
        self.layer_mem = LayerMem(num_candidates, len(self.names), top_k=top_k, state_dtype=state_dtype,
                                  **sync) if reference else None
        self.alignment = ViewAlignment(num_candidates, len(self.names), state_dtype=state_dtype,
                                       **sync) if alignment and not reference else None
        self.keeps_alignment = bool(alignment)
        # Extra image groups (control, unseen) measured in the same pass: rows of the pooled view
        # set after the candidates, each into its own states (no labels, no ClassMem).
        self.group_sizes: Dict[str, int] = dict(groups or {})
        self.groups = nn.ModuleDict({
            name: MemorizationMeter(self.layers, num_units, size, reference=reference, labels=False, reduction=reduction,
                                    negative=negative, top_k=top_k, state_dtype=state_dtype,
                                    alignment=alignment and name == "unseen")
            for name, size in self.group_sizes.items()})
        self.view_moments = None if view_shape is None or len(view_shape) != 3 else ViewMoments(
            num_candidates + sum(self.group_sizes.values()), int(view_shape[0]), **sync)

    @property
    def device(self) -> torch.device:
        """Device of the metric states (they are not buffers, so ``buffers()`` cannot tell)."""
        return self.units[0].device

    @property
    def needs_alignment(self) -> bool:
        """Whether :meth:`update` needs the encoder's alignments."""
        return self.layer_mem is not None or self.alignment is not None

    def update(self, index: Tensor, unit_means: Mapping[str, Tensor],
               align_encoder: Optional[Mapping[str, Tensor]] = None,
               align_reference: Optional[Mapping[str, Tensor]] = None, labels: Optional[Tensor] = None) -> None:
        """Add per-layer (B, U) unit means and (B,) alignments at ``index`` (pooled positions with ``groups``)."""
        update = self._route if self.group_sizes else self._update_own
        update(index, unit_means, align_encoder, align_reference, labels)

    def update_views(self, index: Tensor, views: Tensor) -> None:
        """Add views (B, K, C, H, W) at pooled positions ``index`` to the view statistics (if kept)."""
        if self.view_moments is not None:
            self.view_moments.update(views, index.to(self.device))

    def _update_own(self, index: Tensor, unit_means: Mapping[str, Tensor], align_encoder: Optional[Mapping[str, Tensor]],
                    align_reference: Optional[Mapping[str, Tensor]], labels: Optional[Tensor]) -> None:
        if self.has_labels and labels is None:
            raise ValueError("this meter was built with labels=True: pass `labels` to update().")
        for name, metric in zip(self.names, self.units):
            metric.update(unit_means[name], index, *([labels] if self.has_labels else []))
        if self.layer_mem is not None:
            if align_encoder is None or align_reference is None:
                raise ValueError("this meter was built with reference=True: pass both alignments to update().")
            self.layer_mem.update(torch.stack([align_encoder[n] for n in self.names]),
                                  torch.stack([align_reference[n] for n in self.names]), index)
        if self.alignment is not None:
            if align_encoder is None:
                raise ValueError("this meter was built with alignment=True: pass `align_encoder` to update().")
            self.alignment.update(torch.stack([align_encoder[n] for n in self.names]), index)

    def _route(self, index: Tensor, unit_means: Mapping[str, Tensor], align_encoder: Optional[Mapping[str, Tensor]],
               align_reference: Optional[Mapping[str, Tensor]], labels: Optional[Tensor]) -> None:
        ends = list(itertools.accumulate([self.num_candidates, *self.group_sizes.values()]))
        for meter, lo, hi in zip([self, *(self.groups[name] for name in self.group_sizes)], [0] + ends[:-1], ends):
            rows = ((index >= lo) & (index < hi)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sub = {key: None if values is None else {n: v[rows.to(v.device)] for n, v in values.items()}
                   for key, values in (("unit_means", unit_means), ("align_encoder", align_encoder),
                                       ("align_reference", align_reference))}
            if meter is self:
                self._update_own(index[rows] - lo, **sub,
                                 labels=None if labels is None else labels[rows.to(labels.device)])
            else:
                meter.update(index[rows] - lo, **sub)

    def unit_means(self, raw: bool = False) -> Dict[str, Tensor]:
        """Layer -> ``(N, U)`` mean activations after the negative policy (before it with ``raw``); collective."""
        out = {}
        for name, metric in zip(self.names, self.units):
            with synced_states(metric):
                try:
                    out[name] = self._policy_means(metric, raw)
                except ValueError as err:  # negative="error" on a layer with negative activations
                    raise type(err)(f"layer {name!r}: {err}") from err
        return out

    def _policy_means(self, metric: UnitMem, raw: bool = False) -> Tensor:
        mu = metric.mean_activations()[1].detach().double()
        return (mu if raw else apply_negative_policy(mu, self.negative)).cpu()

    def encoder_alignment(self) -> Dict[str, Tensor]:
        """Layer -> ``(N,)`` the encoder's mean view alignment (collective)."""
        return self.alignments(sslmem=False, encoder=True)[1]  # type: ignore[return-value]

    def alignments(self, *, sslmem: bool, encoder: bool) -> Tuple[Optional[Dict[str, Tensor]], Optional[Dict[str, Tensor]]]:
        """``(raw SSLMem, encoder alignment)`` per layer, each ``(N,)`` or ``None``, from one sync (collective)."""
        if not (sslmem or encoder):
            return None, None
        if sslmem and self.layer_mem is None:
            raise ValueError("this meter was built without a reference: there is no SSLMem.")
        metric = self.layer_mem if self.layer_mem is not None else self.alignment
        if encoder and metric is None:
            raise ValueError("this meter keeps no alignments: build it with a reference or alignment=True.")
        with synced_states(metric):  # the alignments first: compute() restores the local states when it ends
            align = mean_alignment(metric) if encoder else None  # type: ignore[arg-type]
            raw = self.layer_mem.compute()["sslmem_raw"].detach().double().cpu() if sslmem else None  # type: ignore[union-attr]
        return tuple(None if v is None else {n: v[i] for i, n in enumerate(self.names)}  # type: ignore[return-value]
                     for v in (raw, align))

    def compute_report(self, candidate_ids: Tensor, meta: Optional[Dict[str, Any]] = None,
                       evidence: Optional[EvidenceOptions] = None) -> MemorizationReport:
        """Compute every metric into a report for ``(N,)`` user-facing ``candidate_ids`` (collective)."""
        ids = candidate_ids.detach().cpu().long()
        align: Dict[str, Tensor] = {}  # the encoder's alignments, for the reference-free evidence
        # layer -> values; ``means``: the evidence's per-candidate means, from the same sync as compute()
        unit_mem, unit_argmax, dead, means = {}, {}, {}, {}
        class_mem: Optional[Dict[str, Tensor]] = {} if self.has_labels else None
        for name, metric in zip(self.names, self.units):
            with synced_states(metric):  # one sync per metric (states summed in place, restored after)
                try:
                    if evidence is not None:  # before compute(), which restores the local states when it ends
                        means[name] = self._policy_means(metric, raw=True)  # the evidence applies the policy
                    out = metric.compute()
                except ValueError as err:  # e.g. negative="error" on a layer with negative activations
                    raise type(err)(f"layer {name!r}: {err}") from err
            unit_mem[name] = out["unit_mem"].detach().float().cpu()
            unit_argmax[name] = take_ids(ids, out["unit_argmax"].detach().cpu().long())
            dead[name] = out["dead_units"].detach().cpu().bool()
            if class_mem is not None:
                class_mem[name] = out["class_mem"].detach().float().cpu()
        kwargs: Dict[str, Any] = {}
        if self.layer_mem is not None:
            with synced_states(self.layer_mem):
                if evidence is not None and self.keeps_alignment:  # f's alignments, same sync, before compute()
                    align = dict(zip(self.names, mean_alignment(self.layer_mem)))  # restores the local states
                out = self.layer_mem.compute()
            seen = out["candidate_ids"].detach().cpu().long()
            out = {key: value for key, value in out.items() if key not in METRIC_ONLY_KEYS["LayerMem"]}
            if seen.numel() != ids.numel():
                missing = sorted(set(range(ids.numel())) - set(seen.tolist()))[:10]
                raise RuntimeError(f"LayerMem saw {seen.numel()} of {ids.numel()} candidates; missing positions {missing}.")
            for field, value in out.items():
                value = value.detach().cpu()
                if field.endswith("_ids"):  # positions -> user-facing ids
                    kwargs[field] = ids[value.long()]
                elif value.ndim == 2:  # (L, N) per-candidate values of each layer
                    kwargs[field] = {n: value[i].float() for i, n in enumerate(self.names)}
                else:  # (L,) one value per layer
                    kwargs[field] = {n: float(value[i]) for i, n in enumerate(self.names)}
        report_evidence = None
        if evidence is not None:
            unseen = self.groups["unseen"] if "unseen" in self.group_sizes else None
            try:  # raw means (the evidence shifts candidates and unseen images together); checked first
                unseen_means = unseen.unit_means(raw=True) if unseen is not None else None
                if unseen is not None and self.negative == "error":
                    unseen.unit_means()
            except ValueError as err:
                raise type(err)(f"the `unseen` images, {err}") from err
            with_ref, aligned = self.layer_mem is not None, unseen is not None and self.keeps_alignment
            control = self.groups["control"] if "control" in self.group_sizes and with_ref else None
            if aligned and not with_ref:
                align = self.encoder_alignment()
            unseen_raw, unseen_align = (unseen.alignments(sslmem=with_ref, encoder=aligned) if unseen is not None
                                        else (None, None))
            report_evidence = compute_evidence(
                list(self.names), unit_means=means, reduction=self.reduction, top_k=self.top_k,
                sslmem_raw={n: v.double() for n, v in kwargs["sslmem_raw"].items()} if with_ref else None,
                control_raw=control.alignments(sslmem=True, encoder=False)[0] if control is not None else None,
                unseen_raw=unseen_raw, unseen_unit_means=unseen_means, options=evidence, negative=self.negative,
                **({"align": align, "unseen_align": unseen_align} if aligned else {}))
        meta = dict(meta or {})
        if self.view_moments is not None:
            with synced_states(self.view_moments):
                meta["view_stats"] = self.view_moments.compute().as_meta()
        return MemorizationReport(evidence=report_evidence, layers=list(self.names),
                                  layer_kinds={spec.name: spec.kind for spec in self.layers}, candidate_ids=ids,
                                  unit_mem=unit_mem, unit_argmax=unit_argmax, dead_units=dead, class_mem=class_mem,
                                  meta=meta, **kwargs)

    def reset(self) -> None:
        """Clear every state (start a new pass)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset") and hasattr(module, "_defaults"):
                module.reset()
