"""Every ``memloc...`` tag the callbacks log (a public contract: TensorBoard, ``history.json``, the plots).

Per-layer scalars ``memloc.<quantity>/<layer>`` (a new quantity is one entry in :data:`QUANTITIES`), per-layer runs
``memloc_layers/<NN>_<layer>``, the summary ``memloc/...``; a named monitor's root is ``memloc-<name>``.

Example:
    >>> scalar_tag("layer_mem", "conv1"), by_layer_tag("layer_mem"), hist_tag("conv1"), knn_tag(20)
    ('memloc.layer_mem/conv1', 'memloc.layer_mem', 'memloc.unit_mem/conv1', 'memloc/knn_acc_k20')
    >>> parse_scalar_tag("memloc.unit_mem_mean/res1.conv1"), upgrade_tag("memloc/excess_p_holm/conv1")
    (('unit_mem_mean', 'res1.conv1'), 'memloc.excess_p_holm/conv1')
"""

from __future__ import annotations

import re
from typing import Any, Dict, NamedTuple, Optional, Tuple

#: Root of every tag (``memloc-<name>`` for a named monitor).
PREFIX = "memloc"
#: Joins the root and a quantity into a TensorBoard section name: ``memloc.<quantity>``.
SEPARATOR = "."
LAYER_RUNS_FOLDER = f"{PREFIX}_layers"
IMAGE_NAMES = ("most_memorized", "least_memorized")
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
    # reference-free (f alone, lightning_memloc.report.layer_evidence): the candidates' alignment gap against unseen images
    "align_gap": Quantity("alignment gap (f only)", interval=True, test=True),
    "align_f_candidates": Quantity("alignment of the candidates' views under f"),
    "align_f_unseen": Quantity("alignment of unseen images' views under f"),
    "align_auc": Quantity("mean membership score under f alone"),
}


#: Every ``memloc.<quantity>/<layer>`` quantity: each of :data:`QUANTITIES` with its bounds and p-values.
SCALAR_QUANTITIES = tuple(key for name, q in QUANTITIES.items() for key in (
    name, *((f"{name}_lo", f"{name}_hi") if q.interval else ()),
    *((f"{name}_p", f"{name}_p_holm", f"{name}_lb") if q.test else ())))
REFERENCE_QUANTITIES = ("layer_mem", "delta_layer_mem", "layer_mem_top", "layer_mem_least")
UNIT_QUANTITIES = ("unit_mem_mean", "unit_mem_frac_above", "dead_units")
LABEL_QUANTITIES = ("class_mem_mean",)
#: Keys an :class:`~lightning_memloc.report.evidence.Evidence` record may hold (every quantity but the UnitMem / label summaries).
EVIDENCE_QUANTITIES = tuple(q for q in SCALAR_QUANTITIES if q not in UNIT_QUANTITIES[1:] + LABEL_QUANTITIES)
LAYER_QUANTITIES = SCALAR_QUANTITIES

#: Margin charts (value, lower, upper) of every quantity with an interval, titled by its label.
MARGINS: Dict[str, Tuple[str, str, str]] = {
    f"{quantity.label} ± CI": (name, f"{name}_lo", f"{name}_hi") for name, quantity in QUANTITIES.items() if quantity.interval}


def scalar_tag(quantity: str, layer: str, prefix: str = PREFIX) -> str:
    """``memloc.<quantity>/<layer>``: section ``memloc.<quantity>``, one chart per layer."""
    return f"{prefix}{SEPARATOR}{quantity}/{layer}"


def by_layer_tag(quantity: str, prefix: str = PREFIX) -> str:
    """``memloc.<quantity>``: a quantity's tag inside a per-layer run (the first chart of its section)."""
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
    """``memloc/verdict/memorization``: 1 when the overall verdict finds memorization, else 0."""
    return summary_tag("verdict/memorization", prefix)


def knn_tag(k: int, prefix: str = PREFIX) -> str:
    """The kNN accuracy with ``k`` neighbours (``memloc/knn_acc_k20``)."""
    return summary_tag(f"knn_acc_k{k}", prefix)


#: ``memloc/<name>`` of an image (``name`` in :data:`IMAGE_NAMES`) or a figure (in :data:`FIGURE_NAMES`).
image_tag = figure_tag = summary_tag


def parse_scalar_tag(tag: str, prefix: str = PREFIX) -> Optional[Tuple[str, str]]:
    """``(quantity, layer)`` of a ``<prefix>.<quantity>/<layer>`` tag of a known quantity, else ``None``."""
    head, slash, layer = tag.partition("/")
    quantity = head[len(prefix) + len(SEPARATOR):]
    if not slash or not layer or "/" in layer or head != by_layer_tag(quantity, prefix) or quantity not in SCALAR_QUANTITIES:
        return None
    return quantity, layer


def upgrade_tag(tag: str) -> str:
    """A per-layer tag ``memloc/<quantity>/<layer>`` of the former scheme as ``memloc.<quantity>/<layer>``."""
    match = re.match(r"^(memloc(?:-[A-Za-z0-9][A-Za-z0-9_.-]*)?)/([a-z_]+)/([^/]+)$", tag)
    if match is None or match.group(2) not in SCALAR_QUANTITIES:
        return tag
    return scalar_tag(match.group(2), match.group(3), match.group(1))


def check_name(name: Optional[str]) -> Optional[str]:
    """Validate a monitor ``name`` (letters, digits, ``_ . -``; it becomes a tag part and a folder)."""
    if name is not None and (not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name)):
        raise ValueError(f"`name` must be None or a str of letters, digits, '_', '.', '-' (it names tags and a "
                         f"sub-folder), e.g. name='control', got {name!r}.")
    return name


def named_tag(tag: str, name: Optional[str]) -> str:
    """``tag`` under the monitor's root: ``memloc.x/...`` → ``memloc-<name>.x/...`` (unchanged without a name).

    Example:
        >>> named_tag("memloc.layer_mem/conv1", "control"), named_tag("memloc/profile", "control")
        ('memloc-control.layer_mem/conv1', 'memloc-control/profile')
        >>> named_tag("memloc.layer_mem/conv1", None), named_tag("epoch", "control")
        ('memloc.layer_mem/conv1', 'epoch')
    """
    if name is None or not tag.startswith(PREFIX):
        return tag
    return f"{PREFIX}-{name}{tag[len(PREFIX):]}"


def named_scalars(scalars: Dict[str, float], name: Optional[str]) -> Dict[str, float]:
    """``scalars`` with every tag renamed by :func:`named_tag`."""
    return {named_tag(tag, name): value for tag, value in scalars.items()}


def named_layout(value: Any, name: Optional[str]) -> Any:
    """``value`` (a custom-scalars layout, any nest of str / dict / list) renamed by :func:`named_tag`."""
    if isinstance(value, str):
        return named_tag(value, name)
    if isinstance(value, dict):
        return {named_layout(k, name): named_layout(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(named_layout(v, name) for v in value)
    return value
