"""``MemorizationMeter``: the streaming metric states of one measurement pass.

One meter holds, for every tapped layer, a :class:`~lightning_memloc.metrics.UnitMem` (and a
:class:`~lightning_memloc.metrics.ClassMem` when labels are known) and, with a reference encoder,
one multi-layer :class:`~lightning_memloc.metrics.LayerMem`. States are indexed by candidate id
and reduced with ``sum`` across processes, so sharded (DDP) passes give the single-process
answer; nothing larger than O(N·U) per layer is kept (Wang et al., *Localizing Memorization in
SSL Vision Encoders*, NeurIPS 2024).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_memloc.distributed import reduce_states_in_place, synced_states  # reduce_...: re-exported
from lightning_memloc.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.functional.unitmem import apply_negative_policy, take_ids
from lightning_memloc.metrics import ClassMem, LayerMem, UnitMem
from lightning_memloc.report import MemorizationReport
from lightning_memloc.taps import LayerSpec


def state_bytes(
    num_candidates: int,
    num_units: Mapping[str, int],
    *,
    reference: bool,
    labels: bool,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Bytes held by a meter's states (before any result is computed): exactly the sum of the
    sizes of :class:`MemorizationMeter`'s metric states.

    With ``N`` candidates, ``L`` layers of ``U_l`` units and ``b`` bytes per element of ``dtype``:
    UnitMem keeps per layer a sum per candidate per unit and a count per candidate,
    ``N·(U_l + 1)·b`` (ClassMem adds two int64 label states, ``16·N``); LayerMem keeps the
    encoder's and the reference's alignment sums per candidate per layer and one count per
    candidate, ``(2·L + 1)·N·b``. Every rank of a DDP run holds the full states (they are indexed
    by candidate id); ``compute`` needs temporary space on top (see ``docs/ddp.md``).

    Example:
        >>> state_bytes(50_000, {"a": 2048}, reference=False, labels=False)
        409800000
        >>> state_bytes(50_000, {"a": 2048}, reference=True, labels=False)  # + 3·N·4 for one layer
        410400000
    """
    item = torch.empty((), dtype=dtype).element_size()
    per_layer = sum(num_candidates * (units + 1) * item + (16 * num_candidates if labels else 0)
                    for units in num_units.values())
    total = per_layer
    if reference:
        total += (2 * len(num_units) + 1) * num_candidates * item
    return int(total)


