"""Atomic file writes (temporary file, fsync, ``os.replace``) and up-front checks of output folders."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def check_writable_dir(path: PathLike, *, argument: str = "path") -> Path:
    """Make sure ``path`` is (or can become) a writable directory, before any work is done.

    Example:
        >>> check_writable_dir(tempfile.mkdtemp()).is_dir()
        True
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"`{argument}`={str(directory)!r} is a file, not a folder: pass a folder path.")
    if not directory.exists():
        blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise NotADirectoryError(f"`{argument}`={str(directory)!r} cannot be created: {str(blocker)!r} is a file, "
                                     "not a folder; pass a folder path you can write to.")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"`{argument}`={str(directory)!r} cannot be created ({err.strerror}): pass a folder "
                                  "you can write to.") from err
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"`{argument}`={str(directory)!r} is not writable: pass a folder you can write to.")
    return directory


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (``/proc``)."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read by setting it, then put it back at once
    os.umask(mask)
    return mask


def target_mode(path: PathLike) -> int:
    """Permission bits for a file written to ``path``: the existing file's, else ``0o666`` less the umask.

    Example:
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_text("x"); os.chmod(p, 0o644)
        >>> oct(target_mode(p))
        '0o644'
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file (``mode`` ``"w"`` or ``"wb"``) beside ``path``; move it there if the block succeeds.

    Example:
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_open(p) as fh:
        ...     _ = fh.write("hello")
        >>> p.read_text()
        'hello'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb', got {mode!r}.")
    destination = Path(path)
    if destination.is_dir():
        raise IsADirectoryError(f"`path`={str(destination)!r} is a folder, not a file: pass the path of a file (e.g. "
                                "one inside that folder).")
    directory = check_writable_dir(destination.parent if str(destination.parent) else ".", argument="path")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, target_mode(destination))  # mkstemp made it 0o600
        os.replace(tmp_name, destination)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
