"""Which weights a checkpoint path loads: prefixes, nested and wrapped layouts, pruned models (issue 23 §2).

A co-trained pair's checkpoint holds the encoder ``f`` and the reference ``g`` of Wang et al.,
*Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) side by side: loading the wrong
one gives a plausible, wrong LayerMem. Rows 80-83 of ``docs/reliability.md``.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils import prune

from helpers import assert_untouched, cotrained_pair, run_cli, take_snapshot
from lightning_memloc import MemorizationReport, load_encoder, measure
from lightning_memloc.errors import AmbiguousPrefixError, CheckpointError
from lightning_memloc.loading import fitting_prefixes, split_prefix
from lightning_memloc.models import TinyCNN
from lightning_memloc.pruned import plain_copy
from lightning_memloc.surgery import find_unit_targets, register_masks, zero_units


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def pair_ckpt(tmp_path):
    pair = cotrained_pair()
    path = tmp_path / "pair.ckpt"
    torch.save({"state_dict": pair.state_dict(), "epoch": 3, "global_step": 12}, path)
    return pair, path


# ------------------------------------------------------------------ row 80: several fitting prefixes
def test_a_co_trained_pair_checkpoint_without_prefix_is_an_error_listing_both(pair_ckpt):
    pair, path = pair_ckpt
    like = TinyCNN(width=4)
    snap = take_snapshot(like)
    with pytest.raises(AmbiguousPrefixError) as info:
        load_encoder(path, like=like)
    message = str(info.value)
    assert "['encoder.backbone', 'reference.backbone']" in message
    assert f"'{path}:encoder.backbone'" in message and "prefix='encoder.backbone'" in message
    assert info.value.prefixes == ["encoder.backbone.", "reference.backbone."]
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)
    assert_untouched(like, snap)
    # each way of naming the prefix loads that sub-module's weights, and only those
    g = load_encoder(f"{path}:reference.backbone", like=like)
    assert _same_weights(g, pair.reference.backbone) and not _same_weights(g, pair.encoder.backbone)
    assert _same_weights(load_encoder(path, like=like, prefix="reference.backbone."), g)
    assert _same_weights(load_encoder(path, like=like, prefix="encoder.backbone"), pair.encoder.backbone)
    with pytest.raises(ValueError, match="names the prefix 'reference.backbone' but `prefix`='encoder.backbone'"):
        load_encoder(f"{path}:reference.backbone", like=like, prefix="encoder.backbone")


def test_split_prefix_reads_only_a_dotted_name_after_a_checkpoint_path(tmp_path):
    odd = tmp_path / "weights:v2"  # an existing file whose name holds a colon is a file, not a prefix
    odd.write_bytes(b"")
    assert split_prefix(str(odd)) == (str(odd), None)
    assert split_prefix("a/pair.ckpt:reference.backbone") == ("a/pair.ckpt", "reference.backbone")
    assert split_prefix("a/pair.ckpt:reference.backbone.") == ("a/pair.ckpt", "reference.backbone")
    assert split_prefix("C:\\runs\\g.pt") == ("C:\\runs\\g.pt", None)  # a drive letter
    assert split_prefix("notes:todo") == ("notes:todo", None)  # no checkpoint extension, no such file
    assert split_prefix(tmp_path / "g.pt") == (tmp_path / "g.pt", None)


def test_monitor_reference_path_of_a_pair_is_refused_in_setup_and_its_prefix_form_measures_g(pair_ckpt):
    from helpers import cotraining_split, fit_pair, pair_monitor

    pair, path = pair_ckpt
    images, split = cotraining_split()
    model = cotrained_pair(seed=1, max_epochs=1)
    snap = take_snapshot(model)
    monitor = pair_monitor(images, split, reference=str(path))
    with pytest.raises(AmbiguousPrefixError, match=r"`reference`='.*pair\.ckpt': .*'encoder\.backbone', "
                                                   r"'reference\.backbone'.*pair\.ckpt:encoder\.backbone'"):
        fit_pair(images, split, [monitor], max_epochs=1, model=model)
    assert_untouched(model, snap)  # refused in setup, before any step
    monitor = pair_monitor(images, split, reference=f"{path}:reference.backbone", bootstrap=0)
    trainer, model = fit_pair(images, split, [monitor], max_epochs=1, model=model)
    expected = measure(model.encoder.backbone, images[split.candidates], reference=pair.reference.backbone, views=2,
                       top_k=3, bootstrap=0)
    assert monitor.report.allclose(expected, atol=1e-5)


def test_cli_refuses_a_pair_checkpoint_without_prefix_for_either_flag_and_takes_the_colon_form(tmp_path, pair_ckpt):
    import numpy as np

    pair, path = pair_ckpt
    torch.manual_seed(5)
    torch.save(TinyCNN(3, 4).state_dict(), tmp_path / "f.pt")
    torch.save(pair.reference.backbone.state_dict(), tmp_path / "g.pt")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    base = ["analyze", "--arch", "tiny", "--width", "4", "--size", "16", "--views", "2", "--top-k", "2", "--no-progress",
            "--bootstrap", "0", "--data", tmp_path / "d.npz", "--candidates", "4"]
    code, _, err = run_cli(base + ["--encoder", tmp_path / "f.pt", "--reference", path, "--output-dir", tmp_path / "a"])
    assert code == 2 and "--reference: the checkpoint" in err and "--reference-prefix reference.backbone" in err
    assert "['encoder.backbone', 'reference.backbone']" in err and not (tmp_path / "a").exists()
    code, _, err = run_cli(base + ["--encoder", path, "--reference", tmp_path / "f.pt", "--output-dir", tmp_path / "a"])
    assert code == 2 and "--encoder: the checkpoint" in err and "--encoder-prefix encoder.backbone" in err
    reports = {}
    for name, extra in (("colon", ["--reference", f"{path}:reference.backbone"]),
                        ("flag", ["--reference", path, "--reference-prefix", "reference.backbone"]),
                        ("file", ["--reference", tmp_path / "g.pt"])):
        code, _, err = run_cli(base + ["--encoder", tmp_path / "f.pt", *extra, "--output-dir", tmp_path / name])
        assert code == 0, err
        reports[name] = MemorizationReport.load(tmp_path / name / "report.json")
    assert reports["colon"].layer_mem == reports["flag"].layer_mem == reports["file"].layer_mem


# --------------------------------------------------------- row 81: nested, DDP, compiled, EMA layouts
def _layout(kind: str, f: torch.nn.Module, g: torch.nn.Module) -> dict:
    sf, sg = f.state_dict(), g.state_dict()
    return {
        "model": {"model": sf, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 7},
        "ddp": {f"module.{k}": v for k, v in sf.items()},
        "compiled": {f"_orig_mod.{k}": v for k, v in sf.items()},
        "lightning-ddp-compiled": {"state_dict": {f"backbone._orig_mod.{k}": v for k, v in sf.items()}},
        "teacher-student": {"teacher": sg, "student": sf, "epoch": 3},
        "plain-and-ema": {**sf, **{f"ema.{k}": v for k, v in sg.items()}},
    }[kind]


@pytest.mark.parametrize("kind, expected", [
    ("model", "f"), ("ddp", "f"), ("compiled", "f"), ("lightning-ddp-compiled", "f"),
    ("teacher-student", ["student", "teacher"]), ("plain-and-ema", ["(no prefix)", "ema"]),
])
def test_checkpoint_layouts_load_the_one_encoder_or_list_the_candidates(tmp_path, kind, expected):
    torch.manual_seed(0)
    f, g = TinyCNN(width=4), TinyCNN(width=4)
    path = tmp_path / "w.pt"
    torch.save(_layout(kind, f, g), path)
    if expected == "f":
        assert _same_weights(load_encoder(path, like=TinyCNN(width=4)), f)
        return
    with pytest.raises(AmbiguousPrefixError, match=re.escape(str(expected))):
        load_encoder(path, like=TinyCNN(width=4))
    if "(no prefix)" in expected:  # prefix="" picks the top-level weights
        assert _same_weights(load_encoder(path, like=TinyCNN(width=4), prefix=""), f)
    name = expected[0] if expected[0] != "(no prefix)" else expected[1]
    assert _same_weights(load_encoder(f"{path}:{name}", like=TinyCNN(width=4)), {"student": f, "teacher": g,
                                                                                  "ema": g}[name])


def test_names_fitting_under_two_prefixes_but_shapes_under_one_load_that_one(tmp_path):
    torch.manual_seed(0)
    narrow, wide = TinyCNN(width=4), TinyCNN(width=8)  # the same key names, other shapes
    torch.save({"state_dict": {**{f"student.{k}": v for k, v in narrow.state_dict().items()},
                               **{f"teacher.{k}": v for k, v in wide.state_dict().items()}}}, tmp_path / "w.ckpt")
    assert _same_weights(load_encoder(tmp_path / "w.ckpt", like=TinyCNN(width=4)), narrow)
    assert _same_weights(load_encoder(tmp_path / "w.ckpt", like=TinyCNN(width=8)), wide)


def test_fitting_prefixes_hand_cases():
    t = torch.zeros(1)
    assert fitting_prefixes({"a.w": t, "a.b": t, "c.w": t}, ["w", "b"]) == ["a."]  # c lacks b
    assert fitting_prefixes({"w": t, "b": t, "x.w": t, "x.b": t}, ["w", "b"]) == ["", "x."]
    assert fitting_prefixes({"aw": t, "ab": t}, ["w", "b"]) == []  # a prefix ends at a dot
    assert fitting_prefixes({"w": t}, []) == []


# ------------------------------------------------ rows 82-83: pruned models and pruned checkpoints
def _pruned(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN(width=4)
    for layer in ("conv1", "conv2"):
        targets = find_unit_targets(model, layer)
        register_masks(targets)
        zero_units(targets, torch.tensor([1]))
    return model


def test_load_encoder_into_a_pruned_encoder_gives_a_plain_reference(tmp_path):
    like = _pruned()
    snap = take_snapshot(like)
    snap_keys = list(like.state_dict())
    hooks = sum(len(m._forward_pre_hooks) for m in like.modules())
    torch.manual_seed(3)
    g0 = TinyCNN(width=4)
    torch.save(g0.state_dict(), tmp_path / "g.pt")
    g = load_encoder(tmp_path / "g.pt", like=like)  # was: a deepcopy RuntimeError
    assert _same_weights(g, g0) and not any(g_m._forward_pre_hooks for g_m in g.modules())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(g(x), g0.eval()(x), rtol=0, atol=0)
    # the pruned encoder is as it was: masks, hooks, values
    assert list(like.state_dict()) == snap_keys
    state = like.state_dict()
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())
    assert sum(len(m._forward_pre_hooks) for m in like.modules()) == hooks > 0


def test_plain_copy_bakes_the_masks_and_leaves_the_original():
    model = _pruned()
    copied = plain_copy(model)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(copied.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert not any(k.endswith(("_orig", "_mask")) for k in copied.state_dict())
    assert any(k.endswith("_orig") for k in model.state_dict())
    assert copied.conv1.conv.weight[1].abs().sum() == 0 and model.conv1.conv.weight_orig[1].abs().sum() > 0


def test_a_pruned_models_checkpoint_loads_as_the_weights_it_computes(tmp_path):
    model = _pruned()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "p.ckpt")
    loaded = load_encoder(tmp_path / "p.ckpt", like=TinyCNN(width=4))
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    assert loaded.conv1.conv.weight[1].abs().sum() == 0


def test_pruning_before_a_monitor_with_a_reference_file_measures_the_plain_reference(tmp_path):
    from helpers import cotraining_split, fit_pair, pair_monitor
    from lightning_memloc.callbacks.pruning import MemorizationPruning

    images, split = cotraining_split()
    torch.manual_seed(4)
    g0 = TinyCNN(width=4)
    torch.save(g0.state_dict(), tmp_path / "g.pt")
    names = ["conv1", "conv2", "conv3"]
    report = MemorizationReport(layers=names, layer_kinds=dict.fromkeys(names, "conv"), candidate_ids=torch.arange(2),
                                unit_mem={n: torch.linspace(0, 1, w) for n, w in zip(names, (4, 8, 16))},
                                unit_argmax={n: torch.zeros(w, dtype=torch.long) for n, w in zip(names, (4, 8, 16))},
                                dead_units={n: torch.zeros(w, dtype=torch.bool) for n, w in zip(names, (4, 8, 16))})
    pruning = MemorizationPruning(report, amount=1, encoder="encoder.backbone", require_evidence="off")
    monitor = pair_monitor(images, split, reference=str(tmp_path / "g.pt"), bootstrap=0)
    trainer, model = fit_pair(images, split, [pruning, monitor], max_epochs=1)
    f = model.encoder.backbone
    assert f.conv1.conv.weight[3].abs().sum() == 0  # pruned: the highest-UnitMem unit of conv1
    expected = measure(f, images[split.candidates], reference=g0, views=2, top_k=3, bootstrap=0)
    assert monitor.report.allclose(expected, atol=1e-5)


def test_prune_identity_twice_is_still_copied():
    model = TinyCNN(width=4)
    prune.identity(model.conv1.conv, "weight")
    prune.random_unstructured(model.conv1.conv, "weight", amount=0.5)  # a PruningContainer
    copied = plain_copy(model)
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(copied.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_a_compiled_or_weight_normed_like_loads(tmp_path):
    """Other modules deepcopy or the key names trip on: a torch.compile wrapper, the deprecated weight_norm."""
    torch.manual_seed(0)
    g0 = TinyCNN(width=4)
    torch.save(g0.state_dict(), tmp_path / "g.pt")
    g = load_encoder(tmp_path / "g.pt", like=torch.compile(TinyCNN(width=4)))  # was: missing keys '_orig_mod.…'
    assert type(g) is TinyCNN and _same_weights(g, g0)
    normed = TinyCNN(width=4)
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(normed.conv1.conv)
    torch.save(normed.state_dict(), tmp_path / "n.pt")
    loaded = load_encoder(tmp_path / "n.pt", like=normed)  # was: a deepcopy RuntimeError
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), normed.eval()(x), rtol=0, atol=0)
