"""Data and candidate selection of ``memloc analyze`` / ``memloc plot``: dataset indices of candidates and nulls."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from torch import Tensor

from lightning_memloc.cli.cli_error import CLIError, VALUE_ERRORS, as_cli_error, split_size

#: The list a ``.json`` dict of indices gives each flag (the keys of the demo's ``split.json``).
INDEX_KEYS = {"--indices": "candidates", "--control": "control", "--unseen": "unseen"}


def read_indices_file(path: str, n: int, flag: str = "--indices") -> Tensor:
    """Indices into ``n`` images from a ``.json`` list or dict (its :data:`INDEX_KEYS` list), ``.txt`` or ``.npy``."""
    from lightning_memloc.checks import check_index_values
    key = INDEX_KEYS.get(flag, "candidates")
    hint = f"(expected a .json list, {{'{key}': [...]}}, a .txt or a .npy of ints)."
    with as_cli_error(flag, VALUE_ERRORS + (OSError,), hint):
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no indices file at {path!r}: check the path.")
        if source.suffix == ".npy":
            values: Any = np.load(source, allow_pickle=False)
        elif source.suffix == ".json":
            values = json.loads(source.read_text(encoding="utf-8"))
            if isinstance(values, dict):
                if key not in values:
                    raise ValueError(f"{path!r} holds no {key!r} list (its keys: {sorted(values)[:6]}).")
                values = values[key]
        else:
            values = source.read_text(encoding="utf-8").replace(",", " ").split()
        indices = check_index_values(values, flag)  # integers only, no duplicates
        if indices.numel() == 0:
            raise ValueError(f"{path!r} holds no indices.")
    bad = indices[(indices < 0) | (indices >= n)]
    if bad.numel():
        raise CLIError(flag, f"index {int(bad[0])} is outside the {n} images of the data: check --data / --limit.")
    return indices


def _split(args: argparse.Namespace, n: int, seed: int) -> Any:
    from lightning_memloc.data import split_candidates
    with as_cli_error("--split-candidates", (ValueError, TypeError), "(fractions must add up to < 1, counts to < N)."):
        c, i = args.split_candidates, args.split_independent
        sizes = [v if isinstance(v, int) else int(np.floor(v * n + 1e-9)) for v in (c, i)]
        split_seed = seed if args.split_seed is None else args.split_seed
        return split_candidates(n, shared=n - sum(sizes), candidates=c, independent=i, seed=split_seed)


def select_candidates(args: argparse.Namespace, n: int, seed: int) -> Tensor:
    """Dataset indices of the candidates: ``--indices-from-split``, ``--indices`` or all, capped by ``--candidates``."""
    if args.indices_from_split:
        positions = _split(args, n, seed).candidates
    elif args.indices:
        positions = read_indices_file(args.indices, n)
    else:
        positions = torch.arange(n)
    return positions[: args.candidates] if args.candidates else positions


def select_groups(args: argparse.Namespace, n: int, seed: int, candidates: Tensor) -> Dict[str, Tensor]:
    """Dataset indices of ``--control`` and ``--unseen`` (disjoint from the candidates)."""
    groups: Dict[str, Tensor] = {}
    for flag, value in (("--control", args.control), ("--unseen", args.unseen)):
        if value is None:
            continue
        if flag == "--control" and not Path(value).exists() or flag == "--unseen" and value == "split":
            if not args.indices_from_split:
                raise CLIError(flag, f"{value!r} is not a file; a {'count' if flag == '--control' else 'split'} "
                                     "needs --indices-from-split (or pass an indices file).")
            split = _split(args, n, seed)
            if flag == "--unseen":
                positions = split.independent
            else:
                with as_cli_error(flag, (ValueError, TypeError), "(a count >= 2 or a fraction of the shared part)."):
                    positions = split.control(split_size(value), seed=seed)
        else:
            positions = read_indices_file(value, n, flag)
        overlap = positions[torch.isin(positions, candidates)]
        if overlap.numel():
            raise CLIError(flag, f"index {int(overlap[0])} is also a candidate: control and unseen images must not be "
                                 "candidates.")
        groups[flag[2:]] = positions
    return groups


def load_cli_data(args: argparse.Namespace, flag: str) -> Tuple[Tensor, Tensor]:
    from lightning_memloc.data import NAMED_DATASETS, load_data
    if str(args.data).lower() not in NAMED_DATASETS and not Path(args.data).exists():
        raise CLIError(flag, f"{args.data!r} is neither a data set name {list(NAMED_DATASETS)} nor an existing .npz "
                             "file or image folder: check the path.")
    with as_cli_error(flag, VALUE_ERRORS + (RuntimeError, OSError)):
        images, labels = load_data(args.data, root=args.root, size=args.size)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    return images, labels


def images_checksum(images: Tensor) -> str:
    """SHA-1 of the images' pixels (16 hex digits): ``memloc plot`` checks it draws what ``analyze`` measured.

    Example:
        >>> images_checksum(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)) == images_checksum(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
        True
    """
    import hashlib
    return hashlib.sha1(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def match_channels(images: Tensor, channels: int) -> Tensor:
    """Grey → RGB by replication, RGBA → RGB, RGB → grey (ITU-R 601 luma) to fit ``--in-channels``."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if have == 4 and channels == 3:
        return images[:, :3].contiguous()
    if have in (3, 4) and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images[:, :3].float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(images.dtype)
    raise CLIError("--in-channels", f"the data has {have} channels but the encoder takes {channels}: "
                                    f"pass --in-channels {have} or other data.")

