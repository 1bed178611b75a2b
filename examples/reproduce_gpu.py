"""The paper-scale check on one GPU, in one call: co-train, monitor, measure, fine-tune, prune.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) co-train a SimCLR
ResNet9 (width 64) ``f`` on shared ∪ candidates and a reference ``g`` on shared ∪ independent, then
localize the memorization of the candidates. This script does that at the largest scale a lent GPU
allows in about 7 minutes (``docs/reproduction.md``, "GPU run"):

1. split the 10,000-image CIFAR-10 file into 8,000 shared / 1,000 candidates / 1,000 independent,
   with a control of 1,000 images drawn at random from the shared part (``split.control``);
2. co-train ``f`` and ``g`` (bf16 autocast and channels-last on CUDA, batch 512) for as many
   epochs as fit in ``--train-seconds`` (learning rate by wall clock: warm-up, cosine to 0 at the
   end of the budget; Lightning's ``Timer`` stops training), with a
   :class:`~lightning_memloc.MemorizationMonitor` (``control=``, ``unseen=`` the independent part)
   measuring before training, about ``--monitor-points`` times during it, and at its end;
3. measure with K = 10: LayerMem / ΔLayerMem, top-k / least-k, mean UnitMem and the fraction above
   0.5 per layer, and the evidence (candidates vs control and vs unseen, with intervals and
   Holm-corrected tests);
4. fine-tune (top-2 LayerMem, top-2 excess over the control, last 2, head only) and prune (lowest
   / random / highest UnitMem, 10 % and 20 %, per layer and globally), each judged by a linear
   probe (shared → independent images).

Writes into ``--out`` (at most 6 files, for a device tool that returns 8): ``results.json`` (every
number), ``tables.md``, ``report.json`` (the final report with its evidence), ``history.json`` (the
monitor's measurements over epochs), and ``f.pt`` / ``g.pt`` (the backbones' state dicts in half
precision, for later analyses on a CPU). ``results.json`` and ``tables.md`` are rewritten after
every stage, so a run cut short still leaves what it finished.

GPU: ``benchmarks/gpu_run.sh`` (this script plus the CUDA-only tests). CPU smoke test:
``tests/test_reproduce_gpu.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, Timer
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_paper as paper  # noqa: E402  (helpers shared with the CPU reproduction)
from gpu_probe import classifier_accuracy, linear_probe  # noqa: E402
from gpu_tables import evidence_table, finetune_table, history_tables, paper_checks, prune_table  # noqa: E402
from gpu_training import (EpochClock, FullPrecision, MonitorPacer, WallClockLR, WallClockPair, cotraining_batches,  # noqa: E402
                          index_batch_loader)

from lightning_memloc import BatchedSimCLRAugment, MemorizationMonitor, MemorizationReport, measure  # noqa: E402
from lightning_memloc.callbacks import MemorizationFinetuning, prune_units  # noqa: E402
from lightning_memloc.data import load_data, split_candidates  # noqa: E402
from lightning_memloc.io import atomic_write_text  # noqa: E402
from lightning_memloc.report.selection import select_layers  # noqa: E402
from lightning_memloc.models.ssl import SimCLR  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="data/cifar10-train-10k.npz", help=".npz file (uint8 images, labels)")
    g.add_argument("--shared", type=int, default=8000)
    g.add_argument("--candidates", type=int, default=1000)
    g.add_argument("--independent", type=int, default=1000)
    g.add_argument("--control", type=int, default=1000, help="control images, drawn at random from the shared part")
    g = p.add_argument_group("SSL co-training")
    g.add_argument("--width", type=int, default=64, help="ResNet9 base width (the paper's: 64)")
    g.add_argument("--batch-size", type=int, default=512, help="images per step, for each encoder")
    g.add_argument("--lr", type=float, default=0.24, help="peak SGD learning rate (lightly's 0.06 per 128 images)")
    g.add_argument("--warmup", type=float, default=0.05, help="fraction of the budget spent warming up")
    g.add_argument("--train-seconds", type=float, default=420.0, help="wall-clock training budget")
    g.add_argument("--max-epochs", type=int, default=100_000, help="hard cap on epochs (the budget usually ends first)")
    g.add_argument("--precision", default="auto", help="Lightning precision; auto: bf16-mixed on CUDA, else 32-true")
    g.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="channels-last memory format of the models (auto: on CUDA)")
    g = p.add_argument_group("measurement")
    g.add_argument("--views", type=int, default=10, help="K augmented views per image")
    g.add_argument("--top-k", type=int, default=None, help="top-k / least-k size (default: the paper's 50 of 5,000, scaled)")
    g.add_argument("--measure-batch", type=int, default=250, help="images per measurement step (x K views)")
    g.add_argument("--bootstrap", type=int, default=1000, help="resamples of the final report's intervals and tests")
    g.add_argument("--monitor-bootstrap", type=int, default=200, help="resamples at each monitor measurement")
    g.add_argument("--monitor-points", type=int, default=8, help="monitor measurements during training (about)")
    g = p.add_argument_group("downstream (linear probe: shared -> independent images)")
    g.add_argument("--probe-train", type=int, default=5000, help="shared images training the probe")
    g.add_argument("--ft-samples", type=int, default=5000, help="labelled shared images for fine-tuning")
    g.add_argument("--ft-epochs", type=int, default=3)
    g.add_argument("--ft-batch", type=int, default=256)
    g.add_argument("--ft-lr", type=float, default=1e-3, help="Adam learning rate of the head (from the probe)")
    g.add_argument("--ft-layer-lr", type=float, default=1e-4, help="Adam learning rate of fine-tuned layers")
    g.add_argument("--ft-k", type=int, default=2, help="layers to fine-tune")
    g.add_argument("--prune", type=float, nargs="+", default=[0.1, 0.2], help="fractions of units to prune")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/reproduce_gpu", help="output folder")
    g.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    g.add_argument("--save-weights", default="fp16", choices=["fp16", "none"], help="write f.pt / g.pt")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings before any work (each message names the option and the fix)."""
    if not Path(args.data).is_file():
        raise SystemExit(f"--data {args.data!r}: no such file; copy ../shared/data/cifar10-train-10k.npz into data/ "
                         "(git-ignored) or pass the path of an .npz file.")
    for name in ("shared", "candidates", "independent", "control", "width", "batch_size", "views", "max_epochs",
                 "measure_batch", "probe_train", "ft_samples", "ft_epochs", "ft_batch", "ft_k", "monitor_points"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.candidates < 2 or args.control < 2 or args.independent < 2:
        raise SystemExit("--candidates, --control and --independent need >= 2 images each (UnitMem compares each with the rest).")
    if args.control > args.shared:
        raise SystemExit(f"--control {args.control} exceeds --shared {args.shared}: the control is drawn from the shared part.")
    if not args.train_seconds > 0 or not 0 <= args.warmup < 1:
        raise SystemExit("--train-seconds must be > 0 and --warmup in [0, 1).")
    if any(not 0 < a < 1 for a in args.prune):
        raise SystemExit(f"--prune takes fractions in (0, 1), got {args.prune}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu or auto.")


def log(msg: str) -> None:
    print(f"[gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train(args: argparse.Namespace, images: Tensor, labels: Tensor, split: Any, ctrl: Tensor, device: torch.device,
          top_k: int) -> Dict[str, Any]:
    """Co-train f and g under the wall-clock budget with a monitor; returns models, monitor and records."""
    cuda = device.type == "cuda"
    size = images.shape[-1]

    def ssl() -> SimCLR:
        return SimCLR.resnet9(in_channels=images.shape[1], width=args.width,
                              augment=FullPrecision(BatchedSimCLRAugment(size)))

    pair = WallClockPair(ssl(), ssl(), lr=args.lr, max_epochs=1)  # max_epochs unused: the LR follows the clock
    if args.channels_last == "on" or (cuda and args.channels_last == "auto"):
        pair = pair.to(memory_format=torch.channels_last)
    initial = copy.deepcopy(pair.encoder.backbone)
    timer = Timer(duration=timedelta(seconds=args.train_seconds), interval="step")
    monitor = MemorizationMonitor(
        images[split.candidates], labels=labels[split.candidates], control=images[ctrl],
        unseen=images[split.independent], encoder="encoder.backbone", reference="reference.backbone",
        every_n_epochs=10**9, views=args.views, batch_size=args.measure_batch, top_k=top_k, seed=args.seed,
        measure_on_train_start=True, grid_size=0, log_histograms=False, progress=False,
        bootstrap=args.monitor_bootstrap)
    pacer = MonitorPacer(monitor, timer, args.train_seconds, points=args.monitor_points)
    schedule = WallClockLR(timer, args.train_seconds, args.lr, warmup=args.warmup)
    clock = EpochClock(log)
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=args.precision, max_epochs=args.max_epochs,
                         callbacks=[timer, schedule, pacer, monitor, clock], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         benchmark=cuda)
    batches = cotraining_batches(images.to(device), split, args.batch_size, args.seed)
    steps_per_epoch = max(len(loader) for loader in batches.iterables.values())  # max_size_cycle
    started = time.perf_counter()
    trainer.fit(pair, batches)
    seconds = time.perf_counter() - started
    return {"f": pair.encoder.backbone.eval(), "g": pair.reference.backbone.eval(), "initial": initial.to(device).eval(),
            "monitor": monitor, "epochs": clock.records, "seconds": seconds, "timer_s": timer.time_elapsed("train"),
            # a run stopped by the Timer ends inside an epoch: count epochs in steps
            "epochs_reached": round(trainer.global_step / steps_per_epoch, 2), "steps": trainer.global_step,
            "steps_per_epoch": steps_per_epoch, "monitor_every": pacer.every, "expected_epochs": pacer.expected_epochs,
            "last_lr": schedule.last_lr, "last_progress": schedule.last_progress,
            "stopped_by_budget": trainer.global_step < steps_per_epoch * args.max_epochs,
            # SimCLR views through either encoder per second, monitor time included
            "views_per_s": round(trainer.global_step * args.batch_size * 2 * 2 / max(seconds, 1e-9), 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None}


def finetune(args: argparse.Namespace, backbone: nn.Module, report: MemorizationReport, images: Tensor,
             labels: Tensor, ft_idx: Tensor, strategy: str, by: str, num_classes: int, head: nn.Linear,
             device: torch.device) -> nn.Module:
    """Fine-tune a copy of ``backbone`` + the probe's head (LP-FT); ``strategy="head"`` keeps the encoder frozen."""
    pl.seed_everything(args.seed + 1, workers=True, verbose=False)  # same batches and views for every config
    model = paper.Classifier(copy.deepcopy(backbone), num_classes, args.ft_lr, images.shape[-1])
    model.head.load_state_dict(head.state_dict())
    if strategy == "head":  # the encoder stays frozen, BatchNorm statistics included
        model.backbone.requires_grad_(False)
        callback: Callback = paper.FrozenEval("backbone")
    else:
        callback = MemorizationFinetuning(report, k=args.ft_k, by=by, strategy=strategy, encoder="backbone",
                                          head="head", lr=args.ft_layer_lr, unfreeze_at_epoch=0)
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=args.precision, max_epochs=args.ft_epochs,
                         callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, index_batch_loader(images.to(device), ft_idx, args.ft_batch, args.seed, labels))
    return model


