"""Pooling over training seeds, verdicts and the Markdown table of ``paper_findings_cpu.py``.

Every finding is reduced to one signed statistic per seed (> 0: what the paper reports). Seeds
are pooled with the mean and a two-sided 95 % Student-t interval over seeds (n − 1 degrees of
freedom), tested with the one-sample t-test of mean 0. Correlations are pooled on Fisher's
z = atanh(ρ) and reported back as ρ. Verdict: *holds* when the interval lies above 0, *does not
hold* when it lies below 0, *cannot tell* otherwise (with 3 seeds the interval is wide:
t₀.₉₇₅,₂ = 4.30).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

VERDICTS = ("holds", "does not hold", "cannot tell")


def pool(values: Sequence[float], confidence: float = 0.95, fisher: bool = False) -> Dict[str, Any]:
    """Mean, t-interval and t-test over seeds; ``fisher``: pool correlations on atanh(ρ).

    Example:
        >>> r = pool([1.0, 2.0, 3.0])
        >>> r["mean"], round(r["lo"], 3), round(r["hi"], 3)
        (2.0, -0.484, 4.484)
    """
    from scipy import stats

    xs = [math.atanh(max(-0.999999, min(0.999999, v))) if fisher else float(v) for v in values]
    n = len(xs)
    if n == 0 or not all(math.isfinite(x) for x in xs):
        raise ValueError(f"pool needs finite values, got {list(values)}")
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    if n > 1 and sd > 0:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    else:  # one seed, or identical values: no spread to test against
        half, p = (0.0 if n > 1 else math.inf), (1.0 if mean == 0 or n == 1 else 0.0)
    back = math.tanh if fisher else (lambda v: v)
    lo, hi = back(mean - half) if math.isfinite(half) else -math.inf, back(mean + half) if math.isfinite(half) else math.inf
    return {"n": n, "mean": back(mean), "sd": sd, "lo": lo, "hi": hi, "p": p, "positive": sum(x > 0 for x in xs),
            "test": "one-sample t over seeds" + (" on Fisher z" if fisher else "")}


def verdict(pooled: Dict[str, Any]) -> str:
    """``holds`` (interval above 0), ``does not hold`` (below 0) or ``cannot tell``.

    Example:
        >>> verdict({"lo": 0.1, "hi": 0.3}), verdict({"lo": -0.1, "hi": 0.3})
        ('holds', 'cannot tell')
    """
    if pooled["lo"] > 0:
        return "holds"
    if pooled["hi"] < 0:
        return "does not hold"
    return "cannot tell"


def fmt(x: Any, digits: int = 3) -> str:
    """A number for the table (``n/a`` for ``None``)."""
    if x is None:
        return "n/a"
    if isinstance(x, float) and (abs(x) >= 1e-3 or x == 0):
        return f"{x:+.{digits}f}"
    return f"{x:.2g}" if isinstance(x, float) else str(x)


def findings_table(rows: List[Dict[str, Any]], seeds: Sequence[int]) -> str:
    """One Markdown row per finding: id, finding, the paper, this run (per seed; pooled [95 % t-interval], p), verdict."""
    lines = ["| # | finding | the paper | statistic (> 0: as the paper) | per seed (" + ", ".join(map(str, seeds))
             + ") | pooled [95 % CI], t-test p | verdict |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        pooled = row["pooled"]
        per_seed = " / ".join(fmt(v) for v in row["per_seed"]) + (f"; {row['note']}" if row.get("note") else "")
        lines.append(f"| {row['id']} | {row['finding']} | {row['paper']} | {row['statistic']} | {per_seed} | "
                     f"{fmt(pooled['mean'])} [{fmt(pooled['lo'])}, {fmt(pooled['hi'])}], p = {pooled['p']:.2g} "
                     f"({pooled['positive']}/{pooled['n']} seeds > 0) | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


def depth_table(layers: Sequence[str], per_seed: List[Dict[str, Dict[str, Any]]]) -> str:
    """LayerMem excess over the control by layer: per seed (``*``: Holm p < 0.05), pooled with its t-interval."""
    lines = ["| layer | excess per seed (95 % bootstrap CI; *: Holm p < 0.05) | pooled [95 % t-interval over seeds] |",
             "|---|---|---|"]
    for layer in layers:
        cells = []
        for seed in per_seed:
            r = seed[layer]
            star = "*" if (r.get("p_holm") if r.get("p_holm") is not None else 1.0) < 0.05 else ""
            cells.append(f"{fmt(r['excess'])}{star} [{fmt(r.get('lo'))}, {fmt(r.get('hi'))}]")
        p = pool([s[layer]["excess"] for s in per_seed])
        lines.append(f"| {layer} | {' · '.join(cells)} | {fmt(p['mean'])} [{fmt(p['lo'])}, {fmt(p['hi'])}] |")
    return "\n".join(lines) + "\n"


def curve_table(curves: List[Dict[str, Any]]) -> str:
    """Last layer's mean UnitMem over epochs, candidates / unseen, one column per seed; ``W``: the warm-up's last epoch."""
    epochs = [e for e in curves[0]["epochs"]]
    lines = ["| epoch | " + " | ".join(f"seed {c['seed']}: candidates / unseen" for c in curves) + " |",
             "|---" * (1 + len(curves)) + "|"]
    for i, epoch in enumerate(epochs):
        label = "init" if epoch < 0 else str(epoch) + (" W" if epoch == curves[0]["warmup_last_epoch"] else "")
        cells = [f"{c['candidates'][i]:.3f} / {c['unseen'][i]:.3f}" if i < len(c["candidates"]) else "n/a" for c in curves]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
