"""``memloc plot``: the figures of a saved report and / or a monitor history.

Draws the views of memorization of Wang et al., *Localizing Memorization in SSL Vision Encoders*
(NeurIPS 2024) with :func:`~lightning_memloc.plots.plot_report` (and the analyses' figures),
after checking every argument.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_memloc.cli.checks import check_out
from lightning_memloc.cli.errors import FILE_ERRORS, VALUE_ERRORS, CLIError, as_cli_error
from lightning_memloc.cli.renamed import typed_flag
from lightning_memloc.cli.selection import load_cli_data, select_candidates

__all__ = ["plot"]


def plot(args: argparse.Namespace) -> int:
    """Run ``memloc plot`` on parsed arguments; returns the exit code (0).

    Raises:
        CLIError: a bad argument (code 2), before any figure is written.
    """
    from lightning_memloc.plots import plot_report
    from lightning_memloc.plots.io import find_plot_inputs

    first = Path(args.inputs[0])
    out_flag = typed_flag(args, "output_dir")
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
        data, _ = load_cli_data(args, "--images")
        ids = report.candidate_ids
        if args.indices_from_split or args.indices or args.candidates:
            images = data[select_candidates(args, len(data), 0)]
        elif "data" not in report.meta:  # measure() / monitor reports number candidates by position
            if len(data) != len(ids):
                raise CLIError("--images", "this report numbers its candidates by position (it was not written by "
                                           "`memloc analyze`): select them with --indices-from-split (and "
                                           "--split-seed) or --indices, or pass a file holding exactly the candidates.")
            images = data
        elif int(ids.max()) >= len(data):
            raise CLIError("--images", f"the report's candidate ids go up to {int(ids.max())} but the data has "
                                       f"{len(data)} images: pass the data the report was measured on.")
        else:
            images = data[ids]
        if len(images) != report.num_candidates:
            raise CLIError("--images", f"selected {len(images)} images for {report.num_candidates} candidates: "
                                       "select the candidates the report was measured on.")
    with as_cli_error(out_flag, FILE_ERRORS):
        written = plot_report(report, out, images=images, history=history, k=args.k, layer=args.layer,
                              threshold=args.threshold)
        if report is not None and report.analyses:  # figures of lightning_memloc.analyses results
            from lightning_memloc.plots.analyses import plot_analyses
            written += plot_analyses(report, out)
    if report is not None:
        print(report.summary_table(args.threshold))
    print(f"[memloc] wrote {', '.join(str(p) for p in written)}")
    return 0

