"""The ``memloc`` command: measure memorization of saved encoders and draw the figures.

Localizes memorization in SSL vision encoders as in Wang et al., *Localizing Memorization in SSL
Vision Encoders* (NeurIPS 2024): UnitMem per unit, SSLMem per candidate and LayerMem /
ΔLayerMem per layer (against a reference encoder trained without the candidates).

- ``memloc analyze``: load an encoder (and reference) checkpoint, measure the candidates of a
  data set with :func:`~lightning_memloc.measure`, write ``report.json``, the figures of
  :mod:`lightning_memloc.plots` and print the summary table;
- ``memloc plot``: figures from a saved ``report.json`` and / or a monitor ``history.json``;
- ``memloc demo``: co-train an encoder and its reference with the monitor (``lightning_memloc.demo``).

Every argument is checked before any measurement: a bad one ends the command with exit code 2
and one line on stderr naming the argument and the fix. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from lightning_memloc.errors import ArchitectureMismatchError, LayerNotFoundError, MemlocError

__all__ = ["ARCHS", "CLIError", "build_model", "build_parser", "main"]

#: ``--arch`` choices: the paper's ResNet9, torchvision's ResNet-18 (ImageNet stem, or the CIFAR stem:
#: 3×3 stride-1 first conv, no max-pool) without its classifier, and the test encoder TinyCNN.
ARCHS = ("resnet9", "authors-resnet9", "resnet18", "resnet18-cifar", "tiny")
_DEFAULT_WIDTH = {"resnet9": 64, "authors-resnet9": 32, "resnet18": 64, "resnet18-cifar": 64, "tiny": 4}
_FILE_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, MemlocError)
_VALUE_ERRORS = _FILE_ERRORS + (ValueError, TypeError, KeyError)


class CLIError(Exception):
    """A user error, reported by :func:`main` as one line on stderr (no traceback).

    Args:
        argument: the command-line argument at fault (``"--encoder"``), or ``""``.
        message: what is wrong and how to fix it; whitespace (newlines) is collapsed to one line.
        code: exit code, 2 for a bad argument, 1 for a failed measurement.
    """

    def __init__(self, argument: str, message: str, code: int = 2) -> None:
        text = " ".join(str(message).split())
        super().__init__(f"{argument}: {text}" if argument else text)
        self.code = code


@contextmanager
def _argument(name: str, catch: Tuple[type, ...] = _VALUE_ERRORS, hint: str = "") -> Iterator[None]:
    """Turn the library's errors raised inside the block into a :class:`CLIError` naming ``name``."""
    try:
        yield
    except CLIError:
        raise
    except catch as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise CLIError(name, f"{message} {hint}".strip()) from err


def build_model(arch: str, width: Optional[int] = None, in_channels: int = 3) -> nn.Module:
    """An untrained encoder of ``arch`` to load a checkpoint into (``load_encoder(path, like=...)``).

    Args:
        arch: one of :data:`ARCHS`: ``"resnet9"`` (the ResNet9 of Wang et al., NeurIPS 2024),
            ``"authors-resnet9"`` (the layout of the authors' released code, width 32 by default),
            ``"resnet18"`` / ``"resnet18-cifar"`` (torchvision's, ``fc`` replaced by identity) or
            ``"tiny"`` (:class:`~lightning_memloc.models.TinyCNN`).
        width: base width (``None``: 64, 32 for ``"authors-resnet9"``, 4 for ``"tiny"``); ResNet-18 only has 64.
        in_channels: image channels.

    Returns:
        The encoder; its ``forward`` returns the representation.

    Raises:
        ValueError: an unknown ``arch``, or a width ResNet-18 does not have.

    Example:
        >>> build_model("tiny", width=2)(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 8])
    """
    from lightning_memloc.models import ResNet9, TinyCNN

    width = _DEFAULT_WIDTH.get(arch, 0) if width is None else width
    if arch == "tiny":
        return TinyCNN(in_channels=in_channels, width=width)
    if arch == "resnet9":
        return ResNet9(in_channels=in_channels, width=width)
    if arch == "authors-resnet9":  # the layout of the authors' released code (docs/fidelity.md)
        from lightning_memloc.models import AuthorsResNet9

        return AuthorsResNet9(in_channels=in_channels, width=width)
    if arch in ("resnet18", "resnet18-cifar"):
        if width != 64:
            raise ValueError(f"torchvision's ResNet-18 has width 64, got {width}: drop --width or use --arch resnet9.")
        from torchvision.models import resnet18

        model = resnet18(weights=None)
        model.fc = nn.Identity()
        cifar = arch == "resnet18-cifar"
        if cifar or in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 3 if cifar else 7, stride=1 if cifar else 2,
                                    padding=1 if cifar else 3, bias=False)
        if cifar:
            model.maxpool = nn.Identity()
        return model
    raise ValueError(f"unknown architecture {arch!r}: expected one of {list(ARCHS)}.")


