"""The paper's findings in ``memloc demo``'s canary setting, over several training seeds.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) report seven
findings; this script tests each where a CPU run has memorization to find: the demo's canary
setting (atypical photo crops among digits, a SimCLR ResNet9 ``f`` co-trained with a reference
``g`` that never sees the candidates, a control set both train on, an unseen set). The setting
is the demo's own (:func:`lightning_memloc.cli.demo.build_parser` defaults, :func:`lightning_memloc.cli.demo.run`
trains the pair), so this script follows the demo when it is retuned; it only measures every
``warm-up`` epochs so that one measurement ends the warm-up. Per seed it reduces every finding to
one signed statistic (> 0: as the paper), then pools the seeds (``paper_findings_stats``).

Usage (docs/findings.md)::

    OMP_NUM_THREADS=2 python examples/paper_findings_cpu.py --seeds 0 1 2 --out runs/findings
    python examples/paper_findings_cpu.py --quick --out runs/findings_quick      # CI smoke test, seconds

A seed whose ``seed_<s>.json`` exists in ``--out`` is read, not re-trained: seeds can run in
separate processes and a last call pools them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lightning_memloc import measure, prune_units
from lightning_memloc.cli import demo
from lightning_memloc.analyses import atypicality_study, exchange_layers, layer_exchange_study
from lightning_memloc.analyses.atypicality import embed, knn_distance, max_unit_mem, spearman
from lightning_memloc.data import load_data
from lightning_memloc.io import atomic_write_text, check_writable_dir
from lightning_memloc.models import ResNet9
from lightning_memloc.report.tags import scalar_tag

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_findings_stats import VERDICTS, curve_table, depth_table, findings_table, pool, verdict  # noqa: E402
from tradeoff_runs import Classifier, finetune, knn_hits  # noqa: E402

#: Demo flags of ``--quick``: tiny data, model and schedule (numbers mean nothing; the code path runs).
QUICK = ["--subset", "40", "--canaries", "4", "--epochs", "2", "--width", "4", "--views", "2", "--bootstrap", "200",
         "--batch-size", "8"]


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options; a bad value is an argparse error before any work."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0 1)")
    p.add_argument("--out", default="runs/findings", help="output folder (seed_<s>/ demo runs, results.json, findings.md)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (CI): every code path, meaningless numbers")
    p.add_argument("--k", type=int, default=2, help="layers per exchanged / fine-tuned group")
    p.add_argument("--prune", type=float, default=0.1, help="share of every layer's units pruned")
    p.add_argument("--sup-epochs", type=int, default=60, help="epochs of the supervised encoder (finding 7)")
    p.add_argument("--ft-epochs", type=int, default=10, help="fine-tuning epochs (finding 6)")
    p.add_argument("--only", type=int, default=None, metavar="SEED",
                   help="train and measure this one seed (seed_<SEED>.json), no pooling: seeds in parallel processes")
    args = p.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else [0, 1, 2])
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: give at least 2 distinct seeds (intervals over seeds), got {args.seeds}")
    if not 0 < args.prune < 1 or args.k < 1 or args.sup_epochs < 1 or args.ft_epochs < 1:
        p.error("--prune must lie in (0, 1); --k, --sup-epochs and --ft-epochs must be >= 1")
    if args.quick:
        args.sup_epochs, args.ft_epochs, args.prune = 1, 1, 0.25  # width 4: 10 % of 4 units prunes none
    return args


def demo_args(seed: int, out: Path, quick: bool) -> argparse.Namespace:
    """The demo's own settings (its parser and its defaults), measuring every warm-up length so that one
    measurement ends the warm-up (the demo's default measures every epochs / 6)."""
    parsed = demo.build_parser().parse_args((QUICK if quick else []) + ["--seed", str(seed), "--output-dir", str(out)])
    parsed = demo.apply_defaults(parsed)  # the demo's epoch / warm-up / batch defaults, whatever they are now
    parsed.every_n_epochs = max(1, parsed.warmup_epochs)
    return parsed


def views_transform(dargs: argparse.Namespace, side: int) -> Optional[Callable]:
    """The views the demo's monitor measures on (``demo.view_transform`` where the demo has one; else the default)."""
    spec_of = getattr(demo, "view_transform", None)
    spec = None if spec_of is None else spec_of(side, dargs.data, dargs.transform)
    if spec is None:
        return None
    from lightning_memloc.cli.user_models import import_object

    return import_object(spec[0], "transform")(**spec[1])


def train_pair(seed: int, out: Path, quick: bool) -> Dict[str, Any]:
    """Run ``memloc demo`` for ``seed`` and load what it wrote: images, groups, ``f``, ``g``, history, report."""
    dargs = demo_args(seed, out, quick)
    result = demo.run(dargs)
    files = np.load(out / "data.npz")
    images = torch.from_numpy(files["x"]).permute(0, 3, 1, 2).contiguous()
    groups = {k: torch.tensor(v, dtype=torch.long) for k, v in json.loads((out / "split.json").read_text()).items()}
    nets = []
    for name in ("encoder.pt", "reference.pt"):
        net = ResNet9(in_channels=images.shape[1], width=dargs.width)
        net.load_state_dict(torch.load(out / name, map_location="cpu"))
        nets.append(net.eval())
    return {"images": images, "labels": torch.from_numpy(files["y"]).long(), "groups": groups, "f": nets[0],
            "g": nets[1], "history": result["history"], "report": result["report"], "dargs": dargs,
            "warmup_last_epoch": dargs.warmup_epochs - 1, "transform": views_transform(dargs, images.shape[-1])}


def held_out_digits(run: Dict[str, Any], quick: bool) -> Dict[str, Tensor]:
    """Labelled digits neither encoder trained on (not in the demo's data), split into a fine-tuning / kNN bank and a test set."""
    images, labels = load_data("digits", size=run["images"].shape[-1])
    images = images.expand(-1, run["images"].shape[1], -1, -1) if images.shape[1] == 1 else images
    seen = {bytes(x.numpy().tobytes()) for x in run["images"]}
    rest = torch.tensor([i for i in range(len(images)) if images[i].numpy().tobytes() not in seen])
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))][: 200 if quick else 1000]
    half = len(rest) // 2
    return {"ft_x": images[rest[:half]], "ft_y": labels[rest[:half]], "test_x": images[rest[half:]], "test_y": labels[rest[half:]]}


