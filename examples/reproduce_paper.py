"""Reproduce the main ResNet9 / SimCLR results of Wang et al. (NeurIPS 2024) at CPU scale.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) co-train a SimCLR
ResNet9 encoder ``f`` (on shared ∪ candidates) and a reference ``g`` (on shared ∪ independent),
then localize memorization of the candidates. This script runs the same pipeline, end to end,
small enough for a 2-core CPU:

1. split the data into shared / candidates / independent (default 80 / 10 / 10 %) and co-train
   ``f`` and ``g`` in one ``Trainer.fit`` (:class:`~lightning_memloc.CoTrainedPair`, SimCLR with
   lightly's head and NT-Xent loss, SGD with linear warm-up and cosine decay);
2. (a) ``measure(f, candidates, reference=g)``: LayerMem, ΔLayerMem, top-k / least-k LayerMem and
   mean UnitMem per layer (k = 50 scaled to the number of candidates: the paper's 50 of 5,000),
   plus a control: the same measurement on shared images, which both encoders trained on;
   (b) linear-probe accuracy (logistic regression on frozen features, trained on shared images
   and tested on the independent set) after a small supervised fine-tuning budget
   (:class:`~lightning_memloc.MemorizationFinetuning` in a ``Trainer``) of the 2 most memorizing
   layers by LayerMem and by ΔLayerMem, the 2 last layers, or the linear head only;
   (c) linear-probe accuracy after pruning 10 % / 20 % of the units with the lowest, random or
   highest UnitMem, per layer and globally (:func:`~lightning_memloc.prune_units` on a copy);
   (d) mean UnitMem vs mean ClassMem per layer for the SSL encoder and for a supervised ResNet9 of
   the same architecture trained briefly with cross-entropy on the encoder's training data.

Every table is printed and written as markdown to ``<out>/tables.md``; all numbers go to
``<out>/results.json`` and the reports to ``<out>/report_*.json``.

Run offline on scikit-learn's digits (a few minutes on 2 cores):
``python examples/reproduce_paper.py --data digits --epochs 1``. On a CIFAR-10 ``.npz`` (about 20
minutes on 2 shared cores): ``python examples/reproduce_paper.py --data cifar10-train-10k.npz
--subset 4000 --epochs 6 --probe-train 2000 --out runs/repro``; docs/reproduction.md has the
settings, timings and results of that run beside the paper's.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from lightning_memloc import BatchedSimCLRAugment, CoTrainedPair, MemorizationReport, cotraining_loader, measure
from lightning_memloc.callbacks import MemorizationFinetuning, prune_units
from lightning_memloc.data import load_data, split_candidates
from lightning_memloc.models import ResNet9
from lightning_memloc.report.selection import select_layers
from lightning_memloc.models.ssl import SimCLR

# The paper's figures for ResNet9 / SimCLR / CIFAR-10 / 5,000 candidates (see /docs and DESIGN §1).
PAPER = {"layer_mem": (0.091, 0.308), "delta_layer_mem": 0.03, "top": (0.144, 0.817), "least": (0.0, 0.09),
         "top_k": 50, "num_candidates": 5000}

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen BatchNorm, on purpose
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # keep the log file to our own lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help="digits | cifar10 | stl10 | svhn | file.npz | image folder")
    g.add_argument("--root", default="data", help="download/cache folder of torchvision data sets")
    g.add_argument("--size", type=int, default=None, help="image side (default: native; digits 32; needed for folders)")
    g.add_argument("--subset", type=int, default=None,
                   help="use a random (seeded) subset of this many images; a random draw, not the first N, "
                        "because files such as a class-sorted .npz would otherwise lose whole classes")
    g.add_argument("--candidates", type=float, default=0.1, help="fraction (or count, if >= 1) of candidates")
    g.add_argument("--independent", type=float, default=0.1, help="fraction (or count) seen by the reference only")
    g = p.add_argument_group("SSL co-training")
    g.add_argument("--width", type=int, default=16, help="ResNet9 base width (the paper: 64)")
    g.add_argument("--epochs", type=int, default=8)
    g.add_argument("--warmup-epochs", type=int, default=1, help="linear LR warm-up epochs, then cosine decay")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    g = p.add_argument_group("measurement")
    g.add_argument("--views", type=int, default=8, help="K augmented views per candidate")
    g.add_argument("--top-k", type=int, default=None,
                   help="size of the top-k / least-k groups (default: the paper's 50 of 5,000 scaled to the candidates)")
    g.add_argument("--no-control", action="store_true", help="skip the control measurement on shared images")
    g = p.add_argument_group("downstream (linear probe, fine-tuning, pruning, supervised baseline)")
    g.add_argument("--probe-train", type=int, default=4000, help="at most this many shared images train the probe")
    g.add_argument("--ft-samples", type=int, default=2000, help="labelled shared images for fine-tuning (the budget)")
    g.add_argument("--ft-epochs", type=int, default=1)
    g.add_argument("--ft-lr", type=float, default=1e-3, help="Adam learning rate of the head (initialised from the probe)")
    g.add_argument("--ft-layer-lr", type=float, default=1e-4, help="Adam learning rate of the fine-tuned encoder layers")
    g.add_argument("--ft-k", type=int, default=2, help="layers to fine-tune")
    g.add_argument("--prune", type=float, nargs="+", default=[0.1, 0.2], help="fractions of units to prune")
    g.add_argument("--sup-epochs", type=int, default=3, help="epochs of the supervised ResNet9 baseline")
    g.add_argument("--sup-lr", type=float, default=2e-3, help="Adam learning rate of the supervised baseline")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/reproduce", help="output folder (tables.md, results.json, reports)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return p


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[repro {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _count(value: float) -> float:
    return int(value) if value >= 1 else value


def _trainer(epochs: int, callbacks: Sequence[Callback] = ()) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                      num_sanity_val_steps=0)


class EpochLog(Callback):
    """One log line per epoch (the progress bar is off so that a log file stays readable)."""

    def __init__(self, what: str) -> None:
        self.what, self.start = what, time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        log(f"{self.what} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {metrics} "
            f"({time.perf_counter() - self.start:.0f} s)")


class FrozenEval(Callback):
    """Keep the submodule ``name`` in eval mode (frozen BatchNorm statistics) at every training
    epoch (``Trainer.fit`` puts the whole module in train mode first): the "head only" baseline."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.get_submodule(self.name).eval()


