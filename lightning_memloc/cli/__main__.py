"""``python -m lightning_memloc.cli``."""

from lightning_memloc.cli.command import main

raise SystemExit(main())
