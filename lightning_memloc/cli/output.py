"""``memloc analyze --output-dir``: one run per folder at a time, and a folder that never mixes two runs.

A run locks the folder, writes into a hidden staging folder and moves its files in at the end, report last.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "analysis"
    >>> with StagedOutput(out, "--output-dir") as staged:
    ...     _ = (staged.staging / "report.json").write_text("{}")
    ...     [p.name for p in staged.commit([staged.staging / "report.json"])]
    ['report.json']
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, FrozenSet, Iterator, List, Optional, Sequence

from lightning_memloc.cli.cli_error import as_cli_error, CLIError, FILE_ERRORS
import torch

#: The lock file a run holds in its output folder (left in place, empty, when the run ends).
LOCK_NAME = ".memloc.lock"
#: Prefix of the hidden staging folder a run writes into before it moves its files into place.
STAGING_PREFIX = ".memloc-staging-"


def analysis_files() -> FrozenSet[str]:
    """The names ``memloc analyze`` writes into its output folder: ``report.json`` and its figures."""
    from lightning_memloc.plots.analysis_figures import ANALYSIS_FILENAMES
    from lightning_memloc.plots.report_figures import FILENAMES
    monitor_only = {FILENAMES["history"], FILENAMES["evidence_history"]}  # figures of a history, never of analyze
    return frozenset({"report.json", *ANALYSIS_FILENAMES.values(), *set(FILENAMES.values()) - monitor_only})


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl+C (SIGINT) inside the block and raise it when the block is done (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if received:
            raise KeyboardInterrupt


def lock_folder(folder: Path, flag: str) -> int:
    """Take the lock of ``folder`` without waiting; returns its file descriptor (``CLIError`` if held)."""
    with as_cli_error(flag, FILE_ERRORS + (OSError,)):
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with suppress(OSError):  # Windows: the holder's locked byte cannot be read
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
        os.close(fd)
        raise CLIError(flag, f"{str(folder)!r} is in use by another memloc analyze ({holder or 'pid unknown'}): wait "
                             "for it to finish, or pass another folder (two runs on one folder would overwrite each "
                             "other's files).") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd


class StagedOutput:
    """The output folder of one run: locked while it lasts, filled at :meth:`commit` from the hidden ``staging``."""

    def __init__(self, out: Path, flag: str, overwrite: bool = False) -> None:
        self.out, self.flag, self.overwrite = Path(out), flag, overwrite
        self.staging: Path = self.out
        self._fd: Optional[int] = None

    def __enter__(self) -> "StagedOutput":
        from lightning_memloc.io import check_writable_dir
        with as_cli_error(self.flag, FILE_ERRORS):
            check_writable_dir(self.out, argument=self.flag)
        self._fd = lock_folder(self.out, self.flag)
        try:
            if (self.out / "report.json").exists() and not self.overwrite:
                raise CLIError(self.flag, f"{str(self.out)!r} already holds a report.json from an earlier analysis: "
                                          "pass another folder, or --overwrite to replace it.")
            for left in self.out.glob(STAGING_PREFIX + "*"):  # of a run that was killed: nobody else holds the lock
                shutil.rmtree(left, ignore_errors=True)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        except BaseException:
            self._release()
            raise
        return self

    def commit(self, written: Sequence[Path]) -> List[Path]:
        """Move the staged files into the folder (report last), drop an earlier analysis's others; returns the new paths."""
        from lightning_memloc.io import target_mode
        names = [Path(p).name for p in written]
        with deferred_interrupt():
            for stale in sorted(analysis_files() - set(names)):
                (self.out / stale).unlink(missing_ok=True)
            for name in sorted(names, key=lambda n: n == "report.json"):
                destination = self.out / name
                os.chmod(self.staging / name, target_mode(destination))  # a replaced file keeps its mode
                os.replace(self.staging / name, destination)
        return [self.out / name for name in names]

    def _release(self) -> None:
        if self.staging != self.out:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = self.out
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing the descriptor drops the flock / msvcrt lock

    def __exit__(self, *exc: Any) -> None:
        self._release()


def check_out(path: str, flag: str = "--output-dir") -> Path:
    """Fail early if ``path`` (the flag ``flag``) cannot become a writable folder (without creating anything yet)."""
    out = probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(flag, f"{str(probe)!r} is a file, not a folder: pass a folder path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError(flag, f"{str(probe)!r} is not writable: pass a folder you can write to.")
    return out


def parse_device(spec: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; CUDA must be available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with as_cli_error("--device", (RuntimeError, ValueError), "(use auto, cpu, cuda or cuda:N)."):
        device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device", f"{spec!r} asked for CUDA, but no CUDA device is available: use --device cpu.")
    return device
