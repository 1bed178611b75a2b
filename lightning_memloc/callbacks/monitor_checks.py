"""What makes a monitor's measurements comparable across resumes, and which run owns its output folder."""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from lightning_memloc.checks import check_int
from lightning_memloc.io import atomic_write_text
from lightning_memloc.models.loading import split_prefix
from lightning_memloc.checks.module_digest import UnkeyableModuleError, settings_digest
from lightning_memloc.states.reference_cache import tensor_digest

#: The file naming the run that owns a monitor's ``output_dir``.
MARKER = "memloc_run.json"
_CLAIMS: Dict[str, "weakref.ref[Any]"] = {}
#: folder -> (monitor, another run's files that ``overwrite=True`` deletes at the first write).
_REPLACED: Dict[str, Tuple["weakref.ref[Any]", List[str]]] = {}


def _digest(tensor: Optional[Tensor]) -> Optional[str]:
    if tensor is None:
        return None
    data = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(str((tuple(data.shape), str(data.dtype))).encode())
    h.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()[:16]


def _transform_name(transform: Any) -> str:
    text = repr(transform)
    return type(transform).__qualname__ if " at 0x" in text else " ".join(text.split())


def candidates_digest(views: Any) -> str:
    """A digest of the candidate set (tensor contents; for a ``Dataset``: its size and first 2 items)."""
    stored = views.stored
    if stored is None:
        items = [views.raw(i) for i in range(min(2, len(views)))]
        stored = torch.stack(items) if len({tuple(t.shape) for t in items}) == 1 else items[0]
    labels = _digest(views.labels) or "-"
    return f"{len(views)}:{_digest(stored)}:{labels}"


#: Monitor arguments that change no measured or logged number, and why; every other one is in :func:`fingerprint`.
FINGERPRINT_EXEMPT = {
    **dict.fromkeys(("every_n_epochs", "every_n_train_steps"),
                    "when measurements happen, not what they measure (part of Lightning's state key)"),
    "batch_size": "candidates are measured independently in eval mode: batching changes no per-candidate value",
    "num_workers": "a view depends only on (seed, candidate, view number), not on the worker that makes it",
    "progress": "display only",
    **dict.fromkeys(("grid_size", "log_figures"), "images logged to TensorBoard, not numbers"),
    "log_histograms": "a logging option",
    "layer_runs": "a logging layout",
    "output_dir": "where files are written (a folder's marker holds the fingerprint)",
    "overwrite": "what happens to another run's files",
    "name": "tag and file names (part of Lightning's state key)",
    "memory_limit": "a check before training",
    **dict.fromkeys(("measure_on_train_start", "init_batchnorm"),
                    "only the before-training point, which a resumed run never measures again"),
    "check_views": "a check of the first training batches that warns or stops; it changes no number",
}
#: Fingerprint entries an older checkpoint may lack (or ``None`` before ``setup``): not compared then.
_ADDED = ("threshold", "transform_digest", "encoder", "reference_id")


def _spec_name(spec: Any) -> str:
    if spec is None or isinstance(spec, (str, os.PathLike)):
        return "(the LightningModule)" if spec is None else str(spec)
    return type(spec).__qualname__ if isinstance(spec, nn.Module) else getattr(spec, "__qualname__", repr(spec))


def _settings(obj: Any) -> str:
    try:
        return settings_digest(obj)[:16]
    except UnkeyableModuleError:  # compared by name only (docs/reliability.md, limits); the error names an address
        return "(not digestible)"


def module_identities(monitor: Any, owner: nn.Module, encoder: nn.Module,
                      reference: Optional[nn.Module]) -> Tuple[str, Optional[str]]:
    """Name the encoder and reference: by path inside ``owner``, else by class, weights and settings."""
    paths = {id(m): name for name, m in owner.named_modules()}

    def where(module: nn.Module, spec: Any) -> str:
        return (paths[id(module)] or "(the LightningModule)") if id(module) in paths else _spec_name(spec)

    if reference is None or id(reference) in paths:
        return where(encoder, monitor.encoder_spec), None if reference is None else f"co-trained {where(reference, None)}"
    weights = tensor_digest(*reference.state_dict().values())[:16]
    return (where(encoder, monitor.encoder_spec),
            f"{type(reference).__qualname__} weights {weights} settings {_settings(reference)}")


def fingerprint(monitor: Any) -> Dict[str, Any]:
    """What defines one measurement: every monitor argument not in :data:`FINGERPRINT_EXEMPT`."""
    layers, views = monitor.layer_names or monitor.layers, monitor.views
    return {"candidates": monitor.candidates_digest, "num_candidates": len(views), "views": views.views,
            "seed": views.seed, "transform": _transform_name(views.transform),
            "transform_digest": _settings(views.transform),
            "layers": layers if isinstance(layers, str) else [getattr(n, "name", n) for n in layers],
            **monitor.options.fingerprint(),  # pairing, reduction, negative, top_k, evidence
            "threshold": monitor.threshold, "encoder": getattr(monitor, "encoder_id", None),
            "reference": monitor.reference_spec is not None, "reference_id": getattr(monitor, "reference_id", None),
            "groups": dict(monitor.group_sizes),
            "pool": candidates_digest(monitor.pool) if monitor.group_sizes else None}