def supervised_augment(size: int) -> BatchedSimCLRAugment:
    """Random resized crop (scale 0.5..1) and horizontal flip only: a standard supervised augmentation."""
    return BatchedSimCLRAugment(size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0)


@torch.no_grad()
def features(backbone: nn.Module, images: Tensor, batch_size: int = 500) -> np.ndarray:
    """Frozen (eval-mode) features of un-augmented uint8 images."""
    was_training = backbone.training
    backbone.eval()
    out = [backbone(images[i:i + batch_size].float().div(255)).flatten(1) for i in range(0, len(images), batch_size)]
    backbone.train(was_training)
    return torch.cat(out).numpy()


def linear_probe(backbone: nn.Module, images: Tensor, labels: Tensor, train_idx: Tensor,
                 test_idx: Tensor) -> tuple[float, nn.Linear]:
    """Test accuracy of a logistic regression (L2, C=1) on standardised frozen features.

    Also returns the probe as an ``nn.Linear`` on the raw features (standardisation folded in),
    used to initialise the fine-tuning head (linear probe, then fine-tune).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x_train, x_test = features(backbone, images[train_idx]), features(backbone, images[test_idx])
    scaler = StandardScaler().fit(x_train)
    # One BLAS thread: on a shared 2-core machine multi-threaded OpenBLAS is up to 30x slower here.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # ConvergenceWarning on nearly separable features
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), labels[train_idx].numpy())
        acc = float(clf.score(scaler.transform(x_test), labels[test_idx].numpy()))
    coef = torch.as_tensor(clf.coef_ / scaler.scale_[None, :], dtype=torch.float32)
    bias = torch.as_tensor(clf.intercept_ - (clf.coef_ * (scaler.mean_ / scaler.scale_)[None, :]).sum(1),
                           dtype=torch.float32)
    head = nn.Linear(coef.shape[1], coef.shape[0])
    if coef.shape[0] == head.out_features:
        with torch.no_grad():
            head.weight.copy_(coef), head.bias.copy_(bias)
    return acc, head


class Classifier(pl.LightningModule):
    """Backbone + linear head trained with cross-entropy (fine-tuning and the supervised baseline)."""

    def __init__(self, backbone: nn.Module, num_classes: int, lr: float, size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.lr = lr
        self.augment = supervised_augment(size)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        seeds = torch.randint(0, 2**62, (x.shape[0],))
        loss = F.cross_entropy(self(self.augment(x.float().div(255), seeds)), y)
        self.log("ce", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # MemorizationFinetuning has frozen the encoder by now: only the head is here; the chosen
        # layers are added as a new param group (same lr) at their unfreeze epoch.
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + batch_size].float().div(255)).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def loader(images: Tensor, labels: Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    dataset = torch.utils.data.TensorDataset(images, labels)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(images) > batch_size,
                                       generator=torch.Generator().manual_seed(seed))


def welch_p(a: Tensor, b: Tensor) -> float:
    """Two-sided p-value of Welch's t-test between two samples (e.g. raw SSLMem of candidates vs control)."""
    from scipy import stats

    return float(stats.ttest_ind(a.double().numpy(), b.double().numpy(), equal_var=False).pvalue)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def short(layers: Sequence[str]) -> str:
    return ", ".join(layers)


