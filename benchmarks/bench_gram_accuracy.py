"""Error of the float32 centred Gram (the hook's all-pairs alignment on CPU) against float64.

For each case, the same float32 activations ``(N, K, D)`` of an encoder ``f`` and a reference
``g`` go through the hook's path (:func:`lightning_memloc.reductions.view_sq_distances`: float32
Gram of the normalised views centred per candidate, float64 for flagged candidates) and through
float64 explicit differences of the normalised views. Printed per case: the max |error| of the
per-candidate alignment, of raw SSLMem (align_g − align_f), of LayerMem (the normalised SSLMem's
mean; the normalisation by the range over candidates amplifies errors), and how many candidates
were recomputed in float64. Cases:

- (a) near-identical views: ``x + ε·noise``, ε = 1e-3 … 1e-6 (the hard case of a Gram matrix:
  tiny pairwise distances), raw and after a ReLU;
- (b) ordinary views: independent Gaussian, ReLU of correlated Gaussian, positive uniform; and
  adversarial ones: two identical or nearly identical views among spread ones (flagged, float64);
- (c) real activations of ResNet9 (width 64) and torchvision's resnet18 (random weights, as in
  ``bench_measure.py``) on views of CIFAR-10 images (``--data``; random images otherwise), every
  auto-selected layer; also LayerMem of ``measure()`` (float32 forward) against a float64 forward
  and float64 alignment of the same views, the error a user sees.

Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024 (LayerMem); Wang et
al., ICLR 2024 (SSLMem). Not a test; ``python benchmarks/bench_gram_accuracy.py --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_measure import build_model, load_images  # noqa: E402
from lightning_memloc import measure  # noqa: E402
from lightning_memloc.functional.centred_gram import MIN_FEATURES, centred_gram, centred_sq_distances  # noqa: E402
from lightning_memloc.reductions.hook import flat_view, view_sq_distances  # noqa: E402
from lightning_memloc.taps.hooks import LayerTaps, resolve_layers  # noqa: E402
from lightning_memloc.views.seeded import make_views  # noqa: E402


def exact_alignment(reps: Tensor) -> Tensor:
    """Float64 reference: mean over pairs of ‖u_a − u_b‖ from explicit differences of normalised views."""
    u = F.normalize(reps.double(), dim=-1)
    k = reps.shape[1]
    i, j = torch.triu_indices(k, k, 1)
    return (u[:, i] - u[:, j]).norm(dim=-1).mean(dim=-1)


def hook_alignment(reps: Tensor) -> Tensor:
    """What the hook computes on CPU (float64 before the final float32 rounding)."""
    return view_sq_distances(reps).sqrt().mean(dim=-1)


def layermem(align_g: Tensor, align_f: Tensor) -> Tensor:
    m = align_g - align_f
    span = m.max() - m.min()
    return (m / span).mean() if span > 0 else m.new_zeros(())


def compare(reps_f: Tensor, reps_g: Tensor) -> Dict[str, float]:
    """Errors of the hook's path against float64 on one layer's activations of f and g."""
    ef, eg = exact_alignment(reps_f), exact_alignment(reps_g)
    hf, hg = hook_alignment(reps_f), hook_alignment(reps_g)
    flagged = sum(int(centred_sq_distances(centred_gram(r, 4 << 20))[1].sum()) if r.shape[-1] >= MIN_FEATURES
                  else r.shape[0] for r in (reps_f, reps_g))  # candidates the hook takes in float64
    return {"align": max((hf - ef).abs().max().item(), (hg - eg).abs().max().item()),
            "raw_sslmem": ((hg - hf) - (eg - ef)).abs().max().item(),
            "layermem": (layermem(hg, hf) - layermem(eg, ef)).abs().item(),
            "sslmem_range": float((eg - ef).max() - (eg - ef).min()),
            "align_mean": float(ef.mean()), "flagged": flagged, "candidates": 2 * reps_f.shape[0]}


def synthetic(n: int, k: int, d: int, gen: torch.Generator) -> Dict[str, Any]:
    def near(eps: float, relu: bool) -> Tensor:
        x = torch.randn(n, 1, d, generator=gen) + eps * torch.randn(n, k, d, generator=gen)
        return x.relu() if relu else x

    def close_pair(gap: float) -> Tensor:
        x = torch.randn(n, k, d, generator=gen)
        x[:, 1] = x[:, 0] + gap * torch.randn(n, d, generator=gen)
        return x

    cases: Dict[str, Any] = {}
    for eps in (1e-3, 1e-4, 1e-5, 1e-6):
        for relu in (False, True):
            cases[f"(a) near-identical, eps {eps:g}{', ReLU' if relu else ''}"] = lambda eps=eps, relu=relu: near(eps, relu)
    cases["(b) ordinary: independent Gaussian"] = lambda: torch.randn(n, k, d, generator=gen)
    cases["(b) ordinary: ReLU of correlated Gaussian"] = lambda: (torch.randn(n, 1, d, generator=gen)
                                                                 + 0.5 * torch.randn(n, k, d, generator=gen)).relu()
    cases["(b) ordinary: positive uniform"] = lambda: torch.rand(n, k, d, generator=gen)
    cases["(b) two identical views among spread ones"] = lambda: close_pair(0.0)
    cases["(b) two views 1e-5 apart among spread ones"] = lambda: close_pair(1e-5)
    cases["(b) a pair ~6x closer than the others (the threshold)"] = lambda: close_pair(0.24)
    cases["(b) a pair ~4x closer than the others"] = lambda: close_pair(0.35)
    return cases


def real_activations(name: str, images: Tensor, k: int, batch: int, width: int) -> Dict[str, Any]:
    """Per layer, the float32 activations of f and g on the same views, and measure()'s LayerMem error."""
    cpu = torch.device("cpu")
    f, g = build_model(name, width, cpu, seed=1), build_model(name, width, cpu, seed=2)
    views = make_views(images, k, None, 0)
    x = views.reshape(-1, *views.shape[2:])
    names = [s.name for s in resolve_layers(f, "auto", x[:2])]
    rows: Dict[str, Dict[str, float]] = {}
    for start in range(0, len(images), batch):
        xb = x[start * k:(start + batch) * k]
        outs: Dict[str, Dict[str, Tensor]] = {"f": {}, "g": {}}
        for tag, model in (("f", f), ("g", g)):
            with torch.no_grad(), LayerTaps(model, names, lambda n, o, tag=tag: outs[tag].__setitem__(n, flat_view(o))):
                model(xb)
        for layer in names:
            res = compare(outs["f"][layer].reshape(-1, k, outs["f"][layer].shape[-1]),
                          outs["g"][layer].reshape(-1, k, outs["g"][layer].shape[-1]))
            old = rows.setdefault(layer, {key: 0.0 for key in res})
            rows[layer] = {key: (old[key] + res[key] if key in ("flagged", "candidates") else max(old[key], res[key]))
                           for key in res}  # (the SSLMem range and mean alignment: the largest batch's)
    # The user's view: measure() (float32 forward, float32 Gram) vs float64 forward + float64 alignment.
    report = measure(f, views, reference=g, batch_size=batch, bootstrap=0, top_k=min(50, len(images)))
    report64 = measure(f.double(), views.double(), reference=g.double(), batch_size=batch, bootstrap=0,
                       top_k=min(50, len(images)))
    lm = {layer: abs(float(report.layer_mem[layer]) - float(report64.layer_mem[layer])) for layer in names}
    return {"layers": rows, "measure_vs_float64_layermem": lm}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--candidates", type=int, default=64, help="N of the synthetic cases and of (c)")
    p.add_argument("--views", type=int, default=10, help="K")
    p.add_argument("--dims", default="2048,16384", help="D of the synthetic cases (the hook takes float64 below 2048)")
    p.add_argument("--models", default="resnet9,resnet18", help="(c): resnet9, resnet18, or empty")
    p.add_argument("--resnet9-width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="candidates per forward in (c)")
    p.add_argument("--data", default="auto", help="(c): 'auto' (../shared/data/cifar10-train-10k.npz if present), 'random' or an npz")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    out: Dict[str, Any] = {"args": vars(args), "synthetic": {}, "models": {}}
    header = (f"| {'case':52s} | {'D':>6s} | {'align':>8s} | {'raw SSLMem':>10s} | {'LayerMem':>8s} | float64 | mean align "
              "| SSLMem range")
    print("max |error| against float64 (explicit differences) of the same float32 activations")
    print(header)
    worst: List[float] = []
    for d in (int(v) for v in args.dims.split(",")):
        for case, make in synthetic(args.candidates, args.views, d, gen).items():
            res = compare(make(), make())
            worst.append(res["align"])
            out["synthetic"][f"{case} D={d}"] = res
            print(f"| {case:52s} | {d:6d} | {res['align']:8.1e} | {res['raw_sslmem']:10.1e} | {res['layermem']:8.1e} | "
                  f"{res['flagged']:3d}/{res['candidates']:<3d} | {res['align_mean']:.2e} | {res['sslmem_range']:.1e}", flush=True)
    images, source = load_images(args.data, args.candidates, 32)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"\n(c) {name} on {source}, N={args.candidates}, K={args.views}")
        res = real_activations(name, images, args.views, args.batch_size, args.resnet9_width)
        out["models"][name] = res
        print(header.replace("case", "layer", 1))
        for layer, r in res["layers"].items():
            worst.append(r["align"])
            print(f"| {layer:52s} | {'':6s} | {r['align']:8.1e} | {r['raw_sslmem']:10.1e} | {r['layermem']:8.1e} | "
                  f"{int(r['flagged']):3d}/{int(r['candidates']):<3d} | {r['align_mean']:.2e} | {r['sslmem_range']:.1e}")
        lm = res["measure_vs_float64_layermem"]
        print(f"measure() LayerMem vs float64 forward and alignment: max |error| {max(lm.values()):.1e} "
              f"({', '.join(f'{v:.1e}' for v in lm.values())})", flush=True)
    out["worst_align"] = max(worst)
    print(f"\nworst per-candidate alignment error: {max(worst):.2e} (stated bound 2e-7)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
