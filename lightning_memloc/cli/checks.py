"""Checks of ``--out`` and ``--device``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_memloc.cli.errors import CLIError, as_cli_error


# ----------------------------------------------------------------------------- validation
def check_out(path: str) -> Path:
    """Fail early if ``--out`` cannot become a writable folder (without creating anything yet)."""
    out = Path(path)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError("--out", f"{str(probe)!r} is a file, not a folder: pass a folder path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError("--out", f"{str(probe)!r} is not writable: pass a folder you can write to.")
    return out


def parse_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with as_cli_error("--device", (RuntimeError, ValueError), "(use auto, cpu, cuda or cuda:N)."):
        device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device", f"{spec!r} asked for CUDA, but no CUDA device is available: use --device cpu.")
    return device

