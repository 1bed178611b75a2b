"""measure() against a slow, straightforward per-candidate float64 reference implementation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lightning_memloc import ArchitectureMismatchError, LayerNotFoundError, make_views, measure
from lightning_memloc.models import TinyCNN, TinyMLP

LAYERS = ["conv1", "conv2", "conv3"]


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics so that eval-mode BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
    return model


def slow_reference(encoder, reference, views, layers, top_k):
    """One candidate, one view, one layer at a time, in float64 with Python loops."""
    def outputs(model, x):
        model = copy.deepcopy(model).double().eval()
        grabbed = {}
        modules = dict(model.named_modules())
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: grabbed.__setitem__(n, o.detach())) for n in layers]
        with torch.no_grad():
            model(x.double().unsqueeze(0))
        for h in hooks:
            h.remove()
        return grabbed

    n, k = views.shape[:2]
    out_f = [[outputs(encoder, views[i, j]) for j in range(k)] for i in range(n)]
    out_g = [[outputs(reference, views[i, j]) for j in range(k)] for i in range(n)]
    result = {"unit_mem": {}, "argmax": {}, "sslmem": {}, "layer_mem": {}}
    for layer in layers:
        units = out_f[0][0][layer].shape[1]
        mu = [[sum(float(out_f[i][j][layer][0, u].mean()) for j in range(k)) / k for u in range(units)] for i in range(n)]
        scores, argmax = [], []
        for u in range(units):
            col = [mu[i][u] for i in range(n)]
            best = max(range(n), key=lambda i: col[i])
            rest = sum(col[i] for i in range(n) if i != best) / (n - 1)
            scores.append(0.0 if col[best] + rest == 0 else (col[best] - rest) / (col[best] + rest))
            argmax.append(best if col[best] > 0 else -1)  # a dead unit has no μmax candidate
        result["unit_mem"][layer] = torch.tensor(scores, dtype=torch.float64)
        result["argmax"][layer] = argmax

        def align(outs, i):
            reps = [outs[i][j][layer].flatten() for j in range(k)]
            reps = [r / r.norm() for r in reps]
            dists = [float((reps[a] - reps[b]).norm()) for a in range(k) for b in range(a + 1, k)]
            return sum(dists) / len(dists)

        raw = [align(out_g, i) - align(out_f, i) for i in range(n)]
        span = max(raw) - min(raw)
        result["sslmem"][layer] = torch.tensor([r / span if span else 0.0 for r in raw], dtype=torch.float64)
        result["layer_mem"][layer] = sum(r / span if span else 0.0 for r in raw) / n
    last = result["sslmem"][layers[-1]]
    top = sorted(range(n), key=lambda i: -float(last[i]))[:top_k]
    result["top"] = {layer: float(result["sslmem"][layer][top].mean()) for layer in layers}
    return result


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    encoder = _perturbed(TinyCNN(width=4), 1)
    reference = _perturbed(TinyCNN(width=4), 2)
    images = torch.rand(7, 3, 12, 12)
    views = make_views(images, views=3, seed=5)
    expected = slow_reference(encoder, reference, views, LAYERS, top_k=3)
    return encoder, reference, images, views, expected


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_measure_matches_slow_reference(setup, batch_size):
    encoder, reference, _, views, expected = setup
    report = measure(encoder, views, reference=reference, layers=LAYERS, batch_size=batch_size, top_k=3)
    assert report.layers == LAYERS
    for layer in LAYERS:
        torch.testing.assert_close(report.unit_mem[layer].double(), expected["unit_mem"][layer], atol=1e-5, rtol=0)
        assert report.unit_argmax[layer].tolist() == expected["argmax"][layer]
        torch.testing.assert_close(report.sslmem[layer].double(), expected["sslmem"][layer], atol=1e-4, rtol=0)
        assert report.layer_mem[layer] == pytest.approx(expected["layer_mem"][layer], abs=1e-4)
        assert report.layer_mem_top[layer] == pytest.approx(expected["top"][layer], abs=1e-4)
    deltas = [report.delta_layer_mem[layer] for layer in LAYERS]
    lms = [expected["layer_mem"][layer] for layer in LAYERS]
    assert deltas == pytest.approx([lms[0], lms[1] - lms[0], lms[2] - lms[1]], abs=1e-4)


def test_auto_layers_and_images_equal_precomputed_views(setup):
    encoder, reference, images, views, _ = setup
    from_images = measure(encoder, images, reference=reference, views=3, seed=5, batch_size=2, top_k=3)
    from_views = measure(encoder, views, reference=reference, batch_size=4, top_k=3)
    assert from_images.layers == LAYERS
    assert from_images.allclose(from_views, atol=1e-6)


def test_candidate_order_permutes_results(setup):
    encoder, reference, _, views, _ = setup
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    base = measure(encoder, views, reference=reference, top_k=3)
    shuffled = measure(encoder, views[perm], reference=reference, top_k=3, candidate_ids=perm)
    for layer in LAYERS:
        torch.testing.assert_close(shuffled.unit_mem[layer], base.unit_mem[layer], atol=1e-6, rtol=0)
        alive = ~base.dead_units[layer]  # a dead unit's argmax is a tie among all candidates
        assert torch.equal(shuffled.dead_units[layer], base.dead_units[layer])
        assert torch.equal(shuffled.unit_argmax[layer][alive], base.unit_argmax[layer][alive])
        torch.testing.assert_close(shuffled.sslmem[layer], base.sslmem[layer][perm], atol=1e-6, rtol=0)
        assert shuffled.layer_mem[layer] == pytest.approx(base.layer_mem[layer], abs=1e-6)


def test_without_reference_only_unitmem(setup):
    encoder, _, images, _, _ = setup
    report = measure(encoder, images, views=2)
    assert not report.has_reference and report.layer_mem is None and report.sslmem is None
    for layer in report.layers:
        assert ((report.unit_mem[layer] >= 0) & (report.unit_mem[layer] <= 1)).all()


def test_classmem_with_labels(setup):
    encoder, _, images, _, _ = setup
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    report = measure(encoder, images, views=2, labels=labels)
    assert report.class_mem is not None
    assert set(report.class_mem) == set(report.layers)


def test_modes_and_requires_grad_restored(setup):
    encoder, reference, images, _, _ = setup
    encoder.train()
    encoder.conv1.eval()  # a mixed state, e.g. a frozen BN block
    for p in encoder.conv2.parameters():
        p.requires_grad_(False)
    before = {n: m.training for n, m in encoder.named_modules()}
    grads = {n: p.requires_grad for n, p in encoder.named_parameters()}
    measure(encoder, images, reference=reference, views=2)
    assert {n: m.training for n, m in encoder.named_modules()} == before
    assert {n: p.requires_grad for n, p in encoder.named_parameters()} == grads
    assert all(not m._forward_hooks for m in encoder.modules())
    for p in encoder.parameters():
        p.requires_grad_(True)
    encoder.eval()


def test_errors_before_work(setup):
    encoder, reference, images, _, _ = setup
    with pytest.raises(ValueError, match="at least 2 candidates"):
        measure(encoder, images[:1])
    with pytest.raises(ValueError, match="views"):
        measure(encoder, images, reference=reference, views=1)
    with pytest.raises(LayerNotFoundError, match="conv1"):
        measure(encoder, images, layers=["con1"])
    with pytest.raises(ArchitectureMismatchError):
        measure(encoder, images, reference=TinyCNN(width=5), views=2)
    with pytest.raises(ValueError, match="pairing"):
        measure(encoder, images, pairing="pairs")
    with pytest.raises(TypeError, match="reference"):
        measure(encoder, images, reference="model.ckpt")


def test_anchor_pairing_single_view(setup):
    encoder, reference, images, _, _ = setup
    report = measure(encoder, images, reference=reference, views=1, pairing="anchor", top_k=2)
    for layer in report.layers:
        normalised = report.sslmem[layer]
        assert torch.isfinite(normalised).all()
        # normalised by the range over candidates: the spread is exactly 1 (or 0 for a zero range)
        assert float(normalised.max() - normalised.min()) == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(normalised * (report.sslmem_raw[layer].max() - report.sslmem_raw[layer].min()),
                                   report.sslmem_raw[layer], atol=1e-6, rtol=0)


def test_linear_layers():
    torch.manual_seed(3)
    f, g = TinyMLP(12), TinyMLP(12)
    x = torch.randn(5, 12)
    views = x[:, None].repeat(1, 3, 1) + 0.1 * torch.randn(5, 3, 12)
    report = measure(f, views, reference=g, top_k=2)
    assert all(kind == "linear" for kind in report.layer_kinds.values())
    assert all(math.isfinite(v) for v in report.layer_mem.values())
