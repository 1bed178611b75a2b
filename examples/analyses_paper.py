"""Train the encoder pair of the CPU reproduction setting for docs/analyses.md, then analyse it.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) co-train a SimCLR
ResNet9 ``f`` (shared ∪ candidates) and a reference ``g`` (shared ∪ independent). This script
does the same at the "longer run" setting of docs/reproduction.md (2,000 random CIFAR-10 images
of a 10k subset, 1,600 / 200 / 200, width 16, 20 epochs), saves ``f.pt`` / ``g.pt`` (state
dicts) and the index files, and then runs, through the command line::

    memloc analyze --encoder f.pt --reference g.pt --arch resnet9 --width 16 --data DATA \\
        --indices candidates.json --pool-indices shared.json --views 8 --top-k 20 \\
        --analyses consistency,exchange,atypicality --out OUT

Usage: ``python examples/analyses_paper.py --data ../shared/data/cifar10-train-10k.npz --out runs/analyses``
(training is skipped when ``f.pt`` and ``g.pt`` already exist in ``--out``). Last, the single-unit
restore: fine-tune ``--restore-layer`` so that its least memorizing unit fires for the least
memorized candidate, keep only that unit (:func:`~lightning_memloc.analyses.finetune_units`),
and store UnitMem before / after in ``report.analyses["unit_restore"]``. A control runs the
three analyses on as many shared images (seen by both encoders) and writes
``report_control_shared.json``; the candidates' exchange study is then repeated with those
images as its ``control`` (``drop_minus_control`` in ``report.json``, crosses in ``exchange.png``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_memloc import BatchedSimCLRAugment, CoTrainedPair, cotraining_loader
from lightning_memloc.cli import main as memloc
from lightning_memloc.data import load_data, split_candidates
from lightning_memloc.models.ssl import SimCLR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10-train-10k.npz")
    p.add_argument("--subset", type=int, default=2000, help="random (seeded) subset of the data")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--top-k", type=int, default=20, help="top-k of the consistency analysis")
    p.add_argument("--restore-layer", default="res2.conv2", help="layer of the single-unit fine-tuning")
    p.add_argument("--restore-steps", type=int, default=30)
    p.add_argument("--restore-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/analyses")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = load_data(args.data)
    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.subset].sort().values
    split = split_candidates(len(keep), shared=0.8, candidates=0.1, independent=0.1, seed=args.seed)
    for name, part in (("candidates", split.candidates), ("shared", split.shared), ("independent", split.independent)):
        (out / f"{name}.json").write_text(json.dumps(keep[part].tolist()))  # indices into --data
    if not ((out / "f.pt").is_file() and (out / "g.pt").is_file()):
        started = time.perf_counter()
        pl.seed_everything(args.seed, workers=True, verbose=False)
        sub = images[keep]
        augment = BatchedSimCLRAugment(sub.shape[-1])
        make = lambda: SimCLR.resnet9(in_channels=sub.shape[1], width=args.width, augment=augment)  # noqa: E731
        pair = CoTrainedPair(make(), make(), lr=args.lr, warmup_epochs=args.warmup_epochs, max_epochs=args.epochs)
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(pair, cotraining_loader(sub, split, batch_size=args.batch_size))
        torch.save(pair.encoder.backbone.state_dict(), out / "f.pt")
        torch.save(pair.reference.backbone.state_dict(), out / "g.pt")
        losses = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(f"[analyses] co-training: {time.perf_counter() - started:.0f} s, final losses {losses}", flush=True)
    command = ["analyze", "--encoder", str(out / "f.pt"), "--reference", str(out / "g.pt"), "--arch", "resnet9",
               "--width", str(args.width), "--data", args.data, "--indices", str(out / "candidates.json"),
               "--pool-indices", str(out / "shared.json"), "--views", str(args.views), "--top-k", str(args.top_k),
               "--seed", str(args.seed), "--analyses", "consistency,exchange,atypicality", "--labels",
               "--no-progress", "--output-dir", str(out)]
    print("[analyses] memloc " + " ".join(command), flush=True)
    started = time.perf_counter()
    code = memloc(command)
    print(f"[analyses] memloc analyze: {time.perf_counter() - started:.0f} s", flush=True)
    if code == 0:
        control(args, out, images, labels)
        unit_restore(args, out, images)
    return code


def control(args: argparse.Namespace, out: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The same three analyses on shared images (both encoders trained on them): what no memorization gives."""
    from lightning_memloc import MemorizationReport, load_encoder, measure
    from lightning_memloc.analyses import layer_exchange_study, run_analyses
    from lightning_memloc.plots.analysis_figures import plot_exchange
    from lightning_memloc.models import ResNet9

    started = time.perf_counter()
    shared = torch.tensor(json.loads((out / "shared.json").read_text()))
    n = len(json.loads((out / "candidates.json").read_text()))
    pick = shared[torch.randperm(len(shared), generator=torch.Generator().manual_seed(args.seed + 7))[:n]].sort().values
    f = load_encoder(out / "f.pt", ResNet9(width=args.width))
    g = load_encoder(out / "g.pt", ResNet9(width=args.width))
    report = measure(f, images[pick], reference=g, views=args.views, seed=args.seed, top_k=args.top_k,
                     candidate_ids=pick, batch_size=64)
    where = {int(p): i for i, p in enumerate(shared.tolist())}
    run_analyses("all", report, f, reference=g, candidates=images[pick], pool=images[shared],
                 exclude=torch.tensor([where[int(p)] for p in pick.tolist()]), pool_ids=shared.tolist(),
                 candidate_labels=labels[pick], pool_labels=labels[shared], top_k=args.top_k, batch_size=64)
    report.save(out / "report_control_shared.json")
    # The candidates' exchange study again, with the control images measured alongside (drop_minus_control).
    main_report = MemorizationReport.load(out / "report.json")
    candidates = images[torch.tensor(json.loads((out / "candidates.json").read_text()))]
    main_report.analyses["exchange"] = layer_exchange_study(
        f, g, candidates, main_report, k=2, random_draws=3, seed=args.seed, views=args.views, batch_size=64,
        control=images[pick])
    main_report.save(out / "report.json")
    plot_exchange(main_report.analyses["exchange"], out / "exchange.png")
    print(f"[analyses] control on {n} shared images ({time.perf_counter() - started:.0f} s): "
          f"{out / 'report_control_shared.json'}", flush=True)


