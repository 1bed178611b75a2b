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
