"""Every metric of :mod:`lightning_memloc.states` through :mod:`metric_tester` (class, functional, float64 reference, DDP).

The references below are written without the package: numpy loops over units, layers and
candidates, in float64. Hand-computed tiny cases stay in ``test_metrics.py`` / ``test_functional.py``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import Tensor

from helpers import slow_unitmem
from lightning_memloc.functional import (
    class_means, classmem, dead_units, delta_layermem, layermem, sslmem, top_least_indices, unit_argmax, unitmem,
)
from lightning_memloc.functional.unitmem import take_ids
from lightning_memloc.states import ClassMem, LayerMem, UnitMem, ViewAlignment
from lightning_memloc.states.meter import ViewMoments
from lightning_memloc.views.stats import channel_sums, statistics_from_sums
from metric_tester import Case, MetricSpec, assert_outputs, check_class, check_merge, check_reset, run_ddp, single_process

K, U, L, C = 3, 5, 3, 3  # views, units, layers, channels


# ----------------------------------------------------------------------------- float64 references
def ref_policy(mu: np.ndarray, negative: str) -> np.ndarray:
    """Per unit: clamp at 0, or shift by the minimum (a spread within 1e-5 of the scale is constant: 0)."""
    out = np.zeros_like(mu)
    for u in range(mu.shape[1]):
        col = mu[:, u]
        if negative == "clamp":
            out[:, u] = np.maximum(col, 0.0)
        elif col.max() - col.min() > 1e-5 * np.abs(col).max():
            out[:, u] = col - col.min()
    return out


def ref_argmax(mu: np.ndarray, names: np.ndarray) -> list:
    """Per unit, the name of the first row holding the maximum; -1 for an all-zero (dead) unit."""
    return [int(names[int(np.argmax(mu[:, u]))]) if (mu[:, u] != 0).any() else -1 for u in range(mu.shape[1])]


def ref_unit(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    mu = data["activations"].double().numpy().mean(axis=1)
    pos = ref_policy(mu, options["negative"])
    return {"unit_mem": torch.from_numpy(slow_unitmem(pos, options["reduction"])),
            "unit_argmax": torch.tensor(ref_argmax(pos, ids.numpy())),
            "dead_units": torch.tensor([not (pos[:, u] != 0).any() for u in range(pos.shape[1])]),
            "num_candidates": len(ids)}


def ref_class(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    mu = data["activations"].double().numpy().mean(axis=1)
    labels = data["labels"].numpy()
    classes = np.array(sorted(set(labels.tolist())))
    means = ref_policy(np.stack([mu[labels == c].mean(axis=0) for c in classes]), options["negative"])
    unit = ref_unit(data, ids, options)
    return {"class_mem": torch.from_numpy(slow_unitmem(means, options["reduction"])),
            "class_argmax": torch.tensor(ref_argmax(means, classes)),
            "unit_mem": unit["unit_mem"], "unit_argmax": unit["unit_argmax"], "dead_units": unit["dead_units"]}


def ref_layer(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    enc, ref = data["align_encoder"].double().numpy(), data["align_reference"].double().numpy()
    layers, n = enc.shape
    raw = np.zeros((layers, n))
    norm = np.zeros((layers, n))
    for layer in range(layers):
        for i in range(n):
            raw[layer, i] = ref[layer, i] - enc[layer, i]
        span = raw[layer].max() - raw[layer].min()
        for i in range(n):
            norm[layer, i] = raw[layer, i] / span if span > 0 else 0.0
    last = norm[-1].tolist()
    k = min(options["top_k"], n)
    top = sorted(range(n), key=lambda i: (-last[i], i))[:k]
    least = sorted(range(n), key=lambda i: (last[i], i))[:k]
    lm = [sum(norm[layer]) / n for layer in range(layers)]
    return {"sslmem_raw": torch.from_numpy(raw), "sslmem": torch.from_numpy(norm), "layer_mem": torch.tensor(lm),
            "delta_layer_mem": torch.tensor([lm[0]] + [lm[i] - lm[i - 1] for i in range(1, layers)]),
            "layer_mem_top": torch.tensor([sum(norm[layer][top]) / k for layer in range(layers)]),
            "layer_mem_least": torch.tensor([sum(norm[layer][least]) / k for layer in range(layers)]),
            "candidate_ids": ids, "top_ids": ids[top], "least_ids": ids[least]}


def ref_alignment(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    return {"align": data["align_encoder"].double(), "candidate_ids": ids}


def ref_moments(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    x = data["views"].double().numpy()
    pixels = [x[:, :, c].ravel() for c in range(x.shape[2])]
    return {"mean": torch.tensor([p.mean() for p in pixels]), "std": torch.tensor([p.std() for p in pixels])}


# ----------------------------------------------------------------------------- functional forms
def fun_unit(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    mu, negative = data["activations"].mean(dim=1), options["negative"]
    return {"unit_mem": unitmem(mu, options["reduction"], negative), "unit_argmax": take_ids(ids, unit_argmax(mu, negative)),
            "dead_units": dead_units(mu, negative), "num_candidates": len(ids)}


def fun_class(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    mu, labels, negative = data["activations"].mean(dim=1), data["labels"], options["negative"]
    means, classes = class_means(mu, labels)
    unit = fun_unit(data, ids, options)
    return {"class_mem": classmem(mu, labels, reduction=options["reduction"], negative=negative),
            "class_argmax": take_ids(classes, unit_argmax(means, negative)),
            "unit_mem": unit["unit_mem"], "unit_argmax": unit["unit_argmax"], "dead_units": unit["dead_units"]}


def fun_layer(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    enc, ref = data["align_encoder"], data["align_reference"]
    norm = sslmem(ref, enc)
    lm = layermem(norm)
    top, least = top_least_indices(norm[-1], options["top_k"])
    return {"sslmem_raw": sslmem(ref, enc, normalize=False), "sslmem": norm, "layer_mem": lm,
            "delta_layer_mem": delta_layermem(lm), "layer_mem_top": layermem(norm, subset=top),
            "layer_mem_least": layermem(norm, subset=least), "candidate_ids": ids, "top_ids": ids[top],
            "least_ids": ids[least]}


def fun_alignment(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    """ViewAlignment has no functional core beyond the per-candidate mean: every candidate's own alignment."""
    return {"align": data["align_encoder"], "candidate_ids": ids}


