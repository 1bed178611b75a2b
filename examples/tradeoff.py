"""Memorization vs utility: fine-tuning and pruning chosen by memorization, measured side by side.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) use LayerMem /
ΔLayerMem to choose the layers to fine-tune and UnitMem to choose the units to prune. This script
measures what those choices cost or buy in downstream utility, next to the memorization that is
left afterwards, in the smallest setting where there is memorization to trade against: the
``memloc demo`` canary setting (docs/evidence.md §5: 80 photo canaries among 160 digits, the
candidates repeated 3x, a SimCLR ResNet9 ``f`` and its reference ``g`` co-trained for 180 epochs).

1. Pre-train ``f`` and ``g`` (or load them with ``--pretrained``) and measure the report
   (LayerMem excess over the control, UnitMem, with intervals and Holm-corrected tests).
2. Fine-tuning (:class:`~lightning_memloc.MemorizationFinetuning`) on labelled held-out digits:
   head only, last-2, top-2 by LayerMem, top-2 by ΔLayerMem, top-2 by the excess over the
   control, all layers; ``--ft-seeds`` seeds each. Utility: the fine-tuned linear head's test
   accuracy and the weighted cosine kNN accuracy (k = 20, 200, temperature 0.1) of the
   fine-tuned features; memorization after: the report of the fine-tuned encoder against ``g``.
3. Pruning (:func:`~lightning_memloc.prune_units`, ``scope="layer"``: the fraction of every
   layer) of the lowest / random (``--random-seeds`` seeds) / highest UnitMem units at each
   ``--fractions``: kNN accuracy before / after and the report of the pruned encoder.

Accuracies come with the binomial standard error over the test images and, against a baseline,
the paired standard error of the difference (same test images); ``†`` marks a difference beyond
two paired standard errors. Output: ``<out>/results.json`` (every number) and ``<out>/table.md``.

Smoke run (seconds): ``python examples/tradeoff.py --limit 40 --canaries 4 --epochs 1 --width 2 --views 2
--bootstrap 200 --finetune-size 40 --test-size 40 --ft-epochs 1 --ft-seeds 1 --random-seeds 1 --ks 5 10``.
The run recorded in docs/finetuning_pruning.md::

    OMP_NUM_THREADS=1 python examples/tradeoff.py --out runs/tradeoff
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_memloc import ReferenceCache
from lightning_memloc.data.splits import canary_layout, photo_canaries
from lightning_memloc.data import SplitIndices, load_data
from lightning_memloc.io import atomic_write_text, check_writable_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tradeoff_runs import (accuracy, knn_hits, log, mem_summary, memorization, run_finetuning,  # noqa: E402
                           run_layer_pruning, run_pruning)


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options; a bad value is an argparse error (exit code 2) before any work."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--limit", type=int, default=160, help="digits in the SSL training data (the demo's)")
    p.add_argument("--canaries", type=int, default=80, help="canaries per group (the demo's)")
    p.add_argument("--repeat", type=int, default=3, help="times each candidate appears in f's data")
    p.add_argument("--epochs", type=int, default=180, help="SSL pre-training epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=16, help="ResNet9 base width")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--views", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--finetune-size", type=int, default=800, help="held-out labelled digits to fine-tune on (and kNN bank)")
    p.add_argument("--test-size", type=int, default=0, help="held-out test digits (0: all the remaining ones)")
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--ft-lr", type=float, default=3e-3, help="Adam learning rate of head and chosen layers")
    p.add_argument("--ft-batch-size", type=int, default=50)
    p.add_argument("--ft-seeds", type=int, default=3, help="fine-tuning seeds per strategy")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2], help="pruned share of every layer")
    p.add_argument("--random-seeds", type=int, default=3, help="seeds of random pruning")
    p.add_argument("--no-per-layer", dest="per_layer", action="store_false",
                   help="skip pruning each layer alone (kNN accuracy and the layer's mean UnitMem)")
    p.add_argument("--ks", type=int, nargs="+", default=[20, 200])
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--pretrained", default=None, help="pretrained.pt of an earlier run (same data options): skip step 1")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/tradeoff")
    args = p.parse_args(argv)
    for name in ("limit", "canaries", "repeat", "epochs", "batch_size", "width", "views", "finetune_size", "ft_epochs",
                 "ft_batch_size", "ft_seeds", "random_seeds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.canaries < 2:
        p.error(f"--canaries must be >= 2 (the tests compare groups), got {args.canaries}")
    if not all(0 < f < 1 for f in args.fractions):
        p.error(f"--fractions must lie in (0, 1), got {args.fractions}")
    if args.test_size < 0 or args.bootstrap < 0 or min(args.ks) < 1 or args.temperature <= 0:
        p.error("--test-size and --bootstrap must be >= 0, --ks >= 1 and --temperature > 0")
    if max(args.ks) > args.finetune_size:
        p.error(f"--ks {max(args.ks)} exceeds the kNN bank (--finetune-size {args.finetune_size}): lower --ks or raise the bank")
    if args.pretrained is not None and not Path(args.pretrained).is_file():
        p.error(f"--pretrained {args.pretrained!r} is not a file: pass the pretrained.pt an earlier run wrote")
    return args


def build_data(args: argparse.Namespace) -> Dict[str, Any]:
    """The demo's canary setting (its digit subset and canary layout) plus held-out labelled digits."""
    images, labels = load_data("digits", size=16)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    keep, rest = order[:args.limit].sort().values, order[args.limit:]  # `keep`: the demo's `--limit` subset
    test_size = args.test_size or len(rest) - args.finetune_size
    if args.finetune_size + test_size > len(rest) or test_size < 1:
        raise SystemExit(f"--finetune-size {args.finetune_size} + --test-size {args.test_size} exceed the "
                         f"{len(rest)} held-out digits: lower them")
    canaries = photo_canaries(4 * args.canaries, size=16, channels=3, seed=args.seed)
    layout = canary_layout(args.limit, args.canaries, seed=args.seed)
    split = layout.split
    split = SplitIndices(split.shared, split.candidates.repeat(args.repeat), split.independent)
    ft, test = rest[:args.finetune_size], rest[args.finetune_size:args.finetune_size + test_size]
    return {"train": torch.cat([images[keep], canaries]), "split": split, "control": layout.control,
            "unseen": layout.split.independent, "candidates": layout.split.candidates,
            "ft_x": images[ft], "ft_y": labels[ft], "test_x": images[test], "test_y": labels[test]}


