"""The main job end to end with tiny settings: groups, evidence on screen and on disk."""

import json

import pytest
import torch

from lightning_memloc import MemorizationReport
from lightning_memloc.canaries import canary_layout, photo_canaries
from lightning_memloc.demo import main

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
    assert (tmp_path / setting / "plots" / "evidence.png").is_file()


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
    assert analyzed.layers == demo_report.layers
    # the same trained weights, views and settings: analyze reproduces the monitor's final measurement
    assert analyzed.layer_mem == pytest.approx(demo_report.layer_mem, abs=1e-5)
    assert all(torch.allclose(analyzed.unit_mem[k], demo_report.unit_mem[k], atol=1e-5) for k in analyzed.layers)
    assert (out / "analysis" / "candidates.png").is_file()