class MemorizationMeter(nn.Module):
    """Streaming UnitMem / ClassMem / LayerMem states for a set of layers.

    Args:
        layers: the tapped layers, in forward order.
        num_units: layer name -> number of units.
        num_candidates: size of the candidate set (ids are ``0 .. num_candidates - 1``).
        reference: whether alignments of a reference encoder will be given (LayerMem).
        labels: whether labels will be given (ClassMem).
        reduction: ``"mean"`` (the paper) or ``"median"`` (the authors' code) for μ-max.
        negative: policy for negative activations, see
            :func:`lightning_memloc.functional.apply_negative_policy`.
        top_k: size of the top-k / least-k candidate groups for LayerMem.
        state_dtype: dtype of the accumulated states.

    Example:
        >>> import torch
        >>> from lightning_memloc.taps import LayerSpec
        >>> m = MemorizationMeter([LayerSpec("a", "linear")], {"a": 2}, 3, reference=False, labels=False)
        >>> m.update(torch.arange(3), {"a": torch.tensor([[1., 0.], [0., 1.], [0., 1.]])})
        >>> r = m.compute_report(torch.arange(3))
        >>> r.unit_mem["a"].tolist()
        [1.0, 0.3333333432674408]
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        num_units: Mapping[str, int],
        num_candidates: int,
        *,
        reference: bool,
        labels: bool,
        reduction: str = "mean",
        negative: str = "clamp",
        top_k: int = 50,
        state_dtype: torch.dtype = torch.float32,
        groups: Optional[Mapping[str, int]] = None,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.names = [spec.name for spec in self.layers]
        self.num_candidates = num_candidates
        self.has_reference = reference
        self.has_labels = labels
        # With labels one ClassMem per layer serves UnitMem too (same states, stored once).
        metric_class = ClassMem if labels else UnitMem
        self.units = nn.ModuleList(
            metric_class(num_candidates, num_units[n], reduction=reduction, negative=negative, state_dtype=state_dtype,
                         dist_sync_fn=reduce_states_in_place, sync_on_compute=False)
            for n in self.names
        )
        self.layer_mem = LayerMem(num_candidates, len(self.names), top_k=top_k, state_dtype=state_dtype,
                                  dist_sync_fn=reduce_states_in_place, sync_on_compute=False) if reference else None
        # Extra image groups (control, unseen) measured in the same pass: rows of the pooled view
        # set after the candidates, each into its own states (no labels, no ClassMem).
        self.group_sizes: Dict[str, int] = dict(groups or {})
        self.groups = nn.ModuleDict({
            name: MemorizationMeter(self.layers, num_units, size, reference=reference, labels=False, reduction=reduction,
                                    negative=negative, top_k=top_k, state_dtype=state_dtype)
            for name, size in self.group_sizes.items()
        })
        self.reduction, self.negative, self.top_k = reduction, negative, top_k

    @property
    def device(self) -> torch.device:
        """Device of the metric states (moved with ``.to``; torchmetrics states are not buffers, so
        ``meter.buffers()`` is empty and cannot tell)."""
        return self.units[0].device

    def update(
        self,
        index: Tensor,
        unit_means: Mapping[str, Tensor],
        align_encoder: Optional[Mapping[str, Tensor]] = None,
        align_reference: Optional[Mapping[str, Tensor]] = None,
        labels: Optional[Tensor] = None,
    ) -> None:
        """Add one batch: per-layer (B, U) unit means and (B,) alignments of candidates ``index``.

        With ``groups``, ``index`` holds positions in the pooled set (candidates first, then each
        group in order): rows are routed to the candidates' or their group's states.
        """
        update = self._route if self.group_sizes else self._update_own
        update(index, unit_means, align_encoder, align_reference, labels)

    def _update_own(self, index: Tensor, unit_means: Mapping[str, Tensor], align_encoder: Optional[Mapping[str, Tensor]],
                    align_reference: Optional[Mapping[str, Tensor]], labels: Optional[Tensor]) -> None:
        if self.has_labels and labels is None:
            raise ValueError("this meter was built with labels=True: pass `labels` to update().")
        for name, metric in zip(self.names, self.units):
            if self.has_labels:
                metric.update(unit_means[name], index, labels)
            else:
                metric.update(unit_means[name], index)
        if self.layer_mem is not None:
            if align_encoder is None or align_reference is None:
                raise ValueError("this meter was built with reference=True: pass both alignments to update().")
            self.layer_mem.update(
                torch.stack([align_encoder[n] for n in self.names]),
                torch.stack([align_reference[n] for n in self.names]),
                index,
            )

    def _route(self, index: Tensor, unit_means: Mapping[str, Tensor], align_encoder: Optional[Mapping[str, Tensor]],
               align_reference: Optional[Mapping[str, Tensor]], labels: Optional[Tensor]) -> None:
        start, end = 0, self.num_candidates
        targets = [(self, 0, self.num_candidates)]
        for name, size in self.group_sizes.items():
            start, end = end, end + size
            targets.append((self.groups[name], start, end))
        for meter, lo, hi in targets:
            rows = ((index >= lo) & (index < hi)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue

            def pick(values: Optional[Mapping[str, Tensor]]) -> Optional[Dict[str, Tensor]]:
                return None if values is None else {n: v[rows.to(v.device)] for n, v in values.items()}

            sub = dict(index=index[rows] - lo, unit_means=pick(unit_means), align_encoder=pick(align_encoder),
                       align_reference=pick(align_reference))
            if meter is self:
                self._update_own(**sub, labels=None if labels is None else labels[rows.to(labels.device)])
            else:
                meter.update(**sub)

    def unit_means(self) -> Dict[str, Tensor]:
        """Layer -> ``(N, U)`` per-candidate mean activations after the negative policy, synced
        across processes (collective under DDP: call on every rank)."""
        out = {}
        for name, metric in zip(self.names, self.units):
            with synced_states(metric):
                out[name] = self._policy_means(metric)
        return out

    def _policy_means(self, metric: UnitMem) -> Tensor:
        _, mu = metric.mean_activations()
        return apply_negative_policy(mu.detach().double(), self.negative).cpu()

    def sslmem_raw(self) -> Dict[str, Tensor]:
        """Layer -> ``(N,)`` raw SSLMem (collective under DDP); needs ``reference=True``."""
        if self.layer_mem is None:
            raise ValueError("this meter was built without a reference: there is no SSLMem.")
        with synced_states(self.layer_mem):
            raw = self.layer_mem.compute()["sslmem_raw"]
        return {n: raw[i].detach().double().cpu() for i, n in enumerate(self.names)}

    def compute_report(self, candidate_ids: Tensor, meta: Optional[Dict[str, Any]] = None,
                       evidence: Optional[EvidenceOptions] = None) -> MemorizationReport:
        """Compute every metric (collective under DDP: call on every rank) into a report.

        Args:
            candidate_ids: (N,) user-facing ids of the candidates, by position.
            meta: settings recorded in the report.
        """
        ids = candidate_ids.detach().cpu().long()
        unit_mem: Dict[str, Tensor] = {}
        unit_argmax: Dict[str, Tensor] = {}
        dead: Dict[str, Tensor] = {}
        class_mem: Optional[Dict[str, Tensor]] = {} if self.has_labels else None
        means: Dict[str, Tensor] = {}  # the evidence's per-candidate means, from the same sync as compute()
        for name, metric in zip(self.names, self.units):
            with synced_states(metric):  # one sync per metric (states summed in place, restored after)
                try:
                    if evidence is not None:  # before compute(), which restores the local states when it ends
                        means[name] = self._policy_means(metric)
                    out = metric.compute()
                except ValueError as err:  # e.g. negative="error" on a layer with negative activations
                    raise type(err)(f"layer {name!r}: {err}") from err
            unit_mem[name] = out["unit_mem"].detach().float().cpu()
            unit_argmax[name] = take_ids(ids, out["unit_argmax" if self.has_labels else "argmax"].detach().cpu().long())
            dead[name] = out["dead"].detach().cpu().bool()
            if class_mem is not None:
                class_mem[name] = out["class_mem"].detach().float().cpu()
        kwargs: Dict[str, Any] = {}
        if self.layer_mem is not None:
            with synced_states(self.layer_mem):
                out = self.layer_mem.compute()
            seen = out["candidate_ids"].detach().cpu().long()
            if seen.numel() != ids.numel():
                missing = sorted(set(range(ids.numel())) - set(seen.tolist()))[:10]
                raise RuntimeError(f"LayerMem saw {seen.numel()} of {ids.numel()} candidates; missing positions {missing}.")
            kwargs = {
                "sslmem": {n: out["sslmem"][i].detach().float().cpu() for i, n in enumerate(self.names)},
                "sslmem_raw": {n: out["sslmem_raw"][i].detach().float().cpu() for i, n in enumerate(self.names)},
                "layer_mem": {n: float(out["layer_mem"][i]) for i, n in enumerate(self.names)},
                "delta_layer_mem": {n: float(out["delta_layer_mem"][i]) for i, n in enumerate(self.names)},
                "layer_mem_top": {n: float(out["layer_mem_top"][i]) for i, n in enumerate(self.names)},
                "layer_mem_least": {n: float(out["layer_mem_least"][i]) for i, n in enumerate(self.names)},
                "top_ids": ids[out["top_ids"].detach().cpu().long()],
                "least_ids": ids[out["least_ids"].detach().cpu().long()],
            }
        report_evidence = None
        if evidence is not None:
            unseen = self.groups["unseen"] if "unseen" in self.group_sizes else None
            control = self.groups["control"] if "control" in self.group_sizes else None
            with_ref = self.layer_mem is not None
            report_evidence = compute_evidence(
                list(self.names), unit_means=means, reduction=self.reduction, top_k=self.top_k,
                sslmem_raw={n: v.double() for n, v in kwargs["sslmem_raw"].items()} if with_ref else None,
                control_raw=control.sslmem_raw() if control is not None and with_ref else None,
                unseen_raw=unseen.sslmem_raw() if unseen is not None and with_ref else None,
                unseen_unit_means=unseen.unit_means() if unseen is not None else None, options=evidence)
        return MemorizationReport(
            evidence=report_evidence,
            layers=list(self.names),
            layer_kinds={spec.name: spec.kind for spec in self.layers},
            candidate_ids=ids,
            unit_mem=unit_mem,
            unit_argmax=unit_argmax,
            dead_units=dead,
            class_mem=class_mem,
            meta=dict(meta or {}),
            **kwargs,
        )

    def reset(self) -> None:
        """Clear every state (start a new pass)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset") and hasattr(module, "_defaults"):
                module.reset()
