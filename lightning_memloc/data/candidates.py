"""Candidate sets (and their labels) given as paths, so that a configuration file needs no Python."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_memloc.data.loaders import NAMED_DATASETS, load_data, resize_images

__all__ = ["CandidateGroups", "CandidateSpec", "IndexSpec", "LabelSpec", "load_candidates", "load_groups", "read_indices"]

CandidateSpec = Union[Tensor, Dataset, str, os.PathLike]
IndexSpec = Union[Sequence[int], str, os.PathLike, None]
LabelSpec = Union[bool, Tensor, str, os.PathLike, None]  # bool first: a config's `true` is not a path

_TENSOR_FILES = (".pt", ".pth")


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _load_tensor_file(path: Path, argument: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"`{argument}`: no file at {str(path)!r}: check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        raise ValueError(f"`{argument}`: {str(path)!r} is not a tensor file written by torch.save ({err}).") from err


def _read_path(path: Path, size: Optional[int]) -> Tuple[Tensor, Optional[Tensor]]:
    """Images (and stored labels, or ``None``) of a candidates path."""
    if path.suffix.lower() in _TENSOR_FILES:
        data = _load_tensor_file(path, "candidates")
        labels = None
        if isinstance(data, dict):
            key = next((k for k in ("images", "x") if k in data), None)
            if key is None:
                raise ValueError(f"`candidates`: {str(path)!r} holds a dict without 'images' / 'x' (keys {list(data)}).")
            labels = next((data[k] for k in ("labels", "y") if k in data), None)
            data = data[key]
        if not isinstance(data, Tensor) or data.ndim not in (4, 5):
            raise ValueError(f"`candidates`: {str(path)!r} must hold a tensor (N, C, H, W) or views (N, K, C, H, W), "
                             f"got {type(data).__name__} {tuple(getattr(data, 'shape', ()))}.")
        if size is not None:
            if data.ndim != 4:
                raise ValueError("`size` resizes images (N, C, H, W), not precomputed views: drop `size`.")
            data = resize_images(data, size)
        return data, None if labels is None else torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if str(path).lower() not in NAMED_DATASETS and not path.exists():
        raise FileNotFoundError(f"`candidates`: nothing at {str(path)!r}: pass a .pt / .npz file, an image folder "
                                f"or one of {list(NAMED_DATASETS)}.")
    images, labels = load_data(path if path.exists() else str(path), size=size)
    return images, None if bool((labels < 0).all()) else labels


def read_indices(spec: IndexSpec, n: int, argument: str = "indices") -> Optional[Tensor]:
    """Candidate positions (LongTensor) from ``spec``, checked against ``n`` images (errors name ``argument``).

    Example:
        >>> read_indices("2:8:2", 10).tolist(), read_indices([0, 9], 10).tolist()
        ([2, 4, 6], [0, 9])
    """
    if spec is None:
        return None
    if isinstance(spec, str) and ":" in spec and not Path(spec).exists():
        try:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
        except ValueError:
            raise ValueError(f"`{argument}`: {spec!r} is not a slice 'start:stop[:step]' of ints.") from None
        index = torch.arange(n)[slice(*parts)]
    elif _is_path(spec):
        path = Path(spec)
        if path.suffix.lower() in _TENSOR_FILES:
            values: Any = _load_tensor_file(path, argument)
        elif not path.is_file():
            raise FileNotFoundError(f"`{argument}`: no file at {str(path)!r}: pass a list, a slice 'start:stop' or a file.")
        elif path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".json":
            values = json.loads(path.read_text(encoding="utf-8"))
            values = values.get("candidates") if isinstance(values, dict) else values
        else:
            values = path.read_text(encoding="utf-8").replace(",", " ").split()
        index = torch.as_tensor(np.asarray(values, dtype=np.int64)).reshape(-1)
    else:
        index = torch.as_tensor(list(spec), dtype=torch.long).reshape(-1)
    bad = index[(index < -n) | (index >= n)] if index.numel() else index
    if bad.numel():
        raise ValueError(f"`{argument}`: index {int(bad[0])} is outside the {n} images of its data.")
    if index.numel() == 0:
        raise ValueError(f"`{argument}`={spec!r} selects no image.")
    return index % n


def load_candidates(candidates: CandidateSpec, labels: LabelSpec = None, size: Optional[int] = None,
                    indices: IndexSpec = None) -> Tuple[Union[Tensor, Dataset], Optional[Tensor]]:
    """``(candidates, labels or None)`` that ``candidates`` / ``labels`` name (a tensor or ``Dataset`` without
    ``size`` / ``indices`` comes back as it is).

    Args:
        candidates: a tensor / ``Dataset``, a ``.pt`` file (``(N, C, H, W)``, views ``(N, K, C, H, W)`` or a dict
            with ``images`` / ``x`` and ``labels`` / ``y``), or what :func:`~lightning_memloc.data.load_data` reads.
        labels: ``None``, a tensor, ``True`` (stored with the candidates) or a ``.pt`` / ``.npy`` file, for the
            data before ``indices``.
        size: resize the images of a path to ``size`` × ``size``.
        indices: ints, a slice ``"start:stop[:step]"`` or a ``.json`` / ``.npy`` / ``.txt`` / ``.pt`` file.

    Example:
        >>> x, y = load_candidates(torch.zeros(6, 3, 4, 4), labels=torch.arange(6), indices="1:3")
        >>> tuple(x.shape), y.tolist()
        ((2, 3, 4, 4), [1, 2])
    """
    data, labels = _read(candidates, labels, size)
    return _select(data, labels, read_indices(indices, len(data)))  # type: ignore[arg-type]


def _read(candidates: CandidateSpec, labels: LabelSpec, size: Optional[int]) -> Tuple[Any, Optional[Tensor]]:
    """The whole data ``candidates`` names, and its labels."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"`size` must be None or an int >= 1 (the side length images are resized to), got {size!r}.")
    stored: Optional[Tensor] = None
    if _is_path(candidates):
        candidates, stored = _read_path(Path(candidates), size)
    elif size is not None:
        raise ValueError("`size` resizes candidates read from a path; resize tensors before passing them.")
    if labels is True:
        if stored is None:
            raise ValueError("`labels`=True takes the labels stored with the candidates, but they have none: pass a "
                             "labels tensor or file, or drop `labels`.")
        labels = stored
    elif labels is False:
        labels = None
    elif _is_path(labels):
        path = Path(labels)
        values = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else _load_tensor_file(path, "labels")
        labels = torch.as_tensor(np.asarray(values), dtype=torch.long).reshape(-1)
    n = len(candidates)  # type: ignore[arg-type]
    if labels is not None and isinstance(labels, Tensor) and len(labels) != n:
        raise ValueError(f"`labels` has {len(labels)} entries for {n} candidate images (labels describe the data "
                         "before `indices` selects from it).")
    return candidates, labels  # type: ignore[return-value]


