"""docs/architecture.md's module map is the one ``tools/architecture.py`` renders from the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python tools/architecture.py --write` from the repository root and commit docs/architecture.md"


@pytest.fixture(scope="module")
def arch():
    return load_script(ROOT / "tools" / "architecture.py", "memloc_architecture_tool", register=True)


@pytest.fixture(scope="module")
def infos(arch):
    return arch.collect()


def test_docs_module_map_is_up_to_date(arch, infos):
    current = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    _, generated, _ = arch.split_doc(current)
    wanted = arch.render(infos)
    if generated != wanted:
        old, new = set(generated.splitlines()), set(wanted.splitlines())
        changed = sorted(new - old)[:5] + ["(gone) " + line for line in sorted(old - new)[:5]]
        pytest.fail("docs/architecture.md's generated module map does not match the code; " + FIX + ".\nFirst "
                    "differences:\n" + "\n".join(changed), pytrace=False)
    assert arch.expected_doc(current, wanted) == current  # nothing outside the markers moved either


def test_every_module_of_the_package_is_in_the_map(arch, infos):
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lightning_memloc").rglob("*.py")
               if p.name != "__main__.py"}
    assert {m.path for m in infos} == on_disk
    text = arch.render(infos)
    for path in on_disk:
        assert f"#### `{path}`" in text


def test_line_counts_docstrings_and_signatures_come_from_the_code(arch, infos):
    import inspect

    import lightning_memloc

    module = inspect.getmodule(lightning_memloc.measure)  # wherever the public measure() is defined
    info = {m.path: m for m in infos}[Path(module.__file__).resolve().relative_to(ROOT).as_posix()]
    assert info.lines == len(Path(module.__file__).read_text(encoding="utf-8").splitlines())
    assert info.summary == arch.plain(" ".join(inspect.getdoc(module).split("\n\n")[0].split()))
    params = list(inspect.signature(module.measure).parameters)
    rendered = [e for e in info.entries if e.startswith("- `measure(")]
    assert len(rendered) == 1 and all(p in rendered[0] for p in params)


def test_an_unlisted_module_goes_to_other_and_order_follows_the_table(arch):
    assert arch.group_of("a_module_nobody_listed") == arch.OTHER
    assert arch.group_of("functional.unitmem") == "Scores (functional core)"
    info = arch.ModuleInfo
    ranked = arch.render([info("zzz_new", "lightning_memloc/zzz_new.py", 3, "New.", ("- `f()`",), ()),
                          info("views", "lightning_memloc/views/seeded.py", 5, "Views.", (), ()),
                          info("cli", "lightning_memloc/cli.py", 7, "CLI.", (), ("main",))])
    headings = [line for line in ranked.splitlines() if line.startswith("### ")]
    assert headings == ["### Views", "### CLI and demo", "### " + arch.OTHER]
    assert "- (no public names)" in ranked and "- exports: `main`" in ranked


def test_signatures_are_stable_and_without_addresses(arch):
    def f(a, b=print, *, c: int = 2, d=object()) -> None:
        pass

    text = arch.signature_text(f)
    assert text.startswith("(a, b=<built-in function print>, *, c=2, d=<object object")
    assert " at 0x" not in text and ": int" not in text and "None" not in text  # no address, no annotation

    class Thing:
        def method(self, x, y=1):
            pass

    assert arch.signature_text(Thing.method, drop_first=True) == "(x, y=1)"


def test_markers_missing_or_repeated_is_a_clear_error(arch):
    with pytest.raises(ValueError, match="exactly one .*generated: tools/architecture.py"):
        arch.split_doc("# Architecture\nno markers here\n")
    twice = f"{arch.BEGIN}\n{arch.END}\n{arch.BEGIN}\n{arch.END}\n"
    with pytest.raises(ValueError, match="put them where the generated module map belongs"):
        arch.split_doc(twice)
    doc = f"prose\n{arch.BEGIN}\nold\n{arch.END}\nmore prose\n"
    assert arch.expected_doc(doc, "new\n") == f"prose\n{arch.BEGIN}\n\nnew\n\n{arch.END}\nmore prose\n"
