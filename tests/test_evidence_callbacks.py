"""Fine-tuning and pruning act on evidence: they rank by the excess over a control and say so
(or refuse) when no layer's memorization is significant."""

import pytest
import torch

from lightning_memloc.callbacks.report_source import evidence_problem, gate
from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.callbacks.pruning import MemorizationPruning
from lightning_memloc.report.evidence import EvidenceOptions, compute_evidence
from lightning_memloc.report.selection import select_layers

from test_finetuning import LAYERS, make_report
from helpers import LitModel, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def with_evidence(excess_shift, membership=False):
    """A report whose evidence has a control: candidates' raw SSLMem = control + shift per layer."""
    report = make_report()
    g = torch.Generator().manual_seed(0)
    control = {n: torch.randn(20, generator=g) for n in LAYERS}
    raw = {n: torch.randn(20, generator=g) + excess_shift[n] for n in LAYERS}
    mu = {n: torch.rand(20, report.unit_mem[n].numel(), generator=g) for n in LAYERS}
    unseen = None
    if membership:  # units tuned to candidates: every unit's μmax image is a candidate
        for n in LAYERS:
            mu[n][torch.arange(mu[n].shape[1]), torch.arange(mu[n].shape[1])] = 10.0
        unseen = {n: torch.rand(20, report.unit_mem[n].numel(), generator=g) for n in LAYERS}
    report.evidence = compute_evidence(LAYERS, unit_means=mu, sslmem_raw=raw, control_raw=control,
                                       unseen_unit_means=unseen, top_k=5, options=EvidenceOptions(bootstrap=300))
    return report


def test_evidence_problem_says_what_is_missing():
    assert "no evidence" in evidence_problem(make_report(), "excess")
    null = with_evidence({n: 0.0 for n in LAYERS})
    assert "no layer shows significant memorization" in evidence_problem(null, "excess")
    assert "without an unseen set" in evidence_problem(null, "membership")
    strong = with_evidence({"conv1": 0.0, "conv2": 0.0, "conv3": 3.0}, membership=True)
    assert evidence_problem(strong, "excess") is None and evidence_problem(strong, "membership") is None
    with pytest.raises(ValueError, match="refusing to act"):
        gate(null, "excess", "error", "test")
    with pytest.warns(UserWarning, match="may follow noise"):
        gate(null, "excess", "warn", "test")
    gate(null, "excess", "off", "test")  # silent


def test_select_layers_by_excess():
    report = with_evidence({"conv1": 2.0, "conv2": 0.0, "conv3": 1.0})
    assert select_layers(report, 2, by="excess") == ["conv1", "conv3"]
    with pytest.raises(ValueError, match="control"):
        select_layers(make_report(), 1, by="excess")


def test_finetuning_refuses_or_warns_without_significant_memorization():
    null = with_evidence({n: 0.0 for n in LAYERS})
    model = LitModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune = MemorizationFinetuning(null, k=1, encoder="backbone", head="head", require_evidence="error")
    with pytest.raises(ValueError, match="refusing to act.*no layer shows significant"):
        make_trainer([finetune], max_epochs=1).fit(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step was taken
    with pytest.warns(UserWarning, match="may follow noise"):
        make_trainer([MemorizationFinetuning(null, k=1, encoder="backbone", head="head")], max_epochs=1).fit(LitModel())
    # random / last choices do not rank by memorization: no evidence needed
    make_trainer([MemorizationFinetuning(null, k=1, strategy="last", encoder="backbone", head="head",
                                         require_evidence="error")], max_epochs=1).fit(LitModel())
    strong = with_evidence({"conv1": 0.0, "conv2": 0.0, "conv3": 3.0})
    finetune = MemorizationFinetuning(strong, k=1, by="excess", encoder="backbone", head="head", require_evidence="error")
    make_trainer([finetune], max_epochs=1).fit(LitModel())
    assert finetune.chosen_layers == ["conv3"]


def test_pruning_gate_uses_the_membership_test():
    with pytest.raises(ValueError, match="require_evidence"):
        MemorizationPruning(make_report(), require_evidence="maybe")
    prune = MemorizationPruning(with_evidence({n: 0.0 for n in LAYERS}), amount=0.25, encoder="backbone",
                                require_evidence="error")
    with pytest.raises(ValueError, match="without an unseen set"):
        make_trainer([prune], max_epochs=1).fit(LitModel())
    prune = MemorizationPruning(with_evidence({n: 0.0 for n in LAYERS}, membership=True), amount=0.25,
                                encoder="backbone", require_evidence="error")
    make_trainer([prune], max_epochs=1).fit(LitModel())
    assert sum(v.numel() for v in prune.pruned_units.values()) > 0


def test_by_auto_ranks_by_the_excess_when_the_report_has_a_control(caplog):
    """by='auto' (the default): the excess with a control, raw LayerMem with a reference only, else mean UnitMem."""
    import logging

    from lightning_memloc.report.selection import layer_score

    controlled = with_evidence({"conv1": 2.0, "conv2": 0.0, "conv3": 1.0})  # excess: conv1 > conv3; LayerMem: conv2
    units = {"conv1": torch.full((4,), 0.1), "conv2": torch.full((8,), 0.2), "conv3": torch.full((16,), 0.6)}
    cases = [(controlled, "excess", ["conv1"]), (make_report(), "layer_mem", ["conv2"]),
             (make_report(layer_mem=None, delta=None, unit_mem=units), "unit_mem", ["conv3"])]
    for report, score, expected in cases:
        assert layer_score(report, "auto") == score and layer_score(report, "delta_layer_mem") == "delta_layer_mem"
        assert select_layers(report, 1, by="auto") == select_layers(report, 1, by=score) == expected
        finetune = MemorizationFinetuning(report, k=1, encoder="backbone", head="head", require_evidence="off")
        assert finetune.by == "auto"
        with caplog.at_level(logging.INFO):
            caplog.clear()
            make_trainer([finetune], max_epochs=1).fit(LitModel())
        assert finetune.chosen_layers == expected
        assert f"fine-tuning layers {expected} (strategy='highest', by={score!r} (by='auto': " in caplog.text
    # no reference but unseen images: the reference-free alignment gap; pruning's top_layers ranks the same way
    from lightning_memloc.report.evidence import Evidence

    gapped = make_report(layer_mem=None, delta=None, unit_mem=units)
    gapped.evidence = Evidence(layers={n: {"align_gap": g, "align_gap_p_holm": 0.01} for n, g in
                                       zip(LAYERS, (0.05, 0.3, 0.1))}, meta={"alpha": 0.05})
    assert layer_score(gapped, "auto") == "align_gap" and select_layers(gapped, 1, by="auto") == ["conv2"]
    prune = MemorizationPruning(gapped, amount=0.5, top_layers=1, encoder="backbone", require_evidence="off")
    assert prune.by == "auto"
    with caplog.at_level(logging.INFO):
        caplog.clear()
        make_trainer([prune], max_epochs=1).fit(LitModel())
    assert list(prune.pruned_units) == ["conv2"] and "in the 1 layers ranked by 'align_gap'" in caplog.text
    # the gate follows the resolved score: a control without a significant excess is refused
    null = with_evidence({n: 0.0 for n in LAYERS})
    with pytest.raises(ValueError, match="by 'excess'.*no layer shows significant"):
        make_trainer([MemorizationFinetuning(null, k=1, encoder="backbone", head="head", require_evidence="error")],
                     max_epochs=1).fit(LitModel())
