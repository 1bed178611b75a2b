"""The README's measure() example runs as written (it is the newcomer's first contact)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_readme_measure_example_runs(tmp_path, monkeypatch):
    block = next(b for b in _python_blocks() if "measure(encoder, candidates" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    report = namespace["report"]
    assert report.has_reference and len(report.layers) == 8
    assert (tmp_path / "report.json").is_file()


def test_readme_commands_match_ci():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    test_command = ".venv/bin/python -m pytest -q"
    assert f"```bash\n{test_command}\n```" in text
    assert ci.strip().splitlines()[-1] == test_command
