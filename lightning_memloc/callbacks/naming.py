"""Several monitors side by side: named tags, TensorBoard detected by capability, merged layouts.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) compare memorization
of candidates with that of other sets (a control set, unseen images) and of different layer
sets. Each :class:`~lightning_memloc.callbacks.MemorizationMonitor` with a ``name=`` logs under
its own tag root: every tag that starts with ``memloc`` (``memloc.<quantity>/...``, ``memloc/...``,
the custom-scalars category ``memloc``) becomes ``memloc-<name>...``, so two monitors never
overwrite each other's scalars, histograms, images or charts. TensorBoard's
custom-scalars plugin reads one layout per run: :class:`NamedWriter` merges the layouts of all
monitors writing to one ``SummaryWriter`` instead of letting the last one win.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from lightning_memloc.tags import PREFIX

__all__ = ["LAYOUTS_ATTRIBUTE", "NamedWriter", "add_merged_layout", "check_name", "has_tensorboard", "named_tag", "named_scalars"]

#: The attribute of a ``SummaryWriter`` holding the layouts written to it, by writer key.
LAYOUTS_ATTRIBUTE = "_memloc_layouts"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: Optional[str]) -> Optional[str]:
    """Validate a monitor ``name`` (letters, digits, ``_ . -``; it becomes a tag part and a folder)."""
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
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


def _rename(value: Any, name: Optional[str]) -> Any:
    if isinstance(value, str):
        return named_tag(value, name)
    if isinstance(value, dict):
        return {_rename(k, name): _rename(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rename(v, name) for v in value)
    return value


def has_tensorboard(logger: Any) -> bool:
    """Whether ``logger.experiment`` is a TensorBoard ``SummaryWriter`` (by capability, not class).

    True for the ``TensorBoardLogger`` of ``pytorch_lightning`` and of ``lightning.pytorch`` alike,
    and for any logger whose experiment writes histograms, images and custom-scalars layouts.
    """
    experiment = getattr(logger, "experiment", None)
    return all(callable(getattr(experiment, m, None)) for m in ("add_histogram", "add_image", "add_custom_scalars"))


class NamedWriter:
    """A ``SummaryWriter`` view writing under a monitor's ``name`` (see the module docstring).

    ``add_histogram``, ``add_image``, ``add_text``, ``add_scalar`` and ``add_scalars`` rename their tag; ``add_custom_scalars``
    renames the layout and writes the union of every layout written through a ``NamedWriter`` on
    the same writer. Other attributes pass through.

    Args:
        writer: the ``SummaryWriter`` (``logger.experiment``).
        name: the monitor's name (``None``: tags unchanged, layouts still merged).
    """

    def __init__(self, writer: Any, name: Optional[str]) -> None:
        self.writer, self.name = writer, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.writer, attribute)

    def add_histogram(self, tag: str, *args: Any, **kwargs: Any) -> Any:
        return self.writer.add_histogram(named_tag(tag, self.name), *args, **kwargs)

    def add_image(self, tag: str, *args: Any, **kwargs: Any) -> Any:
        return self.writer.add_image(named_tag(tag, self.name), *args, **kwargs)

    def add_text(self, tag: str, *args: Any, **kwargs: Any) -> Any:
        return self.writer.add_text(named_tag(tag, self.name), *args, **kwargs)

    def add_scalar(self, tag: str, *args: Any, **kwargs: Any) -> Any:
        return self.writer.add_scalar(named_tag(tag, self.name), *args, **kwargs)

    def add_scalars(self, main_tag: str, *args: Any, **kwargs: Any) -> Any:
        return self.writer.add_scalars(named_tag(main_tag, self.name), *args, **kwargs)

    def add_custom_scalars(self, layout: Dict[str, Any]) -> Any:
        return add_merged_layout(self.writer, _rename(layout, self.name), self.name)


def add_merged_layout(writer: Any, layout: Dict[str, Any], key: Any) -> Any:
    """Write ``layout`` (stored on ``writer`` under ``key``) merged with every layout written so far.

    TensorBoard's custom-scalars plugin keeps one layout per run: each monitor (or the utility
    monitor) writing to one ``SummaryWriter`` adds its charts to the union instead of replacing it.
    """
    layouts: Dict[Any, Dict[str, Any]] = getattr(writer, LAYOUTS_ATTRIBUTE, None) or {}
    layouts[key] = layout
    try:
        setattr(writer, LAYOUTS_ATTRIBUTE, layouts)
    except AttributeError:  # pragma: no cover - a writer refusing attributes: write this layout alone
        return writer.add_custom_scalars(layout)
    merged: Dict[str, Any] = {}
    for part in layouts.values():
        for category, charts in part.items():
            merged.setdefault(category, {}).update(charts)
    return writer.add_custom_scalars(merged)
