"""Validation of ``memloc demo`` arguments: a bad value is an argparse-style error (exit code 2), never a traceback."""

from __future__ import annotations

import argparse
import math
from typing import Any

from lightning_memloc.report.evidence import MIN_BOOTSTRAP

# (attribute, flag, lowest allowed value, why) for integer options; a missing attribute is skipped.
_INT_RULES = (
    ("epochs", "--epochs", 1, "train for at least one epoch"),
    ("size", "--size", 1, "images need at least one pixel (omit it for the data's own size)"),
    ("views", "--views", 2, "LayerMem compares pairs of views"),
    ("subset", "--subset", 0, "0 uses every image"),
    ("width", "--width", 1, "the encoder needs at least one channel"),
    ("batch_size", "--batch-size", 1, "a batch needs at least one image"),
    ("every_n_epochs", "--every-n-epochs", 1, "measure every N >= 1 epochs"),
    ("warmup_epochs", "--warmup-epochs", 0, "0 means no warm-up"),
    ("num_workers", "--num-workers", 0, "0 loads data in the main process"),
    ("canaries", "--canaries", 2, "each canary group is compared with another, and needs at least 2 images"),
    ("repeat", "--repeat", 1, "each candidate appears at least once in the encoder's data"),
    ("bootstrap", "--bootstrap", 0, "0 turns intervals and tests off"),
)


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check the parsed ``memloc demo`` arguments; a bad one calls ``parser.error`` (exit code 2).

    Example:
        >>> p = argparse.ArgumentParser(prog="memloc demo")
        >>> _ = p.add_argument("--epochs", type=int, default=1)
        >>> validate_args(p, p.parse_args(["--epochs", "2"])).epochs
        2
    """
    for attribute, flag, low, why in _INT_RULES:
        value: Any = getattr(args, attribute, None)
        if value is not None and value < low:
            parser.error(f"argument {flag}: must be >= {low} ({why}), got {value}")
    boot = getattr(args, "bootstrap", None)
    if boot is not None and 0 < boot < MIN_BOOTSTRAP:
        parser.error(f"argument --bootstrap: must be 0 (no intervals or tests) or >= {MIN_BOOTSTRAP} (fewer leave the "
                     f"intervals' ends to a handful of resamples), got {boot}")
    for attribute, ok, need in (("lr", lambda v: math.isfinite(v) and v > 0, "be a positive number"),
                                ("threshold", lambda v: 0.0 <= v <= 1.0, "be in [0, 1] (UnitMem's range)"),
                                ("seed", lambda v: 0 <= v < 2**64, "be in [0, 2**64)")):
        value = getattr(args, attribute, None)
        if value is not None and not ok(value):
            parser.error(f"argument --{attribute}: must {need}, got {value}")
    # split sizes: a fraction in [0, 1) or a whole count >= minimum (0 allowed when minimum is 0)
    for flag, minimum in (("--split-candidates", 2), ("--split-independent", 0)):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
            parser.error(f"argument {flag}: expected a fraction in [0, 1) or a whole count, got {value:g}")
        if value == 0 and minimum > 0:
            parser.error(f"argument {flag}: must be > 0: the demo needs at least {minimum} candidates "
                         "(UnitMem compares a candidate with the others)")
        if value >= 1 and int(value) < minimum:
            parser.error(f"argument {flag}: must be a count >= {minimum} or a fraction, got {value:g}")
    return args
