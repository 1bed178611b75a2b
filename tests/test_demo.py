"""The main job end to end with tiny settings: groups, evidence on screen and on disk."""

import json

import pytest
import torch

from lightning_memloc import MemorizationReport
from lightning_memloc.canaries import canary_layout, photo_canaries
from lightning_memloc.demo import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--epochs", "2", "--every-n-epochs", "1", "--width", "2", "--views", "2", "--bootstrap", "20",
        "--batch-size", "8", "--workers", "0"]


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
    extra = ["--canaries", "4", "--limit", "16"] if setting == "canaries" else ["--limit", "60"]
    assert main(["--setting", setting, "--out", str(tmp_path / setting)] + TINY + extra) == 0
    out = capsys.readouterr().out
    assert "[memloc] RESULT:" in out and "candidates > control at" in out and "μmax on seen" in out
    summary = json.loads((tmp_path / setting / "summary.json").read_text(encoding="utf-8"))
    assert summary["setting"] == setting and isinstance(summary["shows_memorization"], bool)
    report = MemorizationReport.load(tmp_path / setting / "report.json")
    groups = report.evidence.meta["groups"]
    assert set(groups) == {"candidates", "control", "unseen"} and groups["control"] >= 2
    history = json.loads((tmp_path / setting / "memloc" / "history.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in history] == [-1, 0, 1]
    assert any(k.startswith("memloc/excess/") for k in history[-1])
    assert (tmp_path / setting / "plots" / "evidence.png").is_file()
