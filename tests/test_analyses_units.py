"""Single-unit restore and atypicality (lightning_memloc.analyses.restore / .atypicality)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lightning_memloc import ArchitectureMismatchError, LayerNotFoundError, MemorizationReport, measure
from lightning_memloc.analyses import (
    atypicality_study,
    class_mean_distance,
    embed,
    finetune_units,
    knn_distance,
    max_unit_mem,
    restore_units,
    spearman,
    unit_module,
)
from lightning_memloc.models import TinyCNN, TinyMLP
from lightning_memloc.models.resnet9 import Residual


def perturbed(model: nn.Module, prefix: str) -> nn.Module:
    """A copy whose parameters and float buffers under ``prefix`` are all shifted by +1."""
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in tuned.state_dict(keep_vars=True).items():
            if name.startswith(prefix) and tensor.is_floating_point():
                tensor.add_(1.0)
    return tuned


# ---------------------------------------------------------------------------------- restore
def test_restore_units_conv_block_rows_and_norm_parameters():
    torch.manual_seed(0)
    f = TinyCNN(width=2)  # conv2: 4 units; conv weight, BN weight / bias / running stats
    tuned = perturbed(f, "conv")  # every layer changed
    tuned.conv2.bn.num_batches_tracked.fill_(7)
    tuned.train()
    tuned.conv2.conv.weight.requires_grad_(False)
    done = restore_units(tuned, f, "conv2", keep=[1, 3])
    assert done == {"conv.weight": "rows", "bn.weight": "rows", "bn.bias": "rows", "bn.running_mean": "rows",
                    "bn.running_var": "rows"}
    keep = torch.tensor([False, True, False, True])
    for name in done:
        new, old = tuned.conv2.get_parameter(name) if "running" not in name else tuned.conv2.get_buffer(name), \
            f.conv2.state_dict()[name]
        assert torch.equal(new[~keep], old[~keep]), name  # the other units: the original weights
        assert torch.equal(new[keep], old[keep] + 1), name  # the kept units: fine-tuned
    assert int(tuned.conv2.bn.num_batches_tracked) == 7  # a counter, not a unit
    assert torch.equal(tuned.conv1.conv.weight, f.conv1.conv.weight + 1)  # other layers untouched
    assert tuned.training and not tuned.conv2.conv.weight.requires_grad and tuned.conv2.bn.weight.requires_grad


def test_restore_units_keeps_only_the_kept_units_outputs():
    torch.manual_seed(0)
    f = TinyCNN(width=2).eval()
    tuned = perturbed(f, "conv3")
    restore_units(tuned, f, "conv3", keep=5)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        a, b = f(x), tuned(x)  # (B, 8): one value per conv3 unit (global average pool)
    others = torch.arange(8) != 5
    assert torch.allclose(a[:, others], b[:, others], atol=1e-6) and not torch.allclose(a[:, 5], b[:, 5])


def test_restore_units_residual_block_restores_the_inner_conv_whole():
    torch.manual_seed(0)
    f = nn.Sequential(Residual(3))
    tuned = perturbed(f, "0.")
    done = restore_units(tuned, f, "0", keep=[0])
    assert unit_module(f[0]) == ("conv2.conv", 3)
    assert done["conv1.conv.weight"] == "all" and done["conv1.bn.running_var"] == "all"
    assert done["conv2.conv.weight"] == "rows" and done["conv2.bn.bias"] == "rows"
    assert torch.equal(tuned[0].conv1.conv.weight, f[0].conv1.conv.weight)
    assert torch.equal(tuned[0].conv2.conv.weight[1:], f[0].conv2.conv.weight[1:])
    assert torch.equal(tuned[0].conv2.conv.weight[0], f[0].conv2.conv.weight[0] + 1)


def test_restore_units_linear_layer_and_errors():
    torch.manual_seed(0)
    f = TinyMLP(12, hidden=(3, 2))
    tuned = perturbed(f, "fc1")
    assert restore_units(tuned, f, "fc1", keep=torch.tensor([2])) == {"weight": "rows", "bias": "rows"}
    assert torch.equal(tuned.fc1.weight[:2], f.fc1.weight[:2]) and torch.equal(tuned.fc1.bias[2], f.fc1.bias[2] + 1)
    with pytest.raises(ValueError, match="'fc1' rather than the ReLU tap"):
        restore_units(tuned, f, "relu1", keep=0)
    with pytest.raises(ValueError, match="units 0..2"):
        restore_units(tuned, f, "fc1", keep=[3])
    with pytest.raises(TypeError, match="unit index"):
        restore_units(tuned, f, "fc1", keep=[0.5])
    with pytest.raises(LayerNotFoundError, match="fc1"):
        restore_units(tuned, f, "fc9", keep=0)
    with pytest.raises(ArchitectureMismatchError, match="fc2"):
        restore_units(tuned, TinyMLP(12, hidden=(3, 3)), "fc2", keep=0)


def test_finetune_units_raises_the_kept_units_unit_mem_and_leaves_the_others(one_thread):
    torch.manual_seed(0)
    f = TinyCNN(width=2)
    f.train()
    x = torch.rand(6, 3, 8, 8)

    def unit0_on_candidate0(model: nn.Module) -> torch.Tensor:
        # make unit 0 of conv3 fire for candidate 0 and not for the others: a memorizing unit
        a = model.conv3(model.pool2(model.conv2(model.pool1(model.conv1(x))))).mean((2, 3))[:, 0]
        return -(a[0] - 2 * a[1:].mean())

    before_state = copy.deepcopy(f.state_dict())
    plain = x[:, None].expand(-1, 2, -1, -1, -1).contiguous()  # precomputed "views": the plain images, twice
    tuned, out = finetune_units(f, "conv3", [0], unit0_on_candidate0, plain, steps=40, lr=0.003)
    assert all(torch.equal(v, before_state[k]) for k, v in f.state_dict().items())  # f untouched
    assert f.training and tuned.training  # modes as the encoder's
    assert out["units"] == [0] and out["layer"] == out["tap"] == "conv3"
    assert out["unit_mem_before"][0] < 0.4 and out["argmax_before"] != [0]
    assert out["unit_mem_after"][0] > 0.6 and out["argmax_after"] == [0]  # unit 0 now memorizes candidate 0
    assert out["other_units_max_change"] <= 1e-6
    changed = (tuned.conv3.conv.weight != f.conv3.conv.weight).flatten(1).any(1)
    assert changed.tolist() == [True] + [False] * 7
    with pytest.raises(ValueError, match="`steps`"):
        finetune_units(f, "conv3", [0], unit0_on_candidate0, x, steps=0)
    with pytest.raises(ValueError, match="units 0..7"):
        finetune_units(f, "conv3", [8], unit0_on_candidate0, x)


# ------------------------------------------------------------------------------ atypicality
def test_knn_distance_hand_computed_with_exclusion():
    query, pool = torch.tensor([[0.0], [10.0]]), torch.tensor([[0.0], [1.0], [3.0], [9.0]])
    d, i = knn_distance(query, pool, k=2)
    assert d.tolist() == [0.5, 4.0] and i.tolist() == [[0, 1], [3, 2]]
    d, i = knn_distance(query, pool, k=2, exclude=torch.tensor([0, -1]))  # candidate 0 is pool image 0
    assert d.tolist() == [2.0, 4.0] and i.tolist() == [[1, 2], [3, 2]]
    d, _ = knn_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [6.0, 8.0]]), k=2)
    assert d.tolist() == [7.5]  # (5 + 10) / 2
    with pytest.raises(ValueError, match="`k` must be an int in \\[1, 3\\]"):
        knn_distance(query, pool, k=4, exclude=torch.tensor([0, -1]))


def test_class_mean_distance_hand_computed():
    d = class_mean_distance(torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([1, 0]),
                            torch.tensor([[2.0, 0.0], [0.0, 2.0], [4.0, 3.0]]), torch.tensor([1, 1, 0]))
    assert d.tolist() == pytest.approx([np.sqrt(2.0), 3.0])  # centre of class 1: (1, 1)
    with pytest.raises(ValueError, match="classes \\[2\\]"):
        class_mean_distance(torch.zeros(1, 2), torch.tensor([2]), torch.zeros(1, 2), torch.tensor([0]))


def test_max_unit_mem_skips_dead_units():
    r = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.tensor([5, 6, 7]),
                           unit_mem={"a": torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1])},
                           unit_argmax={"a": torch.tensor([6, 6, -1, 5, 6])},
                           dead_units={"a": torch.tensor([False, False, True, False, False])})
    assert max_unit_mem(r, "a").tolist() == pytest.approx([0.7, 0.9, 0.0])


def test_spearman_against_pearson_of_ranks():
    from scipy.stats import rankdata

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20), rng.integers(0, 5, 20).astype(float)  # ties in b
    expected = np.corrcoef(rankdata(a), rankdata(b))[0, 1]
    assert spearman(a, b)["rho"] == pytest.approx(expected)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45])["rho"] == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == {"rho": 0.0, "p": None}


def test_embed_eval_mode_uint8_and_normalisation():
    torch.manual_seed(0)
    model = TinyCNN(width=2)
    model.train()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    z = embed(model, images, batch_size=2, normalize=False)
    assert model.training  # mode restored
    with torch.no_grad():
        expected = model.eval()(images.float() / 255)
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.allclose(embed(model, images).norm(dim=1), torch.ones(5), atol=1e-6)


def hand_report() -> MemorizationReport:
    return MemorizationReport(
        layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.tensor([10, 11, 12, 13]),
        unit_mem={"a": torch.tensor([0.9, 0.4])}, unit_argmax={"a": torch.tensor([12, 10])},
        dead_units={"a": torch.tensor([False, False])},
        sslmem={"a": torch.tensor([0.1, 0.0, 0.9, 0.5])}, sslmem_raw={"a": torch.tensor([0.1, 0.0, 0.9, 0.5])},
        layer_mem={"a": 0.375}, delta_layer_mem={"a": 0.375}, layer_mem_top={"a": 0.9}, layer_mem_least={"a": 0.0})


def test_atypicality_study_hand_computed():
    # identity "encoder": the embedding is the pixels, so distances are hand-computable (1 channel, 1x2 image)
    candidates = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 6.0], [3.0, 0.0]]).view(4, 1, 1, 2)
    pool = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [0.0, 5.0]]).view(4, 1, 1, 2)
    labels, pool_labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])
    out = atypicality_study(nn.Flatten(), hand_report(), candidates, pool, k=2, normalize=False,
                            candidate_labels=labels, pool_labels=pool_labels, exclude=torch.tensor([0, -1, -1, -1]),
                            pool_ids=[100, 101, 102, 103], top=2, neighbours=1)
    # candidate 0 = pool 100 (excluded): neighbours 101 (2), 102 (4) -> 3; candidate 1: 100 (1), 101 (1) -> 1
    # candidate 2 (0,6): 103 (1), 101 (4) -> 2.5; candidate 3 (3,0): 100 (3), 102 (1) -> 2
    assert out["knn_distance"] == pytest.approx([3.0, 1.0, 2.5, 2.0])
    # class means: class 0 (0, 1), class 1 (2, 2.5)
    assert out["class_mean_distance"] == pytest.approx([1.0, 0.0, np.hypot(2, 3.5), np.hypot(1, 2.5)])
    assert out["spearman"]["sslmem"]["a"]["rho"] == pytest.approx(spearman([3.0, 1.0, 2.5, 2.0], [0.1, 0.0, 0.9, 0.5])["rho"])
    assert out["spearman"]["max_unit_mem"]["a"]["rho"] == pytest.approx(
        spearman([3.0, 1.0, 2.5, 2.0], [0.4, 0.0, 0.9, 0.0])["rho"])
    top = out["most_memorized"]
    assert top["ids"] == [12, 13] and top["positions"] == [2, 3] and top["scores"] == pytest.approx([0.9, 0.5])
    assert top["neighbours"] == [[103], [102]] and top["neighbour_positions"] == [[3], [2]]


def test_atypicality_study_checks_inputs():
    r = hand_report()
    with pytest.raises(ValueError, match="report's 4 candidates"):
        atypicality_study(nn.Flatten(), r, torch.zeros(3, 1, 1, 2), torch.zeros(4, 1, 1, 2))
    with pytest.raises(ValueError, match="shaped like the candidates"):
        atypicality_study(nn.Flatten(), r, torch.zeros(4, 1, 1, 2), torch.zeros(4, 1, 2, 2))
    with pytest.raises(ValueError, match="`pool_ids`"):
        atypicality_study(nn.Flatten(), r, torch.zeros(4, 1, 1, 2), torch.zeros(4, 1, 1, 2), k=1, pool_ids=[1])


def test_atypicality_study_on_a_measured_report(one_thread):
    torch.manual_seed(0)
    f = TinyCNN(width=2)
    x = torch.rand(6, 3, 8, 8)
    report = measure(f, x, views=2)  # no reference: UnitMem only
    out = atypicality_study(f, report, x, torch.cat([x, torch.rand(4, 3, 8, 8)]), k=2,
                            exclude=torch.arange(6), top=3, neighbours=2)
    assert out["spearman"]["sslmem"] is None and set(out["spearman"]["max_unit_mem"]) == set(report.layers)
    assert min(out["knn_distance"]) > 0  # no candidate is its own neighbour
    assert all(p not in n for p, n in zip(out["most_memorized"]["positions"], out["most_memorized"]["neighbour_positions"]))
