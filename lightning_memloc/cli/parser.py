"""The ``memloc`` argument parser: the flags of ``analyze`` and ``plot`` and their parse-time checks."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Dict, Optional

from lightning_memloc.cli.cli_error import (bootstrap_count, nonnegative_int, normalize_spec, positive_int, probability,
                                             seed, split_size)
from lightning_memloc.cli.user_models import ARCHS
from lightning_memloc.options import MeasureOptions

#: The description ``memloc --help`` prints.
DESCRIPTION = "The ``memloc`` command: measure memorization of saved encoders and draw the figures."


def _add_data_args(p: argparse.ArgumentParser, data_flag: str, size: Optional[int], seed_default: str) -> None:
    g = p.add_argument_group("data and candidates")
    g.add_argument(data_flag, dest="data", metavar="DATA", required=data_flag == "--data",
                   help="digits | cifar10 | stl10 | svhn | file.npz (uint8 x N×H×W×C, y) | image folder")
    g.add_argument("--root", default="data", help="download/cache folder of cifar10 / stl10 / svhn")
    g.add_argument("--size", type=positive_int, default=size, help="image side in pixels (resized)")
    g.add_argument("--limit", type=positive_int, help="use only the first N images of the data (`memloc demo --subset` "
                   "draws a seeded random subset instead)")
    g.add_argument("--candidates", type=positive_int, help="measure at most N candidates (the first N of the selection)")
    pick = g.add_mutually_exclusive_group()
    pick.add_argument("--indices-from-split", action="store_true",
                      help="candidates = the held-out part of a shared/candidates/independent split (split_candidates, as "
                           "`memloc demo --setting plain` draws it)")
    pick.add_argument("--indices", metavar="FILE",
                      help="candidate indices: a .json list (or {'candidates': [...]}, e.g. the split.json of `memloc demo`), "
                           "a .txt or a .npy")
    g.add_argument("--split-candidates", type=split_size, default=0.1, help="candidate fraction (or count) of the split")
    g.add_argument("--split-independent", type=split_size, default=0.1,
                   help="reference-only fraction (or count) of the split")
    g.add_argument("--split-seed", type=seed, help=f"seed of the split (default: {seed_default})")
    g.add_argument("--control", metavar="FILE|N",
                   help="control images, both encoders trained on them (the null of LayerMem): an indices file, or "
                        "with --indices-from-split a count / fraction drawn at random from the split's shared part "
                        "(a .json {'control': [...]} file, e.g. the demo's split.json, gives its 'control' list)")
    g.add_argument("--unseen", metavar="FILE|split",
                   help="images the encoder never trained on, from the candidates' distribution (UnitMem membership "
                        "test; the alignment gap under the encoder alone, no --reference needed): an indices file, or 'split' "
                        "for the split's independent part (with --indices-from-split); a .json dict gives its 'unseen' list")


#: The argparse ``type`` of each kind of option (:class:`~lightning_memloc.options.MeasureOptions` field metadata).
_KINDS: Dict[str, Callable[[str], Any]] = {"seed": seed, "bootstrap": bootstrap_count, "probability": probability,
                                          "normalize": normalize_spec}
#: Defaults of ``memloc analyze`` that differ from ``measure()``'s (docs/cli.md, naming contract).
CLI_DEFAULTS = {"progress": True}


def add_option_flags(group: Any) -> None:
    """One checked flag per :class:`~lightning_memloc.options.MeasureOptions` field (``top_k`` → ``--top-k``)."""
    for f in dataclasses.fields(MeasureOptions):
        meta = f.metadata
        if not meta:
            continue  # with_reference: set by the command, not a flag
        kwargs: Dict[str, Any] = {"default": CLI_DEFAULTS.get(f.name, f.default), "help": meta["help"]}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        elif meta.get("kind") == "flag":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "minimum" in meta:
            kwargs["type"] = positive_int if meta["minimum"] == 1 else nonnegative_int
        else:
            kwargs["type"] = _KINDS[meta["kind"]]
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``memloc`` argument parser (sub-commands ``analyze``, ``plot``, ``demo``; see ``docs/cli.md``).

    Example:
        >>> build_parser().parse_args(["plot", "report.json"]).command
        'plot'
    """
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="memloc", description=DESCRIPTION, formatter_class=fmt, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="{analyze,plot,demo}", required=True)
    a = sub.add_parser("analyze", formatter_class=fmt, allow_abbrev=False, help="measure UnitMem / SSLMem / LayerMem of a checkpoint",
                       description="Measure memorization of a saved encoder on a candidate set; "
                                   "write report.json and figures.")
    m = a.add_argument_group("encoders")
    m.add_argument("--encoder", metavar="CKPT", help="encoder f: state_dict file or Lightning .ckpt (optional with --model)")
    m.add_argument("--reference", metavar="CKPT",
                   help="reference g (same architecture, never saw the candidates): enables SSLMem and LayerMem")
    m.add_argument("--encoder-prefix",
                   help="key prefix of the encoder in the checkpoint, e.g. encoder.backbone (default: found)")
    m.add_argument("--reference-prefix", help="key prefix of the reference in its checkpoint, e.g. reference.backbone")
    m.add_argument("--reference-cache", metavar="FILE", help="keep the reference's alignments in FILE and reuse them "
                   "on later analyses against the same reference, views and layers (docs/performance.md)")
    m.add_argument("--arch", choices=ARCHS, help="encoder architecture (or --model / --lightning-module)")
    m.add_argument("--width", type=positive_int, help="base width (default: resnet9 64, tiny 4)")
    m.add_argument("--in-channels", type=positive_int, default=3, help="image channels the encoder takes")
    from lightning_memloc.cli.user_models import add_model_args
    add_model_args(m)
    _add_data_args(a, "--data", 32, "--seed, as in `memloc demo`")
    s = a.add_argument_group("measurement (see lightning_memloc.measure)")
    add_option_flags(s)
    s.add_argument("--layers", default="auto", help="'auto' or comma-separated module names, e.g. conv1,res1.conv2")
    s.add_argument("--labels", action="store_true", help="also measure ClassMem (needs labelled data)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--transform", metavar="PKG.MODULE:FACTORY",
                   help="per-image view transform: an importable callable returning it, called with --transform-kwargs, "
                        "e.g. lightly.transforms:SimCLRViewTransform (default: the batched SimCLR augmentation)")
    s.add_argument("--transform-kwargs", metavar="JSON", default="{}",
                   help="keyword arguments of the --transform factory, a JSON object, e.g. '{\"input_size\": 32}'")
    a.add_argument("--output-dir", required=True, metavar="DIR", help="output folder (report.json and PNG figures)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace the report.json of an earlier analysis in --output-dir (refused otherwise)")
    from lightning_memloc.cli.analysis_flags import add_analysis_arguments
    add_analysis_arguments(a)  # --analyses consistency,exchange,atypicality (docs/analyses.md)

    p = sub.add_parser("plot", formatter_class=fmt, allow_abbrev=False, help="figures from a saved report.json and/or history.json",
                       description="Draw the figures of a saved report and/or a MemorizationMonitor history.")
    p.add_argument("inputs", nargs="+", metavar="REPORT_OR_HISTORY",
                   help="report.json, history.json, or a folder holding them (e.g. the monitor's output_dir)")
    p.add_argument("--output-dir", metavar="DIR", help="output folder (default: the folder of the first input)")
    _add_data_args(p, "--images", None, "0; pass the demo's --seed")
    p.add_argument("--k", type=positive_int, default=8, help="candidates per row of the candidate grid")
    p.add_argument("--layer", help="layer of the SSLMem-vs-UnitMem scatter and candidate ranking (default: last)")
    p.add_argument("--threshold", type=float, default=0.5, help="UnitMem above which a unit is highly memorizing")
    p.add_argument("--warmup-step", type=nonnegative_int, default=None, metavar="STEP",
                   help="global step at which the learning-rate warm-up ended: a dashed line in the heat maps")
    sub.add_parser("demo", add_help=False,
                   help="co-train an encoder and its reference with the monitor (memloc demo --help)")
    return parser

