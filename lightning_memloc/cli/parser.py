"""The ``memloc`` argument parser: the flags of ``analyze`` and ``plot`` and their parse-time checks.

Flags are named after the keyword they set (``--top-k`` for ``measure(top_k=...)``, see
:mod:`lightning_memloc.cli.contract`); counts, seeds and probabilities are checked by argparse
``type`` functions, so a bad value is a usage error before anything is loaded. What is measured
is defined by Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024).
"""

from __future__ import annotations

import argparse
from typing import Any, Optional, Union

from lightning_memloc.cli.renamed import RenamedFlag
from lightning_memloc.cli.zoo import ARCHS
from lightning_memloc.checks import NEGATIVE_POLICIES, PAIRINGS, REDUCTIONS
from lightning_memloc.precision import AUTOCASTS

__all__ = ["DESCRIPTION", "build_parser", "nonnegative_int", "normalize_spec", "positive_int", "split_size"]

#: The description ``memloc --help`` prints.
DESCRIPTION = "The ``memloc`` command: measure memorization of saved encoders and draw the figures."


def _int_at_least(low: int, what: str) -> Any:
    """An argparse ``type``: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


#: argparse ``type``: an integer >= 1 (a usage error otherwise).
positive_int = _int_at_least(1, "a positive integer")
#: argparse ``type``: an integer >= 0.
nonnegative_int = _int_at_least(0, "an integer >= 0")


def _seed(text: str) -> int:
    """A seed in [0, 2**64) (seeds are used modulo 2**64: others would alias; docs/reliability.md row 48)."""
    from lightning_memloc.checks import check_seed

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**64), got {text!r}") from None


def _bootstrap(text: str) -> int:
    """0 (no intervals or tests) or at least ``MIN_BOOTSTRAP`` resamples (``EvidenceOptions``)."""
    from lightning_memloc.evidence import MIN_BOOTSTRAP

    value = nonnegative_int(text)
    if 0 < value < MIN_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"expected 0 (no intervals or tests) or an integer >= {MIN_BOOTSTRAP}, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def normalize_spec(text: str) -> Any:
    """``--normalize``: a preset name (``imagenet``, ``cifar10``) or ``MEAN/STD`` as comma-separated
    per-channel values, e.g. ``0.5,0.5,0.5/0.25,0.25,0.25``.

    Example:
        >>> normalize_spec("0.5/0.25"), normalize_spec("imagenet")
        (((0.5,), (0.25,)), 'imagenet')
    """
    from lightning_memloc.normalization import NORMALIZE_PRESETS, check_normalize

    hint = f"expected one of {', '.join(NORMALIZE_PRESETS)} or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25"
    try:
        if "/" not in text:
            return check_normalize(text)
        mean, std = text.split("/", 1)
        return check_normalize(([float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]))
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"{hint}, got {text!r} ({err})") from None


def split_size(text: str) -> Union[int, float]:
    """A split size: a fraction in [0, 1) or a count (>= 1), as ``memloc demo`` takes them."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a fraction or a count >= 0, got {text!r}")
    return int(value) if value >= 1 else value


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
    g.add_argument("--split-seed", type=_seed, help=f"seed of the split (default: {seed_default})")
    g.add_argument("--control", metavar="FILE|N",
                   help="control images, both encoders trained on them (the null of LayerMem): an indices file, or "
                        "with --indices-from-split a count / fraction drawn at random from the split's shared part "
                        "(a .json {'control': [...]} file, e.g. the demo's split.json, gives its 'control' list)")
    g.add_argument("--unseen", metavar="FILE|split",
                   help="images the encoder never trained on, from the candidates' distribution (UnitMem membership "
                        "test; the alignment gap under the encoder alone, no --reference needed): an indices file, or 'split' "
                        "for the split's independent part (with --indices-from-split); a .json dict gives its 'unseen' list")


