"""What every figure of :mod:`lightning_memloc.plots` shares: an Agg figure, an atomic PNG, a depth axis."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from torch import Tensor

from lightning_memloc.io import PathLike, atomic_write_bytes

#: Resolution of every PNG.
DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A ``width`` × ``height`` inch figure, constrained layout, Agg canvas.

    Example:
        >>> new_figure(4, 3).get_size_inches().tolist()
        [4.0, 3.0]
    """
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: PathLike) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically (complete file or none)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def figure_array(fig: Figure) -> np.ndarray:
    """``fig`` rendered to an (H, W, 3) uint8 RGB array, e.g. for ``SummaryWriter.add_image(..., dataformats="HWC")``.

    Example:
        >>> figure_array(new_figure(2, 1)).shape
        (120, 240, 3)
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def layer_of(report: Any, layer: Optional[str]) -> str:
    """``layer`` (default: the report's last), checked to be one of ``report.layers``."""
    layer = report.layers[-1] if layer is None else layer
    if layer not in report.layers:
        raise ValueError(f"`layer`={layer!r} is not in the report; its layers are {report.layers}.")
    return layer


def depth_axis(ax: Any, layers: Sequence[str]) -> None:
    """Label the x axis of ``ax`` with ``layers`` at positions 1..L (input → output), as the paper's figures do."""
    ax.set_xticks(range(1, len(layers) + 1), layers, rotation=35 if len(layers) > 4 else 0,
                  ha="right" if len(layers) > 4 else "center")
    ax.set(xlim=(0.4, len(layers) + 0.6), xlabel="layer (input → output)")
    ax.grid(axis="y", alpha=0.3)


def training_x(entries: Sequence[Mapping[str, Any]]) -> Tuple[np.ndarray, str]:
    """x positions of history entries and the axis label: the global step when every entry has one, else the epoch.

    Example:
        >>> training_x([{"epoch": 0, "global_step": 3}, {"epoch": 0, "global_step": 6}])
        (array([3, 6]), 'global step')
    """
    if entries and all(e.get("global_step") is not None for e in entries):
        return np.array([int(e["global_step"]) for e in entries]), "global step"
    return np.array([int(e["epoch"]) for e in entries]), "epoch"


def training_axis(ax: Any, label: str) -> None:
    """Label the x axis of ``ax`` with :func:`training_x`'s ``label``: integer ticks, epoch −1 as "init"."""
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if label == "epoch":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "init" if v == -1 else f"{v:g}"))
    ax.grid(alpha=0.3)


def colormap(i: int, n: int) -> Any:
    """The RGBA colour of series ``i`` of ``n`` (viridis, from shallow to deep layers)."""
    return colormaps["viridis"](0.1 + 0.8 * i / max(n - 1, 1))


def show_image(ax: Any, image: Union[Tensor, np.ndarray], title: str, **title_style: Any) -> None:
    """Draw one (C, H, W) image on ``ax`` (grey or RGB, rescaled to [0, 1]), without ticks, under ``title``."""
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image).detach().cpu()
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    if img.numel() and (img.min() < 0 or img.max() > 1):  # normalised input: rescale to [0, 1] for display
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    picture = img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).clamp(0, 1).numpy()
    ax.set(xticks=[], yticks=[])
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, **title_style)


def draw_series(ax: Any, x: np.ndarray, data: Mapping[str, np.ndarray], key: str, label: str, **style: Any) -> bool:
    """Draw ``data[key]`` (``_lo`` / ``_hi`` as error bars when present) with ``gid`` ``key``; False if absent."""
    if key not in data or np.isnan(data[key]).all():
        return False
    value = data[key]
    lo, hi = data.get(f"{key}_lo"), data.get(f"{key}_hi")
    if lo is not None and hi is not None and not np.isnan(lo).all():
        line = ax.errorbar(x, value, yerr=[value - lo, hi - value], capsize=3, label=label, **style).lines[0]
    else:
        (line,) = ax.plot(x, value, label=label, **style)
    line.set_gid(key)
    return True


def p_labels(ax: Any, x: np.ndarray, y: Optional[np.ndarray], pvalues: Optional[np.ndarray], alpha: float,
             offset: float = 4) -> None:
    """Holm p-values above the points ``(x, y)``, starred (black) where below ``alpha``; none without both."""
    if y is None or pvalues is None:
        return
    for xi, yi, p in zip(x, y, pvalues):
        if not (np.isnan(p) or np.isnan(yi)):
            ax.annotate(f"p={p:.1g}" + (" *" if p < alpha else ""), (xi, yi), ha="center", va="bottom", fontsize=7,
                        xytext=(0, offset), textcoords="offset points", color="k" if p < alpha else "0.5")
