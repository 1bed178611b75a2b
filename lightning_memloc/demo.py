"""The main job: co-train a SimCLR ResNet9 and its reference with the memorization monitor.

Reproduces the set-up of Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024) at demo scale: the data are split into shared / candidate / independent parts
(80 / 10 / 10 %), the encoder trains on shared ∪ candidates and the reference on shared ∪
independent in the same ``Trainer.fit``, and :class:`~lightning_memloc.MemorizationMonitor`
measures UnitMem and LayerMem of the held-out candidates every epoch. The default data set is
scikit-learn's bundled handwritten digits, so the demo runs offline; ``--data`` takes
``cifar10``, ``stl10``, ``svhn``, an ``.npz`` file or an image folder too.

Run ``memloc demo --help`` (or ``python -m lightning_memloc.demo --help``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Dict, List, Optional, Sequence

import torch

from lightning_memloc.io import atomic_write_text, check_writable_dir


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the demo."""
    p = argparse.ArgumentParser(prog="memloc demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="digits", help="digits | cifar10 | stl10 | svhn | file.npz | image folder")
    p.add_argument("--root", default="data", help="download/cache folder for torchvision data sets")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default: 16 for the 8x8 digits, the data's own size otherwise)")
    p.add_argument("--limit", type=int, default=600,
                   help="use a seeded random subset of N images (0: all); fewer images and more epochs memorize more per second")
    p.add_argument("--out", default="runs/demo", help="output folder (TensorBoard logs, reports, plots)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup-epochs", type=int, default=5, help="linear LR warm-up epochs")
    p.add_argument("--width", type=int, default=16, help="ResNet9 base width (the paper: 64)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--views", type=int, default=10, help="K views per candidate for the monitor")
    p.add_argument("--every-n-epochs", type=int, default=1)
    p.add_argument("--candidates", type=float, default=0.1, help="fraction (or count) of held-out candidates")
    p.add_argument("--independent", type=float, default=0.1, help="fraction (or count) for the reference only")
    p.add_argument("--transform", choices=["batched", "lightly"], default="batched",
                   help="training augmentation: batched tensor SimCLR augmentation, or lightly's SimCLRTransform")
    p.add_argument("--threshold", type=float, default=0.5, help="UnitMem above which a unit is 'highly memorizing'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--accelerator", default="auto")
    return p


def _count(value: float) -> float:
    return int(value) if value >= 1 else value


def unit_mem_growth_table(history: List[Dict[str, float]], layers: Sequence[str], threshold: float) -> str:
    """Mean UnitMem (and fraction of units above ``threshold``) per layer, one row per measurement."""
    head = f"{'epoch':>6} " + "".join(f"{layer[:10]:>11}" for layer in layers) + f"{'all >' + format(threshold, 'g'):>11}"
    rows = [head]
    for entry in history:
        means = [entry[f"memloc/unit_mem_mean/{layer}"] for layer in layers]
        above = sum(entry[f"memloc/unit_mem_frac_above/{layer}"] for layer in layers) / len(layers)
        label = "init" if entry["epoch"] < 0 else str(entry["epoch"])
        rows.append(f"{label:>6} " + "".join(f"{m:>11.3f}" for m in means) + f"{above:>11.1%}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Run the demo; returns the final report and the history."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from lightning_memloc.callbacks import MemorizationMonitor
    from lightning_memloc.cotrain import CoTrainedPair, cotraining_loader
    from lightning_memloc.data import load_data, split_candidates
    from lightning_memloc.ssl import SimCLR
    from lightning_memloc.views import BatchedSimCLRAugment

    out = check_writable_dir(args.out, argument="--out")
    started = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    size = args.size if args.size is not None else (16 if str(args.data).lower() == "digits" else None)
    images, labels = load_data(args.data, root=args.root, size=size)
    if args.limit and args.limit < len(images):
        # a seeded random subset: files sorted by class (e.g. a CIFAR .npz) keep every class
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.limit].sort().values
        images, labels = images[keep], labels[keep]
    n, channels = images.shape[0], images.shape[1]
    candidates, independent = _count(args.candidates), _count(args.independent)
    shared = n - (candidates if isinstance(candidates, int) else int(candidates * n)) - (
        independent if isinstance(independent, int) else int(independent * n))
    split = split_candidates(n, shared=shared, candidates=candidates, independent=independent, seed=args.seed)
    print(f"[memloc] data {args.data!r}: {n} images {tuple(images.shape[1:])}; shared {len(split.shared)}, "
          f"candidates {len(split.candidates)}, independent {len(split.independent)}")

    side = images.shape[-1]
    augment = BatchedSimCLRAugment(side)
    transform = None
    if args.transform == "lightly":
        from lightly.transforms import SimCLRTransform

        transform = SimCLRTransform(input_size=side, gaussian_blur=0.0, normalize=None)
        augment = None

    def ssl_model() -> SimCLR:
        return SimCLR.resnet9(in_channels=channels, width=args.width, augment=augment)

    model = CoTrainedPair(ssl_model(), ssl_model(), lr=args.lr, warmup_epochs=args.warmup_epochs,
                          max_epochs=args.epochs)
    cand = split.candidates
    monitor = MemorizationMonitor(
        images[cand], labels=labels[cand] if bool((labels[cand] >= 0).all()) else None, views=args.views,
        every_n_epochs=args.every_n_epochs, encoder="encoder.backbone", reference="reference.backbone",
        seed=args.seed, threshold=args.threshold, measure_on_train_start=True, output_dir=out / "memloc",
        top_k=max(1, len(cand) // 10), overwrite=True,  # re-running the demo into --out replaces its memloc/ files
    )
    logger = TensorBoardLogger(str(out), name="tensorboard", version="")
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=logger,
                         callbacks=[monitor], log_every_n_steps=5, enable_checkpointing=True,
                         default_root_dir=str(out))
    trainer.fit(model, cotraining_loader(images, split, batch_size=args.batch_size, num_workers=args.workers,
                                         transform=transform))

    report = monitor.report
    report.save(out / "report.json")
    written = [out / "report.json"]
    try:
        from lightning_memloc import plots

        written += plots.plot_report(report, out / "plots", images=images[cand], history=monitor.history)
    except ImportError:  # plotting is optional
        pass
    summary = {"elapsed_s": round(time.perf_counter() - started, 1), "epochs": args.epochs, "data": args.data,
               "num_candidates": len(cand), "layer_mem": report.layer_mem, "delta_layer_mem": report.delta_layer_mem,
               "fraction_above_threshold": report.fraction_above(args.threshold)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))

    print("\n[memloc] memorization after training (LayerMem needs the co-trained reference):")
    print(report.summary_table(args.threshold))
    print(f"\n[memloc] mean UnitMem per layer over training (last column: units with UnitMem > {args.threshold:g}):")
    print(unit_mem_growth_table(monitor.history, report.layers, args.threshold))
    print(f"\n[memloc] most memorized candidates (dataset indices): {cand[report.most_memorized(8)].tolist()}")
    print(f"[memloc] wrote {', '.join(str(p) for p in written[:3])}{' ...' if len(written) > 3 else ''}")
    print(f"[memloc] TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    print(f"[memloc] done in {summary['elapsed_s']} s")
    return {"report": report, "history": monitor.history, "summary": summary}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``memloc demo``."""
    from lightning_memloc.demo_args import validate_args

    parser = build_parser()
    args = validate_args(parser, parser.parse_args(argv))  # bad values: argparse error, exit code 2
    torch.set_float32_matmul_precision("high")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
