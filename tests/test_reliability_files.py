"""Files: the atomic writer keeps permissions; `memloc analyze` output folders are never mixed or raced.

Rows 100+ of docs/reliability.md (files, folders and the `memloc plot` candidate grid).
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from lightning_memloc.io import atomic_write_bytes, atomic_write_text


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027], ids=oct)
def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path, mask):
    with umask(mask):
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as handle:  # what open() gives a new file under this umask
            handle.write("x")
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask


@pytest.mark.parametrize("before", [0o644, 0o640, 0o604, 0o664, 0o600, 0o444], ids=oct)
def test_rewriting_a_file_keeps_its_mode(tmp_path, before):
    path = tmp_path / "report.json"
    path.write_text("old")
    os.chmod(path, before)
    with umask(0o077):  # a strict umask must not narrow an existing file's mode either
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left


def test_reports_and_figures_keep_their_mode(tmp_path):
    import torch

    from lightning_memloc import MemorizationReport
    from lightning_memloc.plots import plot_layer_mem

    report = MemorizationReport(layers=["a"], layer_kinds={"a": "conv"}, candidate_ids=torch.arange(3),
                                unit_mem={"a": torch.tensor([0.1, 0.7])}, unit_argmax={"a": torch.tensor([0, 2])},
                                dead_units={"a": torch.tensor([False, False])}, layer_mem={"a": 0.2},
                                delta_layer_mem={"a": 0.2}, layer_mem_top={"a": 1.0}, layer_mem_least={"a": 0.0},
                                sslmem={"a": torch.tensor([0.0, 0.5, 1.0])}, top_ids=torch.tensor([2]),
                                least_ids=torch.tensor([0]))
    with umask(0o022):
        report.save(tmp_path / "report.json")
        plot_layer_mem(report, tmp_path / "layer_mem.png")
    assert mode(tmp_path / "report.json") == mode(tmp_path / "layer_mem.png") == 0o644
    os.chmod(tmp_path / "report.json", 0o640)
    report.save(tmp_path / "report.json")
    assert mode(tmp_path / "report.json") == 0o640


# --------------------------------------------------------- memloc analyze / plot folders
N = 16
ANALYZE = ["analyze", "--arch", "tiny", "--size", "16", "--views", "2", "--top-k", "3", "--bootstrap", "0",
           "--no-progress"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """f.pt, g.pt (TinyCNN width 4) and d.npz (16 random 16x16 images, 2 classes)."""
    import numpy as np
    import torch

    from lightning_memloc.models import TinyCNN

    root = tmp_path_factory.mktemp("folders")
    torch.manual_seed(0)
    torch.save(TinyCNN(3, 4).state_dict(), root / "f.pt")
    torch.save(TinyCNN(3, 4).state_dict(), root / "g.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8), y=np.arange(N) % 2)
    return root


def _analyze(ws: Path, out: Path, *extra) -> tuple:
    from helpers import run_cli

    return run_cli(ANALYZE + ["--encoder", ws / "f.pt", "--reference", ws / "g.pt", "--data", ws / "d.npz",
                              "--output-dir", out, *extra])


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".memloc.lock"}


@pytest.fixture(scope="module")
def previous(ws, tmp_path_factory) -> Path:
    """The output folder of a complete earlier analysis (seed 1); tests work on copies."""
    out = tmp_path_factory.mktemp("previous") / "analysis"
    code, _, stderr = _analyze(ws, out, "--seed", "1")
    assert code == 0, stderr
    return out


def _copy(previous: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(previous, tmp_path / "analysis"))


def test_an_interrupted_overwrite_leaves_the_previous_run_whole(ws, previous, tmp_path, monkeypatch):
    from lightning_memloc.cli.output import lock_folder
    from lightning_memloc.plots import report_figures as report_plots

    out = _copy(previous, tmp_path)
    before = _contents(out)
    assert {"report.json", "layer_mem.png", "candidates.png"} <= set(before)
    drawn = []

    def interrupted(report, images, path, **kwargs):  # the grid is drawn after three other figures
        drawn.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(report_plots, "plot_candidate_grid", interrupted)
    code, _, stderr = _analyze(ws, out, "--seed", "2", "--overwrite")
    assert code == 130 and "interrupted" in stderr and drawn
    assert _contents(out) == before  # not one file of the interrupted run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".memloc.lock"]  # no staging left
    os.close(lock_folder(out, "--output-dir"))  # the lock was released


def test_a_failed_measurement_leaves_the_previous_run_whole(ws, previous, tmp_path, monkeypatch):
    import sys

    out = _copy(previous, tmp_path)
    before = _contents(out)

    def fails(*args, **kwargs):
        raise MemoryError("out of memory in the pass")

    monkeypatch.setattr(sys.modules["lightning_memloc.measurement"], "measure", fails)
    with pytest.raises(MemoryError):
        _analyze(ws, out, "--overwrite")
    assert _contents(out) == before and not list(out.glob(".memloc-staging-*"))


@pytest.mark.slow
def test_an_overwrite_drops_the_earlier_analysis_files_it_does_not_write_and_keeps_modes(ws, previous, tmp_path):
    from lightning_memloc import MemorizationReport

    out = _copy(previous, tmp_path)
    (out / "consistency.png").write_bytes(b"figure of an earlier --analyses consistency")
    (out / "notes.txt").write_text("mine")  # a file memloc did not write stays
    os.chmod(out / "report.json", 0o640)
    os.chmod(out / "unit_mem.png", 0o604)
    with umask(0o022):
        code, _, stderr = _analyze(ws, out, "--overwrite", "--seed", "2")
    assert code == 0, stderr
    assert not (out / "consistency.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert MemorizationReport.load(out / "report.json").meta["seed"] == 2
    assert mode(out / "report.json") == 0o640 and mode(out / "unit_mem.png") == 0o604  # replaced files keep their mode
    assert mode(out / "layer_mem.png") == 0o644


def test_a_second_run_on_a_folder_in_use_is_refused(ws, tmp_path):
    from lightning_memloc.cli.output import lock_folder

    out = tmp_path / "analysis"
    out.mkdir()
    fd = lock_folder(out, "--output-dir")  # another run holds the folder (a separate descriptor: flock conflicts)
    try:
        code, _, stderr = _analyze(ws, out)
        assert code == 2 and stderr.startswith("memloc analyze: error: --output-dir:")
        assert f"in use by another memloc analyze (pid {os.getpid()} on" in stderr and "pass another folder" in stderr
        assert _contents(out) == {}
    finally:
        os.close(fd)


def test_a_report_written_meanwhile_is_not_overwritten_without_the_flag(ws, tmp_path, monkeypatch):
    """Two runs pass the first report.json check; the later one finds the other's report under the lock."""
    import lightning_memloc.cli.analyze as analyze_module

    out = tmp_path / "analysis"
    real = analyze_module._probe

    def other_run_finishes(*args, **kwargs):  # just before this run takes the lock
        real(*args, **kwargs)
        out.mkdir()
        (out / "report.json").write_text("the other run's report")

    monkeypatch.setattr(analyze_module, "_probe", other_run_finishes)
    code, _, stderr = _analyze(ws, out)
    assert code == 2 and "already holds a report.json from an earlier analysis" in stderr
    assert (out / "report.json").read_text() == "the other run's report"