# ----------------------------------------------------------------------------------- parser
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


_positive = _int_at_least(1, "a positive integer")
_nonnegative = _int_at_least(0, "an integer >= 0")


def _seed(text: str) -> int:
    """A seed in [0, 2**64) (seeds are used modulo 2**64: others would alias; docs/reliability.md row 48)."""
    from lightning_memloc.checks import check_seed

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**64), got {text!r}") from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def _count(text: str) -> Union[int, float]:
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
    g.add_argument("--size", type=_positive, default=size, help="image side in pixels (resized)")
    g.add_argument("--limit", type=_positive, help="use only the first N images of the data (as `memloc demo --limit`)")
    g.add_argument("--candidates", type=_positive, help="measure at most N candidates (the first N of the selection)")
    pick = g.add_mutually_exclusive_group()
    pick.add_argument("--indices-from-split", action="store_true",
                      help="candidates = the held-out part of the shared/candidates/independent split of `memloc demo`")
    pick.add_argument("--indices", metavar="FILE",
                      help="candidate indices: a .json list (or {'candidates': [...]}), a .txt or a .npy")
    g.add_argument("--split-candidates", type=_count, default=0.1, help="candidate fraction (or count) of the split")
    g.add_argument("--split-independent", type=_count, default=0.1,
                   help="reference-only fraction (or count) of the split")
    g.add_argument("--split-seed", type=_seed, help=f"seed of the split (default: {seed_default})")
    g.add_argument("--control", metavar="FILE|N",
                   help="control images, both encoders trained on them (the null of LayerMem): an indices file, or "
                        "with --indices-from-split a count / fraction drawn at random from the split's shared part")
    g.add_argument("--unseen", metavar="FILE|split",
                   help="images the encoder never trained on (UnitMem membership test): an indices file, or 'split' "
                        "for the split's independent part (with --indices-from-split)")


def build_parser() -> argparse.ArgumentParser:
    """The ``memloc`` argument parser (sub-commands ``analyze``, ``plot``, ``demo``; see ``docs/cli.md``).

    Example:
        >>> build_parser().parse_args(["plot", "report.json"]).command
        'plot'
    """
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="memloc", description=__doc__.split("\n\n")[0], formatter_class=fmt)
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
    m.add_argument("--width", type=_positive, help="base width (default: resnet9 64, tiny 4)")
    m.add_argument("--in-channels", type=_positive, default=3, help="image channels the encoder takes")
    from lightning_memloc.user_models import add_model_args

    add_model_args(m)
    _add_data_args(a, "--data", 32, "--seed, as in `memloc demo`")
    s = a.add_argument_group("measurement (see lightning_memloc.measure)")
    s.add_argument("--views", type=_positive, default=10, help="K augmented views per candidate")
    s.add_argument("--layers", default="auto", help="'auto' or comma-separated module names, e.g. conv1,res1.conv2")
    s.add_argument("--seed", type=_seed, default=0, help="view seed")
    s.add_argument("--batch-size", type=_positive, default=32, help="candidates per forward step")
    s.add_argument("--labels", action="store_true", help="also measure ClassMem (needs labelled data)")
    s.add_argument("--pairing", choices=("all", "anchor"), default="all", help="view pairs of the alignment")
    s.add_argument("--reduction", choices=("mean", "median"), default="mean",
                   help="μ-max of UnitMem over the other candidates")
    s.add_argument("--top-k", type=_positive, default=50, help="size of the top-k / least-k LayerMem groups")
    s.add_argument("--bootstrap", type=_nonnegative, default=1000, help="bootstrap resamples / permutations (0: no intervals)")
    s.add_argument("--confidence", type=_probability, default=0.95, help="coverage of the intervals")
    s.add_argument("--alpha", type=_probability, default=0.05, help="significance level of the Holm-corrected tests")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder (report.json and PNG figures)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace the report.json of an earlier analysis in --out (refused otherwise)")
    from lightning_memloc.cli_analyses import add_analysis_arguments
    add_analysis_arguments(a)  # --analyses consistency,exchange,atypicality (docs/analyses.md)

    p = sub.add_parser("plot", formatter_class=fmt, help="figures from a saved report.json and/or history.json",
                       description="Draw the figures of a saved report and/or a MemorizationMonitor history.")
    p.add_argument("inputs", nargs="+", metavar="REPORT_OR_HISTORY",
                   help="report.json, history.json, or a folder holding them (e.g. the monitor's output_dir)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the folder of the first input)")
    _add_data_args(p, "--images", None, "0; pass the demo's --seed")
    p.add_argument("--k", type=_positive, default=8, help="candidates per row of the candidate grid")
    p.add_argument("--layer", help="layer of the SSLMem-vs-UnitMem scatter and candidate ranking (default: last)")
    p.add_argument("--threshold", type=float, default=0.5, help="UnitMem above which a unit is highly memorizing")
    sub.add_parser("demo", add_help=False,
                   help="co-train an encoder and its reference with the monitor (memloc demo --help)")
    return parser


