"""Power of the reference-free evidence in the demo's canary setting: f alone against f + g, per layer.

Runs ``memloc demo --unseen neither --seed S`` for each seed (skipped when ``<root>/seed<S>/report.json``
exists), then tabulates per layer, at the last measurement: the g-based C − unseen (LayerMem of
the candidates minus the unseen canaries', Holm p) next to the reference-free alignment gap
under f alone (``align_gap``, Holm p, AUC), and over training the first epoch at which each is
significant. The unseen canaries are ones neither encoder trained on, so both estimate f's
memorization (with ``--unseen independent`` C − unseen through g also holds g's).

    python benchmarks/reference_free_power.py --seeds 0 1 2 [--root runs/power] [-- extra demo flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from lightning_memloc import MemorizationReport
from lightning_memloc.tags import scalar_tag


def run_demo(folder: Path, seed: int, extra: List[str]) -> None:
    if (folder / "report.json").exists():
        return
    command = [sys.executable, "-m", "lightning_memloc.demo", "--unseen", "neither", "--seed", str(seed),
               "--output-dir", str(folder), *extra]
    print("[power] " + " ".join(command), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "demo.log", "w") as log:  # the demo's own output
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def first_significant(history: List[Dict[str, Any]], key: str, layer: str, alpha: float) -> Optional[int]:
    for entry in history:
        p = entry.get(scalar_tag(f"{key}_p_holm", layer))
        if p is not None and p < alpha:
            return int(entry["epoch"])
    return None


def cell(value: Optional[float], p: Optional[float], alpha: float) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f} (p={p:.1g}){'*' if p is not None and p < alpha else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/reference_free_power")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: further `memloc demo` flags")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    agree = {"both": 0, "g only": 0, "f only": 0, "neither": 0}
    for seed in args.seeds:
        folder = Path(args.root) / f"seed{seed}"
        run_demo(folder, seed, extra)
        report = MemorizationReport.load(folder / "report.json")
        history = json.loads((folder / "memloc" / "history.json").read_text())
        ev = report.evidence
        alpha = float(ev.meta.get("alpha", 0.05))
        print(f"\nseed {seed} (epoch {report.meta.get('epoch')}, {ev.meta['groups']}):")
        print(f"| layer | C − unseen through g | first epoch * | gap under f alone | AUC | first epoch * | C − control |")
        print("|---|---|---|---|---|---|---|")
        for layer in report.layers:
            rec = ev.layers[layer]
            g_sig = rec.get("excess_unseen_p_holm") is not None and rec["excess_unseen_p_holm"] < alpha
            f_sig = rec.get("align_gap_p_holm") is not None and rec["align_gap_p_holm"] < alpha
            agree["both" if g_sig and f_sig else "g only" if g_sig else "f only" if f_sig else "neither"] += 1
            print(f"| {layer} | {cell(rec.get('excess_unseen'), rec.get('excess_unseen_p_holm'), alpha)} | "
                  f"{first_significant(history, 'excess_unseen', layer, alpha)} | "
                  f"{cell(rec.get('align_gap'), rec.get('align_gap_p_holm'), alpha)} | {rec.get('align_auc', float('nan')):.2f} | "
                  f"{first_significant(history, 'align_gap', layer, alpha)} | "
                  f"{cell(rec.get('excess'), rec.get('excess_p_holm'), alpha)} |")
    print(f"\nlayers × seeds significant (Holm, last measurement): {agree}")


if __name__ == "__main__":
    main()
