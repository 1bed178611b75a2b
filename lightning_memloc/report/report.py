"""``MemorizationReport``: the result of one measurement pass, every layer's numbers, saved as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import torch
from torch import Tensor

from lightning_memloc.checks import check_json_meta, check_report_values
from lightning_memloc.errors import ReportFormatError
from lightning_memloc.report.evidence import Evidence
from lightning_memloc.io import PathLike, atomic_write_text

FORMAT = "lightning_memloc.MemorizationReport"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1 had no evidence section

LayerRanking = Literal["layer_mem", "delta_layer_mem", "unit_mem"]
_TENSOR_DICTS = dict(unit_mem=torch.float32, unit_argmax=torch.long, dead_units=torch.bool, class_mem=torch.float32,
                     sslmem=torch.float32, sslmem_raw=torch.float32)
_FLOAT_DICTS = ("layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least")


def _ids(values: Any, name: str) -> Tensor:
    """A JSON list of integer ids as a ``LongTensor``; a fraction or a nested list is refused, not truncated."""
    ids = torch.tensor(values)
    if ids.ndim != 1 or not (ids.numel() == 0 or ids.dtype == torch.long):
        raise ReportFormatError(f"`{name}` must be a flat list of integer ids, got {str(values)[:60]}.")
    return ids.to(torch.long)


@dataclass
class MemorizationReport:
    """Memorization of one encoder on one candidate set, layer by layer (per-layer dicts keyed by layer name).

    Attributes:
        layers: tapped layer names (as in ``named_modules()``), in forward order.
        layer_kinds: layer -> ``"conv"``, ``"linear"``, ``"attention"`` or ``"mlp"``.
        candidate_ids: ``(N,)`` ids of the candidates (positions in the candidate set unless given).
        unit_mem, unit_argmax, dead_units: ``(U,)`` UnitMem in [0, 1], μmax candidate id (-1: dead unit), dead.
        class_mem: ``(U,)`` ClassMem, when labels were available.
        sslmem, sslmem_raw: ``(N,)`` normalised / raw SSLMem = align(g) − align(f) (with a reference).
        layer_mem, delta_layer_mem: LayerMem (mean normalised SSLMem) and ΔLayerMem (first layer: its LayerMem).
        layer_mem_top, layer_mem_least: LayerMem over the top-k / least-k candidates (ranked at the last layer).
        top_ids, least_ids: ``(k,)`` candidate ids with the highest / lowest SSLMem at the last layer.
        meta: measurement settings (views, seed, pairing, reduction, negative, top_k, epoch, ...).
        evidence: intervals, controls and tests (:class:`~lightning_memloc.report.evidence.Evidence`).
        analyses: results of :mod:`lightning_memloc.analyses` by name (JSON-serialisable dicts).

    Example:
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"},
        ...     candidate_ids=torch.arange(3), unit_mem={"a": torch.tensor([0.1, 0.7])},
        ...     unit_argmax={"a": torch.tensor([0, 2])}, dead_units={"a": torch.tensor([False, False])})
        >>> r.top_units("a", 1).tolist()
        [1]
    """

    layers: List[str]
    layer_kinds: Dict[str, str]
    candidate_ids: Tensor
    unit_mem: Dict[str, Tensor]
    unit_argmax: Dict[str, Tensor]
    dead_units: Dict[str, Tensor]
    class_mem: Optional[Dict[str, Tensor]] = None
    sslmem: Optional[Dict[str, Tensor]] = None
    sslmem_raw: Optional[Dict[str, Tensor]] = None
    layer_mem: Optional[Dict[str, float]] = None
    delta_layer_mem: Optional[Dict[str, float]] = None
    layer_mem_top: Optional[Dict[str, float]] = None
    layer_mem_least: Optional[Dict[str, float]] = None
    top_ids: Optional[Tensor] = None
    least_ids: Optional[Tensor] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    evidence: Optional[Evidence] = None
    analyses: Dict[str, Any] = field(default_factory=dict)  # lightning_memloc.analyses results, JSON as is

    @property
    def has_reference(self) -> bool:
        """Whether SSLMem / LayerMem were measured (they need a reference encoder)."""
        return self.layer_mem is not None

    @property
    def num_candidates(self) -> int:
        """Number of candidates measured."""
        return int(self.candidate_ids.numel())

    def _layer(self, layer: Optional[str]) -> str:
        """``layer`` (default: the last), checked to be one of the report's."""
        layer = self.layers[-1] if layer is None else layer
        if layer not in self.layers:
            raise KeyError(f"layer {layer!r} is not in this report; its layers are {self.layers}.")
        return layer

    def _need_reference(self, what: str) -> None:
        if not self.has_reference:
            raise ValueError(f"{what} needs SSLMem, which needs a reference encoder: measure with `reference=...`.")

    def unit_mem_mean(self) -> Dict[str, float]:
        """Mean UnitMem of every layer (dead units score 0)."""
        return {layer: float(self.unit_mem[layer].float().mean()) for layer in self.layers}

    def unit_mem_frac_above(self, threshold: float = 0.5) -> Dict[str, float]:
        """Fraction of units per layer whose UnitMem exceeds ``threshold``."""
        return {layer: float((self.unit_mem[layer] > threshold).float().mean()) for layer in self.layers}

    def num_dead_units(self) -> Dict[str, int]:
        """Number of dead units per layer."""
        return {layer: int(self.dead_units[layer].sum()) for layer in self.layers}

    def top_layers(self, k: int = 1, by: LayerRanking = "layer_mem", largest: bool = True) -> List[str]:
        """The ``k`` layers ranked ``by`` LayerMem, ΔLayerMem (with a reference) or UnitMem; ties keep layer order."""
        if by == "unit_mem":
            scores = self.unit_mem_mean()
        elif by in ("layer_mem", "delta_layer_mem"):
            self._need_reference(f"top_layers(by={by!r})")
            scores = getattr(self, by)
        else:
            raise ValueError(f"`by` must be 'layer_mem', 'delta_layer_mem' or 'unit_mem', got {by!r}.")
        if k < 0:
            raise ValueError(f"`k` must be >= 0, got {k}.")
        order = sorted(range(len(self.layers)), key=lambda i: (-scores[self.layers[i]] if largest else scores[self.layers[i]], i))
        return [self.layers[i] for i in order[:k]]

    def top_units(self, layer: str, k: int = 10, largest: bool = True) -> Tensor:
        """Indices of the ``k`` units of ``layer`` with the highest (or lowest) UnitMem."""
        return torch.sort(self.unit_mem[self._layer(layer)], descending=largest, stable=True).indices[:k]

    def most_memorized(self, k: int = 10, layer: Optional[str] = None, largest: bool = True) -> Tensor:
        """Candidate ids ranked by SSLMem at ``layer`` (default: the last layer)."""
        self._need_reference("most_memorized()")
        order = torch.sort(self.sslmem[self._layer(layer)], descending=largest, stable=True).indices[:k]
        return self.candidate_ids[order]

    def candidate_scores(self, layer: Optional[str] = None) -> Tensor:
        """``(N,)`` SSLMem at ``layer`` (default last), else the summed UnitMem of the units it is the μmax of."""
        layer = self._layer(layer)
        if self.sslmem is not None:  # a hand-made report may hold LayerMem without per-candidate SSLMem
            return self.sslmem[layer].clone()
        position = {int(c): i for i, c in enumerate(self.candidate_ids.tolist())}
        alive = ~self.dead_units[layer]  # dead units have no μmax candidate (argmax -1)
        owners = torch.tensor([position[int(c)] for c in self.unit_argmax[layer][alive].tolist()], dtype=torch.long)
        scores = torch.zeros(self.num_candidates, dtype=torch.float32)
        return scores.index_add_(0, owners, self.unit_mem[layer][alive].float())

    def summary_table(self, threshold: float = 0.5) -> str:
        """Plain-text summary: figures, intervals, controls, verdict (:mod:`lightning_memloc.report.table`)."""
        from lightning_memloc.report.table import format_summary

        return format_summary(self, threshold)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (tensors as lists)."""
        out: Dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "layers": list(self.layers),
                               "layer_kinds": dict(self.layer_kinds), "candidate_ids": self.candidate_ids.tolist()}
        for name in (*_TENSOR_DICTS, *_FLOAT_DICTS):
            value = getattr(self, name)
            out[name] = None if value is None else {k: v.tolist() if name in _TENSOR_DICTS else float(v)
                                                    for k, v in value.items()}
        for name in ("top_ids", "least_ids"):
            out[name] = None if getattr(self, name) is None else getattr(self, name).tolist()
        out.update(meta=self.meta, evidence=None if self.evidence is None else self.evidence.to_dict(),
                   analyses=self.analyses)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "MemorizationReport":
        """Inverse of :meth:`to_dict`; validates the structure."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ReportFormatError(f"not a MemorizationReport (expected 'format': {FORMAT!r}).")
        if data.get("version") not in _READABLE_VERSIONS:
            raise ReportFormatError(f"report format version {data.get('version')!r} is not supported (this library "
                                    f"reads {_READABLE_VERSIONS}).")
        try:
            kwargs: Dict[str, Any] = {"layers": [str(x) for x in data["layers"]],
                                      "layer_kinds": {str(k): str(v) for k, v in data["layer_kinds"].items()},
                                      "candidate_ids": _ids(data["candidate_ids"], "candidate_ids"),
                                      "meta": dict(data.get("meta") or {}),
                                      "analyses": dict(data.get("analyses") or {})}
            for name in (*_TENSOR_DICTS, *_FLOAT_DICTS):
                value, dtype = data.get(name), _TENSOR_DICTS.get(name)
                kwargs[name] = None if value is None else {
                    k: float(v) if dtype is None else torch.tensor(v, dtype=dtype) for k, v in value.items()}
            for name in ("top_ids", "least_ids"):
                kwargs[name] = None if data.get(name) is None else _ids(data[name], name)
            kwargs["evidence"] = None if data.get("evidence") is None else Evidence.from_dict(data["evidence"])
        except ReportFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ReportFormatError(f"report is missing or has malformed fields: {err!r}") from err
        report = cls(**kwargs)
        report.validate()
        return report

    def validate(self) -> None:
        """Check internal consistency (layer keys, shapes); raises :class:`ReportFormatError`."""
        n = self.num_candidates
        for name in (*_TENSOR_DICTS, *_FLOAT_DICTS):
            value = getattr(self, name)
            if value is None and name in ("unit_mem", "unit_argmax", "dead_units"):
                raise ReportFormatError(f"`{name}` is missing: every report has UnitMem, its argmax and dead units.")
            if value is not None and set(value) != set(self.layers):
                raise ReportFormatError(f"`{name}` has layers {sorted(value)}, expected {sorted(self.layers)}.")
        for layer in self.layers:
            if self.unit_mem[layer].shape != self.unit_argmax[layer].shape or self.unit_mem[layer].shape != self.dead_units[layer].shape:
                raise ReportFormatError(f"unit arrays of layer {layer!r} differ in length.")
            for name in ("sslmem", "sslmem_raw"):
                value = getattr(self, name)
                if value is not None and value[layer].shape != (n,):
                    raise ReportFormatError(f"`{name}[{layer!r}]` has shape {tuple(value[layer].shape)}, expected ({n},).")
            for name in _FLOAT_DICTS:
                value = getattr(self, name)
                if value is not None and not math.isfinite(value[layer]):
                    raise ReportFormatError(f"`{name}[{layer!r}]` is not finite.")
        if self.evidence is not None and set(self.evidence.layers) != set(self.layers):
            raise ReportFormatError(f"`evidence` has layers {sorted(self.evidence.layers)}, expected {sorted(self.layers)}.")
        check_report_values(self)  # UnitMem in [0, 1], μ-max ids among the candidates (-1: dead unit)

    def save(self, path: PathLike) -> Path:
        """Write the report as JSON, atomically; return the path.

        Raises:
            ReportFormatError: the report is inconsistent; TypeError: a ``meta`` / ``analyses`` value is not JSON.
        """
        self.validate()
        for name in ("meta", "analyses"):
            check_json_meta(getattr(self, name), name)
        if self.evidence is not None:
            check_json_meta(self.evidence.meta, "evidence.meta")
        atomic_write_text(Path(path), json.dumps(self.to_dict()))
        return Path(path)

    @classmethod
    def load(cls, path: PathLike) -> "MemorizationReport":
        """Read a report written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``; ReportFormatError: the file is corrupt, truncated or not a report.
        """
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no report file at {str(source)!r}: check the path (reports are written by `report.save(path)`).")
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReportFormatError(f"{str(source)!r} is not valid report JSON (corrupt or truncated): {err}") from err
        try:
            return cls.from_dict(data)
        except ReportFormatError as err:
            raise ReportFormatError(f"{str(source)!r}: {err} Re-create it with `report.save(path)`.") from err

    def allclose(self, other: "MemorizationReport", atol: float = 1e-6) -> bool:
        """Whether two reports hold the same layers, ids and numbers (up to ``atol``)."""
        if self.layers != other.layers or not torch.equal(self.candidate_ids, other.candidate_ids):
            return False
        for name in (*_TENSOR_DICTS, *_FLOAT_DICTS):
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None:
                same = a is b  # both missing
            elif name in _TENSOR_DICTS:
                same = all(torch.allclose(a[k].double(), b[k].double(), atol=atol) for k in self.layers)
            else:
                same = not any(abs(a[k] - b[k]) > atol for k in self.layers)  # NaN == NaN here, as before
            if not same:
                return False
        return True