def depth(report: Any) -> Dict[str, Any]:
    """Finding 1: LayerMem excess over the control per layer; statistic: mean of the last k layers − first k."""
    layers = {layer: {"excess": rec["excess"], "lo": rec.get("excess_lo"), "hi": rec.get("excess_hi"),
                      "p_holm": rec.get("excess_p_holm")} for layer, rec in report.evidence.layers.items()}
    xs = [layers[layer]["excess"] for layer in report.layers]
    return {"layers": layers, "deep_minus_shallow": float(np.mean(xs[-2:]) - np.mean(xs[:2]))}


def over_training(history: List[Dict[str, Any]], layer: str, warmup_last: int) -> Dict[str, Any]:
    """Finding 2: the layer's mean UnitMem over the monitor's measurements, candidates and unseen; rise, slopes."""
    rows = [h for h in history if scalar_tag("unit_mem_mean", layer) in h]
    epochs = [int(h["epoch"]) for h in rows]
    cand = [float(h[scalar_tag("unit_mem_mean", layer)]) for h in rows]
    unseen = [float(h.get(scalar_tag("unit_mem_unseen", layer), float("nan"))) for h in rows]
    excess = [float(h.get(scalar_tag("unit_mem_excess", layer), float("nan"))) for h in rows]
    w = min(range(len(epochs)), key=lambda i: abs(epochs[i] - warmup_last))  # the measurement ending the warm-up
    span_w, span_after = epochs[w] - epochs[0], epochs[-1] - epochs[w]
    slope_w = (cand[w] - cand[0]) / max(1, span_w)
    slope_after = (cand[-1] - cand[w]) / max(1, span_after)
    return {"epochs": epochs, "candidates": cand, "unseen": unseen, "warmup_last_epoch": warmup_last,
            "rise": cand[-1] - cand[0], "warmup_minus_after_slope": slope_w - slope_after,
            "seen_minus_unseen_final": excess[-1]}


