"""Render the module map of ``docs/architecture.md`` from the package itself.

The map lists every module of ``lightning_memloc`` with its line count, the first paragraph of its
docstring and its public names with their signatures (read with :mod:`inspect`), grouped in the
data-flow order of the library, one folder each: data → views → encoders → taps → reductions →
scores → states → report → measurement → callbacks → figures → CLI, then support modules. The only hand-kept
knowledge is the ordering table :data:`GROUPS`; a module it does not name lands in the "Other
modules" group, so nothing is hidden when modules move.

Usage (from the repository root)::

    python tools/architecture.py            # print the generated part
    python tools/architecture.py --write    # rewrite it between the markers in docs/architecture.md
    python tools/architecture.py --check    # exit 1 when docs/architecture.md is out of date

The generated part sits between :data:`BEGIN` and :data:`END`; the prose around it is kept.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import re
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_memloc"
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- generated: tools/architecture.py -->"
END = "<!-- end generated -->"

# Data-flow order: (group title, patterns of module names relative to the package). A module goes
# to the first group with a matching pattern (``fnmatch``); unmatched modules go to "Other modules".
GROUPS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("Package", ("", "errors", "io")),
    ("Data", ("data", "data.*")),
    ("Views", ("views", "views.*")),
    ("Encoders and training", ("models", "models.*", "lightning")),
    ("Taps", ("taps", "taps.*")),
    ("Reductions", ("reductions", "reductions.*")),
    ("Scores (functional core)", ("functional", "functional.*")),
    ("States", ("states", "states.*")),
    ("Report and evidence", ("report", "report.*")),
    ("Measurement", ("options", "measurement")),
    ("Analyses", ("analyses", "analyses.*")),
    ("Callbacks", ("callbacks", "callbacks.*")),
    ("Figures", ("plots", "plots.*")),
    ("CLI and demo", ("cli", "cli.*")),
    ("Support", ("checks", "checks.*")),
)
OTHER = "Other modules"
MAX_LINES = 400  # the style guide's "no module over ~400 lines"; longer modules are flagged in the table
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
ROLE = re.compile(r":[a-z]+:`~?([\w.]+)`")  # Sphinx roles in docstrings: :class:`~pkg.Name`


@dataclass(frozen=True)
class ModuleInfo:
    """What the map shows of one module.

    Attributes:
        name: dotted name relative to the package ("" for the package itself).
        path: file path relative to the repository root, with forward slashes.
        lines: number of lines of the file.
        summary: first paragraph of the module docstring, on one line ("" when there is none).
        entries: rendered public names (signatures), in source order.
        exports: names re-exported through ``__all__`` but defined elsewhere.
    """

    name: str
    path: str
    lines: int
    summary: str
    entries: Tuple[str, ...]
    exports: Tuple[str, ...]


def group_of(name: str, groups: Sequence[Tuple[str, Sequence[str]]] = GROUPS) -> str:
    """The title of the first group whose patterns match ``name`` (relative module name).

    Example:
        >>> group_of("functional.unitmem")
        'Scores (functional core)'
        >>> group_of("a_module_nobody_listed")
        'Other modules'
    """
    for title, patterns in groups:
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            return title
    return OTHER


def plain(text: str) -> str:
    """Docstring reStructuredText as Markdown: Sphinx roles and double backticks become code spans.

    Example:
        >>> plain("Figures of a :class:`~lightning_memloc.MemorizationReport` and ``x``.")
        'Figures of a `MemorizationReport` and `x`.'
    """
    text = ROLE.sub(lambda m: "`" + (m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1)) + "`",
                    text)
    return text.replace("``", "`")


def without_addresses(text: str) -> str:
    """A signature without memory addresses (``<function f at 0x...>``), so the output is stable."""
    return ADDRESS.sub("", text)


def signature_text(obj: object, drop_first: bool = False) -> str:
    """``(a, b=1, *, c=None)`` without annotations; ``(...)`` when :mod:`inspect` cannot read it."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if drop_first and params and params[0].name in ("self", "cls"):
        params = params[1:]
    bare = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in params],
                       return_annotation=inspect.Signature.empty)
    return without_addresses(str(bare))


