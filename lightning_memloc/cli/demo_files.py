"""What ``memloc demo`` writes so that ``memloc analyze`` and ``memloc plot`` measure exactly its candidates.

The demo co-trains an encoder ``f`` and its reference ``g`` on a split of Wang et al.,
*Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024), drawn from a seeded random
subset of ``--data`` plus planted canaries: neither the images nor the split can be rebuilt from
``--data`` alone. So the demo writes them next to its report:

- ``data.npz``: the images it trained on (``x`` uint8 N×H×W×C, ``y`` labels, -1 for canaries);
- ``split.json``: dataset indices into ``data.npz`` of ``candidates`` (seen by ``f`` only),
  ``control`` (seen by both), ``unseen``, ``shared`` and ``independent``; ``memloc analyze
  --indices / --control / --unseen split.json`` each read their own list;
- ``encoder.pt`` / ``reference.pt``: the state dicts of the two backbones (``--arch resnet9``);
- ``analyze.sh``: the ``memloc analyze`` and ``memloc plot`` commands of the round trip.

Example:
    >>> print(round_trip_commands("runs/demo", width=16, channels=3, size=16, views=10, seed=0, top_k=8,
    ...                           bootstrap=1000).splitlines()[0])
    memloc analyze --encoder runs/demo/encoder.pt --reference runs/demo/reference.pt --arch resnet9 --width 16 \\
"""

from __future__ import annotations

import io
import json
from pathlib import Path
import shlex
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from lightning_memloc.io import PathLike, atomic_write_bytes, atomic_write_text

__all__ = ["FILES", "round_trip_commands", "write_round_trip"]

#: The files of the round trip, by role.
FILES = {"data": "data.npz", "split": "split.json", "encoder": "encoder.pt", "reference": "reference.pt",
         "commands": "analyze.sh"}


def round_trip_commands(out: PathLike, *, width: int, channels: int, size: int, views: int, seed: int, top_k: int,
                        bootstrap: int, transform: Optional[Tuple[str, Dict[str, Any]]] = None) -> str:
    """The ``memloc analyze`` then ``memloc plot`` commands that re-measure the demo's candidates in ``out``.

    Args:
        out: the demo's ``--output-dir``.
        width: ResNet9 base width (``--width``).
        channels: image channels (``--in-channels``).
        size: image side of ``data.npz`` (``--size``, so analyze does not resize).
        views: K views, as the monitor measured (``--views``).
        seed: the view seed (``--seed``).
        top_k: the monitor's top-k group size (``--top-k``).
        bootstrap: resamples of the evidence (``--bootstrap``).
        transform: the monitor's view factory and its keyword arguments (``--transform``,
            ``--transform-kwargs``), ``None`` for the default views.

    Returns:
        Two shell commands, one a line (continued with ``\\``).
    """
    d = Path(out).as_posix()
    split = f"{d}/{FILES['split']}"
    return (f"memloc analyze --encoder {d}/{FILES['encoder']} --reference {d}/{FILES['reference']} --arch resnet9 "
            f"--width {width} \\\n    --in-channels {channels} --data {d}/{FILES['data']} --size {size} "
            f"--indices {split} --control {split} --unseen {split} \\\n    --views {views} --seed {seed} "
            f"--top-k {top_k} --bootstrap {bootstrap} --output-dir {d}/analysis --overwrite"
            + ("" if transform is None else f" \\\n    --transform {transform[0]} --transform-kwargs "
               + shlex.quote(json.dumps(transform[1])))
            + "\n"
            f"memloc plot {d}/analysis/report.json --images {d}/{FILES['data']} --output-dir {d}/analysis\n")


def _state_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buffer)
    return buffer.getvalue()


def write_round_trip(out: PathLike, images: Tensor, labels: Tensor, groups: Dict[str, Tensor], encoder: nn.Module,
                     reference: nn.Module, commands: str) -> List[Path]:
    """Write :data:`FILES` into ``out`` atomically; returns the paths written.

    Args:
        out: the demo's output folder.
        images: uint8 (N, C, H, W), every image the demo used (indices of ``groups`` point into it).
        labels: (N,) labels, -1 where there is none.
        groups: index tensors by name (``candidates``, ``control``, ``unseen``, ``shared``, ``independent``).
        encoder: the trained backbone of ``f``.
        reference: the trained backbone of ``g``.
        commands: :func:`round_trip_commands`.
    """
    folder = Path(out)
    buffer = io.BytesIO()
    np.savez(buffer, x=images.permute(0, 2, 3, 1).cpu().numpy(), y=labels.cpu().numpy())
    split = {name: [int(i) for i in idx.tolist()] for name, idx in groups.items()}
    atomic_write_bytes(folder / FILES["data"], buffer.getvalue())
    atomic_write_text(folder / FILES["split"], json.dumps(split))
    atomic_write_bytes(folder / FILES["encoder"], _state_bytes(encoder))
    atomic_write_bytes(folder / FILES["reference"], _state_bytes(reference))
    atomic_write_text(folder / FILES["commands"], commands)
    return [folder / name for name in FILES.values()]
