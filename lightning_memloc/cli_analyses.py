"""Deprecated alias of :mod:`lightning_memloc.cli.analyses` (moved in the layout refactor, issue 15).

Import from ``lightning_memloc.cli.analyses`` instead; this alias warns with a ``DeprecationWarning``
and is removed in the next release.
"""

import warnings

from lightning_memloc.cli.analyses import *  # noqa: F401,F403
from lightning_memloc.cli.analyses import __all__  # noqa: F401

warnings.warn("lightning_memloc.cli_analyses is deprecated: import from lightning_memloc.cli.analyses instead.",
              DeprecationWarning, stacklevel=2)