def _top_level(tree: ast.Module) -> List[ast.stmt]:
    """Top-level statements, including those inside top-level ``if`` / ``try`` blocks."""
    out: List[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If):
            out.extend(_top_level(ast.Module(body=node.body + node.orelse, type_ignores=[])))
        elif isinstance(node, ast.Try):
            out.extend(_top_level(ast.Module(body=node.body + node.orelse + node.finalbody, type_ignores=[])))
        else:
            out.append(node)
    return out


def _methods(cls: type, node: ast.ClassDef) -> List[str]:
    """Public methods and properties written in the class body, rendered ``.name(sig)``."""
    out: List[str] = []
    for item in node.body:
        if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) or item.name.startswith("_"):
            continue
        raw = cls.__dict__.get(item.name)
        if isinstance(raw, property) or (raw is None and any(
                isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)):
            out.append(f"`.{item.name}`")
        elif isinstance(raw, (staticmethod, classmethod)):
            out.append(f"`.{item.name}{signature_text(raw.__func__, drop_first=isinstance(raw, classmethod))}`")
        elif raw is not None:
            out.append(f"`.{item.name}{signature_text(raw, drop_first=True)}`")
    return out


def _entries(module: object, tree: ast.Module) -> List[str]:
    """Public classes, functions and UPPER_CASE constants defined in the module, in source order."""
    out: List[str] = []
    for node in _top_level(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("_") or not hasattr(module, node.name):
                continue
            obj = getattr(module, node.name)
            if isinstance(node, ast.ClassDef):
                line = f"- class `{node.name}{signature_text(obj)}`"
                methods = _methods(obj, node) if isinstance(obj, type) else []
                out.append(line + (": " + ", ".join(methods) if methods else ""))
            else:
                out.append(f"- `{node.name}{signature_text(obj)}`")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper() and not target.id.startswith("_"):
                    out.append(f"- `{target.id}` (constant)")
    return out


def module_info(name: str, module: object, root: Path = ROOT) -> ModuleInfo:
    """Read one imported module: its file, docstring, public names and their signatures."""
    path = Path(inspect.getfile(module))  # type: ignore[arg-type]
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    summary = plain(" ".join(doc.strip().split("\n\n", 1)[0].split()))  # the first paragraph, on one line
    entries = _entries(module, tree)
    defined = {e.split("`")[1].split("(")[0] for e in entries}
    exports = tuple(n for n in getattr(module, "__all__", ()) if n not in defined)
    try:
        shown = path.resolve().relative_to(root).as_posix()
    except ValueError:
        shown = path.as_posix()
    return ModuleInfo(name, shown, len(source.splitlines()), summary, tuple(entries), exports)


def collect(package: str = PACKAGE, root: Path = ROOT) -> List[ModuleInfo]:
    """Import the package and every submodule (``__main__`` modules excepted) and describe them.

    Raises:
        RuntimeError: the package imported is not the one under ``root`` (another checkout or an
            installed copy is first on ``sys.path``), or a submodule fails to import.
    """
    try:
        pkg = importlib.import_module(package)
    except Exception as err:  # noqa: BLE001 - reported with the package's name
        raise RuntimeError(f"cannot import `{package}` ({type(err).__name__}: {err}): fix the import first.") from err
    location = Path(inspect.getfile(pkg)).resolve()
    if root.resolve() not in location.parents:
        raise RuntimeError(f"`{package}` was imported from {location}, not from {root}: run the script from the "
                           "repository root (`python tools/architecture.py`) so this checkout comes first.")
    names = [package] + sorted(
        m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=package + ".")  # type: ignore[attr-defined]
        if m.name.rsplit(".", 1)[-1] != "__main__")
    infos = []
    for full in names:
        try:
            module = importlib.import_module(full)
        except Exception as err:  # noqa: BLE001 - reported with the module's name
            raise RuntimeError(f"cannot import `{full}` ({type(err).__name__}: {err}): fix the import first; "
                               "the map must show every module.") from err
        infos.append(module_info(full[len(package) + 1:], module, root))
    return infos


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(infos: Sequence[ModuleInfo], groups: Sequence[Tuple[str, Sequence[str]]] = GROUPS) -> str:
    """The generated Markdown: a module table in data-flow order, then each module's public names.

    Example:
        >>> info = ModuleInfo("taps", "lightning_memloc/taps/hooks.py", 10, "Hooks.", ("- `f(x)`",), ())
        >>> print(render([info]).splitlines()[4])
        | Taps | `taps/hooks.py` | 10 | Hooks. |
        >>> render([info]).splitlines()[0]
        '1 modules, 10 lines; over 400 lines: none. Regenerate with `python tools/architecture.py --write`.'
    """
    order = {title: i for i, (title, _) in enumerate(groups)}
    order[OTHER] = len(order)
    ranked = sorted(infos, key=lambda m: (order[group_of(m.name, groups)], m.path))
    total = sum(m.lines for m in infos)
    long = [m.path.split("/", 1)[-1] for m in ranked if m.lines > MAX_LINES]
    out = [f"{len(infos)} modules, {total} lines; over {MAX_LINES} lines: "
           + (", ".join(f"`{p}`" for p in long) if long else "none")
           + ". Regenerate with `python tools/architecture.py --write`.", "",
           "| group | module | lines | summary |", "|---|---|---|---|"]
    for m in ranked:
        short = m.path.split("/", 1)[-1]
        lines = f"**{m.lines}**" if m.lines > MAX_LINES else str(m.lines)
        out.append(f"| {group_of(m.name, groups)} | `{short}` | {lines} | {_cell(m.summary)} |")
    current: Optional[str] = None
    for m in ranked:
        group = group_of(m.name, groups)
        if group != current:
            out += ["", f"### {group}"]
            current = group
        out += ["", f"#### `{m.path}` ({m.lines} lines)", ""]
        if m.summary:
            out += [m.summary, ""]
        out += list(m.entries)
        if m.exports:
            out.append("- exports: " + ", ".join(f"`{n}`" for n in m.exports))
        if not m.entries and not m.exports:
            out.append("- (no public names)")
    return "\n".join(out) + "\n"


