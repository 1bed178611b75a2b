"""One tester for every candidate-indexed metric, modelled on torchmetrics' ``MetricTester``.

torchmetrics tests each metric by running its class over batches (on one process and on two
``gloo`` processes) and its functional form over all the data, against a reference
implementation. Here a :class:`MetricSpec` names a metric class, its functional form, a float64
reference written straightforwardly (loops, numpy) and an input generator; the checks are:

* :func:`check_class` — the class updated in random order and random batch sizes, with some
  candidates repeated (``DistributedSampler`` padding, also inside one batch) and ids a sparse
  subset of ``0 .. num_candidates - 1``, equals the functional form on all the data (same dtype,
  tight tolerance), which in float64 equals the reference; the class equals the reference within
  the spec's tolerance for its state dtype, and its float outputs have that dtype;
* :func:`check_reset` — ``reset()`` restores every state's default, ``compute()`` then refuses,
  and the metric fed again (another order) gives the first result;
* :func:`check_merge` — two simulated ranks fed the padded strided shards of a
  ``DistributedSampler``, merged with ``merge_state`` (metric or state dict), give the one-process
  result;
* :func:`run_ddp` — the same shards on 2 real processes (``torch.multiprocessing`` spawn, gloo,
  CPU): ``compute()`` syncs through torchmetrics and both ranks return the one-process result,
  their local states left as they were. One spawn runs every case (each costs the imports).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torchmetrics import Metric

Data = Dict[str, Tensor]
Options = Dict[str, Any]
Outputs = Dict[str, Any]
WORLD_SIZE = 2


@dataclass(frozen=True)
class MetricSpec:
    """What the tester needs to know about one metric (module-level functions only: it is pickled).

    Attributes:
        name: test id.
        metric: ``metric(num_candidates, state_dtype, **options)`` builds the class.
        inputs: ``inputs(n, generator)``: float64 (or integer) inputs of ``n`` candidates, keyed by
            the keyword of ``update`` that takes them.
        axes: the candidate axis of each input (``0`` unless listed).
        functional: ``functional(data, ids, options)``: the result on all the data from the
            functional core, candidates in the order of ``ids`` (sorted), ids in id terms.
        reference: ``reference(data, ids, options)``: the same in float64, written without the package.
        output: turns ``compute()``'s result into a dict of tensors / numbers.
        dtypes: the state dtypes the class accepts.
        atol: tolerance of the class against the reference, per state dtype.
        functional_atol: tolerance of the float64 functional form against the reference.
    """

    name: str
    metric: Callable[..., Metric]
    inputs: Callable[[int, torch.Generator], Data]
    functional: Callable[[Data, Tensor, Options], Outputs]
    reference: Callable[[Data, Tensor, Options], Outputs]
    axes: Mapping[str, int] = field(default_factory=dict)
    output: Callable[[Any], Outputs] = dict
    dtypes: Tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    atol: Mapping[torch.dtype, float] = field(default_factory=lambda: {torch.float32: 1e-5, torch.float64: 1e-10})
    functional_atol: float = 1e-10


@dataclass(frozen=True)
class Case:
    """One run of a spec: its options, state dtype, number of candidates seen and seed."""

    spec: MetricSpec
    options: Options
    dtype: torch.dtype = torch.float32
    n: int = 9
    seed: int = 0

    @property
    def num_candidates(self) -> int:
        return 2 * self.n + 3  # ids are a sparse sorted subset: unseen ids must be left out

    def data(self) -> Tuple[Data, Tensor]:
        """``(data, ids)``: the float64 inputs and the sorted candidate ids of their rows."""
        gen = torch.Generator().manual_seed(self.seed)
        data = self.spec.inputs(self.n, gen)
        ids = torch.randperm(self.num_candidates, generator=gen)[: self.n].sort().values
        return data, ids

    def make(self, **kwargs: Any) -> Metric:
        return self.spec.metric(self.num_candidates, self.dtype, **self.options, **kwargs)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.spec.name}[{opts}|{str(self.dtype).replace('torch.', '')}|seed={self.seed}]"


# ----------------------------------------------------------------------------- feeding a metric
def cast(data: Data, dtype: torch.dtype) -> Data:
    """Floating inputs in ``dtype``, the others as they are."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in data.items()}


def schedule(positions: Tensor, gen: torch.Generator, repeats: int = 2, max_batch: int = 4) -> List[Tensor]:
    """``positions`` in random order plus ``repeats`` random ones again, cut into batches of random sizes.

    With ``repeats``, a last batch holds one position twice (a candidate repeated inside one batch).
    """
    extra = positions[torch.randint(len(positions), (repeats,), generator=gen)]
    order = torch.cat([positions, extra])[torch.randperm(len(positions) + repeats, generator=gen)]
    sizes, left = [], len(order)
    while left:
        sizes.append(min(left, int(torch.randint(1, max_batch + 1, (1,), generator=gen))))
        left -= sizes[-1]
    return list(order.split(sizes)) + ([extra[:1].repeat(2)] if repeats else [])