def sslmem_vs_unitmem(run: Dict[str, Any], report: Any) -> Dict[str, Any]:
    """Finding 3: Spearman ρ (p) of SSLMem and each image's highest UnitMem at the last layer, candidates and control."""
    x, gr = run["images"], run["groups"]
    control = measure(run["f"], x[gr["control"]], reference=run["g"], views=report.meta.get("views", 10),
                      seed=run["dargs"].seed, transform=run["transform"], bootstrap=0,
                      top_k=max(1, len(gr["control"]) // 10))
    last = report.layers[-1]
    out = {}
    for name, rep in (("candidates", report), ("control", control)):
        out[name] = spearman(rep.sslmem[last].numpy(), max_unit_mem(rep, last).numpy())
        out[name]["p"] = 1.0 if out[name]["p"] is None else out[name]["p"]  # a constant side: no evidence
    return out


def atypicality(run: Dict[str, Any], report: Any) -> Dict[str, Any]:
    """Finding 4: ρ(kNN distance in f's embedding, SSLMem) of the candidates; canaries' vs digits' kNN distance."""
    x, gr, labels = run["images"], run["groups"], run["labels"]
    shared = gr["shared"]
    study = atypicality_study(run["f"], report, x[gr["candidates"]], x[shared], k=5)
    rho = study["spearman"]["sslmem"][report.layers[-1]]
    digits = shared[labels[shared] >= 0]
    pool_emb, digit_emb = embed(run["f"], x[shared]), embed(run["f"], x[digits])
    position = {int(i): j for j, i in enumerate(shared.tolist())}
    exclude = torch.tensor([position[int(i)] for i in digits.tolist()])
    digit_d = knn_distance(digit_emb, pool_emb, 5, exclude=exclude)[0]
    canary_d = torch.tensor(study["knn_distance"])
    return {"rho": rho["rho"], "p": 1.0 if rho["p"] is None else rho["p"], "canary_knn": float(canary_d.mean()),
            "digit_knn": float(digit_d.mean()), "canary_minus_digit_knn": float(canary_d.mean() - digit_d.mean())}


def exchange(run: Dict[str, Any], report: Any, k: int) -> Dict[str, Any]:
    """Finding 5: drop of the candidates' SSLMem minus the control's, exchanging the last k, first k or random k layers of f for g's."""
    x, gr = run["images"], run["groups"]
    kw = {"views": report.meta.get("views", 10), "transform": run["transform"], "bootstrap": 0}
    study = layer_exchange_study(run["f"], run["g"], x[gr["candidates"]], report, k=k, random_draws=3,
                                 seed=run["dargs"].seed, control=x[gr["control"]], **kw)
    last, first = report.layers[-1], report.layers[:k]
    hybrid = exchange_layers(run["f"], run["g"], first)

    def raw(encoder: nn.Module, images: Tensor) -> float:
        rep = measure(encoder, images, reference=run["g"], seed=run["dargs"].seed, top_k=1, **kw)
        return float(rep.sslmem_raw[last].mean())

    shallow = (study["baseline"]["sslmem_raw_mean"] - raw(hybrid, x[gr["candidates"]])) \
        - (study["control_baseline"]["sslmem_raw_mean"] - raw(hybrid, x[gr["control"]]))
    deep = study["groups"]["last"]["drop_minus_control"]
    rand = float(np.mean([e["drop_minus_control"] for e in study["groups"]["random"]]))
    return {"deep": deep, "shallow": shallow, "random": rand, "deep_minus_shallow": deep - shallow,
            "deep_minus_random": deep - rand, "random_layers": [e["layers"] for e in study["groups"]["random"]]}


def finetune_and_prune(run: Dict[str, Any], report: Any, held: Dict[str, Tensor], args: argparse.Namespace) -> Dict[str, Any]:
    """Finding 6: head accuracy after fine-tuning the top-k ΔLayerMem layers − the last k; kNN accuracy after pruning random − highest UnitMem units."""
    ft = argparse.Namespace(ft_lr=3e-3, ft_epochs=args.ft_epochs, ft_batch_size=50, ks=[20], temperature=0.1)
    acc, chosen = {}, {}
    for name, strategy in (("top_delta", {"k": args.k, "by": "delta_layer_mem", "strategy": "highest"}),
                           ("last", {"k": args.k, "strategy": "last"})):
        model, chosen[name] = finetune(run["f"], report, strategy, held, ft, run["dargs"].seed)
        with torch.no_grad():
            acc[name] = float((model(held["test_x"]).argmax(1) == held["test_y"]).float().mean())
    pruned = {}
    for strategy in ("highest", "random", "lowest"):
        encoder = copy.deepcopy(run["f"])
        prune_units(encoder, report, amount=args.prune, strategy=strategy, scope="layer", seed=run["dargs"].seed)
        pruned[strategy] = float(knn_hits(encoder, held, ft)[20].mean())
    return {"finetune_acc": acc, "finetune_layers": chosen, "finetune_top_minus_last": acc["top_delta"] - acc["last"],
            "knn_unpruned": float(knn_hits(run["f"], held, ft)[20].mean()), "prune_knn": pruned,
            "prune_random_minus_highest": pruned["random"] - pruned["highest"]}


def class_vs_unit(run: Dict[str, Any], held: Dict[str, Tensor], args: argparse.Namespace) -> Dict[str, Any]:
    """Finding 7: (mean UnitMem − mean ClassMem) at the last layer, the SSL ``f`` − a supervised encoder of the same data."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    x, y, shared = run["images"], run["labels"], run["groups"]["shared"]
    digits = shared[y[shared] >= 0]  # the labelled images f trained on (canaries have no class)
    pl.seed_everything(run["dargs"].seed, workers=True)
    sup = Classifier(ResNet9(in_channels=x.shape[1], width=run["dargs"].width), 8 * run["dargs"].width, 3e-3, False)
    pl.Trainer(max_epochs=args.sup_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(
        sup, DataLoader(TensorDataset(x[digits], y[digits]), batch_size=32, shuffle=True))
    sup.eval()
    out = {}
    for name, encoder in (("ssl", run["f"]), ("supervised", sup.backbone)):
        rep = measure(encoder, x[digits], labels=y[digits], views=run["dargs"].views, seed=run["dargs"].seed,
                      transform=run["transform"], bootstrap=0, top_k=1)
        last = rep.layers[-1]
        out[name] = {"unit_mem": float(rep.unit_mem[last].mean()), "class_mem": float(rep.class_mem[last].mean())}
        out[name]["unit_minus_class"] = out[name]["unit_mem"] - out[name]["class_mem"]
    with torch.no_grad():
        out["supervised_test_acc"] = float((sup(held["test_x"]).argmax(1) == held["test_y"]).float().mean())
    out["ssl_minus_supervised"] = out["ssl"]["unit_minus_class"] - out["supervised"]["unit_minus_class"]
    return out


def one_seed(seed: int, args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    """Train the demo's pair for ``seed`` and measure every finding; cached as ``seed_<seed>.json``."""
    cached = out / f"seed_{seed}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    started, cpu = time.perf_counter(), time.process_time()
    run = train_pair(seed, out / f"seed_{seed}", args.quick)
    trained = time.perf_counter() - started
    report, held = run["report"], held_out_digits(run, args.quick)
    result = {"seed": seed, "layers": report.layers, "depth": depth(report),
              "training": over_training(run["history"], report.layers[-1], run["warmup_last_epoch"]),
              "sslmem_unitmem": sslmem_vs_unitmem(run, report), "atypicality": atypicality(run, report),
              "exchange": exchange(run, report, args.k), "finetune_prune": finetune_and_prune(run, report, held, args),
              "classmem": class_vs_unit(run, held, args),
              "seconds": {"demo": round(trained, 1), "total": round(time.perf_counter() - started, 1),
                          "cpu": round(time.process_time() - cpu, 1)}}
    atomic_write_text(cached, json.dumps(result, indent=1, default=float))
    return result


ROWS = [  # id, finding, what the paper reports, statistic, value per seed, Fisher z
    ("1", "LayerMem grows with depth", "ResNet9: LayerMem 0.091 → 0.308 over 8 layers",
     "excess over control, mean of last 2 layers − first 2", lambda s: s["depth"]["deep_minus_shallow"], False),
    ("2a", "UnitMem rises over training", "8th layer's mean UnitMem rises during training",
     "last layer mean UnitMem, final − init", lambda s: s["training"]["rise"], False),
    ("2b", "... fastest during the warm-up", "steepest rise in the warm-up",
     "slope per epoch, warm-up − after", lambda s: s["training"]["warmup_minus_after_slope"], False),
    ("2c", "... for the candidates, not unseen images", "(UnitMem separates seen from unseen)",
     "final mean UnitMem, seen − unseen (equal samples)", lambda s: s["training"]["seen_minus_unseen_final"], False),
    ("3a", "SSLMem and UnitMem agree per image", "higher SSLMem, higher UnitMem (last layer)",
     "Spearman ρ(SSLMem, max UnitMem), candidates", lambda s: s["sslmem_unitmem"]["candidates"]["rho"], True),
    ("3b", "... more than on the control", "(control: not memorized)",
     "ρ candidates − ρ control", lambda s: s["sslmem_unitmem"]["candidates"]["rho"] - s["sslmem_unitmem"]["control"]["rho"], False),
    ("4a", "canaries are atypical (setting check)", "atypical images are memorized most",
     "kNN distance in f's embedding, canaries − digits", lambda s: s["atypicality"]["canary_minus_digit_knn"], False),
    ("4b", "atypical candidates are memorized more", "atypicality correlates with memorization",
     "Spearman ρ(kNN distance, SSLMem), candidates", lambda s: s["atypicality"]["rho"], True),
    ("5a", "exchanging the deepest layers removes the most", "top memorizing layers' exchange drops SSLMem most",
     "drop − control's drop: last 2 − first 2", lambda s: s["exchange"]["deep_minus_shallow"], False),
    ("5b", "... more than random layers", "(more than random layers)",
     "drop − control's drop: last 2 − random 2 (mean of 3)", lambda s: s["exchange"]["deep_minus_random"], False),
    ("6a", "fine-tune the most memorizing layers", "top ΔLayerMem layers transfer better than last layers",
     "head accuracy, top-2 ΔLayerMem − last 2", lambda s: s["finetune_prune"]["finetune_top_minus_last"], False),
    ("6b", "pruning memorizing units hurts most", "pruning top-UnitMem units costs more than random",
     "kNN accuracy, random − highest UnitMem pruned", lambda s: s["finetune_prune"]["prune_random_minus_highest"], False),
    ("7", "SSL units memorize images, supervised units classes", "SSL: UnitMem > ClassMem; supervised: ClassMem > UnitMem",
     "(UnitMem − ClassMem) last layer, SSL − supervised", lambda s: s["classmem"]["ssl_minus_supervised"], False),
]


def pooled_rows(per_seed: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every finding of :data:`ROWS`: per-seed values, pooled interval and test, verdict."""
    rows = []
    for rid, finding, paper, statistic, value, fisher in ROWS:
        values = [float(value(s)) for s in per_seed]
        pooled = pool(values, fisher=fisher)
        rows.append({"id": rid, "finding": finding, "paper": paper, "statistic": statistic, "per_seed": values,
                     "pooled": pooled, "verdict": verdict(pooled)})
    assert all(r["verdict"] in VERDICTS for r in rows)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train and measure every seed, pool, write ``results.json`` and ``findings.md``."""
    args = parse(argv)
    out = check_writable_dir(args.out, argument="--out")
    started, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()
    torch.set_float32_matmul_precision("high")
    if args.only is not None:
        print(json.dumps(one_seed(args.only, args, out)["seconds"]))
        return 0
    per_seed = [one_seed(seed, args, out) for seed in args.seeds]
    rows = pooled_rows(per_seed)
    seconds = {"wall": round(time.perf_counter() - started, 1), "cpu_this_process": round(time.process_time() - cpu, 1),
               "per_seed": [s["seconds"] for s in per_seed]}
    results = {"args": vars(args), "rows": rows, "per_seed": per_seed, "seconds": seconds,
               "load_average": {"start": load, "end": os.getloadavg()}}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=float))
    text = (findings_table(rows, args.seeds) + "\nLayerMem excess over the control by layer:\n\n"
            + depth_table(per_seed[0]["layers"], [s["depth"]["layers"] for s in per_seed])
            + "\nMean UnitMem of the last layer over training (W: the warm-up's last epoch):\n\n"
            + curve_table([dict(s["training"], seed=s["seed"]) for s in per_seed])
            + f"\nThis call: {seconds['wall']} s wall (cached seed_<s>.json are read, not re-run); per seed (wall s of "
              f"the demo, wall s in all, CPU s): {seconds['per_seed']}\n")
    atomic_write_text(out / "findings.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
