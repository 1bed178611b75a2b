"""No absolute path of a particular machine in the docs, examples, benchmarks, tools or the package.

A reader copies commands from README.md and docs/; a path such as ``/home/<someone>/data`` or
``/work/...`` only exists on the machine it was written on. Data outside the repository is named
relative to the checkout (``../shared/data/...``, as README.md does), outputs go to relative
folders (``runs/...``). ``/tmp/`` is allowed only in shell scripts (``*.sh``), which run on a
prepared machine and use it as scratch space, never as a data location a reader must have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["README.md", "docs", "examples", "benchmarks", "tools", "lightning_memloc"]
TEXT_SUFFIXES = {".md", ".py", ".sh", ".txt", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".json", ".rst"}
# A path component right after a start of a token (not after a letter, digit, "." or "/": URLs such
# as https://github.com/home/... and relative paths such as lightning_memloc/work/ do not match).
MACHINE = re.compile(r"(?<![\w.:/~-])(/(?:work|home|Users|root|mnt|scratch)/|[A-Za-z]:\\Users\\)")
TMP = re.compile(r"(?<![\w.:/~-])/tmp/")


def _files() -> Iterator[Path]:
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts:
                    yield file


def machine_paths(text: str, suffix: str) -> List[Tuple[int, str]]:
    """``(line number, line)`` of every line naming an absolute path of a particular machine.

    ``/tmp/`` counts everywhere but in shell scripts (``suffix == ".sh"``).
    """
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        if MACHINE.search(line) or (suffix != ".sh" and TMP.search(line)):
            hits.append((number, line.strip()))
    return hits


@pytest.mark.parametrize("line, suffix, found", [
    ("python x.py --data /work/shared/data/cifar.npz", ".md", True),
    ("np.load('/home/alice/cifar.npz')", ".py", True),
    ("open(r'C:\\Users\\bob\\x.npz')", ".py", True),
    ("--out /tmp/dp", ".md", True),
    ("--target /tmp/site", ".sh", False),
    ("--data ../shared/data/cifar10-train-10k.npz", ".md", False),
    ("see https://github.com/home/work/ and lightning_memloc/work/x.py", ".md", False),
    ("~/data/cifar.npz", ".md", False),
])
def test_the_scan_tells_machine_paths_from_portable_ones(line, suffix, found):
    assert bool(machine_paths(line, suffix)) is found


def test_no_absolute_machine_paths_in_docs_examples_benchmarks_or_package():
    files = list(_files())
    assert any(f.name == "README.md" for f in files) and any(f.suffix == ".py" for f in files)
    found = []
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        found += [f"{file.relative_to(ROOT).as_posix()}:{n}: {line}" for n, line in machine_paths(text, file.suffix)]
    assert not found, ("absolute paths of one machine (use `../shared/...` for data outside the repository and "
                       "relative folders such as `runs/...` for outputs):\n" + "\n".join(found))
