"""Deprecated alias of :mod:`lightning_memloc.plots.analyses` (moved in the layout refactor, issue 15).

Import from ``lightning_memloc.plots.analyses`` instead; this alias warns with a ``DeprecationWarning``
and is removed in the next release.
"""

import warnings

from lightning_memloc.plots.analyses import *  # noqa: F401,F403
from lightning_memloc.plots.analyses import __all__  # noqa: F401

warnings.warn("lightning_memloc.plots_analyses is deprecated: import from lightning_memloc.plots.analyses instead.",
              DeprecationWarning, stacklevel=2)
