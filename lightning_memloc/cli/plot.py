"""``memloc plot``: the figures of a saved report and / or a monitor history."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_memloc.cli.output import check_out
from lightning_memloc.cli.cli_error import FILE_ERRORS, VALUE_ERRORS, CLIError, as_cli_error
from lightning_memloc.cli.images import images_checksum, load_cli_data, select_candidates

_SELECTION_FLAGS = ("--indices-from-split", "--indices", "--candidates")


def _grid_images(args: argparse.Namespace, report: Any) -> Tensor:
    """The report's own candidates, in its order, from ``--images`` (by dataset index for ``analyze`` reports, else by position)."""
    measured_size = report.meta.get("size") if "data" in report.meta else None
    if args.size is None and measured_size is not None:
        args.size = measured_size  # load at the size analyze measured, so the checksum can compare
    data, _ = load_cli_data(args, "--images")
    ids, n = report.candidate_ids, report.num_candidates
    flag = next((name for name in _SELECTION_FLAGS if getattr(args, name[2:].replace("-", "_"))), None)
    selected = None if flag is None else select_candidates(args, len(data), 0)
    by_index = "data" in report.meta or (selected is not None and not torch.equal(ids, torch.arange(n)))
    if not by_index:  # measure() / monitor reports number candidates by position
        if selected is None and len(data) != n:
            raise CLIError("--images", "this report numbers its candidates by position (it was not written by "
                                       "`memloc analyze`): select them with --indices-from-split (and "
                                       "--split-seed) or --indices, or pass a file holding exactly the candidates.")
        images = data if selected is None else data[selected]
        if len(images) != n:
            raise CLIError(flag or "--images", f"selected {len(images)} images for {n} candidates: select the "
                                               "candidates the report was measured on.")
        return images
    if int(ids.max()) >= len(data):
        raise CLIError("--images", f"the report's candidate ids go up to {int(ids.max())} but the data has "
                                   f"{len(data)} images: pass the data the report was measured on.")
    if selected is not None and set(selected.tolist()) != set(ids.tolist()):
        other = sorted(set(selected.tolist()) - set(ids.tolist()))[:5] or sorted(set(ids.tolist()) - set(selected.tolist()))[:5]
        raise CLIError(flag, f"selected {len(selected)} images for {n} candidates, not the report's own (its candidate ids "
                             f"are dataset indices; they differ at {other}): drop {flag}, plot draws the report's "
                             "candidates from --images (a split drawn with another --split-seed names other images).")
    images = data[ids]
    recorded = report.meta.get("candidates_sha1")
    if recorded is not None and args.size == measured_size and images_checksum(images) != recorded:
        raise CLIError("--images", f"the images at the report's candidate ids are not the ones it measured (their "
                                   f"checksum differs): pass the data it was measured on ({report.meta['data']!r}, "
                                   f"--size {measured_size}).")
    return images


def plot(args: argparse.Namespace) -> int:
    """Run ``memloc plot`` on parsed arguments; returns the exit code (0) or raises ``CLIError`` before writing."""
    from lightning_memloc.plots import plot_report
    from lightning_memloc.plots.io import find_plot_inputs
    first = Path(args.inputs[0])
    out_flag = "--output-dir"
    out = check_out(args.output_dir or str(first if first.is_dir() else first.parent), out_flag)
    with as_cli_error("REPORT_OR_HISTORY", VALUE_ERRORS, "(pass a report.json or history.json written by memloc)."):
        report, history = find_plot_inputs(args.inputs)
    if args.layer is not None and (report is None or args.layer not in report.layers):
        raise CLIError("--layer", f"{args.layer!r} is not a layer of the report; its layers are "
                                  f"{[] if report is None else report.layers}.")
    images = None
    if args.data is not None:
        if report is None:
            raise CLIError("--images", "candidate images need a report (the grid ranks a report's candidates).")
        images = _grid_images(args, report)
    with as_cli_error(out_flag, FILE_ERRORS):
        written = plot_report(report, out, images=images, history=history, k=args.k, layer=args.layer,
                              threshold=args.threshold, warmup_step=args.warmup_step)
        if report is not None and report.analyses:  # figures of lightning_memloc.analyses results
            from lightning_memloc.plots.analysis_figures import plot_analyses
            written += plot_analyses(report, out)
    if report is not None:
        print(report.summary_table(args.threshold))
    print(f"[memloc] wrote {', '.join(str(p) for p in written)}")
    return 0

