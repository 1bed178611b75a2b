"""The demo's utility probe: kNN accuracy of ``f`` over training, next to its memorization.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) read memorization
beside downstream utility; ``memloc demo`` therefore also runs a
:class:`~lightning_memloc.callbacks.UtilityMonitor` on the monitor's schedule: the bank is the
shared images (both encoders trained on them) and the test set the independent ones (``f`` never
saw them), with their labels; images without a label (canaries, label −1) are left out (see
:func:`demo_utility` for the canaries setting).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from lightning_memloc.report.tags import knn_tag

__all__ = ["demo_utility", "knn_table"]


def demo_utility(images: Tensor, labels: Tensor, split: Any, every_n_epochs: int,
                 ks: Sequence[int] = (20, 200)) -> Tuple[Optional[Any], str]:
    """A ``UtilityMonitor`` of ``encoder.backbone`` for the demo's split, and what its test set is.

    Bank: the labelled shared images; test: the labelled independent images (``f`` never saw
    them). When none is labelled (the canaries setting: its independent images are canaries),
    every other labelled shared image is tested against the rest: images ``f`` trained on, whose
    labels SSL never used. ``None`` without enough labels. ``ks`` larger than the bank are dropped
    (the bank's size is used when none fits).
    """
    from lightning_memloc.callbacks.utility import UtilityMonitor

    shared = split.shared[labels[split.shared] >= 0].unique()
    bank, test = shared, split.independent[labels[split.independent] >= 0].unique()
    what = "bank: shared images; test: independent images, unseen by f"
    if len(test) == 0:
        bank, test = shared[0::2], shared[1::2]
        what = "bank: half of the shared images; test: the other half (seen by f, labels never used)"
    if len(bank) < 2 or len(test) == 0:
        return None, "no labelled images"
    fitting = tuple(k for k in ks if k <= len(bank)) or (len(bank),)
    return UtilityMonitor(images[bank], labels[bank], images[test], labels[test], ks=fitting,
                          encoder="encoder.backbone", every_n_epochs=every_n_epochs, measure_on_train_start=True), what


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