def build_parser() -> argparse.ArgumentParser:
    """The ``memloc`` argument parser (sub-commands ``analyze``, ``plot``, ``demo``; see ``docs/cli.md``).

    Example:
        >>> build_parser().parse_args(["plot", "report.json"]).command
        'plot'
    """
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="memloc", description=DESCRIPTION, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="{analyze,plot,demo}", required=True)
    a = sub.add_parser("analyze", formatter_class=fmt, help="measure UnitMem / SSLMem / LayerMem of a checkpoint",
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
    from lightning_memloc.user_models import add_model_args

    add_model_args(m)
    _add_data_args(a, "--data", 32, "--seed, as in `memloc demo`")
    s = a.add_argument_group("measurement (see lightning_memloc.measure)")
    s.add_argument("--views", type=positive_int, default=10, help="K augmented views per candidate")
    s.add_argument("--layers", default="auto", help="'auto' or comma-separated module names, e.g. conv1,res1.conv2")
    s.add_argument("--seed", type=_seed, default=0, help="view seed")
    s.add_argument("--batch-size", type=positive_int, default=32, help="candidates per forward step")
    s.add_argument("--labels", action="store_true", help="also measure ClassMem (needs labelled data)")
    s.add_argument("--pairing", choices=PAIRINGS, default="all", help="view pairs of the alignment")
    s.add_argument("--reduction", choices=REDUCTIONS, default="mean", help="μ-max of UnitMem over the other candidates")
    s.add_argument("--negative", choices=NEGATIVE_POLICIES, default="clamp",
                   help="policy for negative activations (GELU, attention outputs; docs/definitions.md)")
    s.add_argument("--top-k", type=positive_int, default=50, help="size of the top-k / least-k LayerMem groups")
    s.add_argument("--bootstrap", type=_bootstrap, default=1000,
                   help="bootstrap resamples / permutations (0: no intervals or tests; else >= 200)")
    s.add_argument("--confidence", type=_probability, default=0.95, help="coverage of the intervals")
    s.add_argument("--alpha", type=_probability, default=0.05, help="significance level of the Holm-corrected tests")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--num-workers", type=nonnegative_int, default=0, help="DataLoader workers generating the views")
    s.add_argument("--autocast", choices=AUTOCASTS, default=None,
                   help="run the forwards under torch.autocast in bf16 or fp16 (default: float32; docs/performance.md)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar of the pass (--no-progress: none)")
    s.add_argument("--transform", metavar="PKG.MODULE:FACTORY",
                   help="per-image view transform: an importable callable returning it, called with --transform-kwargs, "
                        "e.g. lightly.transforms:SimCLRViewTransform (default: the batched SimCLR augmentation)")
    s.add_argument("--transform-kwargs", metavar="JSON", default="{}",
                   help="keyword arguments of the --transform factory, a JSON object, e.g. '{\"input_size\": 32}'")
    s.add_argument("--normalize", type=normalize_spec, default=None,
                   help="normalise the views per channel before the encoder: imagenet | cifar10 | MEAN/STD "
                        "(e.g. 0.5,0.5,0.5/0.25,0.25,0.25); match what the encoder trained on")
    a.add_argument("--output-dir", "--out", action=RenamedFlag, required=True, metavar="DIR",
                   help="output folder (report.json and PNG figures); --out is its deprecated spelling")
    a.add_argument("--overwrite", action="store_true",
                   help="replace the report.json of an earlier analysis in --output-dir (refused otherwise)")
    from lightning_memloc.cli.analyses import add_analysis_arguments
    add_analysis_arguments(a)  # --analyses consistency,exchange,atypicality (docs/analyses.md)

    p = sub.add_parser("plot", formatter_class=fmt, help="figures from a saved report.json and/or history.json",
                       description="Draw the figures of a saved report and/or a MemorizationMonitor history.")
    p.add_argument("inputs", nargs="+", metavar="REPORT_OR_HISTORY",
                   help="report.json, history.json, or a folder holding them (e.g. the monitor's output_dir)")
    p.add_argument("--output-dir", "--out", action=RenamedFlag, metavar="DIR",
                   help="output folder (default: the folder of the first input); --out is its deprecated spelling")
    _add_data_args(p, "--images", None, "0; pass the demo's --seed")
    p.add_argument("--k", type=positive_int, default=8, help="candidates per row of the candidate grid")
    p.add_argument("--layer", help="layer of the SSLMem-vs-UnitMem scatter and candidate ranking (default: last)")
    p.add_argument("--threshold", type=float, default=0.5, help="UnitMem above which a unit is highly memorizing")
    sub.add_parser("demo", add_help=False,
                   help="co-train an encoder and its reference with the monitor (memloc demo --help)")
    return parser

