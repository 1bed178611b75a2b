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


def spread(folder: Path, seed: int) -> Dict[str, Dict[str, float]]:
    """Per layer, over the final encoders' candidates and unseen canaries: the spread across images
    of d_f (what the test under f alone sees) and of d_g − d_f (what the g-based test sees), and
    corr(d_f, d_g): g cancels the part of an image's alignment that both encoders share."""
    import torch

    from lightning_memloc import load_encoder
    from lightning_memloc.data.loaders import load_npz
    from lightning_memloc.measure import build_views, probe_layers, run_pass
    from lightning_memloc.meter import MemorizationMeter
    from lightning_memloc.models import ResNet9

    images, _ = load_npz(folder / "data.npz")
    split = json.loads((folder / "split.json").read_text())
    like = ResNet9(in_channels=images.shape[1], width=16)
    f, g = load_encoder(folder / "encoder.pt", like), load_encoder(folder / "reference.pt", like)
    cand, unseen = torch.tensor(split["candidates"]), torch.tensor(split["unseen"])
    views = build_views(images[cand], 10, None, seed, None).pooled([images[unseen]])
    specs, units = probe_layers(f, g, "auto", views.example_batch(torch.device("cpu")))
    meter = MemorizationMeter(specs, units, len(cand), reference=True, labels=False, groups={"unseen": len(unseen)})
    run_pass(f, g, views, specs, meter, batch_size=32)
    out = {}
    for i, spec in enumerate(specs):
        d_f = torch.cat([(m.layer_mem.enc_sums[i] / m.layer_mem.counts).double() for m in (meter, meter.groups["unseen"])])
        d_g = torch.cat([(m.layer_mem.ref_sums[i] / m.layer_mem.counts).double() for m in (meter, meter.groups["unseen"])])
        out[spec.name] = {"sd_f": float(d_f.std()), "sd_g_minus_f": float((d_g - d_f).std()),
                          "corr": float(torch.corrcoef(torch.stack([d_f, d_g]))[0, 1])}
    return out


def untrained_reference(folder: Path, seed: int) -> Dict[str, Dict[str, float]]:
    """C − unseen through an *untrained* ResNet9 as the reference (it saw neither group, so the
    derivation holds; no second training run): per layer the estimate, its Holm p and corr(d_f, d_g0)."""
    import torch

    from lightning_memloc import load_encoder, measure
    from lightning_memloc.data.loaders import load_npz
    from lightning_memloc.models import ResNet9

    images, _ = load_npz(folder / "data.npz")
    split = json.loads((folder / "split.json").read_text())
    torch.manual_seed(1000 + seed)
    g0 = ResNet9(in_channels=images.shape[1], width=16).eval()
    f = load_encoder(folder / "encoder.pt", g0)
    report = measure(f, images[split["candidates"]], reference=g0, control=images[split["control"]],
                     unseen=images[split["unseen"]], views=10, seed=seed, top_k=8, bootstrap=1000)
    out = {}
    for layer in report.layers:
        rec = report.evidence.layers[layer]
        out[layer] = {"value": rec["excess_unseen"], "p": rec["excess_unseen_p_holm"], "f_only": rec["align_gap"]}
    return out


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
    untrained = {True: 0, False: 0}
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
        history_gap = {layer: (history[0].get(scalar_tag("align_gap", layer)), history[-1].get(scalar_tag("align_gap", layer)))
                       for layer in report.layers}
        g0 = untrained_reference(folder, seed)
        print("\n| layer | gap under f alone: before training → last | sd of d_f | sd of d_g − d_f | corr(d_f, d_g) "
              "| C − unseen through an untrained g0 |")
        print("|---|---|---|---|---|---|")
        for layer, row in spread(folder, seed).items():
            start, end = history_gap[layer]
            g0_sig = g0[layer]["p"] is not None and g0[layer]["p"] < alpha
            untrained[g0_sig] += 1
            print(f"| {layer} | {start:+.3f} → {end:+.3f} | {row['sd_f']:.4f} | {row['sd_g_minus_f']:.4f} | "
                  f"{row['corr']:.2f} | {cell(g0[layer]['value'], g0[layer]['p'], alpha)} |")
    print(f"\nlayers × seeds significant (Holm, last measurement): {agree}; through an untrained g0: "
          f"{untrained[True]} of {untrained[True] + untrained[False]}")


if __name__ == "__main__":
    main()
