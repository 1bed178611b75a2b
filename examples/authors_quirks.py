"""How much each quirk of the authors' released scripts changes UnitMem and LayerMem.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) released scripts
whose measurements differ from the paper's clean definitions (../shared/DESIGN.md §7,
:mod:`lightning_memloc.analyses.fidelity`): (a) BatchNorm in training mode at batch size 1 (per-view
statistics), (b) taps through ``IntermediateLayerGetter`` (children run in sequence: no residual
additions), (c) the median of the other candidates instead of the mean, (d) alignment against the
un-augmented image (anchor pairing). This script co-trains ONE SimCLR encoder ``f`` and its
reference ``g`` (the authors' ResNet9 layout, :class:`~lightning_memloc.models.AuthorsResNet9`),
then measures the same candidates with the same seeded views under the clean default, each quirk
alone, the authors' UnitMem (a + b + c) and all four, plus the clean default on other views (the
view-noise floor), and prints per layer: mean UnitMem, the
largest per-unit change of UnitMem and the Spearman correlation of the units' scores with the
clean ones, and LayerMem. It also checks the batched emulation of (a) + (b) + (c) against the
literal one-view-per-forward procedure (:func:`~lightning_memloc.analyses.fidelity.authors_unitmem`).

The numbers in docs/fidelity.md come from (12–19 minutes on 2 CPU cores shared with other jobs)::

    python examples/authors_quirks.py --data ../shared/data/cifar10-train-10k.npz --out runs/quirks

A fast offline smoke run: ``python examples/authors_quirks.py --data synthetic --subset 48
--candidates 8 --independent 8 --width 2 --epochs 1 --batch-size 16 --views 2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from scipy.stats import spearmanr

from lightning_memloc import BatchedSimCLRAugment, CoTrainedPair, MemorizationReport, cotraining_loader
from lightning_memloc.data import load_data, split_candidates
from lightning_memloc.analyses.fidelity import authors_unitmem, measure_with_quirks
from lightning_memloc.io import atomic_write_text
from lightning_memloc.models.ssl import SimCLR

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

#: Measurement settings compared with the clean default: name -> measure_with_quirks kwargs.
SETTINGS: Dict[str, Dict[str, Any]] = {
    "clean": {},
    "view_seed_control": {"seed_offset": 1},  # clean, other views: the noise floor of every difference
    "a_train_bn": {"train_bn": True},
    "b_sequential": {"sequential": True},
    "c_median": {"reduction": "median"},
    "d_anchor": {"pairing": "anchor"},
    "authors_unitmem_abc": {"train_bn": True, "sequential": True, "reduction": "median"},
    "all_abcd": {"train_bn": True, "sequential": True, "reduction": "median", "pairing": "anchor"},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="synthetic", help="synthetic | digits | file.npz (e.g. CIFAR-10)")
    p.add_argument("--size", type=int, default=32, help="image side; >= 32 keeps layers 7-8 at 2x2 (quirk a needs > 1x1)")
    p.add_argument("--subset", type=int, default=1400, help="random subset of the data (shared + candidates + independent)")
    p.add_argument("--candidates", type=int, default=200, help="images seen by f only (the measured set)")
    p.add_argument("--independent", type=int, default=200, help="images seen by g only")
    p.add_argument("--width", type=int, default=16, help="AuthorsResNet9 width (the authors': 32)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--views", type=int, default=10, help="K, views per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for results.json and tables.md")
    return p


def log(msg: str) -> None:
    print(f"[quirks {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_images(args: argparse.Namespace) -> torch.Tensor:
    """uint8 (N, C, size, size) images: a seeded random subset of the data set, or random noise."""
    if args.data == "synthetic":
        gen = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, 256, (args.subset, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    images, _ = load_data(args.data, size=args.size)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    return images[perm[:args.subset]]


def train_pair(args: argparse.Namespace, images: torch.Tensor, split: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Co-train SimCLR f (shared ∪ candidates) and g (shared ∪ independent); return their backbones."""
    pl.seed_everything(args.seed, workers=True, verbose=False)
    augment = BatchedSimCLRAugment(images.shape[-1])

    def model() -> SimCLR:
        return SimCLR.authors_resnet9(in_channels=images.shape[1], width=args.width, augment=augment)

    pair = CoTrainedPair(model(), model(), lr=args.lr, warmup_epochs=min(2, args.epochs - 1) if args.epochs > 1 else 0,
                         max_epochs=args.epochs)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(pair, cotraining_loader(images, split, batch_size=min(args.batch_size, len(split.shared))))
    return pair.encoder.backbone.eval(), pair.reference.backbone.eval()


