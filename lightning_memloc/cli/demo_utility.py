"""The demo's utility probe: kNN accuracy of ``f`` over training, next to its memorization."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from lightning_memloc.report.tags import knn_tag


def demo_utility(images: Tensor, labels: Tensor, split: Any, every_n_epochs: int, ks: Sequence[int] = (20, 200),
                 held_out: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Optional[Any], str]:
    """A ``UtilityMonitor`` of ``encoder.backbone`` (``None`` without enough labels), and what its test set is.

    Bank: the labelled shared images; test: the labelled independent ones, else ``held_out``, else half the bank.
    """
    from lightning_memloc.callbacks.utility import UtilityMonitor
    shared = split.shared[labels[split.shared] >= 0].unique()
    independent = split.independent[labels[split.independent] >= 0].unique()
    bank, test, test_labels = shared, images[independent], labels[independent]
    what = "bank: shared images; test: independent images, unseen by f"
    if len(independent) == 0 and held_out is not None and len(held_out[0]) > 0:
        test, test_labels = held_out
        what = f"bank: the {len(bank)} shared images; test: {len(test)} others neither encoder trains on"
    elif len(independent) == 0:
        bank, test, test_labels = shared[0::2], images[shared[1::2]], labels[shared[1::2]]
        what = "bank: half of the shared images; test: the other half (seen by f, labels never used)"
    if len(bank) < 2 or len(test) == 0:
        return None, "no labelled images"
    fitting = tuple(k for k in ks if k <= len(bank)) or (len(bank),)
    return UtilityMonitor(images[bank], labels[bank], test, test_labels, ks=fitting, encoder="encoder.backbone",
                          every_n_epochs=every_n_epochs, measure_on_train_start=True), what


def knn_table(history: List[Dict[str, Any]], ks: Sequence[int]) -> str:
    """One row per measurement (``init`` before training), one column of kNN accuracy per ``k``.

    Example:
        >>> print(knn_table([{"epoch": -1, "memloc/knn_acc_k20": 0.1}, {"epoch": 0, "memloc/knn_acc_k20": 0.25}], [20]))
         epoch      k=20
          init     10.0%
             0     25.0%
    """
    rows = [f"{'epoch':>6} " + "".join(f"{f'k={k}':>9}" for k in ks)]
    for entry in history:
        label = "init" if entry["epoch"] < 0 else str(entry["epoch"])
        cells = [entry.get(knn_tag(k)) for k in ks]
        rows.append(f"{label:>6} " + "".join(f"{'n/a' if c is None else format(c, '.1%'):>9}" for c in cells))
    return "\n".join(rows)


def knn_change(history: List[Dict[str, Any]], k: int) -> Optional[Tuple[float, float]]:
    """kNN accuracy at ``k`` before training (epoch −1) and at the last measurement, or ``None`` if either is missing.

    Example:
        >>> knn_change([{"epoch": -1, "memloc/knn_acc_k20": 0.5}, {"epoch": 9, "memloc/knn_acc_k20": 0.75}], 20)
        (0.5, 0.75)
    """
    before = next((e.get(knn_tag(k)) for e in history if e["epoch"] < 0), None)
    after = history[-1].get(knn_tag(k)) if history and history[-1]["epoch"] >= 0 else None
    return None if before is None or after is None else (float(before), float(after))
