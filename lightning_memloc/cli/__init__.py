"""The ``memloc`` command: measure memorization of saved encoders and draw the figures.

``memloc analyze`` (measure, write ``report.json`` and figures), ``memloc plot`` and ``memloc demo``.
A bad argument ends the command with exit code 2 and one line naming it (``docs/cli.md``).
"""

from __future__ import annotations

from lightning_memloc.cli.command import main
from lightning_memloc.cli.cli_error import CLIError
from lightning_memloc.cli.parser import build_parser
from lightning_memloc.cli.zoo import ARCHS, build_model

__all__ = ["ARCHS", "CLIError", "build_model", "build_parser", "main"]