def fun_moments(data: Dict[str, Tensor], ids: Tensor, options: Dict[str, Any]) -> Dict[str, Any]:
    views = data["views"]
    return moments_output(statistics_from_sums(*channel_sums(views.reshape(-1, *views.shape[2:]))))


def moments_output(stats: Any) -> Dict[str, Any]:
    return {"mean": torch.tensor(stats.mean, dtype=torch.float64), "std": torch.tensor(stats.std, dtype=torch.float64)}


# ----------------------------------------------------------------------------- inputs and specs
def unit_inputs(n: int, gen: torch.Generator) -> Dict[str, Tensor]:
    """Per-view activations (n, K, U), some negative; unit 0 all negative (dead when clamped), unit 1
    constant 0.5 over candidates and views (ties: argmax is the first id; dead when shifted)."""
    acts = torch.randn(n, K, U, generator=gen, dtype=torch.float64) + 0.3
    acts[:, :, 0] = -torch.rand(n, K, generator=gen, dtype=torch.float64) - 0.1
    acts[:, :, 1] = 0.5
    labels = torch.tensor([20, 3, 7])[torch.arange(n) % 3][torch.randperm(n, generator=gen)]
    return {"activations": acts, "labels": labels}


def layer_inputs(n: int, gen: torch.Generator) -> Dict[str, Tensor]:
    return {"align_encoder": torch.rand(L, n, generator=gen, dtype=torch.float64),
            "align_reference": torch.rand(L, n, generator=gen, dtype=torch.float64)}


def alignment_inputs(n: int, gen: torch.Generator) -> Dict[str, Tensor]:
    return {"align_encoder": torch.rand(L, n, generator=gen, dtype=torch.float64)}


def moments_inputs(n: int, gen: torch.Generator) -> Dict[str, Tensor]:
    return {"views": torch.rand(n, 2, C, 3, 2, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 4.0]).view(C, 1, 1) - 0.5}