def split_doc(text: str) -> Tuple[str, str, str]:
    """``(before, generated, after)`` of a document with one marker pair.

    Raises:
        ValueError: the markers are missing, repeated or in the wrong order.
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"docs/architecture.md needs exactly one `{BEGIN}` line followed by one `{END}` line: "
                         "put them where the generated module map belongs.")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    body = body.strip("\n")
    return head + BEGIN + "\n", body + "\n" if body else "", END + tail


def expected_doc(current: str, generated: str) -> str:
    """``current`` with the part between the markers replaced by ``generated``."""
    head, _, tail = split_doc(current)
    return head + "\n" + generated + "\n" + tail


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print, write (``--write``) or check (``--check``) the generated part of docs/architecture.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the part between the markers")
    action.add_argument("--check", action="store_true", help="exit 1 when the document is out of date")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(ROOT))
    generated = render(collect())
    if not (args.write or args.check):
        sys.stdout.write(generated)
        return 0
    current = DOC.read_text(encoding="utf-8")
    wanted = expected_doc(current, generated)
    if args.check:
        if wanted != current:
            print("docs/architecture.md is out of date: run `python tools/architecture.py --write`.", file=sys.stderr)
            return 1
        return 0
    from lightning_memloc.io import atomic_write_text

    atomic_write_text(DOC, wanted)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
