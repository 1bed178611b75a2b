"""Reference-free evidence: the alignment gap of candidates against unseen images under f alone.

Hand-computed values on tiny tensors, a slow reference for the membership scores, null
calibration, a synthetic encoder that memorized its candidates (it pulls their views together)
against one that did not, and the surfaces (measure, the monitor's logs, the summary, selection).
"""

import importlib
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from lightning_memloc import measure
from lightning_memloc.callbacks.report_source import evidence_problem, test_for
from lightning_memloc.callbacks.logging import custom_scalar_layout, report_scalars
from lightning_memloc.report.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.report.layer_evidence import candidate_membership, reference_free_evidence
from lightning_memloc.functional.statistics import holm
from lightning_memloc.functional.two_sample import studentized_permutation_test
from lightning_memloc.functional.sslmem import alignment, alignment_gap, gap_greater, membership_scores
from lightning_memloc.states.meter import MemorizationMeter, state_bytes
from lightning_memloc.models import TinyMLP
from lightning_memloc.report.selection import select_layers
from lightning_memloc.taps.hooks import LayerSpec
from lightning_memloc.report.tags import SCALAR_QUANTITIES, parse_scalar_tag

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ functional, by hand
def test_gap_and_membership_hand_computed():
    cand = torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]])
    unseen = torch.tensor([[0.4, 0.8], [1.0, 1.0]])
    gap, mean_c, mean_u = alignment_gap(cand, unseen)
    # layer 0: means 0.4 and 0.6, range of {0.2, 0.4, 0.6, 0.4, 0.8} = 0.6 -> gap 0.2 / 0.6; layer 1: range 0 -> 0
    assert gap.tolist() == pytest.approx([1 / 3, 0.0])
    assert mean_c.tolist() == pytest.approx([0.4, 1.0]) and mean_u.tolist() == pytest.approx([0.6, 1.0])
    # candidate 0.2: both unseen worse -> 1; 0.4: one tie (½) + one worse -> 0.75; 0.6: one worse -> 0.5; all ties -> 0.5
    assert membership_scores(cand, unseen).tolist() == [[1.0, 0.75, 0.5], [0.5, 0.5, 0.5]]


def test_compute_evidence_records_by_hand():
    align = {"a": torch.tensor([0.2, 0.4, 0.6]), "b": torch.tensor([0.9, 0.5, 0.7])}
    unseen = {"a": torch.tensor([0.4, 0.8, 0.9]), "b": torch.tensor([0.5, 0.6, 0.7])}
    mu = {k: torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) for k in align}
    ev = compute_evidence(["a", "b"], unit_means=mu, align=align, unseen_align=unseen,
                          options=EvidenceOptions(bootstrap=200, seed=3))
    a, b = ev.layers["a"], ev.layers["b"]
    assert a["align_gap"] == pytest.approx((0.7 - 0.4) / 0.7) and b["align_gap"] == pytest.approx((0.6 - 0.7) / 0.4)
    assert a["align_f_candidates"] == pytest.approx(0.4) and a["align_f_unseen"] == pytest.approx(0.7)
    # a: 0.2 -> 1, 0.4 -> (2 + ½)/3, 0.6 -> 2/3; b: 0.9 -> 0, 0.5 -> (2 + ½)/3 ... mean = AUC
    assert ev.meta["align_membership"]["a"] == pytest.approx([1.0, 2.5 / 3, 2 / 3])
    assert ev.meta["align_membership"]["b"] == pytest.approx([0.0, 2.5 / 3, 0.5 / 3])
    assert a["align_auc"] == pytest.approx((1 + 2.5 / 3 + 2 / 3) / 3)
    # the test: the studentized permutation test unseen > candidates on raw alignments (the layers share its
    # relabellings), then Holm over the verdict's family, here these two layers (issue 29: Welch is liberal)
    test = studentized_permutation_test(torch.stack(list(unseen.values())).double(),
                                        torch.stack(list(align.values())).double(), 200, seed=3 + 37)
    pa, pb = float(test["p"][0]), float(test["p"][1])
    assert a["align_gap_p"] == pytest.approx(pa) and b["align_gap_p"] == pytest.approx(pb)
    assert [a["align_gap_p_holm"], b["align_gap_p_holm"]] == pytest.approx(holm([pa, pb]))
    assert a["align_gap_lo"] <= a["align_gap"] <= a["align_gap_hi"]
    assert "align_gap" in ev.meta["significant"] and ev.meta["groups"]["unseen"] == 3
    assert torch.equal(candidate_membership(ev, "a"), torch.tensor(ev.meta["align_membership"]["a"], dtype=torch.float64))
    none = compute_evidence(["a", "b"], unit_means=mu, align=align, unseen_align=unseen, options=EvidenceOptions(bootstrap=0))
    assert none.layers["a"]["align_gap_p"] is None and none.layers["a"]["align_gap_lo"] is None
    assert none.layers["a"]["align_gap"] == pytest.approx(a["align_gap"])


