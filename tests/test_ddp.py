"""MemorizationMonitor under DDP: 2 CPU processes (gloo, ``ddp_spawn``) give the single-process answer.

A spawned fit costs ~8 s on 2 idle cores (mostly importing Lightning in each worker), so the file
runs one, with two monitors: 7 candidates over 2 ranks (a padded ``DistributedSampler``) and 3
candidates with ``batch_size=1``, measured before training too. With spawn only the final
weights and ``trainer.callback_metrics`` come back to the parent; what happened on each rank is
recorded by :class:`RankSpy` (a picklable callback running inside the workers) into files that
the parent reads afterwards. The sharding and padding arithmetic is also checked without
Lightning, by merging the states of meters fed the shards of a ``DistributedSampler``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DistributedSampler

from lightning_memloc import MemorizationReport, measure
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.callbacks.logging import report_scalars
from lightning_memloc.callbacks.view_check import CHECK_STEPS
from lightning_memloc.models.cotrain import cotraining_loader
from lightning_memloc.data import split_candidates
from lightning_memloc.measurement import build_views, run_pass
from lightning_memloc.taps.probe import probe_layers
from lightning_memloc.states.meter import MemorizationMeter
from lightning_memloc.models import TinyCNN
from lightning_memloc.views.stats import ViewStatistics, channel_sums, statistics_from_sums
from helpers import cotrained_pair, gloo_spawn

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is unavailable")

LAYERS = ["conv1", "conv2", "conv3"]
VIEWS, SEED, TOP_K = 3, 5, 3


pytestmark = [pytestmark, pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # keeps the skipif above


def _data(num_candidates: int):
    gen = torch.Generator().manual_seed(0)
    n = 16 + 2 * num_candidates
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen)
    split = split_candidates(n, shared=16, candidates=num_candidates, independent=num_candidates, seed=0)
    return images, split


class RankSpy(pl.Callback):
    """Runs inside every worker and records, as JSON lines in ``spy_dir/rank<r>.jsonl``: the
    candidates each rank measured, every file a monitor writes (with the writing rank), any
    all-gather of a floating tensor, whether each rank's buffers were left as training made them,
    and each rank's final reports. Must follow the monitors in the callback list."""

    def __init__(self, spy_dir: Path) -> None:
        self.spy_dir = Path(spy_dir)
        self._undo = []
        self._buffers = []
        self._inputs, self._hook, self._batches = [], None, 0

    def _record(self, trainer: pl.Trainer, **entry) -> None:
        with open(self.spy_dir / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def setup(self, trainer, pl_module, stage):
        from lightning_memloc import measurement as measurement_module
        from lightning_memloc.callbacks import monitor as monitor_module

        self.spy_dir.mkdir(parents=True, exist_ok=True)
        original_pass, original_write = measurement_module.run_pass, monitor_module.atomic_write_text
        original_save, original_gather = MemorizationReport.save, dist.all_gather

        def spy_pass(encoder, reference, views, *args, sampler=None, **kwargs):
            ids = list(iter(sampler)) if sampler is not None else None
            self._record(trainer, event="pass", n=len(views), world_size=kwargs.get("world_size"), indices=ids)
            return original_pass(encoder, reference, views, *args, sampler=sampler, **kwargs)

        def spy_save(report, path):
            self._record(trainer, event="write", path=str(path))
            return original_save(report, path)

        def spy_write(path, text):
            self._record(trainer, event="write", path=str(path))
            return original_write(path, text)

        def spy_gather(tensor_list, tensor, *args, **kwargs):
            if tensor.is_floating_point():
                self._record(trainer, event="float_all_gather", shape=list(tensor.shape))
            return original_gather(tensor_list, tensor, *args, **kwargs)

        measurement_module.run_pass, monitor_module.atomic_write_text = spy_pass, spy_write
        MemorizationReport.save, dist.all_gather = spy_save, spy_gather
        self._undo = [(measurement_module, "run_pass", original_pass),
                      (monitor_module, "atomic_write_text", original_write),
                      (MemorizationReport, "save", original_save), (dist, "all_gather", original_gather)]

    def on_train_start(self, trainer, pl_module):  # after the monitors' (own passes before training)
        def record(module, args):
            s, q, n = channel_sums(args[0])
            self._inputs.append([s.tolist(), q.tolist(), n])

        self._hook = pl_module.encoder.backbone.register_forward_pre_hook(record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._buffers = [b.detach().clone() for b in pl_module.buffers()]
        self._batches += 1
        if self._hook is not None and self._batches == min(CHECK_STEPS, trainer.num_training_batches):
            self._hook.remove()  # the encoder's inputs of the batches the monitors' view check saw
            self._hook = None
            self._record(trainer, event="inputs", sums=self._inputs)

    def on_train_epoch_end(self, trainer, pl_module):  # runs after the monitors' measurements
        now = list(pl_module.buffers())
        self._record(trainer, event="buffers", restored=all(torch.equal(a, b) for a, b in zip(self._buffers, now)),
                     running_mean=pl_module.encoder.backbone.conv1.bn.running_mean.tolist())

    def on_train_end(self, trainer, pl_module):
        for monitor in trainer.callbacks:
            if isinstance(monitor, MemorizationMonitor):
                self._record(trainer, event="report", name=monitor.output_dir.name,
                             epochs=[h["epoch"] for h in monitor.history], report=monitor.report.to_dict())
                self._record(trainer, event="view_check", training=monitor.view_check.training._asdict(),
                             views=monitor.view_check.views._asdict())

    def teardown(self, trainer, pl_module, stage):
        for owner, name, value in self._undo:
            setattr(owner, name, value)
        self._undo = []


def _read_spy(spy_dir: Path, rank: int):
    path = spy_dir / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


# The two scenarios of one spawned fit (2 epochs): name -> (candidates, batch_size, epochs measured).
SCENARIOS = {
    "small": (slice(0, 3), 1, [-1, 0, 1]),   # N = 3, batch_size 1, also measured before training
    "padded": (slice(0, 7), 2, [0, 1]),      # N = 7 over 2 ranks: rank 1's shard repeats candidate 0
}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One ``ddp_spawn`` fit on 2 CPU processes with two monitors, one per scenario.

    Both monitors log the same ``memloc/...`` tags; "padded" is listed last, so its values are
    the ones left in ``trainer.callback_metrics``.
    """
    tmp = tmp_path_factory.mktemp("ddp")
    images, split = _data(7)
    candidates = images[split.candidates]
    monitors = [
        MemorizationMonitor(candidates[rows], every_n_epochs=1, views=VIEWS, seed=SEED, encoder="encoder.backbone",
                            reference="reference.backbone", top_k=TOP_K, grid_size=2, batch_size=batch_size,
                            progress=False, output_dir=tmp / name, measure_on_train_start=epochs[0] == -1)
        for name, (rows, batch_size, epochs) in SCENARIOS.items()
    ]
    # control and unseen images shard with the candidates: one pooled set of 5 + 4 + 4 = 13 over 2 ranks
    groups = dict(candidates=candidates[:5], control=images[split.shared[:4]], unseen=images[split.independent[:4]])
    monitors.insert(0, MemorizationMonitor(groups["candidates"], control=groups["control"], unseen=groups["unseen"],
                                        every_n_epochs=2, views=VIEWS, seed=SEED, encoder="encoder.backbone",
                                        reference="reference.backbone", top_k=TOP_K, grid_size=0, batch_size=2,
                                        bootstrap=200, progress=False, output_dir=tmp / "groups"))
    model = cotrained_pair(max_epochs=2)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=2,
        # = strategy="ddp_spawn" with gloo; the short timeout turns a deadlock into an error.
        strategy=gloo_spawn(),
        callbacks=[*monitors, RankSpy(tmp / "spy")], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, logger=TensorBoardLogger(tmp, name="tb", version=0),
    )
    trainer.fit(model, cotraining_loader(images, split, batch_size=4))
    spy = [_read_spy(tmp / "spy", r) for r in (0, 1)]
    return {"tmp": tmp, "trainer": trainer, "model": model, "candidates": candidates, "spy": spy, "groups": groups}


def test_ddp_control_and_unseen_evidence_equals_single_process(ddp_run):
    """The pooled set (candidates, control, unseen) shards over the ranks like the candidates
    alone: the evidence rank 0 wrote equals a single-process measure() of the final weights."""
    groups, model = ddp_run["groups"], ddp_run["model"]
    passes = [[e for e in s if e["event"] == "pass" and e["n"] == 13] for s in ddp_run["spy"]]
    assert len(passes[0]) == len(passes[1]) == 1
    assert sorted(set(passes[0][0]["indices"]) | set(passes[1][0]["indices"])) == list(range(13))
    saved = MemorizationReport.load(ddp_run["tmp"] / "groups" / "report_epoch=1.json")
    single = measure(model.encoder.backbone, groups["candidates"], reference=model.reference.backbone,
                     control=groups["control"], unseen=groups["unseen"], views=VIEWS, seed=SEED, top_k=TOP_K,
                     batch_size=2, bootstrap=200)
    assert saved.allclose(single, atol=1e-5)
    assert saved.evidence.meta["groups"] == {"candidates": 5, "control": 4, "unseen": 4}
    for layer in saved.layers:
        for key, value in single.evidence.layers[layer].items():
            got = saved.evidence.layers[layer][key]
            assert (value is None and got is None) or got == pytest.approx(value, abs=1e-4), (layer, key)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_report_equals_single_process_measure(ddp_run, name):
    """(a) + (d): the report rank 0 wrote equals a single-process measure() of the final weights."""
    rows, batch_size, epochs = SCENARIOS[name]
    candidates, spy, out = ddp_run["candidates"][rows], ddp_run["spy"], ddp_run["tmp"] / name
    n = len(candidates)

    # Every rank measured its own shard of a padded DistributedSampler: together they cover all
    # candidates, padding repeats the first ones, and each rank measured ceil(N / 2).
    passes = [[e for e in s if e["event"] == "pass" and e["n"] == n] for s in spy]
    assert len(passes[0]) == len(passes[1]) == len(epochs)
    for p0, p1 in zip(*passes):
        assert p0["world_size"] == p1["world_size"] == 2
        assert len(p0["indices"]) == len(p1["indices"]) == -(-n // 2)
        assert p0["indices"] == list(range(0, n, 2)) and p1["indices"] == (list(range(1, n, 2)) + [0])[: -(-n // 2)]

    # compute() is collective: both ranks hold the same, global report (so pruning or fine-tuning
    # decisions taken from it are identical on every rank).
    reports = [[e for e in s if e["event"] == "report" and e["name"] == name] for s in spy]
    assert len(reports[0]) == len(reports[1]) == 1 and reports[0][0]["epochs"] == epochs
    rank0, rank1 = (MemorizationReport.from_dict(r[0]["report"]) for r in reports)
    assert rank0.allclose(rank1, atol=0.0)

    # the file rank 0 wrote equals a single-process measurement of the weights that came back
    saved = MemorizationReport.load(out / f"report_epoch={epochs[-1]}.json")
    saved.validate()
    assert saved.allclose(rank0, atol=1e-6)
    assert saved.meta["epoch"] == epochs[-1] and saved.meta["num_candidates"] == n
    assert torch.equal(saved.candidate_ids, torch.arange(n))
    model = ddp_run["model"]
    single = measure(model.encoder.backbone, candidates, reference=model.reference.backbone, views=VIEWS, seed=SEED,
                     top_k=TOP_K, batch_size=batch_size)
    assert single.layers == saved.layers == LAYERS
    assert single.allclose(saved, atol=1e-5)
    # the views' statistics: every candidate once, though rank 1 measured candidate 0 again (padding)
    for key in ("mean", "std"):
        assert saved.meta["view_stats"][key] == pytest.approx(single.meta["view_stats"][key], rel=1e-9)


def test_ddp_view_check_compares_the_batches_of_every_rank(ddp_run):
    """check_views adds the encoder inputs of every rank's first batches: each rank's monitors hold
    the statistics of both ranks' batches (so every rank reaches the same verdict), not its own."""
    spy = ddp_run["spy"]
    local = [[e for e in s if e["event"] == "inputs"] for s in spy]
    assert len(local[0]) == len(local[1]) == 1
    sums = [torch.tensor([entry[0] for entry in r[0]["sums"]], dtype=torch.float64).sum(0) for r in local]
    squares = [torch.tensor([entry[1] for entry in r[0]["sums"]], dtype=torch.float64).sum(0) for r in local]
    counts = [sum(entry[2] for entry in r[0]["sums"]) for r in local]
    both = statistics_from_sums(sums[0] + sums[1], squares[0] + squares[1], counts[0] + counts[1])
    own = statistics_from_sums(sums[0], squares[0], counts[0])
    checks = [[e for e in s if e["event"] == "view_check"] for s in spy]
    assert len(checks[0]) == len(checks[1]) == len(SCENARIOS) + 1  # every monitor, on every rank
    for entry in checks[0] + checks[1]:
        training = ViewStatistics(**{k: tuple(v) for k, v in entry["training"].items()})
        assert training.mean == pytest.approx(both.mean, rel=1e-9) and training.std == pytest.approx(both.std, rel=1e-9)
        assert training.mean != pytest.approx(own.mean, rel=1e-6)  # not rank 0's batches alone
    assert [e["views"] for e in checks[0]] == [e["views"] for e in checks[1]]  # each monitor's, the same on both ranks


def test_ddp_ranks_measure_with_rank_zero_buffers_and_reduce_in_place(ddp_run):
    spy = ddp_run["spy"]
    # DDP leaves each rank with its own BatchNorm running statistics (so they differ here); the
    # monitors measured every shard with rank 0's and gave each rank its own back afterwards.
    buffers = [[e for e in s if e["event"] == "buffers"] for s in spy]
    assert len(buffers[0]) == len(buffers[1]) == 2
    assert all(e["restored"] for s in buffers for e in s)
    assert buffers[0][-1]["running_mean"] != buffers[1][-1]["running_mean"]
    # compute() summed the metric states in place (all_reduce): no rank all-gathered copies of them.
    assert not [e for s in spy for e in s if e["event"] == "float_all_gather"]


def test_ddp_only_rank_zero_writes(ddp_run):
    """(c) one set of files per monitor, all from rank 0, no temporary leftovers, all loadable."""
    spy, tmp = ddp_run["spy"], ddp_run["tmp"]
    assert not [e for e in spy[1] if e["event"] == "write"], "rank 1 wrote files"
    for name, (_, _, epochs) in SCENARIOS.items():
        writes = [Path(e["path"]).name for e in spy[0] if e["event"] == "write" and Path(e["path"]).parent.name == name]
        expected = sorted([f"report_epoch={e}.json" for e in epochs] + ["history.json"])
        assert sorted(set(writes)) == expected
        owner = ["memloc_run.json"]  # the run's marker (docs/reliability.md, row 40)
        assert sorted(p.name for p in (tmp / name).iterdir()) == sorted(expected + owner), "stray or temporary files"
        history = json.loads((tmp / name / "history.json").read_text(encoding="utf-8"))
        assert [h["epoch"] for h in history] == epochs
        for epoch in epochs:
            MemorizationReport.load(tmp / name / f"report_epoch={epoch}.json").validate()
    # TensorBoard: one event file, written by rank 0 only.
    assert len(list((tmp / "tb" / "version_0").glob("events.out.tfevents.*"))) == 1


def test_ddp_logged_metrics_reach_the_parent(ddp_run):
    """(b) ``trainer.callback_metrics`` in the parent holds the report's scalars (the monitor
    listed last, "padded", logged last)."""
    saved = MemorizationReport.load(ddp_run["tmp"] / "padded" / "report_epoch=1.json")
    scalars = report_scalars(saved, 0.5)
    assert any(key.startswith("memloc.layer_mem/") for key in scalars)
    for key, value in scalars.items():
        assert ddp_run["trainer"].callback_metrics[key].item() == pytest.approx(value, abs=1e-6), key
    history = json.loads((ddp_run["tmp"] / "padded" / "history.json").read_text(encoding="utf-8"))
    assert history[-1]["memloc.layer_mem/conv3"] == pytest.approx(saved.layer_mem["conv3"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The padding path without Lightning: two ranks simulated in one process, states merged.


@pytest.mark.parametrize("num_candidates, world_size, batch_size, labels",
                         [(7, 2, 2, False), (3, 2, 1, True), (9, 4, 2, True)])
def test_distributed_sampler_shards_merge_to_single_meter(num_candidates, world_size, batch_size, labels):
    torch.manual_seed(1)
    f, g = TinyCNN(width=4), TinyCNN(width=4)
    images = torch.randint(0, 256, (num_candidates, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(num_candidates) % 3 if labels else None
    views = build_views(images, VIEWS, None, SEED, y)
    specs, units = probe_layers(f, g, "auto", views.example_batch())

    def meter():
        return MemorizationMeter(specs, units, num_candidates, reference=True, labels=labels, top_k=TOP_K,
                                 view_shape=views.view_shape)

    shards = []
    for rank in range(world_size):
        sampler = DistributedSampler(views, num_replicas=world_size, rank=rank, shuffle=False)
        shard = meter()
        run_pass(f, g, views, specs, shard, batch_size=batch_size, sampler=sampler)
        shards.append(shard)
    padded = world_size * -(-num_candidates // world_size) - num_candidates
    merged = shards[0]
    for other in shards[1:]:
        for mine, theirs in zip(merged.units, other.units):
            mine.merge_state(theirs)
        merged.layer_mem.merge_state(other.layer_mem)
        merged.view_moments.merge_state(other.view_moments)
    # padding repeats the first candidates: they were counted twice, the others once
    expected = torch.ones(num_candidates)
    expected[:padded] += 1
    assert torch.equal(merged.units[0].counts, expected)
    assert torch.equal(merged.layer_mem.counts, expected)

    single = meter()
    run_pass(f, g, views, specs, single, batch_size=batch_size)
    ids = torch.arange(num_candidates)
    got, want = merged.compute_report(ids), single.compute_report(ids)
    assert got.allclose(want, atol=1e-6)
    assert got.meta["view_stats"]["std"] == pytest.approx(want.meta["view_stats"]["std"], rel=1e-9)
    assert got.allclose(measure(f, images, reference=g, views=VIEWS, seed=SEED, top_k=TOP_K, labels=y), atol=1e-6)
    if labels:
        assert all(torch.allclose(got.class_mem[k], want.class_mem[k], atol=1e-6) for k in got.layers)
