"""UnitMem, LayerMem and kNN accuracy of a SimCLR encoder trained with and without DP-SGD.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) report that
differentially private training (DP-SGD) reduces UnitMem but does not remove it. This script
trains the same small SimCLR encoder (:meth:`~lightning_memloc.models.ssl.SimCLR.resnet9` with
``norm="group"``: DP-SGD's per-sample gradients cannot go through BatchNorm, whose output mixes
the samples of a batch; the projection head's BatchNorm is dropped for the same reason) without
DP and with Opacus' DP-SGD at several noise multipliers σ, and compares, in one table
(``<out>/table.md``) and one figure (``<out>/dp_unitmem.png``):

- the UnitMem distribution of every layer (mean, 90th percentile; box plot of the last layer);
- LayerMem of the last layer and its excess over a **control** (training images both ``f`` and
  its reference ``g`` saw), with the interval and Holm-corrected p-value of the library's
  evidence section (the excess removes the offset between two differently trained encoders),
  and the UnitMem excess of the candidates over **unseen** images (``g``'s own, never ``f``'s);
- the weighted cosine kNN accuracy (k = 20, 200) of held-out test images against the labelled
  training images (:class:`~lightning_memloc.callbacks.UtilityMonitor`'s computation).

Each setting trains ``f`` on shared ∪ candidates and a reference ``g`` on shared ∪ independent
with the **same** recipe (same σ), so that LayerMem compares two encoders that differ only in
whether they saw the candidates. ε is Opacus' RDP accountant's at ``--delta``.

Caveat (documented, not hidden): SimCLR's NT-Xent loss couples the samples of a batch and both
views of an image are separate rows of the forward batch, so Opacus clips per *view* and the
accountant's ε is the guarantee of per-example DP-SGD only approximately (an image's two views
and its role as a negative for others are not clipped together). The experiment follows the
paper in using standard DP-SGD on the SSL loss; treat ε as nominal.

Needs Opacus (``pip install lightning_memloc[dp]``). Smoke run (seconds):
``python examples/dp_unitmem.py --data synthetic --subset 96 --width 2 --epochs 1 --sigmas 1.0``.
The run recorded in docs/utility.md (one thread)::

    OMP_NUM_THREADS=1 python examples/dp_unitmem.py --data ../shared/data/cifar10-train-10k.npz \\
        --subset 1000 --test 500 --width 8 --epochs 20 --sigmas 0.5 1.0 --out runs/dp
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import BatchedSimCLRAugment, measure
from lightning_memloc.callbacks.utility import UtilityMonitor
from lightning_memloc.data import load_data, split_candidates
from lightning_memloc.io import atomic_write_text
from lightning_memloc.models.ssl import SimCLR


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="synthetic | digits | file.npz (e.g. CIFAR-10)")
    p.add_argument("--subset", type=int, default=1000, help="training images (shared + candidates + independent)")
    p.add_argument("--candidates", type=float, default=0.1, help="fraction of the subset (or a count if >= 1)")
    p.add_argument("--independent", type=float, default=0.1, help="fraction of the subset (or a count if >= 1)")
    p.add_argument("--test", type=int, default=500, help="held-out labelled images for kNN accuracy")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=8, help="ResNet9 width (the paper's is 64)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0], help="DP-SGD noise multipliers")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD per-sample clipping norm")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--ks", type=int, nargs="+", default=[20, 200])
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="dp_unitmem_out")
    args = p.parse_args(argv)
    if not args.sigmas or min(args.sigmas) <= 0:
        p.error("--sigmas: give noise multipliers > 0 (the run without DP is always included)")
    return args


def log(msg: str) -> None:
    print(f"[dp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (subset + test, C, H, W) images and labels, in a seeded random order."""
    n = args.subset + args.test
    if args.data == "synthetic":
        gen = torch.Generator().manual_seed(args.seed)
        return (torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8, generator=gen),
                torch.randint(0, 10, (n,), generator=gen))
    images, labels = load_data(args.data, size=args.size)
    if len(images) < n:
        raise SystemExit(f"--subset + --test = {n} but {args.data} has {len(images)} images")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:n]
    return images[perm], labels[perm]


