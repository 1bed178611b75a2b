"""Run the extra analyses by name (``memloc analyze --analyses``) into ``report.analyses``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from torch import Tensor, nn

from lightning_memloc.analyses.atypicality import atypicality_study
from lightning_memloc.analyses.consistency import layer_consistency
from lightning_memloc.analyses.exchange import layer_exchange_study
from lightning_memloc.report.report import MemorizationReport

#: Analyses :func:`run_analyses` knows (single-unit restore needs a training objective: call
#: :func:`~lightning_memloc.analyses.finetune_units` yourself).
ANALYSES = ("consistency", "exchange", "atypicality")


def parse_analyses(names: Union[str, Sequence[str]]) -> List[str]:
    """``"consistency,exchange"`` (or a list, or ``"all"``) -> validated names, in :data:`ANALYSES` order.

    Example:
        >>> parse_analyses("atypicality, consistency")
        ['consistency', 'atypicality']
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = {str(item).strip() for item in items if str(item).strip()}
    if chosen == {"all"}:
        return list(ANALYSES)
    unknown = sorted(chosen - set(ANALYSES))
    if unknown or not chosen:
        raise ValueError(f"unknown analyses {unknown or [names]}: choose from {list(ANALYSES)} (comma-separated) or 'all'.")
    return [name for name in ANALYSES if name in chosen]


def run_analyses(names: Union[str, Sequence[str]], report: MemorizationReport, encoder: nn.Module, *,
                 reference: Optional[nn.Module] = None, candidates: Optional[Tensor] = None,
                 pool: Optional[Tensor] = None, candidate_labels: Optional[Tensor] = None,
                 pool_labels: Optional[Tensor] = None, exclude: Optional[Tensor] = None,
                 pool_ids: Optional[Sequence[int]] = None, top_k: Optional[int] = None, exchange_k: int = 2,
                 random_draws: int = 3, knn: int = 5, batch_size: int = 64,
                 control: Optional[Tensor] = None) -> Dict[str, Any]:
    """Run ``names`` on ``encoder`` (and ``reference``); return name -> result, also in ``report.analyses``.

    Args:
        candidates, pool: ``(N, C, H, W)`` candidates in report order, ``(M, C, H, W)`` training images.
        exclude: ``(N,)`` pool position of each candidate itself, or −1 (``atypicality``).
        top_k: top-k of ``consistency`` (default: the report's ``meta["top_k"]``, else 50).
        control: control images for ``exchange`` (its ``drop_minus_control`` column).
    """
    chosen = parse_analyses(names)
    needs_reference = [n for n in chosen if n in ("consistency", "exchange")]
    if needs_reference and not report.has_reference:
        raise ValueError(f"analyses {needs_reference} need SSLMem: measure the report with a reference encoder "
                         "(`reference=...`, `memloc analyze --reference`).")
    if "exchange" in chosen and reference is None:
        raise ValueError("the 'exchange' analysis swaps layers of the encoder for the reference's: pass `reference`.")
    if any(n in chosen for n in ("exchange", "atypicality")) and candidates is None:
        raise ValueError("the 'exchange' and 'atypicality' analyses need the candidate images: pass `candidates`.")
    if "atypicality" in chosen and pool is None:
        raise ValueError("the 'atypicality' analysis needs training images to find neighbours in: pass `pool`.")
    meta = report.meta
    results: Dict[str, Any] = {}
    for name in chosen:
        if name == "consistency":
            results[name] = layer_consistency(report, k=int(top_k or meta.get("top_k") or 50))
        elif name == "exchange":
            results[name] = layer_exchange_study(
                encoder, reference, candidates, report, k=min(exchange_k, len(report.layers)),
                random_draws=random_draws, seed=int(meta.get("seed", 0)), views=int(meta.get("views", 10)),
                pairing=str(meta.get("pairing", "all")), batch_size=batch_size, control=control,
                autocast=meta.get("autocast"))
        else:
            results[name] = atypicality_study(
                encoder, report, candidates, pool, k=knn, candidate_labels=candidate_labels,
                pool_labels=pool_labels, exclude=exclude, pool_ids=pool_ids, batch_size=max(batch_size, 256))
        report.analyses[name] = results[name]
    return results
