"""Logged tag names, defined once: every ``memloc...`` tag the callbacks write is built here.

The monitors log the figures of Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024) per layer; these names are a public contract (TensorBoard dashboards, ``history.json``
keys, ``trainer.callback_metrics``, the plots) and ``tests/test_contract.py`` checks that every tag
written comes from here. TensorBoard groups tags into sections by their first ``/`` component, so
each quantity has its own section (sorted after it: its interval bounds and tests):

- per-layer scalars ``memloc.<quantity>/<layer>`` (:func:`scalar_tag`; quantities :data:`QUANTITIES`,
  expanded in :data:`SCALAR_QUANTITIES`);
- the per-layer runs ``memloc_layers/<NN>_<layer>`` write each quantity under the section's own name
  ``memloc.<quantity>`` (:func:`by_layer_tag`): the first chart of the section, one line per layer;
- UnitMem histograms ``memloc.unit_mem/<layer>`` (:func:`hist_tag`; ``memloc.unit_mem`` in the layer runs);
- one summary section ``memloc/...`` (:func:`summary_tag`): the figures (:data:`FIGURE_NAMES`), the image
  grids (:data:`IMAGE_NAMES`), ``memloc/significant_layers/<test>``, the overall verdict
  ``memloc/verdict/memorization`` (:func:`verdict_tag`), ``memloc/knn_acc_k<k>`` and the warm-up note;
- a named monitor replaces the root ``memloc`` by ``memloc-<name>``
  (:func:`lightning_memloc.callbacks.naming.named_tag`).

Adding a per-layer quantity is one entry in :data:`QUANTITIES`; a run-level one, one name passed to
:func:`summary_tag`. Runs logged before this scheme used ``memloc/<quantity>/<layer>``:
:func:`upgrade_tag` renames those keys (histories read by the plots, resumed checkpoints).

Example:
    >>> scalar_tag("layer_mem", "conv1"), by_layer_tag("layer_mem"), hist_tag("conv1"), knn_tag(20)
    ('memloc.layer_mem/conv1', 'memloc.layer_mem', 'memloc.unit_mem/conv1', 'memloc/knn_acc_k20')
    >>> parse_scalar_tag("memloc.unit_mem_mean/res1.conv1"), upgrade_tag("memloc/excess_p_holm/conv1")
    (('unit_mem_mean', 'res1.conv1'), 'memloc.excess_p_holm/conv1')
"""

from __future__ import annotations

import re
from typing import Dict, NamedTuple, Optional, Tuple

__all__ = [
    "EVIDENCE_QUANTITIES", "FIGURE_NAMES", "HIST_QUANTITY", "IMAGE_NAMES", "LABEL_QUANTITIES", "LAYER_QUANTITIES", "LAYER_RUNS_FOLDER",
    "MARGINS", "PREFIX", "QUANTITIES", "Quantity", "REFERENCE_QUANTITIES", "SCALAR_QUANTITIES", "SEPARATOR",
    "UNIT_QUANTITIES", "by_layer_tag", "figure_tag", "hist_tag", "image_tag", "knn_tag", "parse_scalar_tag", "scalar_tag",
    "significant_tag", "summary_tag", "upgrade_tag", "verdict_tag",
]

#: Root of every tag (``memloc-<name>`` for a named monitor).
PREFIX = "memloc"
#: Joins the root and a quantity into a TensorBoard section name: ``memloc.<quantity>``.
SEPARATOR = "."
LAYER_RUNS_FOLDER = f"{PREFIX}_layers"
IMAGE_NAMES = ("most_memorized", "least_memorized")
#: Section of the UnitMem histograms (``memloc.unit_mem/<layer>``).
HIST_QUANTITY = "unit_mem"
#: Figures logged at every measurement: the profile by depth, and layer × measurement heat maps.
FIGURE_NAMES = ("profile", "profile_over_training")


class Quantity(NamedTuple):
    """A per-layer quantity: its label in charts, and whether it comes with an interval and a test."""

    label: str
    interval: bool = False  # also <name>_lo, <name>_hi
    test: bool = False  # also <name>_p (one-sided), <name>_p_holm (Holm over the verdict's tests x layers), <name>_lb


#: Every per-layer quantity, one entry each (keys of the report's fields and evidence records).
QUANTITIES: Dict[str, Quantity] = {
    "layer_mem": Quantity("LayerMem", interval=True),
    "delta_layer_mem": Quantity("ΔLayerMem", interval=True),
    "layer_mem_top": Quantity("LayerMem, top-k", interval=True),
    "layer_mem_least": Quantity("LayerMem, least-k", interval=True),
    "unit_mem_mean": Quantity("mean UnitMem", interval=True),
    "unit_mem_frac_above": Quantity("share of units above the threshold"),
    "dead_units": Quantity("dead units"),
    "class_mem_mean": Quantity("mean ClassMem"),
    "excess": Quantity("LayerMem excess over control", interval=True, test=True),
    "excess_unseen": Quantity("LayerMem excess over unseen", interval=True, test=True),
    "unit_mem_excess": Quantity("UnitMem seen − unseen", interval=True, test=True),
    "membership": Quantity("share of units whose μmax image was seen", interval=True, test=True),
    "control_layer_mem": Quantity("LayerMem of the control"),
    "control_delta_layer_mem": Quantity("ΔLayerMem of the control"),
    "control_layer_mem_top": Quantity("LayerMem of the control, top-k"),
    "control_layer_mem_least": Quantity("LayerMem of the control, least-k"),
    "unseen_layer_mem": Quantity("LayerMem of unseen images"),
    "unseen_delta_layer_mem": Quantity("ΔLayerMem of unseen images"),
    "unseen_layer_mem_top": Quantity("LayerMem of unseen images, top-k"),
    "unseen_layer_mem_least": Quantity("LayerMem of unseen images, least-k"),
    "membership_alive": Quantity("alive units in the membership test"),
    "membership_chance": Quantity("membership share expected by chance"),
    "unit_mem_seen": Quantity("mean UnitMem, seen images"),
    "unit_mem_unseen": Quantity("mean UnitMem, unseen images"),
    # reference-free (f alone, lightning_memloc.evidence_free): the candidates' alignment gap against unseen images
    "align_gap": Quantity("alignment gap (f only)", interval=True, test=True),
    "align_f_candidates": Quantity("alignment of the candidates' views under f"),
    "align_f_unseen": Quantity("alignment of unseen images' views under f"),
    "align_auc": Quantity("mean membership score under f alone"),
}