def _select(data: Any, labels: Optional[Tensor], index: Optional[Tensor]) -> Tuple[Any, Optional[Tensor]]:
    if index is None:
        return data, labels
    picked = data[index] if isinstance(data, Tensor) else Subset(data, index.tolist())
    return picked, None if labels is None else torch.as_tensor(labels)[index]


class CandidateGroups(NamedTuple):
    """The images :func:`load_groups` read; ``candidate_ids``: (N,) their indices in their data (``0..N-1``
    without ``indices``); ``meta``: ``control_indices`` / ``unseen_indices`` of groups given by indices."""

    candidates: Any
    labels: Optional[Tensor]
    control: Any
    unseen: Any
    candidate_ids: Tensor
    meta: Dict[str, List[int]]


def load_groups(candidates: CandidateSpec, labels: LabelSpec = None, size: Optional[int] = None,
                indices: IndexSpec = None, control: Optional[CandidateSpec] = None,
                control_indices: IndexSpec = None, unseen: Optional[CandidateSpec] = None,
                unseen_indices: IndexSpec = None) -> CandidateGroups:
    """Candidates, control and unseen images as :func:`load_candidates` reads them, with their ids.

    ``control_indices`` select from ``control``'s data, else from the candidates' data; likewise ``unseen_indices``.

    Example:
        >>> g = load_groups(torch.zeros(10, 3, 4, 4), indices="2:5", control_indices=[6, 7], unseen_indices="8:")
        >>> g.candidate_ids.tolist(), len(g.control), g.meta
        ([2, 3, 4], 2, {'control_indices': [6, 7], 'unseen_indices': [8, 9]})
    """
    data, all_labels = _read(candidates, labels, size)
    index = read_indices(indices, len(data))
    if index is not None and index.unique().numel() != index.numel():
        raise ValueError(f"`indices` repeat images ({index.tolist()[:10]}...): each candidate must be a different image.")
    cands, cand_labels = _select(data, all_labels, index)
    groups: Dict[str, Any] = {}
    meta: Dict[str, List[int]] = {}
    for name, source, spec in (("control", control, control_indices), ("unseen", unseen, unseen_indices)):
        if spec is not None and source is not None and not _is_path(source):
            raise ValueError(f"`{name}_indices` select from a path (or from the candidates' data without `{name}`); "
                             f"`{name}` is a {type(source).__name__}: select from it before passing it.")
        source_data = data if source is None else _read(source, None, size)[0]
        selected = read_indices(spec, len(source_data), f"{name}_indices")
        groups[name] = None if selected is None and source is None else _select(source_data, None, selected)[0]
        if selected is not None:
            meta[f"{name}_indices"] = selected.tolist()
    ids = torch.arange(len(cands)) if index is None else index
    return CandidateGroups(cands, cand_labels, groups["control"], groups["unseen"], ids, meta)