def check_same_fingerprint(saved: Optional[Dict[str, Any]], current: Dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` when ``saved`` (from a checkpoint or a folder) differs from ``current``."""
    if saved is None:
        return
    # "layers" may be saved resolved while a fresh monitor only knows "auto": compare resolved names only
    diff = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)
            and not (k == "layers" and "auto" in (saved.get(k), current.get(k)))
            and not (k in _ADDED and None in (saved.get(k), current.get(k)))]
    if diff:
        detail = "; ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in diff)
        raise ValueError(f"{where} was measured with other settings ({detail}): its history cannot continue with this "
                         "monitor. Use the same candidates, views, seed, transform, layers, options, threshold, "
                         "encoder and reference to resume, or start a new run (a new `output_dir`, no `ckpt_path`).")


def check_checkpoint_states(monitor: Any, trainer: Any, checkpoint: Dict[str, Any]) -> None:
    """Refuse a checkpoint whose monitor state is under another ``state_key`` (Lightning would drop it silently)."""
    states = checkpoint.get("callbacks") or {}
    if monitor.state_key in states:
        return
    mine = {getattr(c, "state_key", None) for c in trainer.callbacks if type(c) is type(monitor)}
    orphans = [k for k in states if str(k).startswith(type(monitor).__name__) and k not in mine]
    if orphans:
        saved = (states[orphans[0]] or {}).get("fingerprint")
        check_same_fingerprint(saved, fingerprint(monitor), "the checkpoint's MemorizationMonitor state")
        raise ValueError(f"the checkpoint holds a MemorizationMonitor state under {orphans[0]!r} but this monitor is "
                         f"{monitor.state_key!r}: resume with the monitor's original every_n_epochs, seed and "
                         "candidates, or start a new run.")


def _monitor_files(folder: Path) -> List[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and (
        p.name in ("history.json", MARKER) or (p.name.startswith("report_epoch=") and p.name.endswith(".json"))))


def _read_marker(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_output_dir(monitor: Any, folder: Path, *, resuming: bool, overwrite: bool) -> Tuple[str, List[str]]:
    """Make ``folder`` this run's in ``setup``: ``(run_id, foreign_files)``, the latter refused in ``on_fit_start``."""
    key = str(folder.resolve())
    holder = _CLAIMS[key]() if key in _CLAIMS else None
    if holder is not None and holder is not monitor:
        raise ValueError(f"`output_dir`={str(folder)!r} is already used by another MemorizationMonitor: each monitor "
                         "writes history.json and report_epoch=<E>.json, so give each its own folder.")
    files, marker, run_id, foreign = _monitor_files(folder), _read_marker(folder), monitor.run_id, []
    ours = marker is not None and marker.get("run_id") == run_id
    if files and not ours and not overwrite:
        if resuming and marker is not None:
            run_id = adopt(monitor, folder, marker) or run_id
        else:  # decided in on_fit_start: Lightning restores a checkpoint (a resume) only after setup
            foreign = files
    elif files and not ours and overwrite:
        _REPLACED[key] = (weakref.ref(monitor), files)
    _CLAIMS[key] = weakref.ref(monitor)
    return run_id, foreign


def adopt(monitor: Any, folder: Path, marker: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The resumed run's id, after checking the folder's fingerprint (``None``: no marker)."""
    marker = _read_marker(folder) if marker is None else marker
    if marker is None:
        return None
    check_same_fingerprint(marker.get("fingerprint"), fingerprint(monitor), f"`output_dir`={str(folder)!r}")
    return str(marker.get("run_id"))


def check_no_foreign_files(files: List[str], folder: Optional[Path]) -> None:
    """In ``on_fit_start`` (after any checkpoint restore): refuse a folder holding another run's ``files``."""
    if folder is not None and files:
        raise FileExistsError(f"`output_dir`={str(folder)!r} holds another run's files ({', '.join(files[:4])}"
                              f"{', ...' if len(files) > 4 else ''}): pass a new folder, resume that run with "
                              "`ckpt_path=`, or pass overwrite=True to delete them and start again.")


def release_output_dir(monitor: Any) -> None:
    """Forget ``monitor``'s claim (end of fit, or an exception)."""
    for key, ref in list(_CLAIMS.items()):
        if ref() is monitor or ref() is None:
            del _CLAIMS[key]
    for key, (ref, _) in list(_REPLACED.items()):  # never written: the other run's files stay
        if ref() is monitor or ref() is None:
            del _REPLACED[key]


def check_owner(monitor: Any, folder: Path) -> None:
    """Before each write: the folder's marker must be this run's (written, after any replaced files are deleted, at the first)."""
    key = str(folder.resolve())
    if key in _REPLACED and _REPLACED[key][0]() is monitor:
        for name in _REPLACED.pop(key)[1]:
            (folder / name).unlink(missing_ok=True)
    marker = _read_marker(folder)
    if marker is None:
        atomic_write_text(folder / MARKER, json.dumps({"run_id": monitor.run_id, "fingerprint": fingerprint(monitor)},
                                                      indent=1))
    elif marker.get("run_id") != monitor.run_id:
        raise FileExistsError(f"`output_dir`={str(folder)!r} was taken by another run (run id {marker.get('run_id')!r}) "
                              "during this one: give each run its own folder.")


def is_checkpoint_path(spec: Any) -> bool:
    """Whether a ``reference`` string names a checkpoint file rather than an attribute path."""
    if not isinstance(spec, str):
        return isinstance(spec, os.PathLike)
    path = str(split_prefix(spec)[0])  # "pair.ckpt:reference.backbone" names a prefix inside the file
    return path.endswith((".ckpt", ".pt", ".pth")) or os.sep in path or os.path.isfile(path)


@contextmanager
def encoder_hint(encoder_spec: Any, pl_module: nn.Module) -> Iterator[None]:
    """Explain a failed probe of a whole LightningModule measured because ``encoder=`` was not given."""
    try:
        yield
    except ValueError as err:
        if encoder_spec is not None or "cannot run on a batch of candidate views" not in str(err):
            raise
        children = [n for n, _ in pl_module.named_children()]
        raise ValueError(f"`encoder` is None, so the monitor measures the whole {type(pl_module).__name__}, which "
                         f"cannot run on the candidates' views: pass `encoder=` the attribute path of the encoder "
                         f"(e.g. encoder='backbone'); the module's children are {children}. ({err})") from err


@contextmanager
def reference_hint(spec: Any) -> Iterator[None]:
    """Name the file case when a ``reference`` string is neither an attribute nor an existing file."""
    try:
        yield
    except AttributeError as err:
        if not isinstance(spec, str) or not os.path.splitext(spec)[1]:
            raise
        raise AttributeError(f"{err} No file {spec!r} exists either: pass the path of an existing checkpoint "
                             "(any extension) or the attribute path of a co-trained reference.") from err


def check_schedule(every_n_epochs: Optional[int], every_n_train_steps: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
    """Validate the schedule: ``(every_n_epochs, every_n_train_steps)``, one ``None``; neither given means every epoch.

    Example:
        >>> check_schedule(None, None), check_schedule(None, 50), check_schedule(2, None)
        ((1, None), (None, 50), (2, None))
    """
    if every_n_epochs is not None:
        every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)  # NumPy integers accepted
    if every_n_train_steps is not None:
        every_n_train_steps = check_int("every_n_train_steps", every_n_train_steps, 1)
    if every_n_epochs is not None and every_n_train_steps is not None:
        raise ValueError(f"pass either `every_n_epochs` ({every_n_epochs}) or `every_n_train_steps` "
                         f"({every_n_train_steps}), not both.")
    return (1 if every_n_train_steps is None and every_n_epochs is None else every_n_epochs), every_n_train_steps


def step_due(every_n_train_steps: Optional[int], global_step: int, history: List[Dict[str, Any]]) -> bool:
    """Whether a step-scheduled monitor measures now: a multiple of N not yet in ``history`` (accumulation repeats steps).

    Example:
        >>> step_due(2, 4, []), step_due(2, 4, [{"global_step": 4}]), step_due(2, 3, []), step_due(None, 4, [])
        (True, False, False, False)
    """
    due = every_n_train_steps is not None and global_step > 0 and not global_step % every_n_train_steps
    return due and all(entry.get("global_step") != global_step for entry in history)


def final_epoch_due(every_n_train_steps: Optional[int], current_epoch: int, global_step: int,
                    history: List[Dict[str, Any]]) -> Optional[int]:
    """The epoch to measure at the end of training, or ``None`` when the last one was measured (or no step ran).

    Example:
        >>> final_epoch_due(None, 3, 30, [{"epoch": 1}]), final_epoch_due(None, 3, 30, [{"epoch": 2}])
        (2, None)
        >>> final_epoch_due(5, 3, 30, [{"global_step": 30}]), final_epoch_due(5, 3, 32, [{"global_step": 30}])
        (None, 2)
    """
    last = current_epoch - 1 if current_epoch > 0 else 0
    if every_n_train_steps is not None:
        return last if step_due(1, global_step, history) else None
    measured = [entry["epoch"] for entry in history]
    return last if global_step > 0 and (not measured or max(measured) < last) else None


def show_progress(progress: Optional[bool], trainer: Any) -> bool:
    """Whether a measurement shows a progress bar: ``progress`` when given, else as the Trainer; rank 0 only.

    Example:
        >>> from types import SimpleNamespace
        >>> quiet = SimpleNamespace(progress_bar_callback=None, is_global_zero=True)
        >>> show_progress(None, quiet), show_progress(True, quiet)
        (False, True)
    """
    wanted = getattr(trainer, "progress_bar_callback", None) is not None if progress is None else bool(progress)
    return wanted and bool(trainer.is_global_zero)