# ----------------------------------------------------------------------------- validation
def _check_out(path: str) -> Path:
    """Fail early if ``--out`` cannot become a writable folder (without creating anything yet)."""
    out = Path(path)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError("--out", f"{str(probe)!r} is a file, not a folder: pass a folder path.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError("--out", f"{str(probe)!r} is not writable: pass a folder you can write to.")
    return out


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _argument("--device", (RuntimeError, ValueError), "(use auto, cpu, cuda or cuda:N)."):
        device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device", f"{spec!r} asked for CUDA, but no CUDA device is available: use --device cpu.")
    return device


def _mismatch(path: str, model: nn.Module, prefix: Optional[str]) -> str:
    """How a checkpoint differs from ``model``: the first tensor of another shape and the first conv's channels."""
    from lightning_memloc.loading import encoder_state

    state, detail = encoder_state(path, model, prefix), "the parameter names differ"
    for name, tensor in model.state_dict().items():
        if name in state and state[name].shape != tensor.shape:
            detail = (f"{name} has shape {tuple(state[name].shape)} in the checkpoint but {tuple(tensor.shape)} "
                      "in the model")
            break
    first = next((v for v in state.values() if v.ndim == 4), None)
    return detail + ("" if first is None else f"; its first conv maps {first.shape[1]} to {first.shape[0]} channels")


def _load(path: str, like: nn.Module, prefix: Optional[str], flag: str, args: argparse.Namespace) -> nn.Module:
    """``load_encoder`` with one-line errors naming ``flag``; warns about checkpoint tensors the model leaves unused."""
    from lightning_memloc.loading import load_encoder

    arch = f"--arch {args.arch} --width {args.width or _DEFAULT_WIDTH[args.arch]} --in-channels {args.in_channels}"
    with _argument(flag, _FILE_ERRORS + (ValueError,)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no checkpoint file at {path!r}: check the path.")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = load_encoder(path, like=like, prefix=prefix)
        except ArchitectureMismatchError:
            fix = ("the reference must have the encoder's architecture: train it with the same "
                   "--arch/--width/--in-channels" if flag == "--reference" else
                   "pass the --arch/--width/--in-channels it was trained with, or --encoder-prefix")
            detail = _mismatch(path, like, prefix)
            raise ArchitectureMismatchError(f"the checkpoint {path!r} does not fit {arch} ({detail}): {fix}.") from None
    for warning in caught:  # e.g. a ResNet9 checkpoint loaded as --arch tiny: the first layers fit, the rest not
        print(f"memloc {args.command}: warning: {flag}: {warning.message} ({arch}: check --arch)", file=sys.stderr)
    return model


def _read_indices(path: str) -> Tensor:
    from lightning_memloc.checks import check_index_values

    hint = "(expected a .json list, {'candidates': [...]}, a .txt or a .npy of ints)."
    with _argument("--indices", _VALUE_ERRORS + (OSError,), hint):
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no indices file at {path!r}: check the path.")
        if source.suffix == ".npy":
            values: Any = np.load(source, allow_pickle=False)
        elif source.suffix == ".json":
            values = json.loads(source.read_text(encoding="utf-8"))
            values = values.get("candidates") if isinstance(values, dict) else values
        else:
            values = source.read_text(encoding="utf-8").replace(",", " ").split()
        indices = check_index_values(values, "--indices")  # integers only, no duplicates
        if indices.numel() == 0:
            raise ValueError(f"{path!r} holds no indices.")
        return indices


def _split(args: argparse.Namespace, n: int, seed: int) -> Any:
    from lightning_memloc.data import split_candidates

    with _argument("--split-candidates", (ValueError, TypeError), "(fractions must add up to < 1, counts to < N)."):
        c, i = args.split_candidates, args.split_independent
        sizes = [v if isinstance(v, int) else int(np.floor(v * n + 1e-9)) for v in (c, i)]
        split_seed = seed if args.split_seed is None else args.split_seed
        return split_candidates(n, shared=n - sum(sizes), candidates=c, independent=i, seed=split_seed)


def _indices_file(flag: str, path: str, n: int) -> Tensor:
    positions = _read_indices(path) if flag == "--indices" else _argument_indices(flag, path)
    bad = positions[(positions < 0) | (positions >= n)]
    if bad.numel():
        raise CLIError(flag, f"index {int(bad[0])} is outside the {n} images of the data: check --data / --limit.")
    return positions


def _argument_indices(flag: str, path: str) -> Tensor:
    with _argument(flag, _FILE_ERRORS + _VALUE_ERRORS):
        return _read_indices(path)


def _select(args: argparse.Namespace, n: int, seed: int) -> Tensor:
    """Dataset indices of the candidates: ``--indices-from-split``, ``--indices`` or all, capped by ``--candidates``."""
    if args.indices_from_split:
        positions = _split(args, n, seed).candidates
    elif args.indices:
        positions = _indices_file("--indices", args.indices, n)
    else:
        positions = torch.arange(n)
    return positions[: args.candidates] if args.candidates else positions


def _select_groups(args: argparse.Namespace, n: int, seed: int, candidates: Tensor) -> Dict[str, Tensor]:
    """Dataset indices of ``--control`` and ``--unseen`` (disjoint from the candidates)."""
    groups: Dict[str, Tensor] = {}
    for flag, value in (("--control", args.control), ("--unseen", args.unseen)):
        if value is None:
            continue
        from_split = flag == "--control" and not Path(value).exists() or flag == "--unseen" and value == "split"
        if from_split:
            if not args.indices_from_split:
                raise CLIError(flag, f"{value!r} is not a file; a {'count' if flag == '--control' else 'split'} "
                                     "needs --indices-from-split (or pass an indices file).")
            split = _split(args, n, seed)
            if flag == "--unseen":
                positions = split.independent
            else:
                with _argument(flag, (ValueError, TypeError), "(a count >= 2 or a fraction of the shared part)."):
                    positions = split.control(_count(value), seed=seed)
        else:
            positions = _indices_file(flag, value, n)
        overlap = positions[torch.isin(positions, candidates)]
        if overlap.numel():
            raise CLIError(flag, f"index {int(overlap[0])} is also a candidate: control and unseen images must not be "
                                 "candidates.")
        groups[flag[2:]] = positions
    return groups


def _load_data(args: argparse.Namespace, flag: str) -> Tuple[Tensor, Tensor]:
    from lightning_memloc.data import NAMED_DATASETS, load_data

    if str(args.data).lower() not in NAMED_DATASETS and not Path(args.data).exists():
        raise CLIError(flag, f"{args.data!r} is neither a data set name {list(NAMED_DATASETS)} nor an existing .npz "
                             "file or image folder: check the path.")
    with _argument(flag, _VALUE_ERRORS + (RuntimeError, OSError)):
        images, labels = load_data(args.data, root=args.root, size=args.size)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    return images, labels


def _match_channels(images: Tensor, channels: int) -> Tensor:
    """Grey → RGB by replication, RGBA → RGB, RGB → grey (ITU-R 601 luma) to fit ``--in-channels``."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if have == 4 and channels == 3:
        return images[:, :3].contiguous()
    if have in (3, 4) and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images[:, :3].float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(images.dtype)
    raise CLIError("--in-channels", f"the data has {have} channels but the encoder takes {channels}: "
                                    f"pass --in-channels {have} or other data.")


# ---------------------------------------------------------------------------------- analyze
def _reference_cache(args: argparse.Namespace, reference: Any) -> Any:
    """The ``--reference-cache`` file's cache (new if absent), checked before any forward pass."""
    if getattr(args, "reference_cache", None) is None:
        return None
    if reference is None:
        raise CLIError("--reference-cache", "caches the reference's alignments and needs --reference: pass one, or drop it.")
    from lightning_memloc.reference_cache import ReferenceCache

    with _argument("--reference-cache", (ValueError, OSError)):
        return ReferenceCache.load(args.reference_cache, missing_ok=True)


def _analyze(args: argparse.Namespace) -> int:
    from lightning_memloc.io import check_writable_dir
    from lightning_memloc.measure import build_views, measure, probe_layers
    from lightning_memloc.plots import plot_report
    from lightning_memloc.user_models import user_encoders

    out = _check_out(args.out)
    if (out / "report.json").exists() and not args.overwrite:
        raise CLIError("--out", f"{str(out)!r} already holds a report.json from an earlier analysis: pass another "
                                "folder, or --overwrite to replace it.")
    device = _device(args.device)
    built = user_encoders(args)  # --model / --lightning-module; None for --arch
    if built is not None:
        (encoder, reference), like = built, built[0]
    else:
        with _argument("--width", (ValueError,)):
            like = build_model(args.arch, args.width, args.in_channels)
        encoder = _load(args.encoder, like, args.encoder_prefix, "--encoder", args)
        reference = None if args.reference is None else _load(args.reference, like, args.reference_prefix,
                                                                 "--reference", args)
    if reference is not None:
        same = all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), reference.state_dict().values()))
        if same:
            raise CLIError("--reference", "its weights are identical to the encoder's (SSLMem would be 0 everywhere): "
                                          "pass the reference's own checkpoint, or --reference-prefix for a "
                                          "co-trained one.")
    cache = _reference_cache(args, reference)  # checked before the data are read
    images, labels = _load_data(args, "--data")
    positions = _select(args, len(images), args.seed)
    if positions.numel() < 2:
        flag = "--split-candidates" if args.indices_from_split and not args.candidates else "--candidates"
        raise CLIError(flag, f"{positions.numel()} candidate(s) selected, but UnitMem compares candidates and needs "
                             f"at least 2: select more with {flag}.")
    groups = _select_groups(args, len(images), args.seed, positions)
    if "control" in groups and reference is None:
        raise CLIError("--control", "the control is compared with the candidates on SSLMem, which needs --reference.")
    candidates = _match_channels(images[positions], args.in_channels)
    extra = {name: _match_channels(images[idx], args.in_channels) for name, idx in groups.items()}
    cand_labels = None
    if args.labels:
        cand_labels = labels[positions]
        if bool((cand_labels < 0).any()) or cand_labels.unique().numel() < 2:
            raise CLIError("--labels", f"ClassMem needs labels of at least 2 classes; {args.data!r} gives "
                                       f"{cand_labels.unique().tolist()[:5]} for the candidates: drop --labels.")
    from lightning_memloc.cli_analyses import check_analysis_arguments, run_cli_analyses
    analyses = check_analysis_arguments(args, reference, images, labels, positions)
    if reference is not None and args.pairing == "all" and args.views < 2:
        raise CLIError("--views", "LayerMem with --pairing all compares pairs of views: pass --views 2 or more, "
                                  "or --pairing anchor.")
    layers: Union[str, List[str]] = "auto"
    if args.layers.strip() != "auto":
        layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if not layers:
        raise CLIError("--layers", "no layer names given: pass 'auto' or names such as conv1,conv2.")
    encoder, reference = encoder.to(device), None if reference is None else reference.to(device)
    example = build_views(candidates[:2], args.views, None, args.seed, None).example_batch(device)
    try:
        probe_layers(encoder, reference, layers, example)
    except ArchitectureMismatchError as err:
        raise CLIError("--reference", f"{err}") from err
    except (LayerNotFoundError, ValueError) as err:
        raise CLIError("--layers", str(err)) from err
    with _argument("--out", _FILE_ERRORS):
        check_writable_dir(out, argument="--out")
    meta = {"encoder": str(args.encoder), "reference": args.reference, "arch": args.arch or args.model or args.lightning_module,
            "width": getattr(like, "width", None), "in_channels": args.in_channels, "data": str(args.data),
            "size": args.size, **{f"{name}_indices": idx.tolist() for name, idx in groups.items()}}
    try:
        report = measure(encoder, candidates, reference=reference, views=args.views, layers=layers, seed=args.seed,
                         batch_size=args.batch_size, labels=cand_labels, pairing=args.pairing, reduction=args.reduction,
                         top_k=args.top_k, candidate_ids=positions, progress=not args.no_progress, meta=meta,
                         control=extra.get("control"), unseen=extra.get("unseen"), bootstrap=args.bootstrap,
                         confidence=args.confidence, alpha=args.alpha, reference_cache=cache)
        if cache is not None:
            cache.save(args.reference_cache)
    except MemlocError as err:
        raise CLIError("", f"measurement failed: {err}", code=1) from err
    extra = run_cli_analyses(analyses, args, report, encoder, reference, candidates, out)  # into report.analyses
    written = [report.save(out / "report.json")]
    written += plot_report(report, out, images=candidates) + extra
    print(report.summary_table())
    print(f"\n[memloc] {report.num_candidates} candidates, {len(report.layers)} layers; wrote "
          + ", ".join(str(p) for p in written))
    return 0


