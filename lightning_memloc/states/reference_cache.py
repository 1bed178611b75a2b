"""Cache of a frozen reference's per-candidate, per-layer view alignment, so later passes run only ``f``."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_memloc.io import PathLike, atomic_write_bytes
from lightning_memloc.checks.module_digest import UnkeyableModuleError, structure_digest

_FORMAT = "lightning_memloc.states.reference_cache/1"


def _update(hasher: "hashlib._Hash", tensor: Tensor) -> None:
    t = tensor.detach()
    hasher.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        hasher.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(*tensors: Tensor) -> str:
    """BLAKE2b digest (hex) of the dtypes, shapes and bytes of ``tensors``.

    Example:
        >>> a = torch.zeros(3)
        >>> tensor_digest(a) == tensor_digest(torch.zeros(3)), tensor_digest(a) == tensor_digest(torch.zeros(3, 1))
        (True, False)
    """
    hasher = hashlib.blake2b(digest_size=20)
    for tensor in tensors:
        _update(hasher, tensor)
    return hasher.hexdigest()


def model_digest(model: nn.Module) -> str:
    """Digest of ``model``'s class, structure, ``state_dict`` and every buffer; ``UnkeyableModuleError`` if undigestable."""
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    hasher.update(structure_digest(model).encode())
    for group in (model.state_dict(keep_vars=True).items(), model.named_buffers()):
        for name, value in group:
            hasher.update(name.encode())
            if isinstance(value, Tensor):
                _update(hasher, value)
            else:  # extra state
                hasher.update(repr(value).encode())
    return hasher.hexdigest()


class ReferenceCache:
    """Per-batch alignments of a frozen reference, reused while nothing changed; ``hits``/``misses`` count batches.

    Example:
        >>> from lightning_memloc import measure
        >>> from lightning_memloc.models import TinyCNN
        >>> _ = torch.manual_seed(0)
        >>> g, x, cache = TinyCNN(), torch.rand(6, 3, 16, 16), ReferenceCache()
        >>> for f in (TinyCNN(), TinyCNN()):
        ...     _ = measure(f, x, reference=g, views=4, top_k=2, reference_cache=cache)
        >>> cache.misses, cache.hits
        (1, 1)
    """

    def __init__(self, max_models: int = 2) -> None:
        if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1:
            raise ValueError(f"`max_models` must be an int >= 1 (reference states kept), got {max_models!r}.")
        self.max_models = max_models
        self.key: Optional[Tuple[str, ...]] = None
        self.refused: Optional[str] = None  # why the bound reference is not cached
        self._tables: "OrderedDict[Tuple[str, ...], Dict[str, Dict[str, Tensor]]]" = OrderedDict()
        self.hits = self.misses = 0

    def bind(self, reference: nn.Module, names: Sequence[str], pairing: str, autocast: Optional[str] = None) -> None:
        """Set the exact model key of this pass (g's digest, device, dtype, numerics, layers, pairing, autocast).

        Entries of the ``max_models`` most recent keys are kept (two by default: a monitor's before-training point
        measures g with recalibrated BatchNorm statistics).
        """
        device_dtype = [str(t.device) + str(t.dtype) for t in list(reference.parameters())[:1]]
        precision = () if autocast is None else (f"autocast={autocast}",)
        try:
            digest = model_digest(reference)
        except UnkeyableModuleError as err:
            if self.refused is None:
                warnings.warn(f"ReferenceCache: the reference is not cached, g runs at every pass: {err}, which the "
                              "cache cannot key (a stale value could follow).", UserWarning, stacklevel=3)
            self.key, self.refused = None, str(err)
            return
        numerics = f"matmul={torch.get_float32_matmul_precision()},cudnn_tf32={torch.backends.cudnn.allow_tf32}"
        self.key, self.refused = (digest, "|".join(names), pairing, *device_dtype, *precision, numerics), None
        self._tables.setdefault(self.key, {})
        self._tables.move_to_end(self.key)
        while len(self._tables) > self.max_models:
            self._tables.popitem(last=False)

    @staticmethod
    def batch_key(index: Tensor, inputs: Tensor) -> str:
        """Digest of a batch's candidate positions and of the reference's input tensor."""
        return tensor_digest(torch.as_tensor(index, dtype=torch.long), inputs)

    def get(self, key: str, device: Optional[torch.device] = None) -> Optional[Dict[str, Tensor]]:
        """A batch's stored per-layer alignments on ``device`` (a hit), or ``None`` (a miss)."""
        found = self._tables[self.key].get(key) if self.key is not None else None
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return {name: value.to(device, copy=True) if device is not None else value.clone() for name, value in found.items()}

    def put(self, key: str, aligns: Dict[str, Tensor]) -> None:
        """Store a batch's per-layer alignments under the bound model key."""
        if self.refused is not None:
            return
        if self.key is None:
            raise RuntimeError("ReferenceCache.put before bind(): bind the reference first.")
        self._tables[self.key][key] = {name: value.detach().clone() for name, value in aligns.items()}

    def clear(self) -> None:
        """Forget every entry and the model key."""
        self.key = None
        self._tables.clear()

    def __len__(self) -> int:
        """Stored batches, over every kept model key."""
        return sum(len(entries) for entries in self._tables.values())

    def save(self, path: PathLike) -> Path:
        """Write every table (model key -> batch key -> alignments) to ``path``, atomically."""
        buffer = io.BytesIO()
        tables = [(list(key), {b: {n: v.cpu() for n, v in a.items()} for b, a in entries.items()})
                  for key, entries in self._tables.items()]
        torch.save({"format": _FORMAT, "max_models": self.max_models, "tables": tables}, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: PathLike, missing_ok: bool = False) -> "ReferenceCache":
        """Read a cache written by :meth:`save` (an empty one if ``missing_ok`` and no file); foreign keys just miss."""
        path = Path(path)
        if missing_ok and not path.exists():
            return cls()
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise ValueError(f"`{path}` is not a reference cache written by ReferenceCache.save ({type(err).__name__}: "
                             f"{err}): delete it, or pass another path.") from err
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"`{path}` is not a reference cache of format {_FORMAT}: delete it, or pass another path.")
        cache = cls(max_models=int(data["max_models"]))
        cache._tables.update((tuple(key), entries) for key, entries in data["tables"])
        return cache


def frozen_reference(owner: nn.Module, reference: Optional[nn.Module]) -> bool:
    """Whether ``reference`` may be cached: not a submodule of the trained ``owner`` (an EMA target changes every step)."""
    return reference is not None and not any(module is reference for module in owner.modules())