def test_scale_shared_and_tests_scale_free():
    g = torch.Generator().manual_seed(1)
    c, u = torch.rand(2, 15, generator=g), torch.rand(2, 11, generator=g) + 0.1
    gap = alignment_gap(c, u)[0]
    assert torch.allclose(alignment_gap(3 * c + 1, 3 * u + 1)[0], gap)  # affine maps of both groups: same gap
    assert torch.equal(membership_scores(3 * c + 1, 3 * u + 1), membership_scores(c, u))
    assert gap_greater(5 * c[0], 5 * u[0]) == pytest.approx(gap_greater(c[0], u[0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=8), st.lists(st.integers(0, 5), min_size=1, max_size=8))
def test_membership_scores_equal_a_slow_count(cand, unseen):
    c, u = torch.tensor([cand], dtype=torch.float64) / 5, torch.tensor([unseen], dtype=torch.float64) / 5
    slow = [(sum(v > x for v in u[0].tolist()) + 0.5 * sum(v == x for v in u[0].tolist())) / len(unseen)
            for x in c[0].tolist()]
    scores = membership_scores(c, u)[0]
    assert scores.tolist() == pytest.approx(slow)
    # mean score = Mann-Whitney U / (N·M), the AUC
    assert float(scores.mean()) == pytest.approx(sum(slow) / len(slow))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same layers"):
        alignment_gap(torch.rand(2, 3), torch.rand(3, 3))
    with pytest.raises(ValueError, match="`unseen` must be a tensor"):
        membership_scores(torch.rand(2, 3), torch.rand(2, 0))


def test_null_calibration_functional():
    """Candidates and unseen alignments from one distribution (per-layer offsets, correlated layers):
    each test rejects at most ~alpha of the time, the membership scores are uniform."""
    layers, seeds, rejections, any_layer, scores = ["a", "b", "c"], 200, 0, 0, []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)

        def draw(n):
            shared = torch.rand(n, generator=g)  # an image's typicality, seen at every layer
            return {layer: 0.3 * i + shared + 0.2 * torch.rand(n, generator=g) ** 2 for i, layer in enumerate(layers)}
        records, meta = {layer: {} for layer in layers}, {}
        reference_free_evidence(layers, draw(25), draw(20), records, meta, bootstrap=200, seed=seed)
        rejections += records["a"]["align_gap_p"] < 0.05
        any_layer += any(rec["align_gap_p_holm"] < 0.05 for rec in records.values())
        scores += meta["align_membership"]["c"]
    assert rejections / seeds <= 0.085 and any_layer / seeds <= 0.085, (rejections, any_layer)
    assert sum(scores) / len(scores) == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------- through measure()
class _Attract(nn.Module):
    """Pulls every input within ``radius`` of a template towards it by ``strength``: the views of a
    template's neighbourhood end up closer together (an encoder that memorized the templates)."""

    def __init__(self, templates: torch.Tensor, strength: float, radius: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("templates", templates.reshape(templates.shape[0], -1).clone())
        self.strength, self.radius = strength, radius
        self.inp, self.out = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x.reshape(x.shape[0], -1))
        dist = torch.cdist(x, self.templates)
        near = self.templates[dist.argmin(1)]
        pulled = near + (1 - self.strength) * (x - near)
        return self.out(torch.where((dist.min(1).values < self.radius)[:, None], pulled, x))


def _views(images: torch.Tensor, g: torch.Generator, k: int = 4, noise: float = 0.3) -> torch.Tensor:
    return images[:, None] + noise * torch.randn(images.shape[0], k, images.shape[1], generator=g)


