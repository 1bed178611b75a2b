"""Cross-layer consistency, layer exchange and the analyses runner (lightning_memloc.analyses)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from lightning_memloc import ArchitectureMismatchError, LayerNotFoundError, MemorizationReport, measure
from lightning_memloc.analyses import (
    consistency_matrices,
    exchange_layers,
    kendall_tau,
    layer_consistency,
    layer_exchange_study,
    parse_analyses,
    run_analyses,
    top_k_overlap,
)
from lightning_memloc.models import TinyCNN


def hand_report(sslmem: dict, n: int) -> MemorizationReport:
    layers = list(sslmem)
    return MemorizationReport(
        layers=layers, layer_kinds={l: "conv" for l in layers}, candidate_ids=torch.arange(n),
        unit_mem={l: torch.zeros(2) for l in layers}, unit_argmax={l: torch.zeros(2, dtype=torch.long) for l in layers},
        dead_units={l: torch.zeros(2, dtype=torch.bool) for l in layers},
        sslmem={l: torch.tensor(v, dtype=torch.float32) for l, v in sslmem.items()},
        sslmem_raw={l: torch.tensor(v, dtype=torch.float32) for l, v in sslmem.items()},
        layer_mem={l: float(np.mean(v)) for l, v in sslmem.items()},
        delta_layer_mem={l: float(np.mean(v)) for l, v in sslmem.items()},
        layer_mem_top={l: 0.0 for l in layers}, layer_mem_least={l: 0.0 for l in layers})


def slow_tau_b(a, b) -> float:
    """Kendall's τ-b from its definition: (C − D) / sqrt((n0 − n1)(n0 − n2))."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        ties_a += da == 0
        ties_b += db == 0
        concordant += da * db > 0
        discordant += da * db < 0
    n0 = len(a) * (len(a) - 1) / 2
    return (concordant - discordant) / np.sqrt((n0 - ties_a) * (n0 - ties_b))


# ------------------------------------------------------------------------------ consistency
def test_top_k_overlap_hand_computed():
    assert top_k_overlap([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], k=2) == 0.0
    assert top_k_overlap([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], k=3) == pytest.approx(1 / 3)  # both hold candidate 2
    assert top_k_overlap([5, 4, 3, 2, 1], [9, 8, 0, 0, 0], k=2) == 1.0
    assert top_k_overlap([1, 1, 0], [0, 1, 1], k=1) == 0.0  # ties broken by position: {0} vs {1}
    assert top_k_overlap(torch.tensor([0.1, 0.9, 0.5]), np.array([0.0, 2.0, 1.0]), k=3) == 1.0


def test_kendall_tau_hand_computed_and_against_definition():
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)  # 5 concordant, 1 discordant of 6
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0  # a constant score ranks nothing
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)  # many ties
        assert kendall_tau(a, b) == pytest.approx(slow_tau_b(a, b))


@pytest.mark.parametrize("bad, match", [([1.0], "at least 2"), ([0.0, float("nan")], "NaN"), ([[1.0, 2.0]], "1-d")])
def test_scores_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        kendall_tau(bad, bad)


def test_overlap_rejects_bad_k_and_sizes():
    with pytest.raises(ValueError, match="`k` must be an int in \\[1, 3\\]"):
        top_k_overlap([1, 2, 3], [1, 2, 3], k=4)
    with pytest.raises(ValueError, match="same candidates"):
        top_k_overlap([1, 2, 3], [1, 2], k=1)


def test_consistency_matrices_hand_computed():
    out = consistency_matrices({"a": [3, 2, 1, 0], "b": [0, 1, 2, 3], "c": [3, 2, 0, 1]}, k=2)
    assert out["layers"] == ["a", "b", "c"] and out["k"] == 2
    assert out["top_k_overlap"] == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    tau = np.array(out["kendall_tau"])
    assert np.allclose(tau, tau.T) and np.allclose(np.diag(tau), 1.0)
    assert tau[0, 1] == pytest.approx(-1.0) and tau[0, 2] == pytest.approx(4 / 6)  # one swapped pair of 6
    assert consistency_matrices({"a": [1, 2], "b": [2, 1]}, k=5)["k"] == 2  # clipped to N