@pytest.mark.slow
def test_two_processes_on_one_folder(ws, tmp_path):
    """A real second process: the folder is refused while it holds it, and free once it exits."""
    import subprocess
    import sys

    out = tmp_path / "analysis"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from lightning_memloc.cli.output import lock_folder; "
                               f"lock_folder(pathlib.Path({str(out)!r}), '--output-dir'); print('locked', flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, stderr = _analyze(ws, out)
        assert code == 2 and f"pid {holder.pid} on" in stderr
    finally:
        holder.communicate("", timeout=60)
    code, _, stderr = _analyze(ws, out)  # the kernel released the dead holder's lock
    assert code == 0, stderr


# ------------------------------------------------------------------- plot: whose images
def _grid_images(monkeypatch) -> list:
    import lightning_memloc.plots as plots

    seen = []

    def capture(report, out_dir, images=None, **kwargs):  # the images only: drawing them is tested elsewhere
        seen.append(images)
        return []

    monkeypatch.setattr(plots, "plot_report", capture)
    return seen


def test_plot_draws_the_analyzed_candidates_whatever_the_split_flags(ws, tmp_path, monkeypatch):
    from helpers import run_cli
    from lightning_memloc import MemorizationReport
    from lightning_memloc.data import load_npz

    out = tmp_path / "analysis"
    split = ["--indices-from-split", "--split-candidates", "5", "--split-independent", "3"]
    assert _analyze(ws, out, "--seed", "3", *split)[0] == 0  # the split seed defaults to --seed: 3
    report = MemorizationReport.load(out / "report.json")
    data = load_npz(ws / "d.npz")[0]
    seen = _grid_images(monkeypatch)
    code, _, stderr = run_cli(["plot", out / "report.json", "--images", ws / "d.npz", *split, "--output-dir", tmp_path / "p"])
    assert code == 2 and stderr.startswith("memloc plot: error: --indices-from-split: selected 5 images for 5 candidates")
    assert "drop --indices-from-split" in stderr and not seen and not (tmp_path / "p").exists()
    for extra in ([], [*split, "--split-seed", "3"]):
        code, _, stderr = run_cli(["plot", out / "report.json", "--images", ws / "d.npz", *extra,
                                   "--output-dir", tmp_path / "p"])
        assert code == 0, stderr
        assert torch_equal(seen[-1], data[report.candidate_ids])


