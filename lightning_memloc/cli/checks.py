"""Checks of the output folder (``--output-dir``) and ``--device`` of ``memloc analyze`` / ``memloc plot``.

Every argument is checked before any measurement of Wang et al., *Localizing Memorization in SSL
Vision Encoders* (NeurIPS 2024) starts, and nothing is written when a check fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_memloc.cli.errors import CLIError, as_cli_error

__all__ = ["check_out", "parse_device"]


def check_out(path: str, flag: str = "--output-dir") -> Path:
    """Fail early if ``path`` (the flag ``flag``) cannot become a writable folder (without creating anything yet)."""
    out = Path(path)
    probe = out
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

