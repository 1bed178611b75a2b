"""Act on evidence, not on noise: check a report's tests before fine-tuning or pruning by it.

Choosing layers by LayerMem or units by UnitMem only localizes memorization if there is
memorization to localize: without a significant excess over a control set (LayerMem) or a
significant share of units preferring training images (UnitMem's membership test), the choice
follows the difference between two encoders or the atypicality of some images (Wang et al.,
*Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024; ``../shared/DESIGN.md`` §6).
:func:`evidence_problem` says in words what is missing; :func:`gate` logs it (``"warn"``) or
refuses to act (``"error"``).
"""

from __future__ import annotations

from typing import Optional

from pytorch_lightning.utilities import rank_zero_warn

from lightning_memloc.report import MemorizationReport

__all__ = ["EVIDENCE_POLICIES", "evidence_problem", "gate", "test_for"]

#: Choices of ``require_evidence`` of the fine-tuning and pruning callbacks.
EVIDENCE_POLICIES = ("warn", "error", "off")


def test_for(by: str) -> str:
    """The evidence test behind a ranking: LayerMem-based rankings need the excess over a control,
    UnitMem-based ones the membership test, the reference-free alignment gap its own test.

    Example:
        >>> test_for("layer_mem"), test_for("unit_mem"), test_for("align_gap")
        ('excess', 'membership', 'align_gap')
    """
    return {"unit_mem": "membership", "align_gap": "align_gap"}.get(by, "excess")


test_for.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test: pytest must not collect it


def evidence_problem(report: MemorizationReport, test: str) -> Optional[str]:
    """Why ``report`` gives no evidence for acting on ``test`` (``"excess"`` / ``"membership"`` /
    ``"align_gap"``), or ``None`` when at least one layer passes it in the overall verdict (Holm
    over every test x layer, :mod:`lightning_memloc.verdict`).

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(2),
        ...     unit_mem={"a": torch.zeros(1)}, unit_argmax={"a": torch.zeros(1, dtype=torch.long)},
        ...     dead_units={"a": torch.zeros(1, dtype=torch.bool)})
        >>> evidence_problem(r, "excess").startswith("the report has no evidence")
        True
    """
    ev = report.evidence
    if ev is None:
        return "the report has no evidence (no intervals, control or tests were measured)"
    if not ev.has(f"{test}_p_holm"):
        if ev.has(test):
            return "the report was measured with bootstrap=0, so no test says whether its figures exceed noise"
        need = "a control set (control=)" if test == "excess" else "an unseen set (unseen=)"
        return f"the report was measured without {need}, so no test says whether its figures exceed noise"
    verdict = ev.meta.get("verdict") or {}
    alpha, m = ev.meta.get("alpha", 0.05), verdict.get("family_size", 0)
    if not ev.significant_layers(test):
        what = {"excess": "LayerMem exceeds the control's", "membership": "units prefer training images",
                "align_gap": "the encoder aligns its candidates' views more tightly than unseen images'"}[test]
        problem = (f"no layer shows significant memorization (no layer where {what}, Holm p >= {alpha:g} over the "
                   f"verdict's {m} tests x layers)")
        if verdict.get("attainable") is False:
            problem += (f"; with bootstrap={ev.meta.get('bootstrap')} no test can reach that level: use bootstrap >= "
                        f"{verdict.get('needs_bootstrap')}")
        elif verdict.get("memorization"):
            others = [t for t, layers in verdict.get("layers", {}).items() if layers]
            problem += f"; the verdict is positive through {', '.join(others)}, which this choice does not use"
        return problem
    return None


def gate(report: MemorizationReport, test: str, policy: str, action: str) -> None:
    """Warn (``"warn"``), raise ``ValueError`` (``"error"``) or stay silent (``"off"``) when
    :func:`evidence_problem` finds one; ``action`` names what would act on noise."""
    if policy == "off":
        return
    problem = evidence_problem(report, test)
    if problem is None:
        return
    message = (f"{action}: {problem}; the choice may follow noise rather than memorization. Measure with "
               "control= / unseen= (and more candidates), or pass require_evidence='off' to act anyway.")
    if policy == "error":
        raise ValueError(f"[memloc] refusing to act — {message}")
    rank_zero_warn(f"[memloc] {message}")
