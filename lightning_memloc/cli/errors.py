"""Errors of the ``memloc`` command: :class:`CLIError` and the helper that names the argument at fault."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Tuple

from lightning_memloc.errors import MemlocError

FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, MemlocError)
VALUE_ERRORS = FILE_ERRORS + (ValueError, TypeError, KeyError)


class CLIError(Exception):
    """A user error, reported by :func:`main` as one line on stderr (no traceback).

    Args:
        argument: the command-line argument at fault (``"--encoder"``), or ``""``.
        message: what is wrong and how to fix it; whitespace (newlines) is collapsed to one line.
        code: exit code, 2 for a bad argument, 1 for a failed measurement.
    """

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