def compare(reports: Dict[str, MemorizationReport]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per setting and layer: mean UnitMem, max |ΔUnitMem| and Spearman ρ vs clean, LayerMem."""
    clean = reports["clean"]
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, report in reports.items():
        rows: Dict[str, Dict[str, float]] = {}
        for layer in clean.layers:
            u, u0 = report.unit_mem[layer].double(), clean.unit_mem[layer].double()
            constant = bool((u == u[0]).all() or (u0 == u0[0]).all())  # ρ undefined (e.g. all units dead)
            rho = 1.0 if name == "clean" else float("nan") if constant else float(spearmanr(u.numpy(), u0.numpy()).statistic)
            rows[layer] = {"mean_unit_mem": float(u.mean()), "max_abs_diff": float((u - u0).abs().max()),
                           "spearman": rho, "layer_mem": float((report.layer_mem or {}).get(layer, float("nan")))}
        out[name] = rows
    return out


def md_table(title: str, key: str, table: Dict[str, Dict[str, Dict[str, float]]], layers: Sequence[str],
             names: Optional[List[str]] = None) -> str:
    names = names or list(table)
    lines = [f"**{title}**", "", "| layer | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, layer in enumerate(layers, 1):
        lines.append(f"| {i} `{layer}` | " + " | ".join(f"{table[n][layer][key]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    t0 = time.time()
    images = load_images(args)
    n = len(images)
    split = split_candidates(n, shared=n - args.candidates - args.independent, candidates=args.candidates,
                             independent=args.independent, seed=args.seed)
    log(f"{n} images {tuple(images.shape[1:])}: {len(split.shared)} shared, {args.candidates} candidates, "
        f"{args.independent} independent; AuthorsResNet9 width {args.width}, {args.epochs} epochs")
    f, g = train_pair(args, images, split)
    t_train = time.time() - t0
    log(f"trained in {t_train:.0f} s")
    candidates = images[split.candidates]
    reports = {}
    for name, settings in SETTINGS.items():
        kwargs = dict(settings)
        seed = args.seed + kwargs.pop("seed_offset", 0)
        reports[name] = measure_with_quirks(f, candidates, reference=g, views=args.views, seed=seed,
                                            top_k=max(1, args.candidates // 10), **kwargs)
    literal = authors_unitmem(f, candidates, views=args.views, seed=args.seed)
    emulation_gap = max(float((literal[l].float() - reports["authors_unitmem_abc"].unit_mem[l]).abs().max())
                        for l in literal)
    t_measure = time.time() - t0 - t_train
    table = compare(reports)
    layers = reports["clean"].layers
    unit_names = ["clean", "view_seed_control", "a_train_bn", "b_sequential", "c_median", "authors_unitmem_abc"]
    layer_names = ["clean", "view_seed_control", "a_train_bn", "b_sequential", "d_anchor", "all_abcd"]
    tables = "\n\n".join([
        md_table("Mean UnitMem", "mean_unit_mem", table, layers, unit_names),
        md_table("Max |UnitMem − clean| over the units", "max_abs_diff", table, layers, unit_names[1:]),
        md_table("Spearman ρ of the units' UnitMem with clean", "spearman", table, layers, unit_names[1:]),
        md_table("LayerMem", "layer_mem", table, layers, layer_names),
    ])
    print(tables, flush=True)
    log(f"literal one-view-per-forward UnitMem vs batched emulation (a+b+c): max |diff| = {emulation_gap:.2e}")
    log(f"measurement {t_measure:.0f} s, total {time.time() - t0:.0f} s")
    results = {"args": vars(args), "layers": layers, "table": table, "emulation_gap": emulation_gap,
               "seconds": {"train": t_train, "measure": t_measure}}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        atomic_write_text(out / "tables.md", tables + "\n")
        log(f"wrote {out / 'results.json'} and {out / 'tables.md'}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