# ----------------------------------------------------------------------------- stages
def cotrain(args: argparse.Namespace, images: Tensor,
            split: Any) -> tuple[nn.Module, nn.Module, nn.Module, Dict[str, float]]:
    """Step 1: SimCLR encoder f (shared ∪ candidates) and reference g (shared ∪ independent).

    Returns f, g, a copy of f at initialisation (the untrained baseline) and the final losses.
    """
    channels, size = images.shape[1], images.shape[-1]
    augment = BatchedSimCLRAugment(size)

    def ssl_model() -> SimCLR:
        return SimCLR.resnet9(in_channels=channels, width=args.width, augment=augment)

    pair = CoTrainedPair(ssl_model(), ssl_model(), lr=args.lr, warmup_epochs=args.warmup_epochs,
                         max_epochs=args.epochs)
    initial = copy.deepcopy(pair.encoder.backbone).eval()
    trainer = _trainer(args.epochs, [EpochLog("SimCLR")])
    trainer.fit(pair, cotraining_loader(images, split, batch_size=args.batch_size))
    losses = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return pair.encoder.backbone, pair.reference.backbone, initial, losses


def finetune(args: argparse.Namespace, backbone: nn.Module, report: MemorizationReport, images: Tensor,
             labels: Tensor, ft_idx: Tensor, strategy: str, by: str, num_classes: int, head: nn.Linear) -> Classifier:
    """Fine-tune a copy of ``backbone`` + a copy of ``head`` (the baseline linear probe: LP-FT);
    ``strategy="head"`` keeps the encoder frozen."""
    pl.seed_everything(args.seed + 1, workers=True, verbose=False)  # same batches and augmentations for every config
    model = Classifier(copy.deepcopy(backbone), num_classes, args.ft_lr, images.shape[-1])
    if head.out_features == num_classes:
        model.head.load_state_dict(head.state_dict())
    if strategy == "head":  # the encoder stays frozen, BatchNorm statistics included
        model.backbone.requires_grad_(False)
        callback: Callback = FrozenEval("backbone")
    else:
        callback = MemorizationFinetuning(report, k=args.ft_k, by=by, strategy=strategy, encoder="backbone",
                                          head="head", unfreeze_at_epoch=0, lr=args.ft_layer_lr)
    trainer = _trainer(args.ft_epochs, [callback])
    trainer.fit(model, loader(images[ft_idx], labels[ft_idx], 64, args.seed))
    return model


