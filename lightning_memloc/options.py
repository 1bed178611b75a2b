"""``MeasureOptions``: the measurement settings shared by ``measure()``, the monitor and ``memloc analyze``.

One measurement of Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024)
is defined by the views (K, seed), how alignments pair views (``pairing``), how μ-max reduces the
other candidates (``reduction``), the policy for negative activations, the size of LayerMem's
top-k groups, and the resampling of its evidence. :func:`~lightning_memloc.measure`, the
:class:`~lightning_memloc.callbacks.MemorizationMonitor` and ``memloc analyze`` keep their flat
keyword arguments (as Lightning's ``Trainer`` does); each builds one frozen ``MeasureOptions``
from them, which validates every value once (before any work) and gives what the pass, the meter,
the report's ``meta`` and the monitor's resume fingerprint need. A new option is added here,
once, and reaches every surface.

Example:
    >>> options = MeasureOptions(views=4, top_k=2)
    >>> options.meter_kwargs()
    {'reduction': 'mean', 'negative': 'clamp', 'top_k': 2}
    >>> MeasureOptions(pairing="pairs")
    Traceback (most recent call last):
    ...
    ValueError: `pairing` must be one of ('all', 'anchor'), got 'pairs'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from lightning_memloc.checks import (NEGATIVE_POLICIES, PAIRINGS, REDUCTIONS, as_python_number, check_choice, check_int,
                                    check_seed)
from lightning_memloc.evidence import EvidenceOptions
from lightning_memloc.normalization import NormalizeSpec, check_normalize, normalize_meta
from lightning_memloc.precision import AUTOCASTS

__all__ = ["MeasureOptions", "NEGATIVE_POLICIES", "PAIRINGS", "REDUCTIONS", "SURFACE_DIFFERENCES", "option_property"]

#: Keywords that :func:`~lightning_memloc.measure` and the
#: :class:`~lightning_memloc.callbacks.MemorizationMonitor` share with a different default or
#: meaning, and why (``tests/test_contract.py`` allows no other; ``docs/definitions.md``).
SURFACE_DIFFERENCES = {
    "encoder": "measure() takes the encoder module itself (positional); the monitor takes where to find it inside "
               "the LightningModule (an attribute path, a callable or a module; None: the whole module).",
    "progress": "measure() is a library call and stays silent by default (False), like a torchmetrics compute; the "
                "monitor runs inside a Lightning fit, whose progress bars are on by default, and shows one (True, "
                "rank 0 only). `memloc analyze` shows one too (--no-progress).",
}


@dataclass(frozen=True)
class MeasureOptions:
    """Validated settings of one measurement (shared by every surface that measures).

    Attributes:
        views: K, augmented views per candidate (≥ 1).
        seed: view seed in ``[0, 2**64)``; also seeds the evidence's resampling.
        batch_size: candidates per forward step (≥ 1).
        pairing: ``"all"`` view pairs or ``"anchor"`` (views vs the un-augmented image).
        reduction: μ-max over the other candidates, ``"mean"`` (paper) or ``"median"`` (authors' code).
        negative: policy for negative activations: ``"clamp"``, ``"shift"`` or ``"error"``.
        top_k: size of LayerMem's top-k / least-k candidate groups (≥ 1).
        num_workers: DataLoader workers generating views (≥ 0).
        progress: show a progress bar during the pass.
        bootstrap: resamples for the intervals and permutations for the tests (0: none; otherwise >= 200).
        confidence: coverage of the intervals, in (0, 1).
        alpha: significance level of the Holm-corrected tests, in (0, 1).
        autocast: ``None`` (float32 forwards), ``"bf16"`` or ``"fp16"``: run the forwards of ``f``
            and ``g`` under ``torch.autocast``; views and reductions stay float32
            (:mod:`lightning_memloc.precision`).
        normalize: ``None``, a preset (``"imagenet"``, ``"cifar10"``) or a ``(mean, std)`` pair of
            per-channel sequences: ``(x − mean) / std`` on every view after the transform, before
            the encoder (:mod:`lightning_memloc.normalization`); stored canonically (tuples).
        with_reference: whether a reference encoder is measured (LayerMem needs ``views`` ≥ 2
            with ``pairing="all"``).

    Raises:
        ValueError: a value out of range or not one of the choices (the message names it).
    """

    views: int = 10
    seed: int = 0
    batch_size: int = 32
    pairing: str = "all"
    reduction: str = "mean"
    negative: str = "clamp"
    top_k: int = 50
    num_workers: int = 0
    progress: bool = False
    bootstrap: int = 1000
    confidence: float = 0.95
    alpha: float = 0.05
    autocast: Optional[str] = None
    normalize: NormalizeSpec = None
    with_reference: bool = False

    def __post_init__(self) -> None:
        for name, low in (("views", 1), ("batch_size", 1), ("top_k", 1), ("num_workers", 0)):
            # NumPy integers are accepted (stored as int); bools and floats are not
            object.__setattr__(self, name, check_int(name, getattr(self, name), low))
        check_choice("pairing", self.pairing, PAIRINGS)
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("negative", self.negative, NEGATIVE_POLICIES)
        if self.autocast is not None:
            check_choice("autocast", self.autocast, AUTOCASTS)
        object.__setattr__(self, "normalize", check_normalize(self.normalize))
        if self.with_reference and self.pairing == "all" and self.views < 2:
            raise ValueError(
                f"LayerMem with pairing='all' compares pairs of views and needs `views` >= 2, got {self.views}: "
                "raise `views` or use pairing='anchor'."
            )
        object.__setattr__(self, "seed", check_seed(self.seed))
        for name in ("bootstrap", "confidence", "alpha"):  # NumPy scalars as Python numbers (JSON meta)
            object.__setattr__(self, name, as_python_number(getattr(self, name)))
        self.evidence  # validates bootstrap, confidence and alpha  # noqa: B018

    @property
    def evidence(self) -> EvidenceOptions:
        """The :class:`~lightning_memloc.evidence.EvidenceOptions` of the report's evidence."""
        return EvidenceOptions(bootstrap=self.bootstrap, confidence=self.confidence, alpha=self.alpha, seed=self.seed)

    def replace(self, **changes: Any) -> "MeasureOptions":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def keywords(cls) -> Tuple[str, ...]:
        """The public keyword arguments these options stand for (every field but ``with_reference``).

        Example:
            >>> MeasureOptions.keywords()[:3]
            ('views', 'seed', 'batch_size')
        """
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "with_reference")

    def measure_kwargs(self) -> Dict[str, Any]:
        """These options as keyword arguments of :func:`~lightning_memloc.measure` (or of the monitor):
        how a surface that built the options (``memloc analyze``) passes them on, each under its one name."""
        return {name: getattr(self, name) for name in self.keywords()}

    def meter_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :class:`~lightning_memloc.meter.MemorizationMeter` set by these options."""
        return {"reduction": self.reduction, "negative": self.negative, "top_k": self.top_k}

    def pass_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`~lightning_memloc.measure.run_pass` set by these options."""
        return {"batch_size": self.batch_size, "pairing": self.pairing, "num_workers": self.num_workers,
                **self._precision()}

    def meta(self, *, views: int, seed: int, num_candidates: int, groups: Optional[Mapping[str, int]] = None,
             **extra: Any) -> Dict[str, Any]:
        """The settings a report records in ``meta``.

        Args:
            views: K actually used (precomputed views fix their own K).
            seed: the view set's seed.
            num_candidates: N; ``top_k`` is recorded as ``min(top_k, N)``.
            groups: sizes of the control / unseen sets, recorded as ``num_<name>``.
            **extra: further entries (``epoch``, ``global_step``, ...), recorded after ``num_candidates``.

        ``autocast`` is recorded when set (``"bf16"`` / ``"fp16"``); a float32 pass records none.
        ``normalize`` is recorded as ``None`` or ``{"mean": [...], "std": [...]}`` (with ``"preset"``).
        """
        return {"views": views, "seed": seed, "pairing": self.pairing, "reduction": self.reduction,
                "negative": self.negative, "top_k": min(self.top_k, num_candidates), **extra,
                "num_candidates": num_candidates, **{f"num_{name}": size for name, size in (groups or {}).items()},
                "bootstrap": self.bootstrap, "confidence": self.confidence, "alpha": self.alpha, **self._precision(),
                "normalize": normalize_meta(self.normalize)}

    def fingerprint(self) -> Dict[str, Any]:
        """The options that make two measurements comparable (part of the monitor's resume fingerprint)."""
        normalize = normalize_meta(self.normalize)  # the values: a preset and its numbers are one setting
        return {"pairing": self.pairing, "reduction": self.reduction, "negative": self.negative, "top_k": self.top_k,
                "evidence": [self.bootstrap, self.confidence, self.alpha], **self._precision(),
                "normalize": None if normalize is None else [normalize["mean"], normalize["std"]]}

    def _precision(self) -> Dict[str, Any]:
        """``{"autocast": ...}`` when the forwards run under autocast; ``{}`` for float32 (reports and
        fingerprints of float32 passes stay as they were before the option existed)."""
        return {} if self.autocast is None else {"autocast": self.autocast}


def option_property(name: str) -> property:
    """A property ``<owner>.<name>`` reading ``<owner>.options.<name>``; setting it validates a new options object.

    Lets a class holding ``options`` (the monitor) keep its flat attributes (``monitor.top_k``)
    with one source of truth.
    """

    def get(owner: Any) -> Any:
        return getattr(owner.options, name)

    def put(owner: Any, value: Any) -> None:
        owner.options = owner.options.replace(**{name: value})

    return property(get, put, doc=f"``{name}`` of ``options`` (see :class:`~lightning_memloc.options.MeasureOptions`).")