def torch_equal(a, b) -> bool:
    import torch

    return a is not None and torch.equal(a, b)


def test_plot_refuses_data_that_is_not_what_analyze_measured(ws, previous, tmp_path, monkeypatch):
    import numpy as np

    from helpers import run_cli

    out = previous
    seen = _grid_images(monkeypatch)
    with np.load(ws / "d.npz") as f:
        x, y = f["x"], f["y"]
    np.savez(tmp_path / "shuffled.npz", x=x[::-1], y=y[::-1])  # as many images, in another order
    code, _, stderr = run_cli(["plot", out / "report.json", "--images", tmp_path / "shuffled.npz",
                               "--output-dir", tmp_path / "p"])
    assert code == 2 and "--images: the images at the report's candidate ids are not the ones it measured" in stderr
    np.savez(tmp_path / "short.npz", x=x[:4], y=y[:4])
    code, _, stderr = run_cli(["plot", out / "report.json", "--images", tmp_path / "short.npz",
                               "--output-dir", tmp_path / "p"])
    assert code == 2 and f"candidate ids go up to {N - 1} but the data has 4 images" in stderr
    assert not (tmp_path / "p").exists() and not seen
    code, _, stderr = run_cli(["plot", out / "report.json", "--images", ws / "d.npz", "--output-dir", tmp_path / "p"])
    assert code == 0 and len(seen) == 1, stderr  # the data it measured passes the checksum


def test_plot_checks_a_measure_report_whose_ids_are_dataset_indices(ws, tmp_path, monkeypatch):
    import torch

    from helpers import run_cli
    from lightning_memloc import load_encoder, measure
    from lightning_memloc.data import load_npz, split_candidates
    from lightning_memloc.models import TinyCNN

    data = load_npz(ws / "d.npz")[0]
    split = split_candidates(N, shared=8, candidates=5, independent=3, seed=7)
    report = measure(load_encoder(ws / "f.pt", TinyCNN(3, 4)), data[split.candidates], views=2,
                     candidate_ids=split.candidates)
    path = report.save(tmp_path / "report.json")
    flags = ["--indices-from-split", "--split-candidates", "5", "--split-independent", "3"]
    seen = _grid_images(monkeypatch)
    code, _, stderr = run_cli(["plot", path, "--images", ws / "d.npz", *flags, "--output-dir", tmp_path / "p"])
    assert code == 2 and "--indices-from-split: selected 5 images for 5 candidates, not the report's own" in stderr
    code, _, stderr = run_cli(["plot", path, "--images", ws / "d.npz", *flags, "--split-seed", "7",
                               "--output-dir", tmp_path / "p"])
    assert code == 0, stderr
    assert torch.equal(seen[-1], data[split.candidates])