def test_an_encoder_that_pulls_its_candidates_views_together_shows_a_gap_where_it_does():
    g = torch.Generator().manual_seed(6)  # a draw whose input-layer gap is a typical null one (p = 0.5)
    seen, unseen = torch.randn(20, 32, generator=g), torch.randn(20, 32, generator=g)
    cand_views, unseen_views = _views(seen, g), _views(unseen, g)
    memorized = measure(_Attract(seen, 0.8), cand_views, layers=["inp", "out"], unseen=unseen_views, bootstrap=500)
    ev = memorized.evidence
    assert ev.significant_layers("align_gap") == ["out"]  # the input layer is before the pull: no gap there
    assert ev.layers["out"]["align_gap_lo"] > 0 and ev.layers["out"]["align_auc"] > 0.95
    assert ev.layers["inp"]["align_gap_lo"] < 0 < ev.layers["inp"]["align_gap_hi"]
    assert min(candidate_membership(ev, "out").tolist()) > 0.5
    assert "align more tightly than unseen images' at 1 of 2 layers: out." in memorized.summary_table()
    honest = measure(_Attract(seen, 0.0), cand_views, layers=["inp", "out"], unseen=unseen_views, bootstrap=500)
    assert honest.evidence.significant_layers("align_gap") == []
    assert honest.evidence.layers["out"]["align_gap"] == pytest.approx(ev.layers["inp"]["align_gap"], abs=1e-6)
    # ranking and acting on the gap
    assert select_layers(memorized, 1, by="align_gap") == ["out"]
    assert test_for("align_gap") == "align_gap" and evidence_problem(memorized, "align_gap") is None
    assert "aligns its candidates' views more tightly" in evidence_problem(honest, "align_gap")


def test_alignments_equal_a_direct_computation_and_the_reference_changes_nothing():
    torch.manual_seed(0)
    f, ref = TinyMLP(12, hidden=(10, 6)), TinyMLP(12, hidden=(10, 6))
    views = torch.rand(14, 3, 12, generator=torch.Generator().manual_seed(2))
    alone = measure(f, views[:8], views=3, unseen=views[8:], bootstrap=200, batch_size=3)
    with torch.no_grad():
        for name in alone.layers:
            outputs = {}
            hook = dict(f.named_modules())[name].register_forward_hook(lambda m, i, o: outputs.update(out=o))
            f(views.reshape(-1, 12))
            hook.remove()
            direct = alignment(outputs["out"].reshape(14, 3, -1))
            rec = alone.evidence.layers[name]
            assert rec["align_f_candidates"] == pytest.approx(float(direct[:8].mean()), abs=1e-6)
            assert rec["align_f_unseen"] == pytest.approx(float(direct[8:].mean()), abs=1e-6)
    both = measure(f, views[:8], views=3, unseen=views[8:], bootstrap=200, reference=ref)
    for name in alone.layers:
        for key, value in alone.evidence.layers[name].items():
            # the verdict's Holm correction (and its bound) covers every test present: a reference adds some
            if key.startswith("align") and not key.endswith(("_p_holm", "_lb")):
                assert both.evidence.layers[name][key] == pytest.approx(value, abs=1e-6), key
        assert both.evidence.layers[name]["excess_unseen"] is not None  # g's estimate beside it
    assert both.evidence.meta["align_membership"] == alone.evidence.meta["align_membership"]
    # the candidates' own figures are the same with or without the unseen set
    assert measure(f, views[:8], views=3, bootstrap=200).allclose(alone)


def test_no_alignment_is_computed_unless_needed(monkeypatch):
    measure_module = importlib.import_module("lightning_memloc.measurement")  # run_pass's module
    calls = []
    original = measure_module.forward_reduce
    monkeypatch.setattr(measure_module, "forward_reduce",
                        lambda *a, **kw: calls.append(kw["align"]) or original(*a, **kw))
    torch.manual_seed(0)
    f = TinyMLP(12, hidden=(10, 6))
    views = torch.rand(10, 3, 12)
    report = measure(f, views[:6], views=3, bootstrap=200)
    assert calls and not any(calls) and report.evidence is not None and not report.evidence.has("align_gap")
    calls.clear()
    measure(f, views[:6], views=3, unseen=views[6:], bootstrap=200)
    assert calls and all(calls)
    # one view per image has no alignment: the membership test stays, the gap is left out (no error)
    calls.clear()
    single = measure(f, views[:6, :1], unseen=views[6:, :1], bootstrap=200)
    assert not any(calls) and single.evidence.has("membership") and not single.evidence.has("align_gap")


