"""The main job end to end with tiny settings: groups, evidence on screen and on disk."""

import json

import pytest
import torch

from lightning_memloc import MemorizationReport
from lightning_memloc.data.splits import canary_layout, photo_canaries
from lightning_memloc.cli.demo import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--epochs", "2", "--every-n-epochs", "1", "--width", "2", "--views", "2", "--bootstrap", "200",
        "--batch-size", "8", "--num-workers", "0"]


def test_canary_groups_are_disjoint_and_offline():
    lay = canary_layout(10, 5, seed=3)
    groups = [lay.split.candidates, lay.split.independent, lay.control, lay.unseen]
    allc = torch.cat(groups)
    assert allc.unique().numel() == 20 and int(allc.min()) == 10 and int(allc.max()) == 29
    assert bool(torch.isin(lay.control, lay.split.shared).all()) and not bool(torch.isin(lay.unseen, lay.split.shared).any())
    a, b = photo_canaries(6, size=8, seed=1), photo_canaries(6, size=8, seed=1)
    assert a.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(a[:, 0], a[:, 2])  # seeded, gray
    with pytest.raises(ValueError, match="per_group"):
        canary_layout(10, 1)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["canaries", "plain"])
def test_demo_runs_and_reports_its_evidence(tmp_path, capsys, setting):
    extra = ["--canaries", "4", "--subset", "16"] if setting == "canaries" else ["--subset", "60"]
    assert main(["--setting", setting, "--output-dir", str(tmp_path / setting)] + TINY + extra) == 0
    out = capsys.readouterr().out
    assert "[memloc] RESULT:" in out and "candidates > control at" in out and "μmax on seen" in out
    summary = json.loads((tmp_path / setting / "summary.json").read_text(encoding="utf-8"))
    assert summary["setting"] == setting and isinstance(summary["shows_memorization"], bool)
    before, after = summary["knn_before_after"]  # kNN accuracy of f before training and at the end, printed too
    assert f"{before:.1%} before training, {after:.1%} after" in out and "s wall time" in out
    if setting == "canaries":  # tested on digits outside the subset: neither encoder trains on them
        assert "test: 500 others neither encoder trains on" in out
    # the demo reads the report's one verdict; at --bootstrap 200 no test can pass Holm over >= 16 tests
    verdict = summary["verdict"]
    assert verdict["family_size"] >= 16 and verdict["attainable"] is False and summary["shows_memorization"] is False
    assert "RESULT: no memorization distinguishable from the nulls" in out and "so no test could pass" in out
    report = MemorizationReport.load(tmp_path / setting / "report.json")
    groups = report.evidence.meta["groups"]
    assert set(groups) == {"candidates", "control", "unseen"} and groups["control"] >= 2
    history = json.loads((tmp_path / setting / "memloc" / "history.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in history] == [-1, 0, 1]
    assert any(k.startswith("memloc.excess/") for k in history[-1])
    for name in ("evidence.png", "profile.png", "profile_over_training.png"):  # the profile and heat maps as PNGs too
        assert (tmp_path / setting / "plots" / name).is_file(), name


def test_digits_train_with_an_augmentation_that_keeps_them_digits():
    """No flip, crops of at least half the image, brightness / contrast jitter only (the digits are gray);
    other data keep SimCLR's augmentation. The defaults of the canaries setting are those README quotes."""
    import argparse

    from lightning_memloc.cli.demo import DIGITS_AUGMENT, KNN_TEST, apply_defaults, build_parser, training_augment
    from lightning_memloc.views.seeded import BatchedSimCLRAugment

    digits, none = training_augment(16, "digits")
    assert none is None and (digits.flip_p, digits.scale, digits.jitter) == (0.0, (0.5, 1.0), (0.4, 0.4, 0.0, 0.0))
    assert DIGITS_AUGMENT["flip_p"] == 0.0
    cifar = training_augment(16, "cifar10")[0]
    assert repr(cifar) == repr(BatchedSimCLRAugment(16))
    assert training_augment(16, "digits", "lightly")[0] is None
    # an image bright on the left stays brighter on the left in every view (SimCLR's flip mirrors some)
    image = torch.zeros(64, 1, 16, 16)
    image[..., :, :4] = 1.0

    def left_minus_right(augment):
        views = augment(image, torch.arange(64))
        return views[..., :, :8].mean((1, 2, 3)) - views[..., :, 8:].mean((1, 2, 3))

    assert bool((left_minus_right(digits) >= 0).all()) and bool((left_minus_right(cifar) < 0).any())
    args = apply_defaults(build_parser().parse_args([]))
    assert isinstance(args, argparse.Namespace) and args.subset + 4 * args.canaries <= 1797 - KNN_TEST


def test_demo_analyze_plot_round_trip_selects_the_demos_candidates(tmp_path, capsys):
    """The documented round trip: ``memloc analyze`` on the demo's files measures exactly its candidates."""
    import shlex

    from lightning_memloc.cli import main as memloc

    out = tmp_path / "demo"
    argv = ["--setting", "plain", "--output-dir", str(out), *TINY, "--epochs", "1", "--subset", "40",
            "--split-candidates", "6", "--split-independent", "6"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    commands = (out / "analyze.sh").read_text(encoding="utf-8")
    assert commands in printed  # the demo prints the commands it wrote
    assert "--transform lightning_memloc.cli.demo:digits_augment --transform-kwargs '{\"size\": 16}'" in commands
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    demo_report = MemorizationReport.load(out / "report.json")
    assert len(split["candidates"]) == demo_report.num_candidates == 6
    for line in commands.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        assert words[0] == "memloc"
        assert memloc(words[1:] + (["--no-progress"] if words[1] == "analyze" else [])) == 0, capsys.readouterr().err
    analyzed = MemorizationReport.load(out / "analysis" / "report.json")
    assert analyzed.candidate_ids.tolist() == split["candidates"]  # the demo's candidates, by index into data.npz
    assert analyzed.meta["control_indices"] == split["control"] and analyzed.meta["unseen_indices"] == split["unseen"]
    assert analyzed.layers == demo_report.layers and analyzed.meta["transform"] == "lightning_memloc.cli.demo:digits_augment"
    # the same trained weights, views and settings: analyze reproduces the monitor's final measurement
    assert analyzed.layer_mem == pytest.approx(demo_report.layer_mem, abs=1e-5)
    assert all(torch.allclose(analyzed.unit_mem[k], demo_report.unit_mem[k], atol=1e-5) for k in analyzed.layers)
    assert (out / "analysis" / "candidates.png").is_file()