def test_layer_consistency_invariant_to_normalisation_and_checks():
    raw = {"l1": [0.3, -0.1, 0.2, 0.0, 0.5], "l2": [0.1, 0.4, -0.2, 0.3, 0.0]}
    scaled = {l: list(np.asarray(v) / 7.0) for l, v in raw.items()}  # range normalisation: one positive factor
    a, b = layer_consistency(hand_report(raw, 5), k=2), layer_consistency(hand_report(scaled, 5), k=2)
    assert a == b
    assert a["chance_overlap"] == pytest.approx(2 / 5)
    assert a["mean_adjacent_tau"] == pytest.approx(a["kendall_tau"][0][1])
    assert a["top_k_overlap"][0][1] == 0.0  # top-2: {4, 0} vs {1, 3}
    with pytest.raises(ValueError, match="not in the report"):
        layer_consistency(hand_report(raw, 5), layers=["l1", "nope"])
    no_reference = hand_report(raw, 5)
    no_reference.sslmem = None
    with pytest.raises(ValueError, match="reference"):
        layer_consistency(no_reference)


# --------------------------------------------------------------------------------- exchange
@pytest.fixture
def pair():
    torch.manual_seed(0)
    f, g = TinyCNN(width=2), TinyCNN(width=2)
    with torch.no_grad():  # distinct running statistics, to see buffers move too
        for model, value in ((f, 0.5), (g, -0.5)):
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.fill_(value)
    return f, g


def test_exchange_layers_copies_parameters_and_buffers_of_those_layers_only(pair):
    f, g = pair
    f.train()
    f.conv1.conv.weight.requires_grad_(False)
    f_state, g_state = copy.deepcopy(f.state_dict()), copy.deepcopy(g.state_dict())
    h = exchange_layers(f, g, ["conv2"])
    for key, value in h.state_dict().items():
        expected = g_state[key] if key.startswith("conv2.") else f_state[key]
        assert torch.equal(value, expected), key
    assert all(torch.equal(v, f_state[k]) for k, v in f.state_dict().items())  # f and g untouched
    assert all(torch.equal(v, g_state[k]) for k, v in g.state_dict().items())
    assert h.training and not h.conv1.conv.weight.requires_grad and h.conv2.conv.weight.requires_grad
    assert h is not f and h.conv2.conv.weight.data_ptr() != g.conv2.conv.weight.data_ptr()


def test_exchanging_every_layer_gives_g(pair):
    f, g = pair
    f.eval(), g.eval()
    x = torch.rand(4, 3, 16, 16)
    h = exchange_layers(f, g, ["conv1", "conv2", "conv3"])
    assert torch.equal(h(x), g(x)) and not torch.equal(h(x), f(x))
    assert all(torch.equal(a, b) for a, b in zip(exchange_layers(f, g, []).state_dict().values(), f.state_dict().values()))


def test_exchange_layers_errors(pair):
    f, _ = pair
    with pytest.raises(ArchitectureMismatchError, match="conv2"):
        exchange_layers(f, TinyCNN(width=3), ["conv2"])
    with pytest.raises(LayerNotFoundError, match="conv2"):
        exchange_layers(f, f, ["conv22"])
    with pytest.raises(TypeError, match="sequence of module names"):
        exchange_layers(f, f, "conv1")


def test_layer_exchange_study_against_direct_measurements(pair, one_thread):
    f, g = pair
    x = torch.rand(8, 3, 16, 16)
    kw = dict(views=3, seed=1, batch_size=8)
    report = measure(f, x, reference=g, top_k=2, **kw)
    out = layer_exchange_study(f, g, x, report, k=3, random_draws=2, seed=1, views=3, batch_size=8)
    last = report.layers[-1]
    base = report.sslmem_raw[last].double()
    assert out["measure_layer"] == last
    assert out["baseline"]["sslmem_raw_mean"] == pytest.approx(float(base.mean()), abs=1e-6)
    assert out["baseline"]["range"] == pytest.approx(float(base.max() - base.min()), abs=1e-6)
    # k = all 3 layers: every group is f turned into g, whose SSLMem against g is exactly 0.
    for group in ("top_layer_mem", "top_delta_layer_mem", "last"):
        entry = out["groups"][group]
        assert sorted(entry["layers"]) == ["conv1", "conv2", "conv3"] and entry["sslmem_raw_mean"] == 0.0
        assert entry["drop"] == pytest.approx(out["baseline"]["sslmem_raw_mean"])
        assert entry["relative_drop"] == pytest.approx(1.0) or out["baseline"]["sslmem_raw_mean"] <= 0
    for layer, entry in out["single"].items():
        direct = measure(exchange_layers(f, g, [layer]), x, reference=g, layers=[last], **kw).sslmem_raw[last]
        assert entry["sslmem_raw_mean"] == pytest.approx(float(direct.double().mean()), abs=1e-6)
        assert entry["drop_normalised"] == pytest.approx(entry["drop"] / out["baseline"]["range"])
    assert out["random_mean_drop"] == pytest.approx(np.mean([d["drop"] for d in out["groups"]["random"]]))


