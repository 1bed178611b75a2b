"""Logged tag names, defined once: every ``memloc...`` tag the callbacks write is built here.

The monitors log the figures of Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024) per layer; these names are a public contract (TensorBoard dashboards, ``history.json``
keys, ``trainer.callback_metrics``, the plots) and ``tests/test_contract.py`` checks that every tag
written comes from here. Shapes:

- scalars ``memloc/<quantity>/<layer>`` (:func:`scalar_tag`; quantities :data:`SCALAR_QUANTITIES`),
  ``memloc/significant_layers/<test>`` (:func:`significant_tag`), ``memloc/verdict/memorization``
  (:func:`verdict_tag`: 1 when the overall verdict finds memorization), ``memloc/knn_acc_k<k>``
  (:func:`knn_tag`);
- histograms ``memloc_hist/unit_mem/<layer>`` (:func:`hist_tag`), images
  ``memloc_images/most_memorized`` / ``least_memorized`` (:func:`image_tag`);
- per-layer runs ``memloc_layers/<NN>_<layer>`` holding ``memloc_by_layer/<quantity>``
  (:func:`by_layer_tag`);
- a named monitor replaces the root ``memloc`` by ``memloc-<name>``
  (:func:`lightning_memloc.callbacks.naming.named_tag`).

A tag's quantity is a report field or an evidence record key reduced to one number per layer:
``unit_mem_mean`` (``report.unit_mem_mean()``), ``unit_mem_frac_above`` (share of units above the
monitor's ``threshold``, ``report.unit_mem_frac_above()``), ``dead_units`` (the *number* of dead
units: the report's ``dead_units`` field is the per-unit mask, ``report.num_dead_units()`` its
count) and ``class_mem_mean``.

Example:
    >>> scalar_tag("layer_mem", "conv1"), hist_tag("conv1"), knn_tag(20)
    ('memloc/layer_mem/conv1', 'memloc_hist/unit_mem/conv1', 'memloc/knn_acc_k20')
    >>> parse_scalar_tag("memloc/unit_mem_mean/res1.conv1")
    ('unit_mem_mean', 'res1.conv1')
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = [
    "BY_LAYER_ROOT", "EVIDENCE_QUANTITIES", "HIST_ROOT", "IMAGES_ROOT", "IMAGE_NAMES", "LABEL_QUANTITIES", "LAYER_QUANTITIES",
    "LAYER_RUNS_FOLDER", "MARGINS", "PREFIX", "REFERENCE_QUANTITIES", "SCALAR_QUANTITIES", "UNIT_QUANTITIES",
    "by_layer_tag", "hist_tag", "image_tag", "knn_tag", "parse_scalar_tag", "scalar_tag", "significant_tag",
    "verdict_tag",
]

#: Root of every tag (``memloc-<name>`` for a named monitor).
PREFIX = "memloc"
HIST_ROOT = f"{PREFIX}_hist"
IMAGES_ROOT = f"{PREFIX}_images"
BY_LAYER_ROOT = f"{PREFIX}_by_layer"
LAYER_RUNS_FOLDER = f"{PREFIX}_layers"
IMAGE_NAMES = ("most_memorized", "least_memorized")

#: Per-layer scalars of every measurement (UnitMem), with a reference (LayerMem), with labels (ClassMem).
UNIT_QUANTITIES = ("unit_mem_mean", "unit_mem_frac_above", "dead_units")
REFERENCE_QUANTITIES = ("layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least")
LABEL_QUANTITIES = ("class_mem_mean",)


def _with_intervals(*bases: str, tests: bool = False) -> Tuple[str, ...]:
    suffixes = ("", "_lo", "_hi") + (("_p", "_p_holm", "_lb") if tests else ())
    return tuple(base + suffix for base in bases for suffix in suffixes)


#: Per-layer keys of :class:`~lightning_memloc.evidence.Evidence` records, logged as scalars.
EVIDENCE_QUANTITIES = (
    _with_intervals("layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least", "unit_mem_mean")
    + _with_intervals("excess", "excess_unseen", "unit_mem_excess", "membership", tests=True)
    + ("control_layer_mem", "control_delta_layer_mem", "control_layer_mem_top", "control_layer_mem_least",
       "unseen_layer_mem", "unseen_delta_layer_mem", "unseen_layer_mem_top", "unseen_layer_mem_least",
       "membership_alive", "membership_chance", "unit_mem_seen", "unit_mem_unseen")
)
#: Every quantity of a ``memloc/<quantity>/<layer>`` scalar.
SCALAR_QUANTITIES = tuple(dict.fromkeys(REFERENCE_QUANTITIES + UNIT_QUANTITIES + LABEL_QUANTITIES + EVIDENCE_QUANTITIES))

#: Quantities written into each per-layer run (those present in the scalars of a measurement).
LAYER_QUANTITIES = ("layer_mem", "layer_mem_lo", "layer_mem_hi", "delta_layer_mem", "layer_mem_top", "layer_mem_least",
                    "excess", "excess_lo", "excess_hi", "excess_p_holm", "excess_unseen", "unit_mem_mean",
                    "unit_mem_mean_lo", "unit_mem_mean_hi", "unit_mem_frac_above", "unit_mem_unseen",
                    "unit_mem_excess", "unit_mem_excess_lo", "unit_mem_excess_hi", "membership",
                    "membership_p_holm", "dead_units")

#: Margin charts (value, lower, upper) drawn per layer when the report has them.
MARGINS: Dict[str, Tuple[str, str, str]] = {
    "LayerMem ± CI": ("layer_mem", "layer_mem_lo", "layer_mem_hi"),
    "excess over control ± CI": ("excess", "excess_lo", "excess_hi"),
    "mean UnitMem ± CI": ("unit_mem_mean", "unit_mem_mean_lo", "unit_mem_mean_hi"),
    "UnitMem seen − unseen ± CI": ("unit_mem_excess", "unit_mem_excess_lo", "unit_mem_excess_hi"),
}


def scalar_tag(quantity: str, layer: str, prefix: str = PREFIX) -> str:
    """``memloc/<quantity>/<layer>``."""
    return f"{prefix}/{quantity}/{layer}"


def significant_tag(test: str, prefix: str = PREFIX) -> str:
    """``memloc/significant_layers/<test>``: how many layers pass a Holm-corrected test."""
    return f"{prefix}/significant_layers/{test}"


def verdict_tag(prefix: str = PREFIX) -> str:
    """``memloc/verdict/memorization``: 1 when the overall verdict (Holm over every test x layer)
    finds memorization, 0 when it does not."""
    return f"{prefix}/verdict/memorization"


def knn_tag(k: int, prefix: str = PREFIX) -> str:
    """The kNN accuracy with ``k`` neighbours (``memloc/knn_acc_k20``)."""
    return f"{prefix}/knn_acc_k{k}"


def hist_tag(layer: str) -> str:
    """``memloc_hist/unit_mem/<layer>``: the UnitMem histogram of a layer."""
    return f"{HIST_ROOT}/unit_mem/{layer}"


def image_tag(name: str) -> str:
    """``memloc_images/<name>``, ``name`` one of :data:`IMAGE_NAMES`."""
    return f"{IMAGES_ROOT}/{name}"


def by_layer_tag(quantity: str, prefix: str = PREFIX) -> str:
    """``memloc_by_layer/<quantity>``: the tag of a quantity inside a per-layer run."""
    return f"{prefix}_by_layer/{quantity}"


def parse_scalar_tag(tag: str, prefix: str = PREFIX) -> Optional[Tuple[str, str]]:
    """``(quantity, layer)`` of a ``<prefix>/<quantity>/<layer>`` tag of a known quantity, else ``None``.

    Layer names may hold dots but not ``/`` (module names of ``named_modules()``).
    """
    parts = tag.split("/")
    if len(parts) != 3 or parts[0] != prefix or parts[1] not in SCALAR_QUANTITIES or not parts[2]:
        return None
    return parts[1], parts[2]
