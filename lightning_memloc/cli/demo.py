"""The main job: show memorization, with its controls and its tests, in a few CPU minutes.

An encoder ``f`` and its reference ``g`` (SimCLR ResNet9) are co-trained while a monitor measures the candidates
(seen by ``f`` only) next to a control set (both train on it) and an unseen set. A bad argument is an argparse-style
error (exit code 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from lightning_memloc.io import atomic_write_text, check_writable_dir
from lightning_memloc.options import DEFAULT
from lightning_memloc.report.evidence import MIN_BOOTSTRAP
from lightning_memloc.report.tags import scalar_tag

# (attribute, flag, lowest allowed value, why) for integer options; a missing attribute is skipped.
_INT_RULES = (
    ("epochs", "--epochs", 1, "train for at least one epoch"),
    ("size", "--size", 1, "images need at least one pixel (omit it for the data's own size)"),
    ("views", "--views", 2, "LayerMem compares pairs of views"),
    ("subset", "--subset", 0, "0 uses every image"),
    ("width", "--width", 1, "the encoder needs at least one channel"),
    ("batch_size", "--batch-size", 1, "a batch needs at least one image"),
    ("every_n_epochs", "--every-n-epochs", 1, "measure every N >= 1 epochs"),
    ("warmup_epochs", "--warmup-epochs", 0, "0 means no warm-up"),
    ("num_workers", "--num-workers", 0, "0 loads data in the main process"),
    ("canaries", "--canaries", 2, "each canary group is compared with another, and needs at least 2 images"),
    ("repeat", "--repeat", 1, "each candidate appears at least once in the encoder's data"),
    ("bootstrap", "--bootstrap", 0, "0 turns intervals and tests off"),
)


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check the parsed ``memloc demo`` arguments; a bad one calls ``parser.error`` (exit code 2).

    Example:
        >>> p = argparse.ArgumentParser(prog="memloc demo")
        >>> _ = p.add_argument("--epochs", type=int, default=1)
        >>> validate_args(p, p.parse_args(["--epochs", "2"])).epochs
        2
    """
    for attribute, flag, low, why in _INT_RULES:
        value: Any = getattr(args, attribute, None)
        if value is not None and value < low:
            parser.error(f"argument {flag}: must be >= {low} ({why}), got {value}")
    boot = getattr(args, "bootstrap", None)
    if boot is not None and 0 < boot < MIN_BOOTSTRAP:
        parser.error(f"argument --bootstrap: must be 0 (no intervals or tests) or >= {MIN_BOOTSTRAP} (fewer leave the "
                     f"intervals' ends to a handful of resamples), got {boot}")
    for attribute, ok, need in (("lr", lambda v: math.isfinite(v) and v > 0, "be a positive number"),
                                ("threshold", lambda v: 0.0 <= v <= 1.0, "be in [0, 1] (UnitMem's range)"),
                                ("seed", lambda v: 0 <= v < 2**64, "be in [0, 2**64)")):
        value = getattr(args, attribute, None)
        if value is not None and not ok(value):
            parser.error(f"argument --{attribute}: must {need}, got {value}")
    # split sizes: a fraction in [0, 1) or a whole count >= minimum (0 allowed when minimum is 0)
    for flag, minimum in (("--split-candidates", 2), ("--split-independent", 0)):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
            parser.error(f"argument {flag}: expected a fraction in [0, 1) or a whole count, got {value:g}")
        if value == 0 and minimum > 0:
            parser.error(f"argument {flag}: must be > 0: the demo needs at least {minimum} candidates "
                         "(UnitMem compares a candidate with the others)")
        if value >= 1 and int(value) < minimum:
            parser.error(f"argument {flag}: must be a count >= {minimum} or a fraction, got {value:g}")
    return args


