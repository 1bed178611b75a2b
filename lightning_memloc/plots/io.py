"""Reading what :mod:`lightning_memloc.plots` draws: monitor histories and report / history files.

Example:
    >>> load_history([{"epoch": 0, "memloc/unit_mem_mean/conv1": 0.2}])[0]  # old tags are upgraded
    {'epoch': 0, 'memloc.unit_mem_mean/conv1': 0.2}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from lightning_memloc.errors import ReportFormatError
from lightning_memloc.io import PathLike
from lightning_memloc.report.report import FORMAT, MemorizationReport
from lightning_memloc.report.tags import PREFIX as TAG_PREFIX, SEPARATOR, upgrade_tag

History = Union[Sequence[Mapping[str, Any]], PathLike]
PREFIX = f"{TAG_PREFIX}{SEPARATOR}"  # every per-layer scalar tag starts with it (lightning_memloc.report.tags)


def _read_json(source: Path, what: str) -> Any:
    if not source.is_file():
        raise FileNotFoundError(f"no {what} file at {str(source)!r}: check the path.")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportFormatError(f"{str(source)!r} is not valid JSON (corrupt or truncated): {err}") from err


def _is_number(value: Any, key: str) -> bool:
    """An int epoch, or a scalar: a number or ``None`` (a figure that was not measured)."""
    number = isinstance(value, int) if key == "epoch" else value is None or isinstance(value, (int, float))
    return number and not isinstance(value, bool)


def load_history(history: History) -> List[Dict[str, Any]]:
    """A monitor history (list of dicts or ``history.json`` path), validated, with tags upgraded."""
    where = "history"
    if isinstance(history, (str, Path)) or hasattr(history, "__fspath__"):
        where = repr(str(history))
        history = _read_json(Path(history), "history")  # type: ignore[arg-type]
    if not isinstance(history, list) or not history:
        raise ReportFormatError(f"{where} is not a monitor history: expected a non-empty list of per-epoch dicts.")
    entries = [{upgrade_tag(str(k)): v for k, v in entry.items()} if isinstance(entry, dict) else entry for entry in history]
    for entry in entries:
        if not isinstance(entry, dict) or "epoch" not in entry or not any(str(k).startswith(PREFIX) for k in entry):
            raise ReportFormatError(f"{where} is not a monitor history: every entry needs an 'epoch' and "
                                    f"'{PREFIX}<quantity>/<layer>' scalars, got {str(entry)[:80]!r}.")
        bad = {k: v for k, v in entry.items()
               if (k == "epoch" or str(k).startswith((PREFIX, f"{TAG_PREFIX}/"))) and not _is_number(v, k)}
        if bad:  # matplotlib would draw strings as categories: a plausible, wrong curve
            raise ReportFormatError(f"{where}: the entry of epoch {entry['epoch']!r} holds values that are not numbers "
                                    f"{dict(list(bad.items())[:3])}: re-create the history with the monitor.")
    return entries


def read_plot_input(path: PathLike) -> Tuple[str, Union[MemorizationReport, List[Dict[str, Any]]]]:
    """``("report", MemorizationReport)`` or ``("history", list of dicts)`` read from ``path``."""
    source = Path(path)
    data = _read_json(source, "report or history")
    if isinstance(data, list):
        return "history", load_history(data)
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise ReportFormatError(f"{str(source)!r} is not a MemorizationReport (no 'format': {FORMAT!r}) nor a monitor "
                                "history (a list of per-epoch dicts).")
    try:
        return "report", MemorizationReport.from_dict(data)
    except ReportFormatError as err:
        raise ReportFormatError(f"{str(source)!r}: {err}") from err


def _epoch(path: Path) -> int:
    tail = path.stem.split("=")[-1]
    return int(tail) if tail.lstrip("-").isdigit() else -2


def _in_folder(folder: Path) -> List[Path]:
    folders = [folder, folder / "memloc"]
    reports = [f / "report.json" for f in folders if (f / "report.json").is_file()]
    reports = reports or sorted((p for f in folders for p in f.glob("report_epoch=*.json")), key=_epoch)[-1:]
    histories = [f / "history.json" for f in folders if (f / "history.json").is_file()]
    if not reports and not histories:
        raise FileNotFoundError(f"{str(folder)!r} holds no report.json, report_epoch=<E>.json or history.json "
                                "(nor does its memloc/ sub-folder): pass the files.")
    return reports[:1] + histories[:1]


def find_plot_inputs(paths: Sequence[PathLike]) -> Tuple[Optional[MemorizationReport], Optional[List[Dict[str, Any]]]]:
    """``(report or None, history or None)`` among ``paths``: files, or folders (and their ``memloc/``) searched."""
    files = [f for given in map(Path, paths) for f in (_in_folder(given) if given.is_dir() else [given])]
    found: Dict[str, Any] = {"report": None, "history": None}
    for path in files:
        kind, value = read_plot_input(path)
        if found[kind] is not None:
            raise ValueError(f"{str(path)!r} is a second {kind}: plot one report and one history at a time.")
        found[kind] = value
    return found["report"], found["history"]
