"""Accuracy (and CPU time) of ``measure(..., autocast=...)`` against float32 (issue 19, §4).

For each model, one run measures the same N candidates × K views with float32 forwards and
with ``autocast="bf16"`` (and ``"fp16"`` where the device runs it), and reports:

- max |Δ| of LayerMem (per layer), of raw SSLMem and of normalised SSLMem (per candidate and
  layer), and of UnitMem (per unit and layer);
- whether the per-layer LayerMem ranking changes, and the overlap of each layer's top-k
  candidates by SSLMem (``k = --top-k``) and of the report's ``top_ids``;
- the time of the autocast pass over the float32 pass (interleaved repeats, median).

Models (``--models``): ``resnet9:W`` and ``resnet18`` as in ``bench_measure.py`` (random
weights, random BatchNorm statistics), and ``trained:W``: a ResNet9 of width W and its reference
trained briefly with SimCLR (``--train-steps`` steps each; f on shared ∪ candidates, g on shared ∪
independent), a "trained-ish" encoder. Data: ``../shared/data/cifar10-train-10k.npz`` if present
(``--data``), else random images.

Example (the figures of docs/performance.md, §4)::

    OMP_NUM_THREADS=1 python benchmarks/bench_autocast.py --data ../shared/data/cifar10-train-10k.npz \
        --models trained:16,resnet18 --autocast bf16,fp16 --repeats 3 --train-steps 200
    OMP_NUM_THREADS=1 python benchmarks/bench_autocast.py --data ../shared/data/cifar10-train-10k.npz \
        --models resnet9:64 --autocast bf16
    python benchmarks/bench_autocast.py --device cuda --models trained:16,resnet9:64,resnet18 --repeats 3  # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_measure import build_model, load_images  # noqa: E402
from lightning_memloc import BatchedSimCLRAugment, MemorizationReport, measure  # noqa: E402
from lightning_memloc.reductions.hook import AUTOCASTS, check_autocast  # noqa: E402


def train_pair(images: Tensor, n: int, width: int, steps: int, batch: int, seed: int) -> Tuple[nn.Module, nn.Module]:
    """A ResNet9 ``f`` trained on shared ∪ candidates (the first ``n`` images) and ``g`` on shared ∪ independent."""
    from lightning_memloc.models.ssl import SimCLR

    size = images.shape[-1]
    rest = len(images) - n
    shared, independent = torch.arange(n, n + rest // 2), torch.arange(n + rest // 2, len(images))
    sets = {"f": torch.cat([torch.arange(n), shared]), "g": torch.cat([shared, independent])}
    models = {}
    for i, (name, idx) in enumerate(sets.items()):
        torch.manual_seed(seed + i)
        model = SimCLR.resnet9(width=width, augment=BatchedSimCLRAugment(size))
        opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(seed + 10 + i)
        model.train()
        for _ in range(steps):
            pick = idx[torch.randint(len(idx), (batch,), generator=gen)]
            loss = model.training_loss((images[pick], torch.zeros(batch)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  trained {name}: {steps} steps, last loss {loss.item():.3f}", flush=True)
        models[name] = model.backbone.eval()
    return models["f"], models["g"]


def build_pair(spec: str, images: Tensor, args: argparse.Namespace) -> Tuple[nn.Module, nn.Module, str]:
    name, _, width = spec.partition(":")
    if name == "trained":
        w = int(width or 16)
        f, g = train_pair(images, args.n, w, args.train_steps, args.train_batch, args.seed)
        return f, g, f"ResNet9 width {w}, SimCLR {args.train_steps} steps × {args.train_batch} (f and g)"
    w = int(width or 64)
    f = build_model(name, w, torch.device("cpu"), args.seed)
    g = build_model(name, w, torch.device("cpu"), args.seed + 100)
    return f, g, f"{name}{'' if name == 'resnet18' else f' width {w}'}, random init"


def max_abs(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    return max(float((torch.as_tensor(a[k], dtype=torch.float64) - torch.as_tensor(b[k], dtype=torch.float64))
                     .abs().max()) for k in a)


def compare(ref: MemorizationReport, low: MemorizationReport, top_k: int) -> Dict[str, Any]:
    """Errors of ``low`` against the float32 report ``ref``."""
    layers = ref.layers
    order_ref = sorted(layers, key=lambda l: ref.layer_mem[l])  # type: ignore[index]
    order_low = sorted(layers, key=lambda l: low.layer_mem[l])  # type: ignore[index]
    overlaps = []
    for layer in layers:
        k = min(top_k, len(ref.sslmem[layer]))  # type: ignore[index]
        a = set(torch.topk(ref.sslmem[layer], k).indices.tolist())  # type: ignore[index]
        b = set(torch.topk(low.sslmem[layer], k).indices.tolist())  # type: ignore[index]
        overlaps.append(len(a & b) / k)
    top_ref = ref.top_ids.tolist()  # type: ignore[union-attr]
    return {
        "layer_mem": max_abs(ref.layer_mem, low.layer_mem),  # type: ignore[arg-type]
        "layer_mem_values": [round(float(ref.layer_mem[l]), 5) for l in layers],  # type: ignore[index]
        "sslmem_raw": max_abs(ref.sslmem_raw, low.sslmem_raw),  # type: ignore[arg-type]
        "sslmem": max_abs(ref.sslmem, low.sslmem),  # type: ignore[arg-type]
        "unit_mem": max_abs(ref.unit_mem, low.unit_mem),
        # UnitMem = (μmax − μ−max) / (μmax + μ−max) is ill-conditioned for near-silent units: the tail
        "unit_mem_p99": float(torch.quantile(torch.cat([(ref.unit_mem[l] - low.unit_mem[l]).abs().flatten()
                                                        for l in layers]).double(), 0.99)),
        "unit_mem_frac_over_1e-2": float(torch.cat([((ref.unit_mem[l] - low.unit_mem[l]).abs() > 1e-2).flatten()
                                                    for l in layers]).double().mean()),
        "unit_mem_layer_mean": max(abs(float(ref.unit_mem[l].mean() - low.unit_mem[l].mean())) for l in layers),
        "layer_ranking_same": order_ref == order_low,
        "topk_overlap_min": min(overlaps),
        "topk_overlap_mean": sum(overlaps) / len(overlaps),
        "top_ids_overlap": len(set(top_ref) & set(low.top_ids.tolist())) / len(top_ref),  # type: ignore[union-attr]
    }


def run_model(spec: str, images: Tensor, args: argparse.Namespace) -> Dict[str, Any]:
    f, g, label = build_pair(spec, images, args)
    device = torch.device(args.device)
    f, g = f.to(device), g.to(device)
    candidates = images[: args.n]
    kwargs = dict(reference=g, views=args.views, top_k=args.top_k, batch_size=args.batch_size, bootstrap=0,
                  seed=args.seed)
    dtypes: List[Optional[str]] = [None]
    refused = {}
    for choice in args.autocast:
        try:
            check_autocast(choice, f, g)
            dtypes.append(choice)
        except ValueError as err:
            refused[choice] = str(err)
    reports: Dict[Optional[str], MemorizationReport] = {}
    times: Dict[Optional[str], List[float]] = {d: [] for d in dtypes}
    for _ in range(args.repeats):  # interleaved, so that load from other jobs hits all alike
        for choice in dtypes:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            reports[choice] = measure(f, candidates, autocast=choice, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[choice].append(time.perf_counter() - start)
    fp32 = statistics.median(times[None])
    result: Dict[str, Any] = {"model": spec, "description": label, "layers": reports[None].layers,
                              "fp32_seconds": round(fp32, 2), "refused": refused}
    for choice in dtypes[1:]:
        result[choice] = {**compare(reports[None], reports[choice], args.top_k),
                          "seconds": round(statistics.median(times[choice]), 2),
                          "time_ratio": round(statistics.median(times[choice]) / fp32, 3)}
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="trained:16,resnet9:64,resnet18",
                        help="comma-separated: trained:W, resnet9:W, resnet18")
    parser.add_argument("--n", type=int, default=256, help="candidates N")
    parser.add_argument("--views", type=int, default=10, help="K views per candidate")
    parser.add_argument("--top-k", type=int, default=50, help="LayerMem's top-k group and the overlap's k")
    parser.add_argument("--batch-size", type=int, default=32, help="candidates per forward step")
    parser.add_argument("--autocast", default="bf16,fp16", help="comma-separated autocast choices to compare")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per setting (median)")
    parser.add_argument("--data", default="auto", help="npz with x (N, H, W, 3), 'auto' or 'random'")
    parser.add_argument("--train-images", type=int, default=2048,
                        help="images of the trained pair (N of them candidates)")
    parser.add_argument("--train-steps", type=int, default=60, help="SimCLR steps per model for trained:W")
    parser.add_argument("--train-batch", type=int, default=128, help="images per SimCLR step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="device of the models (cpu, cuda, cuda:N); training runs on CPU")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    args.autocast = [a for a in args.autocast.split(",") if a]
    for choice in args.autocast:
        if choice not in AUTOCASTS:
            parser.error(f"--autocast: {choice!r} is not one of {AUTOCASTS}")
    images, source = load_images(args.data, max(args.train_images, args.n), 32, args.seed)
    out: Dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                           "data": source,
                           "n": args.n, "views": args.views, "top_k": args.top_k, "models": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {source}, N={args.n}, K={args.views}",
          flush=True)
    for spec in args.models.split(","):
        result = run_model(spec, images, args)
        out["models"].append(result)
        print(json.dumps(result, indent=1), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
