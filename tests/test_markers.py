"""Every test that starts processes carries the ``slow`` marker, so ``-m "not slow"`` stays quick.

The check reads the test files (no test runs): a test function whose body starts a process
(``subprocess``, ``mp.spawn``, ``ddp_spawn`` or a spawn start method) must be decorated with
``@pytest.mark.slow``, or its file must be marked slow as a whole (``pytestmark``); a fixture
that starts processes requires the whole file to be marked. Tests that are slow for other reasons
(over ~3 s, measured with ``--durations``) are marked by hand.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import List

import pytest

TESTS = Path(__file__).resolve().parent
SPAWNS = re.compile(r"subprocess\.|\bPopen\(|mp\.spawn\(|multiprocessing\.|ddp_spawn|start_method=['\"]spawn")


def _marked_slow(node: ast.AST) -> bool:
    return any("mark.slow" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def _is_fixture(node: ast.AST) -> bool:
    return any("fixture" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def unmarked_spawners(source: str) -> List[str]:
    """Names of the functions in ``source`` that start processes without the ``slow`` marker.

    Example:
        >>> unmarked_spawners("def test_a():\\n    subprocess.run(['x'])\\n")
        ['test_a']
    """
    tree = ast.parse(source)
    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                      and "mark.slow" in ast.unparse(n.value) for n in tree.body)
    if module_slow:
        return []
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not SPAWNS.search(ast.unparse(node)):
            continue
        if _is_fixture(node) or (node.name.startswith("test") and not _marked_slow(node)):
            out.append(node.name)
    return out


@pytest.mark.parametrize("source, expected", [
    ("def test_a():\n    subprocess.run(['x'])\n", ["test_a"]),
    ("@pytest.mark.slow\ndef test_a():\n    subprocess.run(['x'])\n", []),
    ("pytestmark = [pytest.mark.slow]\ndef test_a():\n    mp.spawn(f, nprocs=2)\n", []),
    ("@pytest.fixture\ndef fit():\n    Trainer(strategy='ddp_spawn')\n", ["fit"]),
    ("def test_b():\n    assert 1\n", []),
    ("def test_c():\n    DDPStrategy(start_method=\"spawn\")\n", ["test_c"]),
])
def test_the_check_finds_unmarked_process_starts(source, expected):
    assert unmarked_spawners(source) == expected


def test_every_test_that_starts_processes_is_marked_slow():
    missing = [f"{path.name}::{name}" for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name
               for name in unmarked_spawners(path.read_text(encoding="utf-8"))]
    assert not missing, ("these start processes but lack the `slow` marker: add `@pytest.mark.slow` (or "
                         "`pytestmark = pytest.mark.slow` when a fixture starts them):\n" + "\n".join(missing))