def test_meter_states_and_their_size():
    units = {"a": 3, "b": 2}
    specs = [LayerSpec(k, "linear") for k in units]
    plain = MemorizationMeter(specs, units, 5, reference=False, labels=False)
    aligned = MemorizationMeter(specs, units, 5, reference=False, labels=False, alignment=True)
    assert not plain.needs_alignment and aligned.needs_alignment
    held = sum(t.numel() * t.element_size() for m in aligned.modules() if hasattr(m, "_defaults")
               for t in (getattr(m, k) for k in m._defaults))
    assert held == state_bytes(5, units, reference=False, labels=False, alignment=True)
    assert state_bytes(5, units, reference=False, labels=False, alignment=True) - state_bytes(
        5, units, reference=False, labels=False) == (len(units) + 1) * 5 * 4
    with pytest.raises(ValueError, match="alignment=True"):
        aligned.update(torch.arange(2), {"a": torch.rand(2, 3), "b": torch.rand(2, 2)})


def test_scalars_tags_and_layout():
    g = torch.Generator().manual_seed(5)
    seen, unseen = torch.randn(12, 32, generator=g), torch.randn(12, 32, generator=g)
    report = measure(_Attract(seen, 0.8), _views(seen, g), layers=["inp", "out"], unseen=_views(unseen, g), bootstrap=200)
    scalars = report_scalars(report)
    for key in ("align_gap", "align_gap_lo", "align_gap_hi", "align_gap_p", "align_gap_p_holm", "align_f_candidates",
                "align_f_unseen", "align_auc"):
        assert key in SCALAR_QUANTITIES and parse_scalar_tag(f"memloc.{key}/out") == (key, "out")
        assert math.isfinite(scalars[f"memloc.{key}/out"])
    assert scalars["memloc/significant_layers/align_gap"] == 1.0
    layout = custom_scalar_layout(report)
    assert "memloc alignment gap (f only) ± CI" in layout and "align_gap" in layout["memloc"]


# -------------------------------------------------------- monitor, CLI, plots, pruning
def test_monitor_without_reference_logs_the_gap_and_equals_measure(tmp_path):
    from helpers import LitModel, make_trainer, small_monitor

    torch.manual_seed(0)
    unseen = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    monitor = small_monitor(unseen=unseen, bootstrap=200, every_n_epochs=1, output_dir=tmp_path / "memloc")
    model = LitModel()
    trainer = make_trainer([monitor], max_epochs=2)
    trainer.fit(model)
    ev = monitor.report.evidence
    assert not monitor.report.has_reference and ev.has("align_gap_p_holm") and len(monitor.history) == 2
    candidates = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # small_monitor's
    direct = measure(model.backbone, candidates, views=2, unseen=unseen, bootstrap=200)
    for layer in monitor.report.layers:
        for key in ("align_gap", "align_gap_p", "align_f_candidates", "align_auc"):
            assert ev.layers[layer][key] == pytest.approx(direct.evidence.layers[layer][key], abs=1e-6), (layer, key)
            assert monitor.history[-1][f"memloc.{key}/{layer}"] == pytest.approx(ev.layers[layer][key])
        assert f"memloc.align_gap_p_holm/{layer}" in trainer.callback_metrics
    assert "memloc/significant_layers/align_gap" in monitor.history[-1]
    saved = sorted((tmp_path / "memloc").glob("report_epoch=*.json"))[-1]
    from lightning_memloc import MemorizationReport

    assert MemorizationReport.load(saved).evidence.meta["align_membership"] == ev.meta["align_membership"]


@pytest.mark.slow
def test_cli_analyze_without_reference_and_plot(tmp_path):
    import numpy as np

    from helpers import assert_png, run_cli
    from lightning_memloc import MemorizationReport
    from lightning_memloc.models import TinyCNN

    torch.manual_seed(0)
    torch.save(TinyCNN(3, 4).state_dict(), tmp_path / "f.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (14, 16, 16, 3), dtype=np.uint8))
    (tmp_path / "candidates.json").write_text("[0, 1, 2, 3, 4, 5, 6, 7]")
    (tmp_path / "unseen.json").write_text("[8, 9, 10, 11, 12, 13]")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["analyze", "--arch", "tiny", "--size", "16", "--views", "3", "--no-progress",
                                    "--encoder", tmp_path / "f.pt", "--data", tmp_path / "d.npz", "--indices", tmp_path / "candidates.json",
                                    "--unseen", tmp_path / "unseen.json", "--bootstrap", "200", "--output-dir", out])
    assert code == 0, stderr
    assert "Alignment under f alone" in stdout and "f alone (no reference):" in stdout
    report = MemorizationReport.load(out / "report.json")
    assert not report.has_reference and report.evidence.has("align_gap_p_holm")
    assert report.meta["unseen_indices"] == list(range(8, 14))
    assert_png(out / "evidence.png")
    history = [{"epoch": e, "global_step": e, **report_scalars(report)} for e in range(2)]
    (out / "history.json").write_text(__import__("json").dumps(history))
    code, _, stderr = run_cli(["plot", out / "report.json", out / "history.json", "--output-dir", tmp_path / "plots"])
    assert code == 0, stderr
    assert_png(tmp_path / "plots" / "evidence_history.png")


