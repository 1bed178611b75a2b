"""Measure on the views the encoder trains on: the effect of mismatched views, and the monitor's warning.

A SimCLR ResNet9 ``f`` and its reference ``g`` train side by side (``CoTrainedPair``) on CIFAR-10
images through lightly's ``SimCLRTransform`` — ImageNet-normalised views, lightly's default. Three
monitors measure the same candidates (with a control and an unseen set) at the end of training,
each on other views:

- ``default``: the monitor's default views (``BatchedSimCLRAugment``, values in [0, 1]);
- ``training``: the training pipeline's view transform (``transform=SimCLRTransform(...).transforms[0]``);
- ``normalized``: the default views with ``normalize="imagenet"``.

The script prints, per layer, LayerMem, mean UnitMem and the share of units whose favourite image
is a seen one (membership, against the unseen set), and which monitors warned that their views do
not look like the training batches (``check_views``). Figures: docs/definitions.md, "Views".

    OMP_NUM_THREADS=2 python examples/views_match_training.py --data ../shared/data/cifar10-train-10k.npz \
        --epochs 4 --width 16 --json runs/views_match_training.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict

import pytorch_lightning as pl
import torch

from lightning_memloc import CoTrainedPair, MemorizationMonitor, cotraining_loader
from lightning_memloc.data import load_data, split_candidates
from lightning_memloc.ssl import SimCLR

MISMATCH = "do not look like the batches the encoder trains on"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train-10k.npz")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--measured", type=int, default=256, help="candidates, control and unseen images measured")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only (a smoke run)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    from lightly.transforms import SimCLRTransform

    pl.seed_everything(0)
    images, _ = load_data(args.data)
    images = images[:args.limit]
    split = split_candidates(len(images), shared=0.8, candidates=0.1, independent=0.1, seed=0)
    transform = SimCLRTransform(input_size=images.shape[-1], cj_strength=0.5, gaussian_blur=0.0)  # ImageNet-normalised
    m = args.measured
    groups = dict(candidates=images[split.candidates[:m]], control=images[split.control(m)],
                  unseen=images[split.independent[:m]])
    settings = {"default": {}, "training": {"transform": transform.transforms[0]}, "normalized": {"normalize": "imagenet"}}
    monitors = {name: MemorizationMonitor(groups["candidates"], control=groups["control"], unseen=groups["unseen"],
                                          every_n_epochs=args.epochs, views=args.views, encoder="encoder.backbone",
                                          reference="reference.backbone", name=name, progress=False, grid_size=0,
                                          bootstrap=200, **kwargs)
                for name, kwargs in settings.items()}
    make = lambda: SimCLR.resnet9(width=args.width)  # noqa: E731
    model = CoTrainedPair(make(), make(), lr=args.lr, warmup_epochs=1, max_epochs=args.epochs)
    loader = cotraining_loader(images, split, batch_size=args.batch_size, transform=transform)
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=list(monitors.values()), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    warned = [str(w.message) for w in caught if MISMATCH in str(w.message)]
    print(f"{trainer.global_step} steps in {time.time() - start:.0f} s; {len(warned)} view warning(s):")
    for message in warned:
        print("  " + message.split(". Every figure")[0])

    out: Dict[str, Any] = {"steps": trainer.global_step, "warnings": warned, "monitors": {}}
    layers = monitors["default"].report.layers
    print(f"\n{'layer':8s}" + "".join(f" | {name:^26s}" for name in settings))
    print(f"{'':8s}" + " | LayerMem  UnitMem  members" * len(settings))
    for layer in layers:
        row = f"{layer:8s}"
        for name, monitor in monitors.items():
            report = monitor.report
            membership = report.evidence.layers[layer].get("membership", float("nan"))
            values = {"layer_mem": report.layer_mem[layer], "unit_mem_mean": report.unit_mem_mean()[layer],
                      "membership": membership}
            out["monitors"].setdefault(name, {"view_stats": report.meta["view_stats"],
                                              "training_stats": monitor.view_check.training._asdict()
                                              if monitor.view_check.training else None,
                                              "layers": {}})["layers"][layer] = values
            row += f" | {values['layer_mem']:+8.3f} {values['unit_mem_mean']:8.3f} {membership:8.3f}"
        print(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
