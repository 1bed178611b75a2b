"""Errors of the ``memloc`` command: :class:`CLIError` and :func:`as_cli_error`, which names the flag at fault, and
the argparse ``type`` functions of its flags (a bad value is a usage error before anything loads).

Example:
    >>> try:
    ...     with as_cli_error("--views"):
    ...         raise ValueError("`views` must be >= 1,   got 0.")
    ... except CLIError as err:
    ...     print(err, err.code)
    --views: `views` must be >= 1, got 0. 2
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Tuple, Union

from lightning_memloc.errors import MemlocError
from lightning_memloc.report.evidence import MIN_BOOTSTRAP

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


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)`` where ``ok`` accepts it, else "expected ``what``"."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


#: argparse ``type``: an integer >= 1 (a usage error otherwise).
positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
#: argparse ``type``: an integer >= 0.
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
#: argparse ``type``: a number in (0, 1) (``--confidence``, ``--alpha``).
probability = _checked(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
#: argparse ``type``: 0 (no intervals or tests) or at least ``MIN_BOOTSTRAP`` resamples (``EvidenceOptions``).
bootstrap_count = _checked(int, lambda v: v == 0 or v >= MIN_BOOTSTRAP,
                           f"0 (no intervals or tests) or an integer >= {MIN_BOOTSTRAP}")


def seed(text: str) -> int:
    """A seed in [0, 2**64) (seeds are used modulo 2**64: others would alias)."""
    from lightning_memloc.checks import check_seed
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**64), got {text!r}") from None


def normalize_spec(text: str) -> Any:
    """``--normalize``: a preset name or ``MEAN/STD`` as comma-separated per-channel values.

    Example:
        >>> normalize_spec("0.5/0.25"), normalize_spec("imagenet")
        (((0.5,), (0.25,)), 'imagenet')
    """
    from lightning_memloc.views.stats import NORMALIZE_PRESETS, check_normalize
    hint = f"expected one of {', '.join(NORMALIZE_PRESETS)} or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25"
    try:
        if "/" not in text:
            return check_normalize(text)
        mean, std = text.split("/", 1)
        return check_normalize(([float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]))
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"{hint}, got {text!r} ({err})") from None


def split_size(text: str) -> Union[int, float]:
    """A split size: a fraction in [0, 1) or a count (>= 1), as ``memloc demo`` takes them."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a fraction or a count >= 0, got {text!r}")
    return int(value) if value >= 1 else value
