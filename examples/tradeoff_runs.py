"""The interventions of ``tradeoff.py``: fine-tuning and pruning chosen by memorization, and their measures.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the layers
LayerMem / ΔLayerMem rank highest and prune the units UnitMem ranks highest (or lowest, or at
random). Every intervention here works on a copy of the pre-trained encoder ``f`` and is judged
by utility (the linear head's test accuracy, the weighted cosine kNN accuracy with per-image hits
for paired comparisons) and by the memorization left afterwards (the library's report against the
reference ``g``, with the control and unseen groups).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import MemorizationFinetuning, ReferenceCache, measure, prune_units, select_layers
from lightning_memloc.callbacks.utility import embed

__all__ = ["FINETUNING", "Classifier", "accuracy", "changed_layers", "finetune", "knn_hits", "mem_summary",
           "memorization", "after_pruning", "pruned_output_max", "run_finetuning", "run_layer_pruning", "run_pruning",
           "spread"]


def log(msg: str) -> None:
    """One progress line on stdout."""
    print(f"[tradeoff] {msg}", flush=True)


FINETUNING = {  # name -> MemorizationFinetuning arguments (None: backbone frozen, head only)
    "head only": None,
    "last-2": {"k": 2, "strategy": "last"},
    "top-2 LayerMem": {"k": 2, "by": "layer_mem", "strategy": "highest"},
    "top-2 ΔLayerMem": {"k": 2, "by": "delta_layer_mem", "strategy": "highest"},
    "top-2 excess": {"k": 2, "by": "excess", "strategy": "highest"},
    "all layers": {"k": -1, "strategy": "last"},
}


def memorization(encoder: nn.Module, g: nn.Module, data: Dict[str, Any], args: argparse.Namespace,
                 cache: ReferenceCache) -> Any:
    """The report of ``encoder`` against ``g``: candidates vs control (both saw) and unseen (g's own)."""
    x = data["train"]
    return measure(encoder.eval(), x[data["candidates"]], reference=g.eval(), control=x[data["control"]],
                   unseen=x[data["unseen"]], views=args.views, seed=args.seed, bootstrap=args.bootstrap,
                   top_k=max(1, len(data["candidates"]) // 10), reference_cache=cache)


def mem_summary(report: Any, layers: Sequence[str]) -> Dict[str, Dict[str, Optional[float]]]:
    """Per layer: LayerMem excess over the control [interval, Holm p] and mean UnitMem [interval]."""
    keys = ("excess", "excess_lo", "excess_hi", "excess_p_holm", "unit_mem_mean", "unit_mem_mean_lo", "unit_mem_mean_hi")
    return {layer: {key: report.evidence.layers[layer].get(key) for key in keys} for layer in layers}


def knn_hits(encoder: nn.Module, data: Dict[str, Any], args: argparse.Namespace) -> Dict[int, Tensor]:
    """Per-image correctness (0/1) of the weighted cosine kNN classifier, per k (bank: the fine-tuning digits)."""
    from lightly.utils.benchmarking import knn_predict  # the voting of lightning_memloc.functional.knn

    was = encoder.training
    with torch.no_grad():
        encoder.eval()
        bank = nn.functional.normalize(embed(encoder, data["ft_x"], 256), dim=1)
        test = nn.functional.normalize(embed(encoder, data["test_x"], 256), dim=1)
        encoder.train(was)
        out = {}
        for k in args.ks:
            pred = knn_predict(test, bank.t().contiguous(), data["ft_y"], 10, knn_k=k,
                               knn_t=args.temperature)[:, 0]
            out[k] = (pred == data["test_y"]).float()
    return out


class Classifier(pl.LightningModule):
    """A (partly frozen) encoder and a linear head trained with cross-entropy on labelled images."""

    def __init__(self, backbone: nn.Module, feature_dim: int, lr: float, freeze_backbone: bool) -> None:
        super().__init__()
        self.backbone, self.head, self.lr, self.freeze_backbone = backbone, nn.Linear(feature_dim, 10), lr, freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x.float() / 255).flatten(1))

    def on_train_epoch_start(self) -> None:
        if self.freeze_backbone:  # frozen BatchNorm keeps its statistics, as MemorizationFinetuning(train_bn=False)
            self.backbone.eval()

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def changed_layers(before: nn.Module, after: nn.Module, layers: Sequence[str]) -> List[str]:
    """Report layers of which some parameter or buffer differs between two copies of an encoder."""
    return [name for name in layers if any(not torch.equal(a, b) for a, b in zip(
        before.get_submodule(name).state_dict().values(), after.get_submodule(name).state_dict().values()))]


def finetune(f: nn.Module, report: Any, strategy: Optional[Dict[str, Any]], data: Dict[str, Any],
             args: argparse.Namespace, seed: int) -> Tuple[Classifier, List[str]]:
    """Fine-tune a copy of ``f`` plus a linear head; returns the model and the layers trained."""
    pl.seed_everything(seed, workers=True)
    model = Classifier(copy.deepcopy(f), f.feature_dim, args.ft_lr, freeze_backbone=strategy is None).train()
    callbacks: List[pl.Callback] = []
    if strategy is not None:
        options = dict(strategy)
        if options["k"] < 0:
            options["k"] = len(report.layers)
        callbacks.append(MemorizationFinetuning(report, encoder="backbone", head="head", require_evidence="off", **options))
    trainer = pl.Trainer(max_epochs=args.ft_epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(TensorDataset(data["ft_x"], data["ft_y"]), batch_size=args.ft_batch_size, shuffle=True)
    trainer.fit(model, loader)
    model.eval()
    return model, ([] if strategy is None else list(callbacks[0].chosen_layers))


def accuracy(hits: Tensor, base: Optional[Tensor] = None) -> Dict[str, float]:
    """Accuracy with its binomial SE; with ``base`` (same images) the difference and its paired SE."""
    n, p = len(hits), float(hits.mean())
    out = {"acc": p, "se": math.sqrt(max(p * (1 - p), 0.0) / n)}
    if base is not None:
        d = hits - base
        out.update(diff=float(d.mean()), diff_se=float(d.std()) / math.sqrt(n) if n > 1 else float("nan"))
    return out


def spread(values: Sequence[Optional[float]]) -> Dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of the values that are not ``None``."""
    t = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    return {"mean": float(t.mean()) if len(t) else float("nan"), "sd": float(t.std()) if len(t) > 1 else 0.0}


def run_finetuning(f: nn.Module, g: nn.Module, report: Any, data: Dict[str, Any], args: argparse.Namespace,
                   cache: ReferenceCache, deep: Sequence[str]) -> List[Dict[str, Any]]:
    """Every strategy of :data:`FINETUNING` with ``args.ft_seeds`` seeds: accuracies (Δ vs last-2) and
    the excess over the control at the ``deep`` layers afterwards (mean ± sd, significant runs)."""
    rows, hits_of, done = [], {}, {}
    for name, strategy in FINETUNING.items():
        options = None if strategy is None else {**strategy, "k": len(report.layers) if strategy["k"] < 0 else strategy["k"]}
        chosen = [] if options is None else select_layers(report, **options)
        planned = frozenset(chosen)
        if planned in done:  # same layers, same seeds: the same fine-tuning (deterministic), not re-run
            first = done[planned]
            hits_of[name] = hits_of[first["strategy"]]
            rows.append({"strategy": name, "same_as": first["strategy"],
                         "runs": [{**r, "chosen_layers": chosen} for r in first["runs"]]})
            log(f"fine-tuning {name}: layers {chosen}, the same as {first['strategy']!r}")
            continue
        runs = []
        for seed in range(args.ft_seeds):
            started = time.perf_counter()
            model, chosen = finetune(f, report, strategy, data, args, args.seed + seed)
            with torch.no_grad():
                head_hits = (model(data["test_x"]).argmax(1) == data["test_y"]).float()
            knn = knn_hits(model.backbone, data, args)
            after = memorization(model.backbone, g, data, args, cache)
            runs.append({"seed": args.seed + seed, "chosen_layers": chosen, "head": head_hits, "knn": knn,
                         "changed_layers": changed_layers(f, model.backbone, report.layers),
                         "memorization": mem_summary(after, report.layers), "seconds": time.perf_counter() - started})
        hits_of[name] = {"head": torch.stack([r["head"] for r in runs]).mean(0),
                         **{k: torch.stack([r["knn"][k] for r in runs]).mean(0) for k in args.ks}}
        rows.append({"strategy": name, "runs": runs})
        done[planned] = rows[-1]
        log(f"fine-tuning {name}: layers {runs[0]['chosen_layers']}, head acc "
            f"{spread([float(r['head'].mean()) for r in runs])}, {sum(r['seconds'] for r in runs):.0f} s")
    base = hits_of["last-2"]
    for row in rows:
        mine, runs = hits_of[row["strategy"]], row.pop("runs")
        row["chosen_layers"] = runs[0]["chosen_layers"]
        row["changed_layers"] = runs[0]["changed_layers"]
        row["head"] = {**accuracy(mine["head"], base["head"]), "seeds": spread([float(r["head"].mean()) for r in runs])}
        row["knn"] = {k: {**accuracy(mine[k], base[k]), "seeds": spread([float(r["knn"][k].mean()) for r in runs])}
                      for k in args.ks}
        row["excess"] = {layer: {**spread([r["memorization"][layer]["excess"] for r in runs]), "significant": sum(
            (r["memorization"][layer]["excess_p_holm"] or 1.0) < 0.05 for r in runs)} for layer in deep}
        row["per_seed"] = [{key: r[key] for key in ("seed", "chosen_layers", "changed_layers", "memorization", "seconds")}
                           | {"head_acc": float(r["head"].mean()), "knn": {k: float(v.mean()) for k, v in r["knn"].items()}}
                           for r in runs]
    return rows


def pruned_output_max(encoder: nn.Module, units: Dict[str, Tensor], images: Tensor) -> Dict[str, float]:
    """Largest absolute output of the pruned units of every layer on ``images`` (0 when pruning silenced them)."""
    peaks: Dict[str, float] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            peaks[name] = float(output[:, units[name]].abs().max()) if len(units[name]) else 0.0
        return record

    handles = [encoder.get_submodule(name).register_forward_hook(hook(name)) for name in units]
    try:
        was = encoder.training
        with torch.no_grad():
            encoder.eval()(images.float() / 255)
        encoder.train(was)
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def after_pruning(report: Any, units: Dict[str, Tensor]) -> Dict[str, Any]:
    """The pruned encoder's memorization per layer, and mean UnitMem of the units left (pruned ones score 0)."""
    kept = {}
    for layer, pruned in units.items():
        mask = torch.ones(report.unit_mem[layer].numel(), dtype=torch.bool)
        mask[pruned] = False
        kept[layer] = float(report.unit_mem[layer][mask].mean())
    return {"memorization": mem_summary(report, report.layers), "kept_unit_mem": kept}


def run_pruning(f: nn.Module, g: nn.Module, report: Any, data: Dict[str, Any], args: argparse.Namespace,
                cache: ReferenceCache, base_hits: Dict[int, Tensor]) -> List[Dict[str, Any]]:
    """Lowest / random / highest UnitMem pruning of every layer at each fraction: kNN accuracy (Δ vs
    ``base_hits``, the unpruned encoder's) and the pruned encoder's memorization."""
    rows = []
    for fraction in args.fractions:
        for strategy in ("lowest", "random", "highest"):
            runs = []
            for seed in range(args.random_seeds if strategy == "random" else 1):
                encoder = copy.deepcopy(f)
                units = prune_units(encoder, report, amount=fraction, strategy=strategy, scope="layer", seed=seed)
                runs.append({"units": {k: v.tolist() for k, v in units.items()}, "knn": knn_hits(encoder, data, args),
                             "pruned_output_max": pruned_output_max(encoder, units, data["test_x"][:256]),
                             **after_pruning(memorization(encoder, g, data, args, cache), units)})
            hits = {k: torch.stack([r["knn"][k] for r in runs]).mean(0) for k in args.ks}
            rows.append({
                "fraction": fraction, "strategy": strategy, "seeds": len(runs),
                "pruned": {layer: len(v) for layer, v in runs[0]["units"].items()},
                "knn": {k: {**accuracy(hits[k], base_hits[k]), "seeds": spread([float(r["knn"][k].mean()) for r in runs])}
                        for k in args.ks},
                "memorization": {layer: {**{key: spread([r["memorization"][layer][key] for r in runs])
                                            for key in ("excess", "unit_mem_mean")},
                                         "kept_unit_mem": spread([r["kept_unit_mem"][layer] for r in runs])}
                                 for layer in report.layers},
                "per_seed": [{key: r[key] for key in ("units", "memorization", "kept_unit_mem", "pruned_output_max")} | {
                              "knn": {k: float(v.mean()) for k, v in r["knn"].items()}} for r in runs]})
            log(f"pruning {fraction:.0%} {strategy}: kNN {[round(float(h.mean()), 3) for h in hits.values()]}")
    return rows



def run_layer_pruning(f: nn.Module, report: Any, data: Dict[str, Any], args: argparse.Namespace,
                      base_hits: Dict[int, Tensor]) -> List[Dict[str, Any]]:
    """Each layer pruned alone (lowest / random / highest UnitMem at each fraction): kNN accuracy (Δ vs
    the unpruned encoder) and the layer's mean UnitMem after, pruned units counting 0 as in the report.

    The layer's UnitMem after needs no new measurement: a unit's UnitMem depends on its own
    activations only, which pruning other units of the same layer leaves unchanged.
    """
    rows = []
    for layer in report.layers:
        scores = report.unit_mem[layer].float()
        for fraction in args.fractions:
            row: Dict[str, Any] = {"layer": layer, "fraction": fraction, "unit_mem_before": float(scores.mean())}
            for strategy in ("lowest", "random", "highest"):
                runs = []
                for seed in range(args.random_seeds if strategy == "random" else 1):
                    encoder = copy.deepcopy(f)
                    units = prune_units(encoder, report, amount=fraction, strategy=strategy, layers=[layer], seed=seed)
                    kept = scores.clone()
                    kept[units[layer]] = 0.0
                    runs.append({"knn": knn_hits(encoder, data, args), "unit_mem_after": float(kept.mean()),
                                 "pruned": len(units[layer])})
                hits = {k: torch.stack([r["knn"][k] for r in runs]).mean(0) for k in args.ks}
                row["pruned"] = runs[0]["pruned"]
                row[strategy] = {"knn": {k: {**accuracy(hits[k], base_hits[k]),
                                             "seeds": spread([float(r["knn"][k].mean()) for r in runs])} for k in args.ks},
                                 "unit_mem_after": spread([r["unit_mem_after"] for r in runs]), "seeds": len(runs)}
            rows.append(row)
        log(f"pruning {layer} alone: done")
    return rows