def shards(n: int, world_size: int = WORLD_SIZE) -> List[Tensor]:
    """The positions of each rank under ``DistributedSampler(shuffle=False)``: padded by repeating the first."""
    total = -(-n // world_size) * world_size
    padded = torch.cat([torch.arange(n), torch.arange(total - n)])
    return [padded[rank::world_size] for rank in range(world_size)]


def feed(metric: Metric, case: Case, data: Data, ids: Tensor, batches: Sequence[Tensor]) -> Metric:
    """``metric.update`` with the rows ``batches`` (positions) of ``data``, cast to the state dtype."""
    data = cast(data, case.dtype)
    for pos in batches:
        metric.update(**{k: v.index_select(case.spec.axes.get(k, 0), pos) for k, v in data.items()}, index=ids[pos])
    return metric


# ----------------------------------------------------------------------------- comparing outputs
def assert_outputs(got: Outputs, want: Outputs, atol: float, rtol: float = 0.0, what: str = "") -> None:
    """Same keys; float values within ``atol + rtol·|want|``, integer / bool values and ids equal."""
    assert set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        g = torch.as_tensor(got[key])
        w = torch.as_tensor(value)
        assert g.shape == w.shape, f"{what}: {key} shape {tuple(g.shape)} != {tuple(w.shape)}"
        if w.is_floating_point() or g.is_floating_point():
            torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {key}: {m}")
        else:
            assert torch.equal(g.long(), w.long()), f"{what}: {key} {g.tolist()} != {w.tolist()}"


def result(metric: Metric, case: Case) -> Outputs:
    return case.spec.output(metric.compute())


# ----------------------------------------------------------------------------- the checks
def check_class(case: Case) -> Outputs:
    """Class (random batches) == functional (same dtype) ; functional (float64) == reference ; class ≈ reference."""
    data, ids = case.data()
    reference = case.spec.reference(data, ids, case.options)
    assert_outputs(case.spec.functional(cast(data, torch.float64), ids, case.options), reference,
                   case.spec.functional_atol, what=f"{case} functional float64 vs reference")
    gen = torch.Generator().manual_seed(case.seed + 1)
    metric = feed(case.make(), case, data, ids, schedule(torch.arange(case.n), gen))
    for name in metric._defaults:
        state = getattr(metric, name)
        assert not state.is_floating_point() or state.dtype == case.dtype, f"{case}: state {name} is {state.dtype}"
    got = result(metric, case)
    exact = 1e-6 if case.dtype == torch.float32 else 1e-12
    assert_outputs(got, case.spec.functional(cast(data, case.dtype), ids, case.options), exact, exact,
                   what=f"{case} class vs functional")
    assert_outputs(got, reference, case.spec.atol[case.dtype], what=f"{case} class vs reference")
    for key, value in got.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            assert value.dtype == case.dtype, f"{case}: {key} is {value.dtype}, not the state dtype"
    assert_outputs(result(metric, case), got, 0.0, what=f"{case} second compute")
    return got


def check_reset(case: Case) -> None:
    """``reset()`` restores every state, ``compute()`` then refuses, a new pass gives the first result."""
    data, ids = case.data()
    gen = torch.Generator().manual_seed(case.seed + 2)
    metric = feed(case.make(), case, data, ids, schedule(torch.arange(case.n), gen))
    first = result(metric, case)
    metric.reset()
    for name, default in metric._defaults.items():
        assert torch.equal(getattr(metric, name), default), f"{case}: state {name} not reset"
    try:
        with warnings.catch_warnings():  # torchmetrics warns of a compute() before update()
            warnings.simplefilter("ignore", UserWarning)
            metric.compute()
    except ValueError as err:
        assert "at least 2 candidates" in str(err), err
    else:
        raise AssertionError(f"{case}: compute() after reset() did not refuse")
    feed(metric, case, data, ids, schedule(torch.arange(case.n), gen, repeats=3, max_batch=2))
    tol = 1e-6 if case.dtype == torch.float32 else 1e-12  # other repeats: other rounding of sum / count
    assert_outputs(result(metric, case), first, tol, tol, what=f"{case} after reset")


def check_merge(case: Case) -> None:
    """Padded strided shards on two simulated ranks, merged (as a metric and as a state dict) == one process."""
    data, ids = case.data()
    gen = torch.Generator().manual_seed(case.seed + 3)
    single = result(feed(case.make(), case, data, ids, [torch.arange(case.n)]), case)
    ranks = [feed(case.make(), case, data, ids, schedule(pos, gen, repeats=0)) for pos in shards(case.n)]
    as_dict = copy.deepcopy(ranks[0])
    as_dict.merge_state({name: getattr(ranks[1], name) for name in ranks[1]._defaults})
    ranks[0].merge_state(ranks[1])
    tol = 1e-6 if case.dtype == torch.float32 else 1e-12
    for merged, how in ((ranks[0], "metric"), (as_dict, "state dict")):
        assert_outputs(result(merged, case), single, tol, tol, what=f"{case} merged as {how}")


# ----------------------------------------------------------------------------- 2 real processes
def _ddp_worker(rank: int, cases: List[Case], init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        outputs = []
        for case in cases:
            data, ids = case.data()
            gen = torch.Generator().manual_seed(case.seed + 4 + rank)
            metric = feed(case.make(), case, data, ids, schedule(shards(case.n)[rank], gen, repeats=1))
            local = {name: getattr(metric, name).clone() for name in metric._defaults}
            got = result(metric, case)  # all_reduce of every state inside compute()
            restored = all(torch.equal(getattr(metric, name), value) for name, value in local.items())
            outputs.append((got, restored))
        torch.save(outputs, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ddp(cases: List[Case], tmp_dir: str) -> List[List[Tuple[Outputs, bool]]]:
    """Run every case on 2 spawned gloo processes; per rank, per case: ``(compute() result, local states kept)``."""
    mp.spawn(_ddp_worker, args=(cases, os.path.join(tmp_dir, "init"), tmp_dir), nprocs=WORLD_SIZE, join=True)
    return [torch.load(os.path.join(tmp_dir, f"rank{rank}.pt"), weights_only=False) for rank in range(WORLD_SIZE)]


def single_process(case: Case) -> Outputs:
    """The one-process result of ``case`` (all candidates in one batch)."""
    data, ids = case.data()
    return result(feed(case.make(), case, data, ids, [torch.arange(case.n)]), case)
