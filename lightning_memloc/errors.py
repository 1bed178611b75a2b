"""Error classes: each derives from a standard exception (``ValueError`` ...) and from :class:`MemlocError`."""

from __future__ import annotations

from typing import Sequence


class MemlocError(Exception):
    """Base class of every error raised on purpose by ``lightning_memloc``."""


class LayerNotFoundError(MemlocError, ValueError):
    """A layer name does not exist in the model (the message lists close matches)."""


class ArchitectureMismatchError(MemlocError, ValueError):
    """Encoder and reference differ in layers or layer output shapes."""


class NonFiniteActivationError(MemlocError, ValueError):
    """A tapped layer produced NaN or inf (the message names the layer and, if known, the epoch)."""


class ReportFormatError(MemlocError, ValueError):
    """A report file is corrupt, truncated or not a ``MemorizationReport``."""


class CheckpointError(MemlocError, ValueError):
    """A file given as an encoder/reference checkpoint cannot be used as one."""


class AmbiguousPrefixError(CheckpointError):
    """A checkpoint holds the target's weights under several key prefixes (``prefixes``): name one."""

    def __init__(self, message: str, prefixes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.prefixes = list(prefixes)
