"""``MeasureOptions``: the settings shared by ``measure()``, the monitor and ``memloc analyze`` (defined once).

Example:
    >>> MeasureOptions(views=4, top_k=2).meter_kwargs()
    {'reduction': 'mean', 'negative': 'clamp', 'top_k': 2}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from lightning_memloc.checks import (NEGATIVE_POLICIES, PAIRINGS, REDUCTIONS, as_python_number, check_choice, check_int,
                                    check_seed)
from lightning_memloc.report.evidence import EvidenceOptions
from lightning_memloc.views.stats import NormalizeSpec, check_normalize, normalize_meta
from lightning_memloc.reductions.hook import AUTOCASTS

__all__ = ["DEFAULT", "MeasureOptions", "SURFACE_DIFFERENCES", "option_property", "options_doc"]

#: Keywords that :func:`~lightning_memloc.measure` and the :class:`~lightning_memloc.callbacks.MemorizationMonitor`
#: share with a different default or meaning, and why (``tests/test_contract.py`` allows no other).
SURFACE_DIFFERENCES = {
    "encoder": "measure() takes the encoder module itself (positional); the monitor takes where to find it inside "
               "the LightningModule (an attribute path, a callable or a module; None: the whole module).",
    "progress": "measure() is a library call and stays silent by default (False), like a torchmetrics compute; the "
                "monitor runs inside a Lightning fit and by default (None) shows one when the Trainer shows its own "
                "(enable_progress_bar, rank 0 only); True / False force it on / off. `memloc analyze` shows one too "
                "(--no-progress).",
}


def _option(default: Any, help: str, doc: str = "", **cli: Any) -> Any:
    """A field: its default, ``help`` (flag help, first doc sentence), ``doc`` (docs only), ``cli``: how it parses."""
    return field(default=default, metadata={"help": help, "doc": doc, **cli})


@dataclass(frozen=True)
class MeasureOptions:
    """Validated settings of one measurement: each field is a keyword of ``measure()`` and the monitor and a
    ``memloc analyze`` flag, but ``with_reference``, which the surface sets."""

    views: int = _option(10, "K augmented views per candidate", "(≥ 1; ignored for precomputed views).", minimum=1)
    seed: int = _option(0, "view seed", "(in ``[0, 2**64)``; the same seed gives the same views on every call, batch "
                        "size, device and rank; it also seeds the evidence's resampling).", kind="seed")
    batch_size: int = _option(32, "candidates per forward step", "(each contributes K views to the forward batch).",
                              minimum=1)
    pairing: str = _option("all", "view pairs of the alignment", "``\"all\"`` view pairs (SSLMem's definition) or "
                           "``\"anchor\"`` (views vs the un-augmented image, as in the authors' code).", choices=PAIRINGS)
    reduction: str = _option("mean", "μ-max of UnitMem over the other candidates", "``\"mean\"`` (the paper) or "
                             "``\"median\"`` (the authors' code).", choices=REDUCTIONS)
    negative: str = _option("clamp", "policy for negative activations (GELU, attention outputs; docs/definitions.md)",
                            "``\"clamp\"``, ``\"shift\"`` or ``\"error\"``.", choices=NEGATIVE_POLICIES)
    top_k: int = _option(50, "size of the top-k / least-k LayerMem groups", minimum=1)
    num_workers: int = _option(0, "DataLoader workers generating the views", minimum=0)
    progress: Optional[bool] = _option(False, "progress bar of the pass", "(``None``: the monitor follows the Trainer's ``enable_progress_bar``).", kind="flag")
    bootstrap: int = _option(1000, "bootstrap resamples / permutations (0: no intervals or tests; else >= 200)",
                             kind="bootstrap")
    confidence: float = _option(0.95, "coverage of the intervals", kind="probability")
    alpha: float = _option(0.05, "significance level of the Holm-corrected tests", "(the overall verdict).",
                           kind="probability")
    autocast: Optional[str] = _option(None, "run the forwards under torch.autocast in bf16 or fp16 (default: float32; "
                                      "docs/performance.md)", "Views and reductions stay float32; refused before any "
                                      "work on a device (or a non-float32 model) that cannot run it.", choices=AUTOCASTS)
    normalize: NormalizeSpec = _option(None, "normalise the views per channel before the encoder: a preset (imagenet, "
                                       "cifar10) or MEAN/STD; match what the encoder trained on",
                                       "``(x − mean) / std`` per channel on every view after the transform. lightly's "
                                       "``SimCLRTransform`` normalises with ImageNet statistics by default "
                                       "(docs/definitions.md, \"Views\"); stored as tuples.", kind="normalize")
    with_reference: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # the bounds and choices the fields declare
            value = getattr(self, f.name)
            if "minimum" in f.metadata:  # NumPy integers are accepted (stored as int); bools and floats are not
                object.__setattr__(self, f.name, check_int(f.name, value, f.metadata["minimum"]))
            elif "choices" in f.metadata and (value is not None or f.default is not None):  # autocast=None: float32
                check_choice(f.name, value, f.metadata["choices"])
        object.__setattr__(self, "normalize", check_normalize(self.normalize))
        if self.with_reference and self.pairing == "all" and self.views < 2:
            raise ValueError(f"LayerMem with pairing='all' compares pairs of views and needs `views` >= 2, got "
                             f"{self.views}: raise `views` or use pairing='anchor'.")
        object.__setattr__(self, "seed", check_seed(self.seed))
        for name in ("bootstrap", "confidence", "alpha"):  # NumPy scalars as Python numbers (JSON meta)
            object.__setattr__(self, name, as_python_number(getattr(self, name)))
        self.evidence  # validates bootstrap, confidence and alpha  # noqa: B018

    @property
    def evidence(self) -> EvidenceOptions:
        """The :class:`~lightning_memloc.report.evidence.EvidenceOptions` of the report's evidence."""
        return EvidenceOptions(bootstrap=self.bootstrap, confidence=self.confidence, alpha=self.alpha, seed=self.seed)

    def replace(self, **changes: Any) -> "MeasureOptions":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def keywords(cls) -> Tuple[str, ...]:
        """The public keyword arguments (every field but ``with_reference``).

        Example:
            >>> MeasureOptions.keywords()[:3]
            ('views', 'seed', 'batch_size')
        """
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "with_reference")

    def measure_kwargs(self) -> Dict[str, Any]:
        """These options as keyword arguments of :func:`~lightning_memloc.measure` (or of the monitor)."""
        return {name: getattr(self, name) for name in self.keywords()}

    def meter_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :class:`~lightning_memloc.states.meter.MemorizationMeter` set by these options."""
        return {"reduction": self.reduction, "negative": self.negative, "top_k": self.top_k}

    def pass_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`~lightning_memloc.measurement.run_pass` set by these options."""
        return {"batch_size": self.batch_size, "pairing": self.pairing, "num_workers": self.num_workers,
                **self._precision()}

    def meta(self, *, views: int, seed: int, num_candidates: int, groups: Optional[Mapping[str, int]] = None,
             **extra: Any) -> Dict[str, Any]:
        """The settings a report records in ``meta`` (``views``: K used; ``groups``: recorded as ``num_<name>``)."""
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
        """``{"autocast": ...}`` under autocast; ``{}`` for float32 (float32 reports and fingerprints unchanged)."""
        return {} if self.autocast is None else {"autocast": self.autocast}


def option_property(name: str) -> property:
    """A property ``<owner>.<name>`` reading ``<owner>.options.<name>``; setting it validates a new options object."""
    return property(lambda owner: getattr(owner.options, name),
                    lambda owner, value: setattr(owner, "options", owner.options.replace(**{name: value})),
                    doc=f"``{name}`` of ``options`` (see :class:`~lightning_memloc.options.MeasureOptions`).")


#: The default settings (``measure()``'s and the monitor's keyword defaults read them).
DEFAULT = MeasureOptions()


def options_doc(indent: int = 8, *, skip: Tuple[str, ...] = ()) -> str:
    """The Google-style ``Args:`` lines of every option, from the fields.

    Example:
        >>> print(options_doc(0).splitlines()[0])
        views: K augmented views per candidate (≥ 1; ignored for precomputed views). Default 10.
    """
    lines = []
    for f in dataclasses.fields(MeasureOptions):
        if f.name != "with_reference" and f.name not in skip:
            doc = f.metadata["doc"]
            text = f.metadata["help"] + ((" " if doc[:1] == "(" else ": ") + doc if doc else ".")
            lines.append(" " * indent + f"{f.name}: {text if text.endswith('.') else text + '.'} Default {f.default!r}.")
    return "\n".join(lines)