def test_layer_exchange_study_groups_follow_the_report(pair, one_thread):
    f, g = pair
    x = torch.rand(6, 3, 8, 8)
    report = measure(f, x, reference=g, views=2, top_k=2)
    report.layer_mem = {"conv1": 0.9, "conv2": 0.1, "conv3": 0.5}
    report.delta_layer_mem = {"conv1": 0.0, "conv2": 0.7, "conv3": 0.6}
    out = layer_exchange_study(f, g, x, report, k=2, random_draws=0, views=2)
    assert out["groups"]["top_layer_mem"]["layers"] == ["conv1", "conv3"]
    assert out["groups"]["top_delta_layer_mem"]["layers"] == ["conv2", "conv3"]
    assert out["groups"]["last"]["layers"] == ["conv2", "conv3"] and out["groups"]["random"] == []
    # same group of layers -> one measurement, identical numbers
    assert out["groups"]["last"]["sslmem_raw_mean"] == out["groups"]["top_delta_layer_mem"]["sslmem_raw_mean"]


def test_layer_exchange_study_checks_before_measuring(pair):
    f, g = pair
    x = torch.rand(4, 3, 8, 8)
    no_ref = measure(f, x, views=2)
    with pytest.raises(ValueError, match="reference"):
        layer_exchange_study(f, g, x, no_ref)
    report = measure(f, x, reference=g, views=2)
    with pytest.raises(ValueError, match="`k` must be an int in \\[1, 3\\]"):
        layer_exchange_study(f, g, x, report, k=4)
    with pytest.raises(ValueError, match="`random_draws`"):
        layer_exchange_study(f, g, x, report, random_draws=-1)
    with pytest.raises(ValueError, match="not in the report"):
        layer_exchange_study(f, g, x, report, layers=["pool1"])


# ----------------------------------------------------------------------------------- runner
def test_parse_analyses():
    assert parse_analyses("all") == ["consistency", "exchange", "atypicality"]
    assert parse_analyses(["exchange", "consistency"]) == ["consistency", "exchange"]
    with pytest.raises(ValueError, match="unknown analyses \\['bogus'\\]"):
        parse_analyses("consistency,bogus")
    with pytest.raises(ValueError, match="choose from"):
        parse_analyses(" , ")


def test_run_analyses_stores_json_results_that_round_trip(pair, tmp_path, one_thread):
    f, g = pair
    x = torch.rand(6, 3, 8, 8)
    report = measure(f, x, reference=g, views=2, top_k=2)
    with pytest.raises(ValueError, match="pass `pool`"):
        run_analyses("atypicality", report, f, candidates=x)
    with pytest.raises(ValueError, match="pass `reference`"):
        run_analyses("exchange", report, f, candidates=x)
    results = run_analyses("all", report, f, reference=g, candidates=x, pool=torch.rand(9, 3, 8, 8), knn=2,
                           random_draws=1)
    assert set(report.analyses) == {"consistency", "exchange", "atypicality"} and results == report.analyses
    assert results["consistency"] == layer_consistency(report, k=2)  # the report's top_k
    loaded = MemorizationReport.load(report.save(tmp_path / "r.json"))
    assert loaded.analyses == report.analyses
    no_ref = measure(f, x, views=2)
    with pytest.raises(ValueError, match="need SSLMem"):
        run_analyses("consistency", no_ref, f)


def test_layer_exchange_study_control_subtracts_what_the_control_shows(pair, one_thread):
    f, g = pair
    x, control = torch.rand(6, 3, 8, 8), torch.rand(5, 3, 8, 8)
    report = measure(f, x, reference=g, views=2, top_k=2)
    same = layer_exchange_study(f, g, x, report, k=1, random_draws=1, views=2, control=x)
    for entry in list(same["single"].values()) + [same["groups"]["last"]]:
        assert entry["control_drop"] == entry["drop"] and entry["drop_minus_control"] == 0.0  # control = candidates
    out = layer_exchange_study(f, g, x, report, k=1, random_draws=0, views=2, control=control)
    direct = measure(exchange_layers(f, g, ["conv2"]), control, reference=g, views=2, layers=["conv3"]).sslmem_raw["conv3"]
    expected = out["control_baseline"]["sslmem_raw_mean"] - float(direct.double().mean())
    assert out["single"]["conv2"]["control_drop"] == pytest.approx(expected, abs=1e-6)
    assert out["single"]["conv2"]["drop_minus_control"] == pytest.approx(out["single"]["conv2"]["drop"] - expected, abs=1e-6)
    assert "control_drop" not in layer_exchange_study(f, g, x, report, k=1, random_draws=0, views=2)["single"]["conv1"]
