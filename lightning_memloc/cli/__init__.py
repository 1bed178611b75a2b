"""The ``memloc`` command: measure memorization of saved encoders and draw the figures.

Localizes memorization in SSL vision encoders as in Wang et al., *Localizing Memorization in SSL
Vision Encoders* (NeurIPS 2024): UnitMem per unit, SSLMem per candidate and LayerMem /
ΔLayerMem per layer (against a reference encoder trained without the candidates).

- ``memloc analyze``: load an encoder (and reference) checkpoint, measure the candidates of a
  data set with :func:`~lightning_memloc.measure`, write ``report.json``, the figures of
  :mod:`lightning_memloc.plots` and print the summary table;
- ``memloc plot``: figures from a saved ``report.json`` and / or a monitor ``history.json``;
- ``memloc demo``: co-train an encoder and its reference with the monitor (``lightning_memloc.cli.demo``).

One job per module: :mod:`~lightning_memloc.cli.parser` (the flags), :mod:`~lightning_memloc.cli.zoo`
(``--arch``), :mod:`~lightning_memloc.cli.checkpoints` (checkpoints), :mod:`~lightning_memloc.cli.images`
(data, candidates, control / unseen), :mod:`~lightning_memloc.cli.output` (``--out``, ``--device``),
:mod:`~lightning_memloc.cli.analyze`, :mod:`~lightning_memloc.cli.analysis_flags` (``--analyses``),
:mod:`~lightning_memloc.cli.plot`, :mod:`~lightning_memloc.cli.cli_error` and
:mod:`~lightning_memloc.cli.command` (:func:`main`).

Every argument is checked before any measurement: a bad one ends the command with exit code 2
and one line on stderr naming the argument and the fix. See ``docs/cli.md``.
"""

from __future__ import annotations

from lightning_memloc.cli.command import main
from lightning_memloc.cli.cli_error import CLIError
from lightning_memloc.cli.parser import build_parser
from lightning_memloc.cli.zoo import ARCHS, build_model

__all__ = ["ARCHS", "CLIError", "build_model", "build_parser", "main"]
