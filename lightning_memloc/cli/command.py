"""``memloc``: the entry point dispatching to ``analyze``, ``plot`` and ``demo``."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from lightning_memloc.cli.analyze import analyze
from lightning_memloc.cli.cli_error import FILE_ERRORS, CLIError, as_cli_error
from lightning_memloc.cli.parser import build_parser
from lightning_memloc.cli.plot import plot


def _demo(argv: Sequence[str]) -> int:
    try:
        from lightning_memloc.cli import demo
    except ModuleNotFoundError as err:
        if err.name != "lightning_memloc.cli.demo":
            raise
        raise CLIError("demo", "this installation has no lightning_memloc.cli.demo module: update lightning_memloc.") \
            from err
    with as_cli_error("demo", FILE_ERRORS):
        return int(demo.main(list(argv)) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``memloc`` on ``argv``; the exit code: 0 success, 2 a bad argument (one stderr line), 1 failed, 130 stopped.

    Example:
        >>> main(["plot", "no/such/report.json"])  # doctest: +SKIP
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            if argv[:1] == ["demo"]:
                return _demo(argv[1:])
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # argparse, the demo's too: --help (0) or a usage error (2), already printed
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        return analyze(args) if args.command == "analyze" else plot(args)
    except CLIError as err:
        command = f"memloc {argv[0]}" if argv and argv[0] in ("analyze", "plot", "demo") else "memloc"
        print(f"{command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("memloc: interrupted", file=sys.stderr)
        return 130
