"""The figure factory, atomic PNG writer, depth axis, colormap and image display shared by the figures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lightning_memloc.io import PathLike, atomic_write_bytes

_DPI = 120


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically (complete file or none)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    destination = Path(path)
    atomic_write_bytes(destination, buffer.getvalue())
    return destination


def _depth_axis(ax: Any, layers: Sequence[str]) -> None:
    ax.set_xticks(range(1, len(layers) + 1))
    ax.set_xticklabels(layers, rotation=35 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center")
    ax.set_xlim(0.4, len(layers) + 0.6)
    ax.set_xlabel("layer (input → output)")
    ax.grid(axis="y", alpha=0.3)



def _colormap(i: int, n: int) -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"](0.1 + 0.8 * i / max(n - 1, 1))


def _display(image: Union[Tensor, np.ndarray]) -> np.ndarray:
    """One (C, H, W) image as an array imshow can draw: (H, W) grey or (H, W, 3) RGB in [0, 1]."""
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image).detach().cpu()
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    if img.numel() and (img.min() < 0 or img.max() > 1):  # normalised input: rescale to [0, 1] for display
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    if img.shape[0] == 1:
        return img[0].numpy()
    return img[:3].permute(1, 2, 0).clamp(0, 1).numpy()

