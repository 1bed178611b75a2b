"""``autocast`` of the measurement forwards, and pinned memory for CUDA models (issue 19, §4).

On CPU: the option validates and reaches ``measure()``, the monitor and ``memloc analyze``;
bf16 gives results within a stated tolerance of float32 on a tiny model and ``None`` gives the
float32 results exactly; the models are left as they were; the report meta, the monitor's
fingerprint and the reference cache's key record it. CUDA-only tests skip without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import (LitModel, assert_untouched, counting_forwards, load_script, make_trainer, small_monitor,
                     take_snapshot)
from lightning_memloc import MemorizationMonitor, ReferenceCache, measure
from lightning_memloc.reductions import hook as reductions
from lightning_memloc.callbacks.monitor_checks import check_same_fingerprint, fingerprint
from lightning_memloc.cli.analyze import measure_kwargs
from lightning_memloc.cli.parser import build_parser
from lightning_memloc.errors import NonFiniteActivationError
from lightning_memloc.measurement import pin_memory_for
from lightning_memloc.models import TinyCNN
from lightning_memloc.options import MeasureOptions
from lightning_memloc.reductions.hook import check_autocast, forward_autocast, forward_reduce, reduce_in_float32
from lightning_memloc.views.seeded import SeededViews

#: Tolerances of bf16 against float32 on TinyCNN (measured: LayerMem 0.022, raw SSLMem 0.0021,
#: UnitMem 0.0039 at seed 0; docs/performance.md §4 for real encoders).
TOL = {"layer_mem": 0.05, "sslmem_raw": 0.01, "unit_mem": 0.05}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    return TinyCNN(), TinyCNN(), torch.rand(8, 3, 16, 16)


def _max_errors(a, b):
    return {"layer_mem": max(abs(a.layer_mem[n] - b.layer_mem[n]) for n in a.layers),
            "sslmem_raw": max(float((a.sslmem_raw[n] - b.sslmem_raw[n]).abs().max()) for n in a.layers),
            "unit_mem": max(float((a.unit_mem[n] - b.unit_mem[n]).abs().max()) for n in a.layers)}


def _assert_same(a, b):
    assert a.layers == b.layers and a.meta == b.meta
    for field in ("unit_mem", "sslmem_raw", "sslmem"):
        for n in a.layers:
            assert torch.equal(getattr(a, field)[n], getattr(b, field)[n]), (field, n)
    assert a.layer_mem == b.layer_mem and torch.equal(a.top_ids, b.top_ids)


# ------------------------------------------------------------------- the option
@pytest.mark.parametrize("bad", ["bfloat16", "fp8", 16, True])
def test_bad_autocast_is_refused_by_every_surface_before_any_work(bad):
    with pytest.raises(ValueError, match="`autocast` must be one of"):
        MeasureOptions(autocast=bad)
    f, g, x = _pair()
    with counting_forwards(f) as calls, pytest.raises(ValueError, match="`autocast` must be one of"):
        measure(f, x, reference=g, views=2, autocast=bad)
    assert calls["n"] == 0
    with pytest.raises(ValueError, match="`autocast` must be one of"):
        MemorizationMonitor(x, views=2, autocast=bad)


def test_the_flag_parses_and_reaches_measure(capsys):
    parser = build_parser()
    base = ["analyze", "--data", "d.npz", "--output-dir", "o"]
    for extra, expected in (([], None), (["--autocast", "bf16"], "bf16"), (["--autocast", "fp16"], "fp16")):
        argv = base + extra
        args = parser.parse_args(argv)
        kw = measure_kwargs(args, reference=None, layers="auto", labels=None, candidate_ids=None, groups={}, meta={},
                            reference_cache=None)
        assert kw["autocast"] == expected
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--autocast", "fp8"])
    assert "--autocast: invalid choice" in capsys.readouterr().err


def test_monitor_holds_it_and_its_fingerprint_tells_passes_apart():
    x = torch.rand(4, 3, 8, 8)
    plain, low = MemorizationMonitor(x, views=2, progress=False), MemorizationMonitor(x, views=2, progress=False,
                                                                                      autocast="bf16")
    assert (plain.autocast, low.autocast, low.options.autocast) == (None, "bf16", "bf16")
    assert "autocast" not in fingerprint(plain) and fingerprint(low)["autocast"] == "bf16"
    with pytest.raises(ValueError, match="autocast"):
        check_same_fingerprint(fingerprint(plain), fingerprint(low), "the checkpoint's monitor state")
    low.autocast = "fp16"  # validated on set, like the other options
    assert low.options.autocast == "fp16"
    with pytest.raises(ValueError, match="`autocast` must be one of"):
        low.autocast = "half"


def test_monitor_measures_under_autocast_and_records_it(one_thread):
    runs = {}
    for autocast in (None, "bf16"):
        torch.manual_seed(0)
        monitor = small_monitor(every_n_epochs=1, autocast=autocast)
        make_trainer([monitor], max_epochs=1).fit(LitModel())
        runs[autocast] = monitor.report
    assert runs["bf16"].meta["autocast"] == "bf16" and "autocast" not in runs[None].meta
    # same weights (seeded fit), bf16 forwards: differences, small on average (UnitMem of a near-silent
    # unit of this 4-wide model on 8x8 images is ill-conditioned: single units move by up to ~0.1)
    errors = torch.cat([(runs[None].unit_mem[n] - runs["bf16"].unit_mem[n]).abs() for n in runs[None].layers])
    assert 0 < float(errors.mean()) <= 0.01 and float(errors.max()) < 0.5, errors


def test_options_record_it_only_when_set():
    assert "autocast" not in MeasureOptions().meta(views=2, seed=0, num_candidates=4)
    options = MeasureOptions(autocast="bf16")
    assert options.meta(views=2, seed=0, num_candidates=4)["autocast"] == "bf16"
    assert options.pass_kwargs()["autocast"] == "bf16" and options.fingerprint()["autocast"] == "bf16"
    assert options.measure_kwargs()["autocast"] == "bf16"


# -------------------------------------------------------------- the measurement
def test_bf16_is_within_tolerance_and_none_is_float32_exactly(one_thread):
    f, g, x = _pair()
    fp32 = measure(f, x, reference=g, views=4, top_k=2, bootstrap=0)
    low = measure(f, x, reference=g, views=4, top_k=2, bootstrap=0, autocast="bf16")
    again = measure(f, x, reference=g, views=4, top_k=2, bootstrap=0, autocast=None)
    _assert_same(fp32, again)  # None after a bf16 pass: the float32 results, bit for bit
    errors = _max_errors(fp32, low)
    assert all(errors[k] <= TOL[k] for k in TOL), errors
    assert any(errors[k] > 0 for k in TOL), "bf16 gave the float32 results: autocast did not run"
    assert low.meta["autocast"] == "bf16" and "autocast" not in fp32.meta
    assert {k: v for k, v in low.meta.items() if k != "autocast"} == fp32.meta


def test_forwards_run_in_bf16_and_reductions_in_float32(one_thread, monkeypatch):
    f, _, x = _pair()
    seen = {}
    grams = []
    original_gram = reductions.view_gram

    def spy_gram(reps, *args):
        gram = original_gram(reps, *args)
        grams.append((reps.dtype, gram.dtype, torch.is_autocast_enabled("cpu")))
        return gram

    monkeypatch.setattr(reductions, "view_gram", spy_gram)
    handle = f.register_forward_hook(lambda m, i, out: seen.setdefault("dtype", out.dtype))
    names = [n for n, m in f.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        views = x[:2].repeat_interleave(3, dim=0)  # 2 candidates × 3 views
        units, aligns = forward_reduce(f, views, names, 2, 3, units=True, align=True, anchor=False,
                                       autocast=torch.bfloat16)
    finally:
        handle.remove()
    assert seen["dtype"] == torch.bfloat16  # the forward ran under autocast
    assert {u.dtype for u in units.values()} == {torch.float32} == {a.dtype for a in aligns.values()}
    # every layer's Gram: a float32 copy of the bf16 output in, float64 out, with autocast off
    assert grams and set(grams) == {(torch.float32, torch.float64, False)}
    with forward_autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        with reduce_in_float32("cpu", torch.bfloat16):  # what each hook runs under
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_models_are_left_as_they_were(autocast, one_thread):
    f, g, x = _pair()
    f.train()
    g.requires_grad_(False)
    snaps = take_snapshot(f), take_snapshot(g)
    measure(f, x, reference=g, views=3, top_k=2, bootstrap=0, autocast=autocast)
    assert_untouched(f, snaps[0])
    assert_untouched(g, snaps[1])
    assert {p.dtype for p in (*f.parameters(), *g.parameters())} == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")


def test_a_device_that_cannot_run_it_is_refused_before_any_work(monkeypatch):
    f, g, x = _pair()
    monkeypatch.setattr(reductions, "autocast_runs", lambda *args: "no fp16 kernels here")
    with counting_forwards(f) as calls, pytest.raises(ValueError, match=r"`autocast='fp16'` cannot run on cpu "
                                                                        r"\(no fp16 kernels here\).*autocast=None"):
        measure(f, x, reference=g, views=2, autocast="fp16")
    assert calls["n"] == 0


def test_a_model_that_is_not_float32_is_refused():
    f, g, x = _pair()
    with pytest.raises(ValueError, match=r"lowers float32 forwards, but the model is torch.float64"):
        measure(f.double(), x.double(), reference=g.double(), views=2, autocast="bf16")
    assert check_autocast(None, f) is None  # no autocast: any model


def test_the_real_probe_on_this_cpu():
    # CPU autocast runs bf16 in torch >= 1.10 and fp16 in recent releases (2.14 here): whichever it
    # cannot run is refused with the reason, never silently run in float32.
    model = TinyCNN()
    assert check_autocast("bf16", model) == torch.bfloat16
    why = reductions.autocast_runs("cpu", "cpu", torch.float16)
    if why is None:
        assert check_autocast("fp16", model) == torch.float16
    else:
        with pytest.raises(ValueError, match="cannot run on cpu"):
            check_autocast("fp16", model)
    assert reductions.autocast_runs("meta", "meta", torch.bfloat16) is not None  # no autocast for that device


def test_reference_cache_never_mixes_float32_and_bf16(one_thread):
    f, g, x = _pair()
    cache = ReferenceCache()
    kwargs = dict(reference=g, views=3, top_k=2, bootstrap=0, batch_size=8)
    fp32 = measure(f, x, reference_cache=cache, **kwargs)
    key32 = cache.key
    low = measure(f, x, reference_cache=cache, autocast="bf16", **kwargs)
    assert (cache.misses, cache.hits) == (2, 0)  # the bf16 pass did not read the float32 entry
    assert cache.key != key32 and "autocast=bf16" in cache.key and len(cache) == 2
    _assert_same(low, measure(f, x, autocast="bf16", **kwargs))  # cached values are the uncached ones
    _assert_same(fp32, measure(f, x, reference_cache=cache, **kwargs))
    assert cache.hits == 1 and cache.key == key32  # float32 keys are as before the option


# --------------------------------------------------------------- pinned memory
def test_the_loader_pins_for_cuda_models_only(monkeypatch, one_thread):
    assert pin_memory_for(torch.device("cuda", 0)) and pin_memory_for("cuda")
    assert not pin_memory_for("cpu") and not pin_memory_for(torch.device("meta"))
    asked = []
    original = SeededViews.dataloader

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("pin_memory"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SeededViews, "dataloader", spy)
    f, g, x = _pair()
    measure(f, x, reference=g, views=2, top_k=2, bootstrap=0)
    assert asked == [False]  # CPU: nothing pinned, results as before


@CUDA
def test_pinned_cuda_pass_gives_identical_results(monkeypatch):
    f, g, x = _pair()
    f, g = f.cuda(), g.cuda()
    pinned = measure(f, x, reference=g, views=3, top_k=2, bootstrap=0)
    monkeypatch.setattr("lightning_memloc.measurement.pin_memory_for", lambda device: False)
    plain = measure(f, x, reference=g, views=3, top_k=2, bootstrap=0)
    _assert_same(pinned, plain)


@CUDA
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_cuda_autocast_is_within_tolerance(autocast):
    f, g, x = _pair()
    f, g = f.cuda(), g.cuda()
    if autocast == "bf16" and not torch.cuda.is_bf16_supported():
        with pytest.raises(ValueError, match="cannot run on cuda"):
            measure(f, x, reference=g, views=3, autocast=autocast)
        return
    fp32 = measure(f, x, reference=g, views=4, top_k=2, bootstrap=0)
    low = measure(f, x, reference=g, views=4, top_k=2, bootstrap=0, autocast=autocast)
    errors = _max_errors(fp32, low)
    assert all(errors[k] <= TOL[k] for k in TOL), errors
    assert low.meta["autocast"] == autocast


# ----------------------------------------------------------------- the benchmark
def test_the_accuracy_benchmark_runs_and_compares(one_thread, tmp_path):
    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_autocast.py", add_folder=True)
    out = bench.main(["--models", "resnet9:4,trained:4", "--n", "6", "--views", "2", "--top-k", "2", "--data", "random",
                      "--autocast", "bf16", "--train-images", "12", "--train-steps", "1", "--train-batch", "4",
                      "--output", str(tmp_path / "a.json")])
    assert [m["model"] for m in out["models"]] == ["resnet9:4", "trained:4"]
    for result in out["models"]:
        bf16 = result["bf16"]
        assert 0 < bf16["layer_mem"] < 0.5 and 0 <= bf16["topk_overlap_min"] <= 1 and bf16["time_ratio"] > 0
    f, g, x = _pair()
    fp32 = measure(f, x, reference=g, views=3, top_k=2, bootstrap=0)
    same = bench.compare(fp32, fp32, top_k=2)  # a report against itself: no error, same rankings
    assert same["layer_mem"] == same["sslmem_raw"] == same["unit_mem"] == 0.0
    assert same["layer_ranking_same"] and same["topk_overlap_min"] == 1.0 and (tmp_path / "a.json").is_file()


def test_monitor_refuses_an_autocast_the_device_cannot_run_before_training(monkeypatch, one_thread):
    monkeypatch.setattr(reductions, "autocast_runs", lambda *args: "no bf16 here")
    model = LitModel()
    steps = []
    model.on_train_batch_start = lambda *args: steps.append(1)
    with pytest.raises(ValueError, match=r"`autocast='bf16'` cannot run on cpu \(no bf16 here\)"):
        make_trainer([small_monitor(every_n_epochs=1, autocast="bf16")], max_epochs=1).fit(model)
    assert steps == []  # refused in on_fit_start, before the first training step


def test_fp16_overflow_is_reported_as_such(one_thread):
    f, g, x = _pair()
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(60.0)  # activations beyond fp16's 65504, finite in float32 and bf16
    measure(f, x, reference=g, views=2, top_k=2, bootstrap=0)
    measure(f, x, reference=g, views=2, top_k=2, bootstrap=0, autocast="bf16")
    with pytest.raises(NonFiniteActivationError, match=r"Under autocast='fp16' values beyond the dtype's range"):
        measure(f, x, reference=g, views=2, top_k=2, bootstrap=0, autocast="fp16")


def test_the_device_probe_leaves_the_global_rng_alone():
    model = TinyCNN()
    reductions.autocast_runs.cache_clear()  # run the probe for real
    state = torch.random.get_rng_state()
    assert check_autocast("bf16", model) == torch.bfloat16
    assert torch.equal(torch.random.get_rng_state(), state)
