"""Deprecated alias of :mod:`lightning_memloc.plots.evidence` (moved in the layout refactor, issue 15).

Import from ``lightning_memloc.plots.evidence`` instead; this alias warns with a ``DeprecationWarning``
and is removed in the next release.
"""

import warnings

from lightning_memloc.plots.evidence import *  # noqa: F401,F403
from lightning_memloc.plots.evidence import __all__, evidence_figures  # noqa: F401

warnings.warn("lightning_memloc.plots_evidence is deprecated: import from lightning_memloc.plots.evidence instead.",
              DeprecationWarning, stacklevel=2)