def pretrain(args: argparse.Namespace, data: Dict[str, Any]) -> Tuple[nn.Module, nn.Module]:
    """Co-train SimCLR ``f`` (shared ∪ candidates) and ``g`` (shared ∪ independent) as ``memloc demo`` does."""
    from lightning_memloc import BatchedSimCLRAugment, CoTrainedPair, cotraining_loader
    from lightning_memloc.models.ssl import SimCLR

    pl.seed_everything(args.seed, workers=True)
    make = lambda: SimCLR.resnet9(in_channels=3, width=args.width, augment=BatchedSimCLRAugment(16))  # noqa: E731
    pair = CoTrainedPair(make(), make(), lr=args.lr, warmup_epochs=max(1, args.epochs // 10), max_epochs=args.epochs)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    loader = cotraining_loader(data["train"], data["split"], batch_size=min(args.batch_size, len(data["split"].shared)))
    trainer.fit(pair, loader)
    return pair.encoder.backbone.eval(), pair.reference.backbone.eval()


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _acc_cell(cell: Dict[str, Any], seeds: int, baseline: bool = False) -> str:
    """``acc ± SE`` (``mean ± sd`` over seeds when several), then ``Δ ± paired SE`` (``†``: beyond 2 SE)."""
    spread_ = f"{_pct(cell['seeds']['mean'])} ± {_pct(cell['seeds']['sd'])} sd" if seeds > 1 else _pct(cell["acc"])
    if baseline:
        return f"{spread_} (SE {_pct(cell['se'])}); baseline"
    mark = "†" if abs(cell["diff"]) > 2 * cell["diff_se"] else ""
    return f"{spread_} (SE {_pct(cell['se'])}); {100 * cell['diff']:+.1f} ± {_pct(cell['diff_se'])}{mark}"


def _mem_cell(record: Dict[str, Optional[float]], key: str) -> str:
    """``value [interval]`` of one report, ``*`` when its Holm-corrected test is significant."""
    value, lo, hi = record.get(key), record.get(f"{key}_lo"), record.get(f"{key}_hi")
    if value is None:
        return "n/a"
    star = "*" if (record.get(f"{key}_p_holm") or 1.0) < 0.05 else ""
    return f"{value:+.3f}{star}" + ("" if lo is None else f" [{lo:+.3f}, {hi:+.3f}]")


def tables(results: Dict[str, Any], args: argparse.Namespace) -> str:
    """The Markdown tables of ``table.md``: the pre-trained encoder, fine-tuning, pruning."""
    deep, ks = results["deep_layers"], args.ks
    before = results["before"]
    lines = ["Pre-trained f: kNN " + ", ".join(f"k={k} {_pct(before['knn'][k]['acc'])} % (SE {_pct(before['knn'][k]['se'])})"
                                                for k in ks) + "; LayerMem excess over the control [95 % CI] (*: Holm p < 0.05): "
             + ", ".join(f"{layer} {_mem_cell(before['memorization'][layer], 'excess')}" for layer in before["memorization"]),
             "", "Fine-tuning (accuracy in %, test digits; Δ vs last-2 ± paired SE):", "",
             "| strategy | layers trained | linear head acc | " + " | ".join(f"kNN k={k}" for k in ks) + " | "
             + " | ".join(f"excess {layer} after (sig. runs)" for layer in deep) + " |",
             "|---" * (3 + len(ks) + len(deep)) + "|"]
    n = args.ft_seeds
    for row in results["finetuning"]:
        base = row["strategy"] == "last-2"
        same = f" (= {row['same_as']})" if row.get("same_as") else ""
        cells = [row["strategy"] + same, ", ".join(row["chosen_layers"]) or "–", _acc_cell(row["head"], n, base)]
        cells += [_acc_cell(row["knn"][k], n, base) for k in ks]
        cells += [f"{row['excess'][layer]['mean']:+.3f} ± {row['excess'][layer]['sd']:.3f} ({row['excess'][layer]['significant']}/{n})"
                  if n > 1 else f"{row['excess'][layer]['mean']:+.3f} ({row['excess'][layer]['significant']}/1)" for layer in deep]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Pruning `scope=\"layer\"` (kNN accuracy in %; Δ vs unpruned ± paired SE; memorization after: "
              "one run [95 % CI], random: mean ± sd over seeds):", "",
              "| pruned | strategy | " + " | ".join(f"kNN k={k}" for k in ks) + " | "
              + " | ".join(f"excess {layer}" for layer in deep) + " | " + " | ".join(f"mean UnitMem {layer}" for layer in deep) + " |",
              "|---" * (2 + len(ks) + 2 * len(deep)) + "|",
              "| 0 % | – | " + " | ".join(f"{_pct(before['knn'][k]['acc'])} (SE {_pct(before['knn'][k]['se'])})" for k in ks) + " | "
              + " | ".join(_mem_cell(before["memorization"][layer], key) for key in ("excess", "unit_mem_mean") for layer in deep) + " |"]
    for row in results["pruning"]:
        cells = [f"{row['fraction']:.0%}", row["strategy"] + (f" ({row['seeds']} seeds)" if row["seeds"] > 1 else "")]
        cells += [_acc_cell(row["knn"][k], row["seeds"]) for k in ks]
        for key in ("excess", "unit_mem_mean"):
            for layer in deep:
                if row["seeds"] > 1:
                    cells.append(f"{row['memorization'][layer][key]['mean']:+.3f} ± {row['memorization'][layer][key]['sd']:.3f}")
                else:
                    cells.append(_mem_cell(row["per_seed"][0]["memorization"][layer], key))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + layer_table(results.get("layer_pruning"), ks)) + "\n"


def layer_table(rows: Optional[Sequence[Dict[str, Any]]], ks: Sequence[int]) -> List[str]:
    """One row per (layer, fraction) pruned alone: Δ kNN accuracy of lowest / random / highest, UnitMem after."""
    if not rows:
        return []

    def delta(cell: Dict[str, Any], seeds: int) -> str:
        mark = "†" if abs(cell["diff"]) > 2 * cell["diff_se"] else ""
        return f"{100 * cell['diff']:+.1f}{mark}" + (f" ± {_pct(cell['seeds']['sd'])} sd" if seeds > 1 else "")

    lines = ["", "Each layer pruned alone (Δ kNN accuracy in points vs unpruned, lowest / random / highest UnitMem; "
             "†: beyond 2 paired SE; SE: the largest paired SE of the row; mean UnitMem of the layer, pruned units 0):", "",
             "| layer | pruned | " + " | ".join(f"Δ kNN k={k} low / rand / high" for k in ks)
             + " | SE | mean UnitMem before → low / rand / high |", "|---" * (4 + len(ks)) + "|"]
    for row in rows:
        cells = [row["layer"], f"{row['pruned']} ({row['fraction']:.0%})"]
        cells += [" / ".join(delta(row[s]["knn"][k], row[s]["seeds"]) for s in ("lowest", "random", "highest")) for k in ks]
        cells.append(_pct(max(row[s]["knn"][k]["diff_se"] for s in ("lowest", "random", "highest") for k in ks)))
        cells.append(f"{row['unit_mem_before']:.3f} → " + " / ".join(f"{row[s]['unit_mem_after']['mean']:.3f}"
                                                                    for s in ("lowest", "random", "highest")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Pre-train (or load), measure, fine-tune, prune; write ``results.json`` and ``table.md``."""
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = check_writable_dir(args.out, argument="--out")
    started, cpu, load_start = time.perf_counter(), time.process_time(), os.getloadavg()
    data = build_data(args)
    log(f"{args.limit} digits + {4 * args.canaries} canaries (candidates x{args.repeat}); fine-tuning/kNN bank "
        f"{len(data['ft_y'])} held-out digits, test {len(data['test_y'])}")
    from lightning_memloc.models import ResNet9

    f, g = ResNet9(in_channels=3, width=args.width), ResNet9(in_channels=3, width=args.width)
    if args.pretrained:
        state = torch.load(args.pretrained, map_location="cpu")
        f.load_state_dict(state["f"]), g.load_state_dict(state["g"])
    else:
        f, g = pretrain(args, data)
        torch.save({"f": f.state_dict(), "g": g.state_dict(), "args": vars(args)}, out / "pretrained.pt")
    pretrain_s = time.perf_counter() - started
    log(f"pre-training: {pretrain_s:.0f} s")
    f.eval(), g.eval()
    cache = ReferenceCache()
    report = memorization(f, g, data, args, cache)
    report.save(out / "report_pretrained.json")
    significant = [layer for layer in report.layers if (report.evidence.layers[layer].get("excess_p_holm") or 1.0) < 0.05]
    deep = significant or list(report.layers[-2:])
    base_hits = knn_hits(f, data, args)
    results: Dict[str, Any] = {"args": vars(args), "deep_layers": deep, "significant_before": significant,
                               "before": {"knn": {k: accuracy(h) for k, h in base_hits.items()},
                                          "memorization": mem_summary(report, report.layers)}}
    results["finetuning"] = run_finetuning(f, g, report, data, args, cache, deep)
    results["pruning"] = run_pruning(f, g, report, data, args, cache, base_hits)
    if args.per_layer:
        results["layer_pruning"] = run_layer_pruning(f, report, data, args, base_hits)
    results["seconds"] = {"pretraining": round(pretrain_s, 1), "total": round(time.perf_counter() - started, 1),
                          "cpu": round(time.process_time() - cpu, 1)}
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}  # 1, 5, 15 min: others' jobs on the cores
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float))
    table = tables(results, args)
    atomic_write_text(out / "table.md", table)
    print(table)
    log(f"wrote {out / 'results.json'}, {out / 'table.md'}; {results['seconds']['total']:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
