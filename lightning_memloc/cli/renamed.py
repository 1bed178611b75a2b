"""Renamed command-line flags: the old spelling keeps working for one release, with a deprecation message.

The ``memloc`` flags are named after the keyword arguments of :func:`~lightning_memloc.measure`
and :class:`~lightning_memloc.MemorizationMonitor` (``--output-dir`` for ``output_dir``,
``--num-workers`` for ``num_workers``), and one flag name means one thing in every sub-command
(Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024, is measured the
same way from every surface). Flags renamed for that contract accept their old spelling, which
prints one ``warning:`` line on stderr naming the new flag; errors about the value name the
spelling the user typed (:func:`typed_flag`).

Example:
    >>> import argparse, contextlib, io
    >>> p = argparse.ArgumentParser(prog="memloc demo")
    >>> _ = p.add_argument("--num-workers", "--workers", action=RenamedFlag, type=int, default=0)
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     args = p.parse_args(["--workers", "2"])
    >>> args.num_workers, typed_flag(args, "num_workers"), err.getvalue().strip()
    (2, '--workers', 'memloc demo: warning: --workers is deprecated: use --num-workers (the old spelling works for one release).')
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

__all__ = ["RenamedFlag", "typed_flag"]

#: Namespace attribute recording, per destination, the old spelling the user typed.
TYPED = "memloc_deprecated_flags"


class RenamedFlag(argparse.Action):
    """An argparse ``store`` action whose first option string is the name and the others old spellings.

    Args:
        option_strings: ``("--new-name", "--old-name", ...)``: the first is the flag's name.
        dest: the destination (the keyword name, e.g. ``"output_dir"``).
        note: said after the deprecation, e.g. what the old spelling means elsewhere.
        **kwargs: the usual :class:`argparse.Action` arguments (``type``, ``default``, ``help``...).
    """

    def __init__(self, option_strings: Sequence[str], dest: str, note: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.note = note

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        setattr(namespace, self.dest, values)
        if option_string is not None and option_string != self.option_strings[0]:
            typed: Dict[str, str] = dict(getattr(namespace, TYPED, {}))
            typed[self.dest] = option_string
            setattr(namespace, TYPED, typed)
            note = f" {self.note}" if self.note else ""
            print(f"{parser.prog}: warning: {option_string} is deprecated: use {self.option_strings[0]} (the old "
                  f"spelling works for one release).{note}", file=sys.stderr)


def typed_flag(args: argparse.Namespace, dest: str, flag: Optional[str] = None) -> str:
    """The flag of ``dest`` as the user typed it (an old spelling if used), for error messages.

    Args:
        args: the parsed arguments.
        dest: the destination, e.g. ``"num_workers"``.
        flag: the flag's name (default: ``--`` + ``dest`` in kebab case).
    """
    default = flag if flag is not None else "--" + dest.replace("_", "-")
    return getattr(args, TYPED, {}).get(dest, default)
