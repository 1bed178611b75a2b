"""What ``memloc demo`` writes so that ``memloc analyze`` and ``memloc plot`` measure exactly its candidates.

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

#: The files of the round trip, by role.
FILES = {"data": "data.npz", "split": "split.json", "encoder": "encoder.pt", "reference": "reference.pt",
         "commands": "analyze.sh"}


def round_trip_commands(out: PathLike, *, width: int, channels: int, size: int, views: int, seed: int, top_k: int,
                        bootstrap: int, transform: Optional[Tuple[str, Dict[str, Any]]] = None) -> str:
    """The ``memloc analyze`` then ``memloc plot`` commands that re-measure the demo's candidates in ``out``."""
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
    """Write :data:`FILES` into ``out`` atomically; returns the paths.

    ``images``: uint8 (N, C, H, W) that the index tensors of ``groups`` point into; ``labels``: (N,), -1 for none.
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