def make_unit(num_candidates: int, state_dtype: torch.dtype, **options: Any) -> UnitMem:
    return UnitMem(num_candidates, U, state_dtype=state_dtype, **options)


def make_class(num_candidates: int, state_dtype: torch.dtype, **options: Any) -> ClassMem:
    return ClassMem(num_candidates, U, state_dtype=state_dtype, **options)


def make_layer(num_candidates: int, state_dtype: torch.dtype, **options: Any) -> LayerMem:
    return LayerMem(num_candidates, L, state_dtype=state_dtype, **options)


def make_alignment(num_candidates: int, state_dtype: torch.dtype, **options: Any) -> ViewAlignment:
    return ViewAlignment(num_candidates, L, state_dtype=state_dtype, **options)


def make_moments(num_candidates: int, state_dtype: torch.dtype, **options: Any) -> ViewMoments:
    assert state_dtype == torch.float64  # its states are always float64
    return ViewMoments(num_candidates, C, **options)


def unit_only(n: int, gen: torch.Generator) -> Dict[str, Tensor]:
    return {"activations": unit_inputs(n, gen)["activations"]}


ALIGN_AXES = {"align_encoder": 1, "align_reference": 1}
SPECS = {
    "UnitMem": MetricSpec("UnitMem", make_unit, unit_only, fun_unit, ref_unit),
    "ClassMem": MetricSpec("ClassMem", make_class, unit_inputs, fun_class, ref_class),
    "LayerMem": MetricSpec("LayerMem", make_layer, layer_inputs, fun_layer, ref_layer, axes=ALIGN_AXES),
    "ViewAlignment": MetricSpec("ViewAlignment", make_alignment, alignment_inputs, fun_alignment, ref_alignment,
                                axes=ALIGN_AXES),
    # squares of the views are taken in float32 (candidate_moments, channel_sums): 1e-6 against float64
    "ViewMoments": MetricSpec("ViewMoments", make_moments, moments_inputs, fun_moments, ref_moments,
                              output=moments_output, dtypes=(torch.float64,), atol={torch.float64: 1e-6},
                              functional_atol=1e-6),
}
OPTIONS = {
    "UnitMem": [dict(reduction=r, negative=g) for r in ("mean", "median") for g in ("clamp", "shift")],
    "ClassMem": [dict(reduction=r, negative=g) for r in ("mean", "median") for g in ("clamp", "shift")],
    "LayerMem": [dict(top_k=k) for k in (1, 4, 50)],
    "ViewAlignment": [{}],
    "ViewMoments": [{}],
}


def test_every_metric_class_has_a_spec():
    import lightning_memloc.states as states

    assert set(states.__all__) | {"ViewMoments"} == set(SPECS)


def cases(seeds=(0,)) -> list:
    return [pytest.param(Case(SPECS[name], opts, dtype, seed=seed), id=str(Case(SPECS[name], opts, dtype, seed=seed)))
            for name, all_opts in OPTIONS.items() for opts in all_opts for dtype in SPECS[name].dtypes for seed in seeds]


@pytest.mark.parametrize("case", cases(seeds=(0, 1)))
def test_class_equals_functional_equals_reference(case):
    check_class(case)


@pytest.mark.parametrize("case", cases())
def test_reset_then_recompute(case):
    check_reset(case)


@pytest.mark.parametrize("case", cases())
def test_padded_shards_merged_equal_one_process(case):
    check_merge(case)


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend")
def test_two_gloo_processes_equal_one_process(tmp_path):
    """Every case on 2 spawned processes (one spawn for all): both ranks' compute() equals one process's."""
    all_cases = [p.values[0] for p in cases()]
    ranks = run_ddp(all_cases, str(tmp_path))
    for index, case in enumerate(all_cases):
        want = single_process(case)
        tol = 1e-6 if case.dtype == torch.float32 else 1e-12
        for rank, outputs in enumerate(ranks):
            got, restored = outputs[index]
            assert_outputs(got, want, tol, tol, what=f"{case} rank {rank}")
            assert restored, f"{case} rank {rank}: compute() left the synced states in place of the local ones"