def test_pruning_in_the_layers_with_the_largest_gap():
    from helpers import LitModel, make_trainer
    from lightning_memloc import MemorizationReport
    from lightning_memloc.callbacks.pruning import MemorizationPruning
    from lightning_memloc.report.evidence import Evidence

    widths = {"conv1": 4, "conv2": 8, "conv3": 16}
    gaps = {"conv1": 0.05, "conv2": 0.30, "conv3": 0.10}
    report = MemorizationReport(
        layers=list(widths), layer_kinds=dict.fromkeys(widths, "conv"), candidate_ids=torch.arange(3),
        unit_mem={n: torch.linspace(0, 1, w) for n, w in widths.items()},
        unit_argmax={n: torch.zeros(w, dtype=torch.long) for n, w in widths.items()},
        dead_units={n: torch.zeros(w, dtype=torch.bool) for n, w in widths.items()},
        evidence=Evidence(layers={n: {"align_gap": gaps[n], "align_gap_p_holm": 0.01 if n == "conv2" else 0.5}
                                  for n in widths}, meta={"alpha": 0.05}))
    torch.manual_seed(0)
    pruning = MemorizationPruning(report, amount=0.5, top_layers=1, by="align_gap", encoder="backbone",
                                  require_evidence="off")
    make_trainer([pruning], max_epochs=1).fit(LitModel())
    assert {k: v.tolist() for k, v in pruning.pruned_units.items()} == {"conv2": [4, 5, 6, 7]}
    with pytest.raises(ValueError, match="`top_layers`"):
        MemorizationPruning(report, top_layers=0)
    with pytest.raises(ValueError, match="`by`"):
        MemorizationPruning(report, top_layers=1, by="gap")
    no_gap = MemorizationReport(**{**report.__dict__, "evidence": None})
    with pytest.raises(ValueError, match="`by`='align_gap'.*unseen="):
        select_layers(no_gap, 1, by="align_gap")


def test_alignments_come_from_one_sync_per_metric(tmp_path, monkeypatch):
    """Under a (one-rank) process group the alignments add no sync of a metric already synced: with
    a reference none at all, without one a single sync of each group's ViewAlignment states."""
    import torch.distributed as dist

    from lightning_memloc.report.evidence import EvidenceOptions

    units, n = {"a": 3, "b": 2}, 6
    specs = [LayerSpec(k, "linear") for k in units]

    def calls_of(reference: bool, alignment: bool) -> list:
        gen = torch.Generator().manual_seed(0)
        meter = MemorizationMeter(specs, units, n, reference=reference, labels=False, groups={"unseen": 4},
                                  alignment=alignment)
        rows = {k: torch.rand(n + 4, generator=gen) for k in units}
        meter.update(torch.arange(n + 4), {k: torch.rand(n + 4, u, generator=gen) for k, u in units.items()}, rows,
                     rows if reference else None)
        calls: list = []
        original = dist.all_reduce
        monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **kw: calls.append(tuple(t.shape)) or original(t, *a, **kw))
        report = meter.compute_report(torch.arange(n), evidence=EvidenceOptions(bootstrap=200))
        monkeypatch.setattr(dist, "all_reduce", original)
        assert report.evidence.has("align_gap") == alignment
        return calls

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert calls_of(True, True) == calls_of(True, False)
        extra = calls_of(False, True)
        for shape in calls_of(False, False):
            extra.remove(shape)
        assert sorted(extra) == sorted([(n,), (2, n), (4,), (2, 4)])
    finally:
        dist.destroy_process_group()