def make_model(args: argparse.Namespace, in_channels: int) -> SimCLR:
    """SimCLR ResNet9 with GroupNorm and a projection head without BatchNorm (DP-SGD compatible)."""
    model = SimCLR.resnet9(in_channels=in_channels, width=args.width, norm="group",
                           augment=BatchedSimCLRAugment(args.size))
    head = model.projection_head.layers
    for i, layer in enumerate(head):
        if isinstance(layer, nn.BatchNorm1d):
            head[i] = nn.Identity()
    return model


def train(args: argparse.Namespace, images: torch.Tensor, sigma: Optional[float], seed: int) -> tuple[SimCLR, Optional[float]]:
    """SimCLR on ``images`` (plain SGD, or DP-SGD with noise multiplier ``sigma``); returns the model and ε."""
    torch.manual_seed(seed)
    model = make_model(args, images.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = DataLoader(TensorDataset(images), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    net: nn.Module = model
    engine = None
    if sigma is not None:
        from opacus import PrivacyEngine  # the optional extra: pip install lightning_memloc[dp]

        engine = PrivacyEngine(accountant="rdp")
        net, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                     noise_multiplier=sigma, max_grad_norm=args.max_grad_norm)
    model.train()
    for _ in range(args.epochs):
        for (batch,) in loader:
            if len(batch) < 2:  # Poisson sampling can draw (almost) empty batches: NT-Xent needs 2
                continue
            first, second = model.two_views((batch,))
            z = net(torch.cat([first, second]))  # one forward: Opacus keeps one activation set per step
            loss = model.criterion(z[:len(batch)], z[len(batch):])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    eps = None if engine is None else float(engine.get_epsilon(args.delta))
    return model, eps


def summarize(name: str, sigma: Optional[float], eps: Optional[float], report: Any, knn: Dict[int, float],
              seconds: float) -> Dict[str, Any]:
    last = report.layers[-1]
    ev = report.evidence.layers[last] if report.evidence is not None else {}
    units = {layer: report.unit_mem[layer].float() for layer in report.layers}
    return {
        "setting": name, "sigma": sigma, "epsilon": eps, "seconds": round(seconds, 1), "last_layer": last,
        "unit_mem_mean": {layer: float(u.mean()) for layer, u in units.items()},
        "unit_mem_p90": {layer: float(u.quantile(0.9)) for layer, u in units.items()},
        "unit_mem_last": units[last].tolist(),
        "layer_mem": dict(report.layer_mem), "excess": {l: report.evidence.layers[l].get("excess") for l in report.layers},
        "excess_lo": ev.get("excess_lo"), "excess_hi": ev.get("excess_hi"), "excess_p_holm": ev.get("excess_p_holm"),
        "unit_mem_excess": ev.get("unit_mem_excess"), "unit_mem_excess_p_holm": ev.get("unit_mem_excess_p_holm"),
        **{f"knn_k{k}": acc for k, acc in knn.items()},
    }


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(rows: List[Dict[str, Any]], ks: Sequence[int]) -> str:
    first = rows[0]["unit_mem_mean"]
    l1, ll = next(iter(first)), rows[0]["last_layer"]
    head = (f"| setting | σ | ε | UnitMem mean {l1} | UnitMem mean {ll} | UnitMem p90 {ll} | LayerMem {ll} | "
            f"excess over control {ll} [CI] | p (Holm) | UnitMem seen − unseen {ll} | p (Holm) | " + " | ".join(f"kNN k={k}" for k in ks) + " | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {_fmt(r['sigma'], 2)} | {_fmt(r['epsilon'], 1)} | {_fmt(r['unit_mem_mean'][l1])} | "
            f"{_fmt(r['unit_mem_mean'][ll])} | {_fmt(r['unit_mem_p90'][ll])} | {_fmt(r['layer_mem'][ll])} | "
            f"{_fmt(r['excess'][ll])} [{_fmt(r['excess_lo'])}, {_fmt(r['excess_hi'])}] | {_fmt(r['excess_p_holm'], 4)} | "
            f"{_fmt(r['unit_mem_excess'])} | {_fmt(r['unit_mem_excess_p_holm'], 4)} | "
            + " | ".join(_fmt(r[f"knn_k{k}"]) for k in ks) + f" | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict[str, Any]], ks: Sequence[int], path: Path) -> None:
    """One figure: last-layer UnitMem distributions, excess LayerMem per layer, kNN accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [r["setting"] for r in rows]
    axes[0].boxplot([r["unit_mem_last"] for r in rows], showmeans=True)
    axes[0].set_xticks(range(1, len(rows) + 1), names)
    axes[0].set(title=f"UnitMem of {rows[0]['last_layer']} (every unit)", ylabel="UnitMem")
    layers = list(rows[0]["layer_mem"])
    for r in rows:
        axes[1].plot(range(len(layers)), [np.nan if r["excess"][l] is None else r["excess"][l] for l in layers],
                     marker="o", label=r["setting"])
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_xticks(range(len(layers)), layers, rotation=45, ha="right")
    axes[1].set(title="LayerMem excess over the control", ylabel="candidates − control")
    axes[1].legend()
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
        axes[2].bar(np.arange(len(rows)) + j * width, [r[f"knn_k{k}"] for r in rows], width, label=f"k={k}")
    axes[2].set_xticks(np.arange(len(rows)) + width * (len(ks) - 1) / 2, names)
    axes[2].set(title="kNN accuracy (held-out test)", ylabel="accuracy")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load(args)
    train_images, train_labels = images[:args.subset], labels[:args.subset]
    test_images, test_labels = images[args.subset:], labels[args.subset:]
    count = lambda v: int(v) if v >= 1 else int(v * args.subset)
    c, i = count(args.candidates), count(args.independent)
    split = split_candidates(args.subset, shared=args.subset - c - i, candidates=c, independent=i, seed=args.seed)
    candidates = train_images[split.candidates]
    control = train_images[split.shared[:len(split.candidates)]]
    unseen = train_images[split.independent[:len(split.candidates)]]  # g trained on them, f never did
    ks = [k for k in args.ks if k <= len(split.shared)] or [len(split.shared)]
    utility = UtilityMonitor(train_images[split.shared], train_labels[split.shared], test_images, test_labels,
                             ks=ks, batch_size=256, num_classes=int(labels.max()) + 1)
    f_data = torch.cat([train_images[split.shared], candidates])
    g_data = torch.cat([train_images[split.shared], train_images[split.independent]])
    rows = []
    for sigma in [None, *args.sigmas]:
        name = "no DP" if sigma is None else f"DP σ={sigma:g}"
        start = time.perf_counter()
        f, eps = train(args, f_data, sigma, seed=args.seed)
        g, _ = train(args, g_data, sigma, seed=args.seed + 1)
        seconds = time.perf_counter() - start
        report = measure(f.backbone, candidates, reference=g.backbone, control=control, unseen=unseen, views=args.views,
                         seed=args.seed, top_k=max(1, len(candidates) // 10), bootstrap=args.bootstrap)
        knn = utility.compute(f.backbone)
        rows.append(summarize(name, sigma, eps, report, knn, seconds))
        report.save(out / f"report_{'nodp' if sigma is None else f'sigma{sigma:g}'}.json")
        log(f"{name}: ε={_fmt(eps, 1)}, trained f and g in {seconds:.0f} s, kNN {knn}")
    text = table(rows, ks)
    print(text)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "results.json", json.dumps({"args": vars(args), "rows": rows}, indent=1))
    plot(rows, ks, out / "dp_unitmem.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