# ----------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {timings[name]} s (total {time.perf_counter() - started:.0f} s)")
        return time.perf_counter()

    t = time.perf_counter()
    pl.seed_everything(args.seed, workers=True, verbose=False)
    images, labels = load_data(args.data, root=args.root, size=args.size)
    n_loaded = len(images)
    if args.subset and args.subset < n_loaded:
        keep = torch.randperm(n_loaded, generator=torch.Generator().manual_seed(args.seed))[: args.subset].sort().values
        images, labels = images[keep], labels[keep]
    n = len(images)
    has_labels = bool((labels >= 0).all())
    num_classes = int(labels.max()) + 1 if has_labels else 0
    candidates, independent = _count(args.candidates), _count(args.independent)
    n_cand = candidates if isinstance(candidates, int) else int(np.floor(candidates * n + 1e-9))
    n_ind = independent if isinstance(independent, int) else int(np.floor(independent * n + 1e-9))
    split = split_candidates(n, shared=n - n_cand - n_ind, candidates=candidates, independent=independent,
                             seed=args.seed)
    cand = split.candidates
    top_k = args.top_k or max(1, round(PAPER["top_k"] * len(cand) / PAPER["num_candidates"]))
    log(f"data {args.data!r}: {n} of {n_loaded} images {tuple(images.shape[1:])}, {num_classes} classes; "
        f"shared {len(split.shared)}, candidates {len(cand)}, independent {len(split.independent)}; top-k = {top_k}")
    t = lap("load", t)

    # 1. co-training -------------------------------------------------------------------------
    encoder, reference, initial, losses = cotrain(args, images, split)
    encoder.eval(), reference.eval()
    t = lap("ssl_cotraining", t)

    # 2a. LayerMem / ΔLayerMem / top-k / least-k ----------------------------------------------
    cand_labels = labels[cand] if has_labels else None
    report = measure(encoder, images[cand], reference=reference, views=args.views, seed=args.seed,
                     labels=cand_labels, top_k=top_k, candidate_ids=cand, batch_size=64,
                     meta={"data": str(args.data), "epochs": args.epochs, "width": args.width})
    report.save(out / "report_ssl.json")
    t = lap("measure_ssl", t)
    control = None
    if not args.no_control:
        # Shared images trained both f and g: their SSLMem is the f-vs-g gap that is not memorization.
        gen = torch.Generator().manual_seed(args.seed + 7)
        ctrl_idx = split.shared[torch.randperm(len(split.shared), generator=gen)[: len(cand)]].sort().values
        control = measure(encoder, images[ctrl_idx], reference=reference, views=args.views, seed=args.seed,
                          top_k=top_k, candidate_ids=ctrl_idx, batch_size=64)
        control.save(out / "report_control_shared.json")
        t = lap("measure_control", t)

    layers = report.layers
    um_ssl = report.unit_mem_mean()
    raw_c = {l: float(report.sslmem_raw[l].mean()) for l in layers}
    raw_s = {l: float(control.sslmem_raw[l].mean()) for l in layers} if control else None
    # Memorization = candidates above the control: Welch's t-test on the raw SSLMem per image.
    p_value = {l: welch_p(report.sslmem_raw[l], control.sslmem_raw[l]) for l in layers} if control else None
    rows_a = []
    for i, layer in enumerate(layers):
        paper_lm = {0: PAPER["layer_mem"][0], len(layers) - 1: PAPER["layer_mem"][1]}.get(i, "")
        paper_top = {0: PAPER["top"][0], len(layers) - 1: PAPER["top"][1]}.get(i, "")
        paper_least = {0: "≈0", len(layers) - 1: PAPER["least"][1]}.get(i, "")
        row = [f"{i + 1} `{layer}`", report.layer_mem[layer], f"{report.delta_layer_mem[layer]:+.3f}",
               report.layer_mem_top[layer], report.layer_mem_least[layer], um_ssl[layer],
               f"{raw_c[layer]:+.4f}"]
        if control:
            row += [control.layer_mem[layer], f"{raw_s[layer]:+.4f}", f"{raw_c[layer] - raw_s[layer]:+.4f}",
                    f"{p_value[layer]:.2f}"]
        row += [paper_lm, paper_top, paper_least]
        rows_a.append(row)
    header_a = ["layer", "LayerMem", "ΔLayerMem", f"top-{top_k}", f"least-{top_k}", "mean UnitMem", "raw m̄ (cand)"]
    if control:
        header_a += ["LayerMem ctrl", "raw m̄ ctrl", "raw cand − ctrl", "p (Welch)"]
    header_a += ["paper LayerMem", "paper top-50", "paper least-50"]
    table_a = md_table(header_a, rows_a)
    print("\n(a) LayerMem of the candidates (normalised SSLMem, mean over candidates); paper ΔLayerMem ≈ "
          f"{PAPER['delta_layer_mem']} per layer; 'ctrl' = same measurement on {len(cand)} shared images\n" + table_a)

    results: Dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items()}, "num_images": n, "num_loaded": n_loaded,
        "split": {"shared": len(split.shared), "candidates": len(cand), "independent": len(split.independent)},
        "top_k": top_k, "num_classes": num_classes, "final_losses": losses,
        "a": {"layers": layers, "layer_mem": report.layer_mem, "delta_layer_mem": report.delta_layer_mem,
              "layer_mem_top": report.layer_mem_top, "layer_mem_least": report.layer_mem_least,
              "mean_unit_mem": um_ssl, "fraction_unit_mem_above_0.5": report.unit_mem_frac_above(0.5),
              "dead_units": report.num_dead_units(), "sslmem_raw_mean": raw_c,
              "control_layer_mem": control.layer_mem if control else None,
              "control_sslmem_raw_mean": raw_s, "control_welch_p": p_value, "paper": PAPER},
    }
    tables = {"a": table_a}

    if has_labels:
        gen = torch.Generator().manual_seed(args.seed + 3)
        shared_perm = split.shared[torch.randperm(len(split.shared), generator=gen)]
        probe_idx = shared_perm[: args.probe_train].sort().values
        ft_idx = shared_perm[: args.ft_samples].sort().values
        test_idx = split.independent
        probe = lambda bb: linear_probe(bb, images, labels, probe_idx, test_idx)[0]  # noqa: E731
        base_acc, probe_head = linear_probe(encoder, images, labels, probe_idx, test_idx)
        log(f"linear probe of the SSL encoder: {base_acc:.3f} "
            f"(train {len(probe_idx)} shared, test {len(test_idx)} independent)")
        t = lap("probe_baseline", t)

        # 2b. fine-tuning -------------------------------------------------------------------------
        configs = [("head only", "head", "layer_mem"),
                   (f"top-{args.ft_k} LayerMem", "highest", "layer_mem"),
                   (f"top-{args.ft_k} ΔLayerMem", "highest", "delta_layer_mem"),
                   (f"last {args.ft_k}", "last", "layer_mem")]
        base_clf_acc = accuracy(nn.Sequential(encoder, probe_head), images[test_idx], labels[test_idx])  # = base_acc
        init_acc = probe(initial)
        log(f"linear probe of the untrained encoder (f at initialisation): {init_acc:.3f}")
        rows_b: List[List[Any]] = [["untrained encoder (f at init) + probe", "—", init_acc, "—"],
                                   ["none (SSL encoder + probe)", "—", base_acc, base_clf_acc]]
        ft_results: Dict[str, Any] = {}
        done: Dict[tuple, Dict[str, Any]] = {}
        for name, strategy, by in configs:
            chosen = [] if strategy == "head" else select_layers(report, args.ft_k, by=by, strategy=strategy)
            key = tuple(sorted(chosen))
            if key in done:  # same layers as an earlier config: same (seeded) run, reuse it
                entry = dict(done[key], name=name, layers=chosen, same_as=done[key]["name"])
            else:
                model = finetune(args, encoder, report, images, labels, ft_idx, strategy, by, num_classes, probe_head)
                entry = {"name": name, "layers": chosen, "probe_acc": probe(model.backbone),
                         "finetuned_acc": accuracy(model, images[test_idx], labels[test_idx])}
                done[key] = entry
            ft_results[name] = entry
            note = f" (= {entry['same_as']})" if "same_as" in entry else ""
            rows_b.append([name + note, short(chosen) or "— (encoder frozen)", entry["probe_acc"],
                           entry["finetuned_acc"]])
            log(f"fine-tuning {name}: layers {chosen}, probe {entry['probe_acc']:.3f}, "
                f"classifier {entry['finetuned_acc']:.3f}")
        table_b = md_table(["fine-tuned", "layers", "linear-probe acc", "fine-tuned classifier acc"], rows_b)
        print(f"\n(b) fine-tuning {args.ft_epochs} epoch(s) on {len(ft_idx)} labelled shared images "
              f"(Adam: head {args.ft_lr:g} from the probe's weights, layers {args.ft_layer_lr:g}); probe: logistic "
              f"regression, {len(probe_idx)} shared → {len(test_idx)} independent\n" + table_b)
        results["b"] = {"baseline_probe_acc": base_acc, "untrained_probe_acc": init_acc, "configs": ft_results,
                        "ft_samples": len(ft_idx), "probe_train": len(probe_idx), "probe_test": len(test_idx)}
        tables["b"] = table_b
        t = lap("finetuning", t)

        # 2c. pruning ----------------------------------------------------------------------------
        rows_c: List[List[Any]] = []
        prune_results: Dict[str, Any] = {}
        for scope in ("layer", "global"):
            for amount in args.prune:
                row: List[Any] = [scope, f"{amount:.0%}"]
                for strategy in ("lowest", "random", "highest"):
                    pruned_encoder = copy.deepcopy(encoder)
                    units = prune_units(pruned_encoder, report, amount=amount, strategy=strategy, scope=scope,
                                        seed=args.seed)
                    acc = probe(pruned_encoder)
                    counts = {layer: int(len(u)) for layer, u in units.items()}
                    pruned_mem = torch.cat([report.unit_mem[layer][u] for layer, u in units.items()])
                    prune_results[f"{scope}/{amount}/{strategy}"] = {
                        "probe_acc": acc, "units_per_layer": counts, "mean_unit_mem_pruned": float(pruned_mem.mean())}
                    row.append(acc)
                    log(f"pruning {scope} {amount:.0%} {strategy}: probe {acc:.3f}, units {counts}")
                rows_c.append(row)
        table_c = md_table(["scope", "pruned", "lowest UnitMem", "random", "highest UnitMem"], rows_c)
        print(f"\n(c) linear-probe accuracy after pruning (unpruned: {base_acc:.3f})\n" + table_c)
        results["c"] = {"baseline_probe_acc": base_acc, "configs": prune_results}
        tables["c"] = table_c
        t = lap("pruning", t)

        # 2d. UnitMem vs ClassMem, SSL vs supervised -----------------------------------------------
        pl.seed_everything(args.seed + 2, workers=True, verbose=False)
        sup = Classifier(ResNet9(in_channels=images.shape[1], width=args.width), num_classes, args.sup_lr,
                         images.shape[-1])
        enc_idx = split.encoder
        _trainer(args.sup_epochs, [EpochLog("supervised")]).fit(sup, loader(images[enc_idx], labels[enc_idx],
                                                                            args.batch_size, args.seed))
        sup_acc = accuracy(sup, images[split.independent], labels[split.independent])
        log(f"supervised ResNet9: test accuracy {sup_acc:.3f} on the independent set")
        t = lap("supervised_training", t)
        sup_report = measure(sup.backbone, images[cand], views=args.views, seed=args.seed, labels=cand_labels,
                             layers=layers, top_k=top_k, candidate_ids=cand, batch_size=64)
        sup_report.save(out / "report_supervised.json")
        # Floor: the same measurement on the untrained encoder (f at initialisation). UnitMem is a
        # max over candidates against their mean, so it is well above 0 even without training.
        init_report = measure(initial, images[cand], views=args.views, seed=args.seed, labels=cand_labels,
                              layers=layers, top_k=top_k, candidate_ids=cand, batch_size=64)
        um_init = init_report.unit_mem_mean()
        cm_init = {l: float(init_report.class_mem[l].mean()) for l in layers}
        um_sup = sup_report.unit_mem_mean()
        cm_ssl = {l: float(report.class_mem[l].mean()) for l in layers}
        cm_sup = {l: float(sup_report.class_mem[l].mean()) for l in layers}
        rows_d = [[f"{i + 1} `{l}`", um_ssl[l], cm_ssl[l], "UnitMem" if um_ssl[l] > cm_ssl[l] else "ClassMem",
                   um_sup[l], cm_sup[l], "UnitMem" if um_sup[l] > cm_sup[l] else "ClassMem", um_init[l], cm_init[l]]
                  for i, l in enumerate(layers)]
        table_d = md_table(["layer", "SSL UnitMem", "SSL ClassMem", "SSL higher", "sup. UnitMem", "sup. ClassMem",
                            "sup. higher", "untrained UnitMem", "untrained ClassMem"], rows_d)
        print(f"\n(d) mean UnitMem vs ClassMem per layer ({len(cand)} candidates, {args.views} views); "
              f"supervised ResNet9: {args.sup_epochs} epochs, test acc {sup_acc:.3f}\n" + table_d)
        results["d"] = {"ssl_unit_mem": um_ssl, "ssl_class_mem": cm_ssl, "sup_unit_mem": um_sup,
                        "sup_class_mem": cm_sup, "sup_test_acc": sup_acc,
                        "untrained_unit_mem": um_init, "untrained_class_mem": cm_init,
                        "sup_fraction_unit_mem_above_0.5": sup_report.unit_mem_frac_above(0.5)}
        tables["d"] = table_d
        t = lap("measure_supervised", t)
    else:
        log("the data have no labels: skipping (b) fine-tuning, (c) pruning probes and (d) ClassMem")

    results["timings_s"] = timings
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["machine"] = {"torch": torch.__version__, "pytorch_lightning": pl.__version__, "threads": args.threads,
                          "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    titles = {"a": "(a) LayerMem, ΔLayerMem, top-k / least-k", "b": "(b) fine-tuning, then linear probe",
              "c": "(c) pruning by UnitMem, then linear probe", "d": "(d) UnitMem vs ClassMem, SSL vs supervised"}
    md = [f"# reproduce_paper.py: {args.data}, {n} images, width {args.width}, {args.epochs} SSL epochs, "
          f"K={args.views}, top-k={top_k}, {results['elapsed_s']} s\n"]
    md += [f"## {titles[key]}\n\n{table}\n" for key, table in tables.items()]
    (out / "tables.md").write_text("\n".join(md))
    log(f"wrote {out / 'tables.md'}, {out / 'results.json'}; done in {results['elapsed_s']} s")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