#: Labelled images of ``--data`` outside ``--subset`` that the canaries setting tests kNN accuracy on.
KNN_TEST = 500


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the demo."""
    p = argparse.ArgumentParser(prog="memloc demo", allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--setting", choices=["canaries", "plain"], default="canaries",
                   help="canaries: atypical photo crops planted among the digits (shows memorization on a CPU); "
                        "plain: the paper's random split of --data (no significant effect at CPU scale)")
    p.add_argument("--data", default="digits", help="digits | cifar10 | stl10 | svhn | file.npz | image folder")
    p.add_argument("--root", default="data", help="download/cache folder for torchvision data sets")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default: 16 for the 8x8 digits, the data's own size otherwise)")
    p.add_argument("--subset", type=int, default=None,
                   help="seeded random subset of N images of --data (0: all; default 160 with canaries, 600 plain)")
    p.add_argument("--canaries", type=int, default=80,
                   help="canaries per group (candidates, independent, control, unseen) with --setting canaries")
    p.add_argument("--unseen", choices=["independent", "neither"], default="independent",
                   help="the unseen group (f never trains on it): the reference's independent canaries (C - unseen "
                        "then estimates f's plus g's memorization) or extra canaries neither encoder trains on")
    p.add_argument("--repeat", type=int, default=None,
                   help="times each candidate appears in the encoder's training data (default: 3 with canaries, 1 plain)")
    p.add_argument("--output-dir", default="runs/demo",
                   help="output folder (TensorBoard logs, reports, plots, the files of `memloc analyze`)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 180 with canaries, 30 plain)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="linear LR warm-up epochs (default: epochs / 10)")
    p.add_argument("--width", type=int, default=16, help="ResNet9 base width (the paper: 64)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step and encoder (default: 32 with canaries, 128 plain)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--views", type=int, default=DEFAULT.views, help="K views per image for the monitor")
    p.add_argument("--every-n-epochs", type=int, default=None, help="measure every N epochs (default: epochs / 6)")
    p.add_argument("--split-candidates", type=float, default=0.1,
                   help="--setting plain: fraction (or count) of candidates, as `memloc analyze --split-candidates`")
    p.add_argument("--split-independent", type=float, default=0.1,
                   help="--setting plain: fraction (or count) for the reference only")
    p.add_argument("--bootstrap", type=int, default=DEFAULT.bootstrap, help="bootstrap resamples / permutations per interval and test")
    p.add_argument("--transform", choices=["batched", "lightly"], default="batched",
                   help="training augmentation: batched tensor SimCLR augmentation, or lightly's SimCLRTransform")
    p.add_argument("--threshold", type=float, default=0.5, help="UnitMem above which a unit is 'highly memorizing'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--accelerator", default="auto")
    return p


#: Defaults of the flags that depend on ``--setting``: (canaries, plain).
_SETTING_DEFAULTS = {"epochs": (180, 30), "batch_size": (32, 128), "repeat": (3, 1), "subset": (160, 600)}


def apply_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for name, (canaries, plain) in _SETTING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, canaries if args.setting == "canaries" else plain)
    for name, parts in (("warmup_epochs", 10), ("every_n_epochs", 6)):  # a tenth / a sixth of the epochs
        if getattr(args, name) is None:
            setattr(args, name, max(1, args.epochs // parts))
    return args


def _groups(args: argparse.Namespace) -> Dict[str, Any]:
    """Images and index groups of the chosen setting."""
    from lightning_memloc.data.splits import canary_layout, photo_canaries
    from lightning_memloc.data import SplitIndices, load_data, split_candidates
    size = args.size if args.size is not None else (16 if str(args.data).lower() == "digits" else None)
    images, labels = load_data(args.data, root=args.root, size=size)
    held_out = images[:0], labels[:0]  # labelled images outside the subset: the kNN test of the canaries setting
    if args.subset and args.subset < len(images):
        # random, not the first N: files sorted by class keep every class
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
        keep, rest = order[: args.subset].sort().values, order[args.subset:]
        rest = rest[labels[rest] >= 0][:KNN_TEST].sort().values
        held_out = images[rest], labels[rest]
        images, labels = images[keep], labels[keep]
    if args.setting == "canaries":
        base = len(images)
        canaries = photo_canaries(4 * args.canaries, size=images.shape[-1], channels=images.shape[1], seed=args.seed)
        images = torch.cat([images, canaries])
        labels = torch.cat([labels, torch.full((len(canaries),), -1, dtype=labels.dtype)])
        layout = canary_layout(base, args.canaries, seed=args.seed)
        split, control = layout.split, layout.control
        unseen = split.independent if args.unseen == "independent" else layout.unseen
        what = (f"{base} {args.data!r} images + {4 * args.canaries} photo canaries: shared {len(split.shared)} "
                f"(incl. {len(control)} control canaries), candidates {len(split.candidates)} (f only), "
                f"independent {len(split.independent)} (g only), unseen: the "
                + ("independent ones" if args.unseen == "independent" else f"{len(unseen)} canaries neither trains on"))
    else:
        n = len(images)
        cand, ind = (int(v) if v >= 1 else v for v in (args.split_candidates, args.split_independent))  # counts
        shared = n - sum(v if isinstance(v, int) else int(v * n) for v in (cand, ind))
        split = split_candidates(n, shared=shared, candidates=cand, independent=ind, seed=args.seed)
        control, unseen = split.control(min(len(split.candidates), len(split.shared)), seed=args.seed), split.independent
        what = (f"{n} {args.data!r} images: shared {len(split.shared)} (control: {len(control)} of them), "
                f"candidates {len(split.candidates)} (f only), independent {len(split.independent)} (g only, the unseen set)")
    if args.repeat > 1:  # planted duplicates: each candidate appears `repeat` times in f's data
        split = SplitIndices(split.shared, split.candidates.repeat(args.repeat), split.independent)
        what += f"; candidates repeated {args.repeat}x for f"
    return {"images": images, "labels": labels, "split": split, "control": control, "unseen": unseen, "what": what,
            "held_out": held_out}


#: SimCLR's augmentation for gray digits: no flip (a mirrored digit is another symbol), crops of at least
#: half the image, brightness / contrast jitter only (SimCLR's own settings lowered the kNN accuracy).
DIGITS_AUGMENT: Dict[str, Any] = {"scale": (0.5, 1.0), "flip_p": 0.0, "jitter": (0.4, 0.4, 0.0, 0.0)}


def digits_augment(size: int) -> Any:
    """The batched augmentation of :data:`DIGITS_AUGMENT` (``memloc analyze --transform`` can name it).

    Example:
        >>> digits_augment(16).flip_p
        0.0
    """
    from lightning_memloc.views.seeded import BatchedSimCLRAugment
    return BatchedSimCLRAugment(size, **DIGITS_AUGMENT)


def view_transform(side: int, data: str, kind: str = "batched") -> Optional[Tuple[str, Dict[str, Any]]]:
    """The demo's per-image view factory and its keyword arguments (``None``: SimCLR's batched augmentation).

    Example:
        >>> view_transform(16, "digits")
        ('lightning_memloc.cli.demo:digits_augment', {'size': 16})
        >>> view_transform(32, "cifar10") is None
        True
    """
    digits = str(data).lower() == "digits"
    if kind == "lightly":
        bright, contrast, sat, hue = DIGITS_AUGMENT["jitter"]
        settings = {"hf_prob": DIGITS_AUGMENT["flip_p"], "min_scale": DIGITS_AUGMENT["scale"][0], "cj_bright": bright,
                    "cj_contrast": contrast, "cj_sat": sat, "cj_hue": hue} if digits else {}
        return "lightly.transforms:SimCLRViewTransform", {"input_size": side, "gaussian_blur": 0.0, "normalize": None,
                                                          **settings}
    return ("lightning_memloc.cli.demo:digits_augment", {"size": side}) if digits else None


def training_augment(side: int, data: str, kind: str = "batched") -> Tuple[Optional[Any], Optional[Any]]:
    """The demo's training augmentation: ``(batched augment, None)`` or, with ``kind="lightly"``, ``(None, SimCLRTransform)``.

    Example:
        >>> augment, _ = training_augment(16, "digits")
        >>> augment.flip_p, augment.scale
        (0.0, (0.5, 1.0))
    """
    spec = view_transform(side, data, kind)
    if kind == "lightly":
        from lightly.transforms import SimCLRTransform
        return None, SimCLRTransform(**spec[1])  # type: ignore[index]
    from lightning_memloc.views.seeded import BatchedSimCLRAugment
    return (BatchedSimCLRAugment(side) if spec is None else digits_augment(side)), None


def _cell(entry: Dict[str, float], key: str, layer: str, alpha: float, fmt: str) -> str:
    value = entry.get(scalar_tag(key, layer))
    if value is None:
        return "n/a"
    p = entry.get(scalar_tag(f"{key}_p_holm", layer))
    return format(value, fmt) + ("*" if p is not None and p < alpha else " ")


def history_table(history: List[Dict[str, float]], layers: Sequence[str], key: str, fmt: str, alpha: float) -> str:
    """One row per measurement, one column per layer; ``*``: the layer passes the verdict (Holm p < ``alpha``)."""
    width = max(9, max(len(layer[:12]) for layer in layers) + 1)
    rows = [f"{'epoch':>6} " + "".join(f"{layer[:12]:>{width}}" for layer in layers)]
    for entry in history:
        label = "init" if entry["epoch"] < 0 else str(entry["epoch"])
        rows.append(f"{label:>6} " + "".join(f"{_cell(entry, key, layer, alpha, fmt):>{width}}" for layer in layers))
    return "\n".join(rows)


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Run the demo; returns the final report, the history and the summary."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    from lightning_memloc.callbacks import MemorizationMonitor
    from lightning_memloc.callbacks.logging import steps_per_epoch, warmup_end_step
    from lightning_memloc.cli.demo_files import round_trip_commands, write_round_trip
    from lightning_memloc.cli.demo_utility import demo_utility, knn_change, knn_table
    from lightning_memloc.cli.user_models import import_object
    from lightning_memloc.models.cotrain import CoTrainedPair, cotraining_loader
    from lightning_memloc.models.ssl import SimCLR
    args = apply_defaults(args)
    out = check_writable_dir(args.output_dir, argument="--output-dir")
    started = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    data = _groups(args)
    images, split = data["images"], data["split"]
    print(f"[memloc] {data['what']}")
    side, channels = images.shape[-1], images.shape[1]
    augment, transform = training_augment(side, args.data, args.transform)
    views = view_transform(side, args.data, args.transform)  # the monitor measures on the training distribution
    print("[memloc] views of the training batches and of the monitor: " + ("SimCLR's augmentation" if views is None
          else views[0] + (f" {DIGITS_AUGMENT}" if str(args.data).lower() == "digits" else f" {views[1]}")))

    f, g = (SimCLR.resnet9(in_channels=channels, width=args.width, augment=augment) for _ in range(2))
    model = CoTrainedPair(f, g, lr=args.lr, warmup_epochs=args.warmup_epochs, max_epochs=args.epochs)
    cand = split.candidates.unique()
    top_k = max(1, len(cand) // 10)
    monitor = MemorizationMonitor(  # overwrite: re-running the demo into --output-dir replaces its memloc/ files
        images[cand], control=images[data["control"]], unseen=images[data["unseen"]], views=args.views,
        transform=None if views is None else import_object(views[0], "transform")(**views[1]),
        every_n_epochs=args.every_n_epochs, encoder="encoder.backbone", reference="reference.backbone",
        seed=args.seed, threshold=args.threshold, measure_on_train_start=True, output_dir=out / "memloc",
        top_k=top_k, bootstrap=args.bootstrap, overwrite=True)
    utility, utility_what = demo_utility(images, data["labels"], split, args.every_n_epochs, held_out=data["held_out"])
    logger = TensorBoardLogger(str(out), name="tensorboard", version="")
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=logger,
                         callbacks=[monitor] + ([utility] if utility is not None else []),
                         log_every_n_steps=5, enable_checkpointing=True, default_root_dir=str(out))
    trainer.fit(model, cotraining_loader(images, split, batch_size=min(args.batch_size, len(split.shared)),
                                         num_workers=args.num_workers, transform=transform))

    report = monitor.report
    written = [report.save(out / "report.json")]
    try:
        from lightning_memloc import plots
        written += plots.plot_report(report, out / "plots", images=images[cand], history=monitor.history,
                                     warmup_step=warmup_end_step(model, steps_per_epoch(trainer)))
    except ImportError:  # plotting is optional
        pass
    commands = round_trip_commands(out, width=args.width, channels=channels, size=side, views=args.views,
                                   seed=args.seed, top_k=top_k, bootstrap=args.bootstrap, transform=views)
    groups = {"candidates": cand, "control": data["control"], "unseen": data["unseen"], "shared": split.shared,
              "independent": split.independent}
    written += write_round_trip(out, images, data["labels"], groups, model.encoder.backbone, model.reference.backbone,
                                commands)
    ev = report.evidence
    meta = {} if ev is None else ev.meta
    significant, verdict = dict(meta.get("significant", {})), dict(meta.get("verdict") or {})
    summary = {"elapsed_s": round(time.perf_counter() - started, 1), "setting": args.setting, "epochs": args.epochs,
               "steps": trainer.global_step, "data": args.data, "num_candidates": len(cand),
               "layer_mem": report.layer_mem, "evidence": None if ev is None else ev.to_dict()["layers"],
               "significant_layers": significant, "verdict": verdict,
               "shows_memorization": bool(verdict.get("memorization")),
               "knn_accuracy": None if utility is None else utility.history,
               "knn_before_after": None if utility is None else knn_change(utility.history, utility.ks[0])}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))

    alpha = monitor.evidence_options.alpha
    unseen_what = "neither" if args.setting == "canaries" and args.unseen == "neither" else "g only"
    print(f"\n[memloc] after {trainer.global_step} steps: candidates (f only) vs control (both) and unseen ({unseen_what})")
    print(report.summary_table(args.threshold))
    layers = report.layers
    print(f"\n[memloc] over training — LayerMem excess of the candidates over the control (*: passes the verdict, "
          f"Holm p < {alpha:g} over every test × layer of that measurement):")
    print(history_table(monitor.history, layers, "excess", "+.3f", alpha))
    print("\n[memloc] share of units whose μmax image is a seen candidate (pool: candidates ∪ unseen; chance "
          f"{ev.layers[layers[0]].get('membership_chance', float('nan')):.0%}; *: Holm p < {alpha:g}):")
    print(history_table(monitor.history, layers, "membership", ".0%", alpha))
    print(f"\n[memloc] mean UnitMem, candidates − unseen (equal-size samples; *: Holm p < {alpha:g}):")
    print(history_table(monitor.history, layers, "unit_mem_excess", "+.3f", alpha))
    print("\n[memloc] mean UnitMem of the candidates (init: BatchNorm statistics recalibrated on the measured views):")
    print(history_table(monitor.history, layers, "unit_mem_mean", ".3f", alpha))
    if utility is not None:
        print(f"\n[memloc] kNN accuracy of f ({utility_what}):")
        print(knn_table(utility.history, utility.ks))
        if summary["knn_before_after"] is not None:
            before, after = summary["knn_before_after"]
            print(f"[memloc] kNN accuracy of f (k={utility.ks[0]}): {before:.1%} before training, {after:.1%} after "
                  f"({100 * (after - before):+.1f} points)")
    how = f"Holm over {verdict.get('family_size', 0)} tests × layers, family-wise error ≤ {alpha:g}"
    if summary["shows_memorization"]:
        found = {test: layers for test, layers in significant.items() if layers}
        print(f"\n[memloc] RESULT: memorization of the candidates ({how}): {found}")
    else:
        print(f"\n[memloc] RESULT: no memorization distinguishable from the nulls at this setting ({how}); the "
              "summary above gives each test's interval, i.e. how large an effect could still be hiding "
              "(see docs/evidence.md for settings that show it).")
    print(f"[memloc] most memorized candidates (indices into the data): {cand[report.most_memorized(8)].tolist()}")
    print(f"[memloc] wrote {', '.join(str(p) for p in written[:3])}{' ...' if len(written) > 3 else ''}")
    print(f"[memloc] TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    print(f"[memloc] measure the same candidates again and draw them ({out / 'analyze.sh'}):\n{commands}", end="")
    minutes, seconds = divmod(round(summary["elapsed_s"]), 60)
    print(f"[memloc] done in {minutes} min {seconds:02d} s wall time ({summary['elapsed_s']} s)")
    return {"report": report, "history": monitor.history, "summary": summary}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``memloc demo``."""
    parser = build_parser()
    args = validate_args(parser, parser.parse_args(argv))  # bad values: argparse error, exit code 2
    torch.set_float32_matmul_precision("high")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