def _expand(name: str, quantity: Quantity) -> Tuple[str, ...]:
    return (name,) + ((f"{name}_lo", f"{name}_hi") if quantity.interval else ()) + \
        ((f"{name}_p", f"{name}_p_holm", f"{name}_lb") if quantity.test else ())


#: Every ``memloc.<quantity>/<layer>`` quantity: each of :data:`QUANTITIES` with its bounds and p-values.
SCALAR_QUANTITIES = tuple(key for name, quantity in QUANTITIES.items() for key in _expand(name, quantity))
#: Where the non-evidence values come from: report fields (with a reference), the UnitMem summaries, labels.
REFERENCE_QUANTITIES = ("layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least")
UNIT_QUANTITIES = ("unit_mem_mean", "unit_mem_frac_above", "dead_units")
LABEL_QUANTITIES = ("class_mem_mean",)
#: Keys an :class:`~lightning_memloc.evidence.Evidence` record may hold (every quantity but the UnitMem / label summaries).
EVIDENCE_QUANTITIES = tuple(q for q in SCALAR_QUANTITIES if q not in UNIT_QUANTITIES[1:] + LABEL_QUANTITIES)
#: Quantities written into each per-layer run: all of them.
LAYER_QUANTITIES = SCALAR_QUANTITIES

#: Margin charts (value, lower, upper) of every quantity with an interval, titled by its label.
MARGINS: Dict[str, Tuple[str, str, str]] = {
    f"{quantity.label} ± CI": (name, f"{name}_lo", f"{name}_hi") for name, quantity in QUANTITIES.items() if quantity.interval}


def scalar_tag(quantity: str, layer: str, prefix: str = PREFIX) -> str:
    """``memloc.<quantity>/<layer>``: section ``memloc.<quantity>``, one chart per layer."""
    return f"{prefix}{SEPARATOR}{quantity}/{layer}"


def by_layer_tag(quantity: str, prefix: str = PREFIX) -> str:
    """``memloc.<quantity>``: the tag of a quantity inside a per-layer run (the first chart of its section)."""
    return f"{prefix}{SEPARATOR}{quantity}"


def hist_tag(layer: str, prefix: str = PREFIX) -> str:
    """``memloc.unit_mem/<layer>``: the UnitMem histogram of a layer."""
    return scalar_tag(HIST_QUANTITY, layer, prefix)


def summary_tag(name: str, prefix: str = PREFIX) -> str:
    """``memloc/<name>``: a run-level value in the summary section (figures, counts, kNN accuracy)."""
    return f"{prefix}/{name}"


def significant_tag(test: str, prefix: str = PREFIX) -> str:
    """``memloc/significant_layers/<test>``: how many layers pass a Holm-corrected test."""
    return summary_tag(f"significant_layers/{test}", prefix)


def verdict_tag(prefix: str = PREFIX) -> str:
    """``memloc/verdict/memorization``: 1 when the overall verdict (Holm over every test x layer)
    finds memorization, 0 when it does not."""
    return summary_tag("verdict/memorization", prefix)


def knn_tag(k: int, prefix: str = PREFIX) -> str:
    """The kNN accuracy with ``k`` neighbours (``memloc/knn_acc_k20``)."""
    return summary_tag(f"knn_acc_k{k}", prefix)


def image_tag(name: str, prefix: str = PREFIX) -> str:
    """``memloc/<name>``, ``name`` one of :data:`IMAGE_NAMES`."""
    return summary_tag(name, prefix)


def figure_tag(name: str, prefix: str = PREFIX) -> str:
    """``memloc/<name>``, ``name`` one of :data:`FIGURE_NAMES`."""
    return summary_tag(name, prefix)


def parse_scalar_tag(tag: str, prefix: str = PREFIX) -> Optional[Tuple[str, str]]:
    """``(quantity, layer)`` of a ``<prefix>.<quantity>/<layer>`` tag of a known quantity, else ``None``.

    Layer names may hold dots but not ``/`` (module names of ``named_modules()``).
    """
    head, slash, layer = tag.partition("/")
    quantity = head[len(prefix) + len(SEPARATOR):]
    if not slash or not layer or "/" in layer or head != by_layer_tag(quantity, prefix) or quantity not in SCALAR_QUANTITIES:
        return None
    return quantity, layer


_OLD = re.compile(r"^(memloc(?:-[A-Za-z0-9][A-Za-z0-9_.-]*)?)/([a-z_]+)/([^/]+)$")


def upgrade_tag(tag: str) -> str:
    """A per-layer tag of the former scheme ``memloc/<quantity>/<layer>`` renamed to ``memloc.<quantity>/<layer>``.

    Other tags (current ones, ``memloc/knn_acc_k20``, ``epoch``) are returned unchanged.
    """
    match = _OLD.match(tag)
    if match is None or match.group(2) not in SCALAR_QUANTITIES:
        return tag
    return scalar_tag(match.group(2), match.group(3), match.group(1))
