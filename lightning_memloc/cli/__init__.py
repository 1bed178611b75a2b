"""The ``memloc`` command (``analyze``, ``plot``, ``demo``); a bad argument exits with code 2 and one line."""

from __future__ import annotations

from lightning_memloc.cli.command import main
from lightning_memloc.cli.cli_error import CLIError
from lightning_memloc.cli.parser import build_parser
from lightning_memloc.cli.user_models import ARCHS, build_model

__all__ = ["ARCHS", "CLIError", "build_model", "build_parser", "main"]