def run(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.perf_counter()
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.precision == "auto":
        args.precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {"settings": dict(vars(args)), "timings_s": {}}
    tables: Dict[str, str] = {}

    def write(stage: str, t0: float) -> float:
        results["timings_s"][stage] = round(time.perf_counter() - t0, 1)
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))
        head = (f"# reproduce_gpu.py: {results['settings']['data']}, width {args.width}, K = {args.views}, "
                f"{results.get('training', {}).get('epochs_reached', '?')} epochs, {results['elapsed_s']} s\n")
        atomic_write_text(out / "tables.md", head + "\n".join(f"\n## {k}\n\n{v}\n" for k, v in tables.items()))
        log(f"{stage}: {results['timings_s'][stage]} s (total {results['elapsed_s']} s)")
        return time.perf_counter()

    t = time.perf_counter()
    pl.seed_everything(args.seed, workers=True, verbose=False)
    images, labels = load_data(args.data)
    split = split_candidates(len(images), shared=args.shared, candidates=args.candidates,
                             independent=args.independent, seed=args.seed)
    ctrl = split.control(args.control, seed=args.seed)
    cand, ind = split.candidates, split.independent
    num_classes = int(labels.max()) + 1
    top_k = args.top_k or max(1, round(paper.PAPER["top_k"] * len(cand) / paper.PAPER["num_candidates"]))
    results.update(device=str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
                   torch=torch.__version__, pytorch_lightning=pl.__version__, num_images=len(images), top_k=top_k,
                   split={"shared": len(split.shared), "candidates": len(cand), "independent": len(ind),
                          "control": len(ctrl)},
                   indices={"candidates": cand.tolist(), "control": ctrl.tolist(), "independent": ind.tolist()})
    log(f"{len(images)} images on {results['device']}: split {results['split']}, top-k {top_k}, {args.precision}")
    t = write("load", t)

    trained = train(args, images, labels, split, ctrl, device, top_k)
    f, g, monitor = trained["f"], trained["g"], trained["monitor"]
    results["training"] = {k: v for k, v in trained.items() if k not in ("f", "g", "initial", "monitor")}
    results["history"] = monitor.history
    atomic_write_text(out / "history.json", json.dumps(monitor.history, indent=1))
    tables.update(history_tables(monitor.history, monitor.report.layers))
    if args.save_weights == "fp16":
        for name, model in (("f", f), ("g", g)):
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                       out / f"{name}.pt")
    log(f"trained {trained['epochs_reached']} epochs, {trained['steps']} steps in {trained['seconds']:.0f} s")
    t = write("training", t)

    report = measure(f, images[cand], reference=g, views=args.views, seed=args.seed, labels=labels[cand],
                     top_k=top_k, candidate_ids=cand, batch_size=args.measure_batch, control=images[ctrl],
                     unseen=images[ind], bootstrap=args.bootstrap,
                     meta={"data": str(args.data), "width": args.width, "epochs": trained["epochs_reached"]})
    report.save(out / "report.json")
    results["a"] = {"layers": report.layers, "layer_mem": report.layer_mem, "delta_layer_mem": report.delta_layer_mem,
                    "layer_mem_top": report.layer_mem_top, "layer_mem_least": report.layer_mem_least,
                    "mean_unit_mem": report.unit_mem_mean(), "fraction_unit_mem_above_0.5": report.unit_mem_frac_above(0.5),
                    "dead_units": report.num_dead_units(), "evidence": report.evidence.to_dict()["layers"],
                    "significant_layers": {test: report.evidence.significant_layers(test) for test in
                                           ("excess", "excess_unseen", "membership", "unit_mem_excess")},
                    "paper": paper.PAPER}
    tables["(a) LayerMem, top-k / least-k, UnitMem and the evidence (final report)"] = evidence_table(report, top_k)
    print(report.summary_table(), flush=True)
    t = write("measure", t)

    gen = torch.Generator().manual_seed(args.seed + 3)
    shared_perm = split.shared[torch.randperm(len(split.shared), generator=gen)]
    probe_idx, ft_idx = shared_perm[:args.probe_train].sort().values, shared_perm[:args.ft_samples].sort().values

    def probe(backbone: nn.Module) -> float:
        return linear_probe(backbone, images, labels, probe_idx, ind, num_classes)[0]

    base_acc, probe_head = linear_probe(f, images, labels, probe_idx, ind, num_classes)
    rows: List[List[Any]] = [["untrained encoder (f at init) + probe", "—", probe(trained["initial"]), "—"],
                             ["none (SSL encoder + probe)", "—", base_acc,
                              classifier_accuracy(nn.Sequential(f, nn.Flatten(), probe_head), images[ind], labels[ind])]]
    configs = [("head only", "head", "layer_mem"), (f"top-{args.ft_k} LayerMem", "highest", "layer_mem"),
               (f"top-{args.ft_k} excess over control", "highest", "excess"), (f"last {args.ft_k}", "last", "layer_mem")]
    ft: Dict[str, Any] = {}
    for name, strategy, by in configs:
        chosen = [] if strategy == "head" else select_layers(report, args.ft_k, by=by, strategy=strategy)
        model = finetune(args, f, report, images, labels, ft_idx, strategy, by, num_classes, probe_head, device)
        ft[name] = {"layers": chosen, "probe_acc": probe(model.backbone),
                    "finetuned_acc": classifier_accuracy(model, images[ind], labels[ind])}
        rows.append([name, ", ".join(chosen) or "— (encoder frozen)", ft[name]["probe_acc"], ft[name]["finetuned_acc"]])
        log(f"fine-tuning {name}: {ft[name]}")
    results["b"] = {"baseline_probe_acc": base_acc, "untrained_probe_acc": rows[0][2], "configs": ft,
                    "probe_train": len(probe_idx), "ft_samples": len(ft_idx), "probe_test": len(ind)}
    tables["(b) fine-tuning, then linear probe"] = finetune_table(rows)
    t = write("finetuning", t)

    pruned: Dict[str, Any] = {}
    for scope in ("layer", "global"):
        for amount in args.prune:
            for strategy in ("lowest", "random", "highest"):
                encoder = copy.deepcopy(f)
                units = prune_units(encoder, report, amount=amount, strategy=strategy, scope=scope, seed=args.seed)
                pruned_mem = torch.cat([report.unit_mem[layer][u.cpu()] for layer, u in units.items()])
                pruned[f"{scope}/{amount}/{strategy}"] = {
                    "probe_acc": probe(encoder), "units_per_layer": {k: int(len(u)) for k, u in units.items()},
                    "mean_unit_mem_pruned": float(pruned_mem.mean())}
    results["c"] = {"baseline_probe_acc": base_acc, "configs": pruned}
    tables["(c) pruning by UnitMem, then linear probe"] = prune_table(pruned, args.prune, base_acc)
    results["checks"] = paper_checks(report, results["b"], pruned, args.prune, args.ft_k)
    tables["(d) the paper's findings, checked"] = "\n".join(f"- {k}: {v}" for k, v in results["checks"].items())
    write("pruning", t)
    log(f"wrote {out}; done in {results['elapsed_s']} s")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