# ------------------------------------------------------------------------------------- plot
def _plot(args: argparse.Namespace) -> int:
    from lightning_memloc.plots import plot_report
    from lightning_memloc.plots_io import find_plot_inputs

    first = Path(args.inputs[0])
    out = _check_out(args.out or str(first if first.is_dir() else first.parent))
    with _argument("REPORT_OR_HISTORY", _VALUE_ERRORS, "(pass a report.json or history.json written by memloc)."):
        report, history = find_plot_inputs(args.inputs)
    if args.layer is not None and (report is None or args.layer not in report.layers):
        raise CLIError("--layer", f"{args.layer!r} is not a layer of the report; its layers are "
                                  f"{[] if report is None else report.layers}.")
    images = None
    if args.data is not None:
        if report is None:
            raise CLIError("--images", "candidate images need a report (the grid ranks a report's candidates).")
        data, _ = _load_data(args, "--images")
        ids = report.candidate_ids
        if args.indices_from_split or args.indices or args.candidates:
            images = data[_select(args, len(data), 0)]
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
    with _argument("--out", _FILE_ERRORS):
        written = plot_report(report, out, images=images, history=history, k=args.k, layer=args.layer,
                              threshold=args.threshold)
        if report is not None and report.analyses:  # figures of lightning_memloc.analyses results
            from lightning_memloc.plots_analyses import plot_analyses
            written += plot_analyses(report, out)
    if report is not None:
        print(report.summary_table(args.threshold))
    print(f"[memloc] wrote {', '.join(str(p) for p in written)}")
    return 0


