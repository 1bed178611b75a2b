"""Errors of the ``memloc`` command: :class:`CLIError` and :func:`as_cli_error`, which names the flag at fault.

Example:
    >>> try:
    ...     with as_cli_error("--views"):
    ...         raise ValueError("`views` must be >= 1,   got 0.")
    ... except CLIError as err:
    ...     print(err, err.code)
    --views: `views` must be >= 1, got 0. 2
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Tuple

from lightning_memloc.errors import MemlocError

#: Errors of a path argument (missing, not writable, not a checkpoint of this library).
FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, MemlocError)
#: Errors of any argument's value.
VALUE_ERRORS = FILE_ERRORS + (ValueError, TypeError, KeyError)


class CLIError(Exception):
    """A user error naming ``argument`` (or ``""``), one stderr line; ``code`` 2: bad argument, 1: failed run."""

    def __init__(self, argument: str, message: str, code: int = 2) -> None:
        text = " ".join(str(message).split())
        super().__init__(f"{argument}: {text}" if argument else text)
        self.code = code


@contextmanager
def as_cli_error(name: str, catch: Tuple[type, ...] = VALUE_ERRORS, hint: str = "") -> Iterator[None]:
    """Turn the library's errors raised inside the block into a :class:`CLIError` naming ``name``."""
    try:
        yield
    except CLIError:
        raise
    except catch as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise CLIError(name, f"{message} {hint}".strip()) from err

