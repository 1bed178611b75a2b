"""The monitor's share of a fit: co-trained vs frozen reference, ``every_n_epochs`` 1 and 5, and the floor.

One run, one process (issue 19, §3). Two SimCLR fits of a narrow ResNet9 (``--width``, default 8)
on ``--images`` images split into shared / candidates / independent, each monitored every epoch
by :class:`~lightning_memloc.MemorizationMonitor` (N = ``--candidates``, K = ``--views``, its
defaults otherwise: bootstrap 1000, batch 32):

- **co-training**: :class:`~lightning_memloc.CoTrainedPair` trains f on shared ∪ candidates and g
  on shared ∪ independent; the reference is a submodule, never cached: every pass runs f and g;
- **frozen reference**: a LightningModule trains f alone on shared ∪ candidates; the monitor gets
  g as a module (here the co-trained run's reference, trained and then fixed), so a
  :class:`~lightning_memloc.ReferenceCache` computes g's alignments in the first pass only.

Each fit's epochs are timed without the monitor's pass (a callback ahead of the monitor) and each
pass is timed alone, so training epochs and passes alternate in the same process and load from
other jobs hits both alike. The share of the monitor in a fit of ``--fit-epochs`` epochs measured
every n epochs is then ``passes / (epochs · epoch time + passes)`` (with a frozen reference the
first pass costs f + g, the others f only); for n = 1 the fits also give it directly. A monitor
pass in the fit includes the report (the evidence's bootstrap, 1000 resamples by default) and its
logging; "run_pass alone" is the share with the pass's own cost (views, forwards, reductions,
metric updates), timed after the fits.

**Floor**: what the definition's forward count alone costs: the bare forward (no hooks, eval,
``no_grad``) of the pass's N·K views through f and g (co-training, and the frozen reference's first
pass) or through f only (a frozen reference afterwards), timed on the trained models after the
fits, interleaved with the real passes. Also printed: the ratio of view forwards of a pass to the
forward-equivalents of a training epoch (2 views per image, forward + backward ≈ 3 forwards).
Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024.

Run ``python benchmarks/bench_monitor_share.py --help``; ~6 min on one thread of an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_measure import bare_forward, load_images  # noqa: E402
from fit_timing import EpochTimer, TimedMonitor  # noqa: E402
from lightning_memloc import BatchedSimCLRAugment, ReferenceCache  # noqa: E402
from lightning_memloc.measurement import run_pass  # noqa: E402
from lightning_memloc.taps.probe import probe_layers  # noqa: E402
from lightning_memloc.states.meter import MemorizationMeter  # noqa: E402
from lightning_memloc.models import ResNet9  # noqa: E402
from lightning_memloc.views.seeded import SeededViews, make_views  # noqa: E402


def monitor_share(pass_times: Sequence[float], epoch_s: float, every_n: int, fit_epochs: int) -> float:
    """Share of the monitor in a fit of ``fit_epochs`` epochs measured every ``every_n`` epochs.

    ``pass_times``: the cost of the 1st, 2nd, ... pass; the last value repeats for later passes
    (a frozen reference: ``[f + g, f only]``; co-training: ``[f + g]``).
    """
    if every_n < 1 or fit_epochs < every_n or not pass_times or epoch_s <= 0:
        raise ValueError("need every_n >= 1, fit_epochs >= every_n, pass times and a positive epoch time")
    passes = fit_epochs // every_n
    monitor = sum(pass_times[min(i, len(pass_times) - 1)] for i in range(passes))
    return monitor / (fit_epochs * epoch_s + monitor)


def fit(args: argparse.Namespace, images: torch.Tensor, split: Any, frozen: Optional[nn.Module]) -> Dict[str, Any]:
    """One monitored fit; ``frozen`` None: co-training, else f alone against the frozen module."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_memloc import CoTrainedPair, cotraining_loader
    from lightning_memloc.models.ssl import SimCLR

    w = args.width

    def make() -> SimCLR:
        return SimCLR(ResNet9(width=w), feature_dim=8 * w, hidden_dim=args.head, out_dim=min(128, args.head),
                      augment=BatchedSimCLRAugment(32))

    class FrozenReferenceFit(pl.LightningModule):
        """f trained alone (SimCLR, SGD); the monitor's reference is not part of it."""

        def __init__(self) -> None:
            super().__init__()
            self.model = make()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.model.training_loss(batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

    pl.seed_everything(0, verbose=False)
    cands = images[split.candidates]
    common = dict(every_n_epochs=1, views=args.views, progress=False, grid_size=0, log_histograms=False)
    if frozen is None:
        module: pl.LightningModule = CoTrainedPair(make(), make(), lr=0.06, warmup_epochs=1, max_epochs=args.epochs)
        monitor = TimedMonitor(cands, encoder="encoder.backbone", reference="reference.backbone", **common)
        loader: Any = cotraining_loader(images, split, batch_size=args.train_batch_size)
    else:
        module = FrozenReferenceFit()
        monitor = TimedMonitor(cands, encoder="model.backbone", reference=frozen, **common)
        own = torch.as_tensor(list(split.shared) + list(split.candidates))
        loader = DataLoader(TensorDataset(images[own], torch.zeros(len(own))), batch_size=args.train_batch_size,
                            shuffle=True, drop_last=True)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[timer, monitor], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    load = os.getloadavg()
    start = time.perf_counter()
    trainer.fit(module, loader)
    total = time.perf_counter() - start
    return {"fit_s": total, "epochs_s": timer.times, "passes_s": monitor.pass_times, "module": module,
            "measured_share": sum(monitor.pass_times) / total, "loadavg": [load, os.getloadavg()]}


def floor_and_passes(f: nn.Module, g: nn.Module, cands: torch.Tensor, args: argparse.Namespace) -> Dict[str, float]:
    """Median seconds, interleaved: the real passes (f + g, cached) and the bare forwards (f + g, f)."""
    cpu = torch.device("cpu")
    views = SeededViews(cands, views=args.views, seed=0)  # the monitor's views (default transform, seed 0)
    pre = make_views(cands, args.views, None, 0)
    specs, num_units = probe_layers(f, g, "auto", views.example_batch(cpu))
    cache = ReferenceCache()

    def one_pass(cached: bool) -> None:
        meter = MemorizationMeter(specs, num_units, len(views), reference=True, labels=False)
        run_pass(f, g, views, specs, meter, batch_size=32, reference_cache=cache if cached else None)

    one_pass(True)  # warm-up, fills the cache
    steps = {"pass f + g": lambda: one_pass(False), "pass cached": lambda: one_pass(True),
             "bare f + g": lambda: bare_forward(f, g, pre, 32, cpu, False),
             "bare f": lambda: bare_forward(f, nn.Identity(), pre, 32, cpu, False)}
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for key, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--candidates", type=int, default=1000, help="N (the independent part has as many)")
    p.add_argument("--views", type=int, default=10, help="K")
    p.add_argument("--width", type=int, default=8, help="ResNet9 width")
    p.add_argument("--head", type=int, default=128, help="projection head hidden size")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each monitored fit (>= 2)")
    p.add_argument("--fit-epochs", type=int, default=100, help="fit length the shares are given for")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the passes and bare forwards")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data", default="auto", help="npz with x uint8 (N,H,W,3); 'auto': ../shared/data/cifar10-train-10k.npz "
                                                 "if present, else random; 'random'")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (a frozen reference's cached pass comes from the second epoch on)")
    if args.images < 2 * args.candidates + 2 or args.candidates < 2:
        p.error("--images must exceed 2 x --candidates (candidates, independent and a shared part)")
    if args.fit_epochs < 5:
        p.error("--fit-epochs must be >= 5 (shares are given for every_n_epochs 1 and 5)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    from lightning_memloc.data import split_candidates

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"args: {json.dumps(vars(args))}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()}",
          flush=True)
    images, source = load_images(args.data, args.images, 32)
    n = args.candidates
    split = split_candidates(len(images), shared=len(images) - 2 * n, candidates=n, independent=n, seed=0)
    print(f"images: {source}; shared {len(split.shared)}, candidates {n}, independent {n}", flush=True)
    out: Dict[str, Any] = {"args": vars(args), "loadavg_start": os.getloadavg()}
    co = fit(args, images, split, None)
    print(f"co-training fit {co['fit_s']:.1f} s: epochs {', '.join(f'{t:.1f}' for t in co['epochs_s'])} s, passes "
          f"{', '.join(f'{t:.2f}' for t in co['passes_s'])} s; load {co['loadavg']}", flush=True)
    g = copy.deepcopy(co["module"].reference.backbone).eval()  # the reference, trained and now fixed
    frozen = fit(args, images, split, g)
    print(f"frozen-reference fit {frozen['fit_s']:.1f} s: epochs {', '.join(f'{t:.1f}' for t in frozen['epochs_s'])} s, "
          f"passes {', '.join(f'{t:.2f}' for t in frozen['passes_s'])} s; load {frozen['loadavg']}", flush=True)
    load = os.getloadavg()
    floor = floor_and_passes(frozen["module"].model.backbone, g, images[split.candidates], args)
    print("after the fits (median of interleaved repeats): " + ", ".join(f"{k} {v:.2f} s" for k, v in floor.items())
          + f"; load {load} -> {os.getloadavg()}", flush=True)

    own = len(split.shared) + n
    rows = []
    for name, run, passes, bare_passes, floor_passes, models in (
            ("co-training", co, [statistics.median(co["passes_s"])], [floor["pass f + g"]], [floor["bare f + g"]], 2),
            ("frozen reference", frozen, [frozen["passes_s"][0], statistics.median(frozen["passes_s"][1:])],
             [floor["pass f + g"], floor["pass cached"]], [floor["bare f + g"], floor["bare f"]], 1)):
        epoch = statistics.median(run["epochs_s"])
        train_fwd = models * own * 2 * 3  # images x 2 views x (forward + backward = 3 forwards), per trained model
        for every_n in (1, 5):
            rows.append({"setting": name, "every_n_epochs": every_n, "epoch_s": epoch, "passes_s": passes,
                         "share": monitor_share(passes, epoch, every_n, args.fit_epochs),
                         "pass_only_share": monitor_share(bare_passes, epoch, every_n, args.fit_epochs),
                         "floor_share": monitor_share(floor_passes, epoch, every_n, args.fit_epochs),
                         "forward_ratio": (2 if name == "co-training" else 1) * n * args.views / (train_fwd * every_n),
                         "measured_share_every_epoch": run["measured_share"] if every_n == 1 else None})
    print(f"\nshare of the monitor in a fit of {args.fit_epochs} epochs (N={n}, K={args.views}, ResNet9 width "
          f"{args.width}, one thread):")
    print("| setting | every_n_epochs | epoch (training) | monitor pass (in the fit) | monitor share | share of "
          "run_pass alone | floor share | view forwards of the passes / training forward-equivalents | measured in the fit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        passes = " then ".join(f"{t:.2f} s" for t in r["passes_s"])
        measured = "" if r["measured_share_every_epoch"] is None else f"{r['measured_share_every_epoch']:.1%}"
        print(f"| {r['setting']} | {r['every_n_epochs']} | {r['epoch_s']:.1f} s | {passes} | **{r['share']:.1%}** | "
              f"{r['pass_only_share']:.1%} | {r['floor_share']:.1%} | {r['forward_ratio']:.1%} | {measured} |")
    out.update({"co_training": {k: v for k, v in co.items() if k != "module"},
                "frozen": {k: v for k, v in frozen.items() if k != "module"}, "after_fits": floor, "rows": rows,
                "loadavg_end": os.getloadavg()})
    print(f"load average at start / end: {out['loadavg_start']} / {out['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