# ------------------------------------------------------------------------------------- main
def _demo(argv: Sequence[str]) -> int:
    try:
        from lightning_memloc import demo
    except ModuleNotFoundError as err:
        if err.name != "lightning_memloc.demo":
            raise
        raise CLIError("demo", "this installation has no lightning_memloc.demo module: update lightning_memloc.") \
            from err
    try:
        with _argument("demo", _FILE_ERRORS):
            return int(demo.main(list(argv)) or 0)
    except SystemExit as exit_:  # the demo's own argparse (--help, bad options)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``memloc`` command (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024).

    Args:
        argv: the arguments (default ``sys.argv[1:]``), e.g. ``["analyze", "--encoder", "f.pt", ...]``.

    Returns:
        The exit code: 0 success; 2 a bad argument (one line on stderr names it and the fix, also for
        argparse usage errors); 1 the measurement failed (e.g. NaN activations); 130 interrupted.

    Example:
        >>> main(["plot", "no/such/report.json"])  # doctest: +SKIP
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["demo"]:
            return _demo(argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        return _analyze(args) if args.command == "analyze" else _plot(args)
    except CLIError as err:
        command = f"memloc {argv[0]}" if argv and argv[0] in ("analyze", "plot", "demo") else "memloc"
        print(f"{command}: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("memloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
