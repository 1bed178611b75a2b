"""``memloc analyze --analyses ...``: the command-line side of :mod:`lightning_memloc.analyses`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from lightning_memloc.cli.cli_error import CLIError, as_cli_error, nonnegative_int, positive_int
from lightning_memloc.cli.images import match_channels, read_indices_file
from lightning_memloc.errors import MemlocError
from lightning_memloc.report.report import MemorizationReport


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--analyses`` group to ``memloc analyze`` (counts are checked by argparse, at parse time)."""
    g = parser.add_argument_group("extra analyses (lightning_memloc.analyses, docs/analyses.md)")
    g.add_argument("--analyses", metavar="NAMES",
                   help="comma-separated: consistency (top-k overlap / Kendall τ between layers), exchange "
                        "(SSLMem drop after swapping layers of f for g's), atypicality (kNN distance vs memorization), "
                        "or 'all'; consistency and exchange need --reference")
    g.add_argument("--pool-indices", metavar="FILE",
                   help="atypicality: indices of the training images to find neighbours in (.json/.txt/.npy); "
                        "default: the data's other images, at most --pool-size")
    g.add_argument("--pool-size", type=positive_int, default=5000,
                   help="atypicality: at most this many pool images (seeded draw)")
    g.add_argument("--knn", type=positive_int, default=5, help="atypicality: neighbours averaged into the kNN distance")
    g.add_argument("--exchange-k", type=positive_int, default=2,
                   help="exchange: size of the top-k / random / last layer groups")
    g.add_argument("--exchange-draws", type=nonnegative_int, default=3, help="exchange: random layer groups drawn")


def check_analysis_arguments(args: argparse.Namespace, reference: Optional[nn.Module], images: Tensor,
                             labels: Tensor, positions: Tensor) -> Optional[Dict[str, Any]]:
    """Validate the flags before any measurement; returns what :func:`run_cli_analyses` needs (or ``None``)."""
    from lightning_memloc.analyses import parse_analyses
    if not getattr(args, "analyses", None):
        return None
    with as_cli_error("--analyses", (ValueError,)):
        names = parse_analyses(args.analyses)
    needs = [n for n in names if n in ("consistency", "exchange")]
    if needs and reference is None:
        raise CLIError("--analyses", f"{needs} need SSLMem against a reference encoder: pass --reference, or "
                                     "--analyses atypicality only.")
    setup: Dict[str, Any] = {"names": names}
    if "atypicality" in names:
        n = len(images)
        if args.pool_indices:
            pool_idx = read_indices_file(args.pool_indices, n, "--pool-indices").unique()
        else:
            pool_idx = torch.arange(n)[~torch.isin(torch.arange(n), positions)]  # the images not measured
            draw = torch.randperm(len(pool_idx), generator=torch.Generator().manual_seed(args.seed))
            pool_idx = pool_idx[draw[: args.pool_size]].sort().values
        pool_idx = pool_idx[: args.pool_size]
        if len(pool_idx) <= args.knn:
            raise CLIError("--knn", f"the pool holds {len(pool_idx)} images, too few for {args.knn} neighbours: "
                                    "lower --knn or pass more --pool-indices.")
        where = {int(p): i for i, p in enumerate(pool_idx.tolist())}
        exclude = torch.tensor([where.get(int(p), -1) for p in positions.tolist()], dtype=torch.long)
        labelled = bool((labels[positions] >= 0).all() and (labels[pool_idx] >= 0).all())
        setup.update(pool=match_channels(images[pool_idx], args.in_channels), pool_ids=pool_idx.tolist(),
                     exclude=exclude if bool((exclude >= 0).any()) else None,
                     candidate_labels=labels[positions] if labelled else None,
                     pool_labels=labels[pool_idx] if labelled else None)
    return setup


def run_cli_analyses(setup: Optional[Dict[str, Any]], args: argparse.Namespace, report: MemorizationReport,
                     encoder: nn.Module, reference: Optional[nn.Module], candidates: Tensor, out: Path) -> List[Path]:
    """Run the checked analyses into ``report.analyses`` and write their figures to ``out``."""
    if setup is None:
        return []
    from lightning_memloc.analyses import run_analyses
    from lightning_memloc.plots.analysis_figures import plot_analyses
    try:
        run_analyses(setup["names"], report, encoder, reference=reference, candidates=candidates,
                     **{k: setup.get(k) for k in ("pool", "candidate_labels", "pool_labels", "exclude", "pool_ids")},
                     top_k=args.top_k, exchange_k=args.exchange_k, random_draws=args.exchange_draws, knn=args.knn,
                     batch_size=args.batch_size)
    except MemlocError as err:
        raise CLIError("--analyses", f"analysis failed: {err}", code=1) from err
    out.mkdir(parents=True, exist_ok=True)
    return plot_analyses(report, out, candidates=candidates, pool=setup.get("pool"))