def unit_restore(args: argparse.Namespace, out: Path, images: torch.Tensor) -> None:
    """Fine-tune ``--restore-layer`` to make one unit fire for one candidate, keep only that unit."""
    from lightning_memloc import MemorizationReport, load_encoder
    from lightning_memloc.analyses import finetune_units
    from lightning_memloc.models import ResNet9
    from lightning_memloc.plots.analysis_figures import plot_unit_restore

    started = time.perf_counter()
    report = MemorizationReport.load(out / "report.json")
    encoder = load_encoder(out / "f.pt", ResNet9(width=args.width))
    layer = args.restore_layer
    unit = int(report.top_units(layer, 1, largest=False)[0])  # the least memorizing unit of the layer
    target = int(torch.sort(report.candidate_scores(), stable=True).indices[0])  # the least memorized candidate
    plain = images[report.candidate_ids].float().div(255)

    def loss(model: torch.nn.Module) -> torch.Tensor:
        grabbed = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: grabbed.setdefault("a", o))
        try:
            model(plain)
        finally:
            handle.remove()
        a = grabbed["a"].mean((2, 3))[:, unit]
        others = torch.cat([a[:target], a[target + 1:]])
        return -(a[target] - 2 * others.mean())

    _, result = finetune_units(encoder, layer, [unit], loss, images[report.candidate_ids], steps=args.restore_steps,
                               lr=args.restore_lr, views=args.views, seed=args.seed, batch_size=64)
    result["target_candidate"] = int(report.candidate_ids[target])
    report.analyses["unit_restore"] = result
    report.save(out / "report.json")
    plot_unit_restore(result, out / "unit_restore.png")
    print(f"[analyses] unit restore ({time.perf_counter() - started:.0f} s): {result}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
