"""``memloc analyze``: measure a saved encoder (and reference) on a candidate set, write the report and figures."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from lightning_memloc.cli.cli_error import CLIError, FILE_ERRORS, as_cli_error
from lightning_memloc.cli.images import images_checksum, load_cli_data, match_channels, select_candidates, select_groups
from lightning_memloc.cli.output import StagedOutput, check_out, parse_device
from lightning_memloc.cli.user_models import DEFAULT_WIDTH, build_model, user_encoders, user_transform
from lightning_memloc.errors import AmbiguousPrefixError, ArchitectureMismatchError, LayerNotFoundError, MemlocError
from lightning_memloc.options import MeasureOptions


def _mismatch(path: str, model: nn.Module, prefix: Optional[str]) -> str:
    """How a checkpoint differs from ``model``: the first tensor of another shape and the first conv's channels."""
    from lightning_memloc.models.loading import encoder_state
    state, detail = encoder_state(path, model, prefix), "the parameter names differ"
    for name, tensor in model.state_dict().items():
        if name in state and state[name].shape != tensor.shape:
            detail = (f"{name} has shape {tuple(state[name].shape)} in the checkpoint but {tuple(tensor.shape)} "
                      "in the model")
            break
    first = next((v for v in state.values() if v.ndim == 4), None)
    return detail + ("" if first is None else f"; its first conv maps {first.shape[1]} to {first.shape[0]} channels")


def load_checkpoint(path: str, like: nn.Module, prefix: Optional[str], flag: str, args: argparse.Namespace) -> nn.Module:
    """``load_encoder`` with one-line errors naming ``flag``; warns about checkpoint tensors the model leaves unused."""
    from lightning_memloc.models.loading import load_encoder, split_prefix
    arch = f"--arch {args.arch} --width {args.width or DEFAULT_WIDTH[args.arch]} --in-channels {args.in_channels}"
    with as_cli_error(flag, FILE_ERRORS + (ValueError,)):
        if not Path(split_prefix(path)[0]).is_file():  # "pair.ckpt:reference.backbone" names a prefix too
            raise FileNotFoundError(f"no checkpoint file at {path!r}: check the path.")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = load_encoder(path, like=like, prefix=prefix)
        except AmbiguousPrefixError as err:
            shown = [p.rstrip(".") or "(no prefix)" for p in err.prefixes]
            named = [p for p in shown if p != "(no prefix)"]
            example = next((p for p in named if flag.strip("-") in p), named[0])  # only an example: the user picks
            raise AmbiguousPrefixError(f"the checkpoint {path!r} holds weights that fit {arch} under {len(shown)} "
                                       f"prefixes {shown} (e.g. the encoder and the reference of a co-trained pair): "
                                       f"pass {flag}-prefix with the one to load, e.g. {flag}-prefix {example}.",
                                       err.prefixes) from None
        except ArchitectureMismatchError:
            fix = ("the reference must have the encoder's architecture: train it with the same "
                   "--arch/--width/--in-channels" if flag == "--reference" else
                   "pass the --arch/--width/--in-channels it was trained with, or --encoder-prefix")
            detail = _mismatch(path, like, prefix)
            raise ArchitectureMismatchError(f"the checkpoint {path!r} does not fit {arch} ({detail}): {fix}.") from None
    for warning in caught:  # e.g. a ResNet9 checkpoint loaded as --arch tiny: the first layers fit, the rest not
        print(f"memloc {args.command}: warning: {flag}: {warning.message} ({arch}: check --arch)", file=sys.stderr)
    return model


#: ``measure()`` keyword arguments set from the flag of the same name (``top_k`` from ``--top-k``).
MEASURE_FLAGS = MeasureOptions.keywords()


def measure_kwargs(args: argparse.Namespace, *, reference: Optional[nn.Module], layers: Union[str, List[str]],
                   labels: Optional[Tensor], candidate_ids: Tensor, groups: Dict[str, Tensor], meta: Dict[str, Any],
                   reference_cache: Any, transform: Any = None) -> Dict[str, Any]:
    """The keyword arguments of :func:`~lightning_memloc.measure` for the parsed ``memloc analyze`` flags.

    Example:
        >>> from lightning_memloc.cli.parser import build_parser
        >>> args = build_parser().parse_args(["analyze", "--data", "digits", "--output-dir", "out", "--top-k", "5"])
        >>> kw = measure_kwargs(args, reference=None, layers="auto", labels=None, candidate_ids=torch.arange(3),
        ...                     groups={}, meta={}, reference_cache=None)
        >>> kw["top_k"], kw["progress"], kw["control"]
        (5, True, None)
    """
    return {**{name: getattr(args, name) for name in MEASURE_FLAGS}, "reference": reference, "layers": layers,
            "labels": labels, "candidate_ids": candidate_ids, "meta": meta, "control": groups.get("control"),
            "unseen": groups.get("unseen"), "reference_cache": reference_cache, "transform": transform}


def _reference_cache(args: argparse.Namespace, reference: Any) -> Any:
    """The ``--reference-cache`` file's cache (new if absent), checked before any forward pass."""
    if getattr(args, "reference_cache", None) is None:
        return None
    if reference is None:
        raise CLIError("--reference-cache", "caches the reference's alignments and needs --reference: pass one, or drop it.")
    from lightning_memloc.states.reference_cache import ReferenceCache
    with as_cli_error("--reference-cache", (ValueError, OSError)):
        return ReferenceCache.load(args.reference_cache, missing_ok=True)


def _layers(spec: str) -> Union[str, List[str]]:
    """``--layers``: ``"auto"`` or the comma-separated names."""
    if spec.strip() == "auto":
        return "auto"
    layers = [name.strip() for name in spec.split(",") if name.strip()]
    if not layers:
        raise CLIError("--layers", "no layer names given: pass 'auto' or names such as conv1,conv2.")
    return layers


def _encoders(args: argparse.Namespace) -> Tuple[nn.Module, Optional[nn.Module], nn.Module]:
    """``(encoder, reference, like)`` from ``--arch`` + checkpoints or ``--model`` / ``--lightning-module``."""
    built = user_encoders(args)  # --model / --lightning-module; None for --arch
    if built is not None:
        (encoder, reference), like = built, built[0]
    else:
        with as_cli_error("--width", (ValueError,)):
            like = build_model(args.arch, args.width, args.in_channels)
        encoder = load_checkpoint(args.encoder, like, args.encoder_prefix, "--encoder", args)
        reference = None if args.reference is None else load_checkpoint(args.reference, like, args.reference_prefix,
                                                                        "--reference", args)
    if reference is not None and all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                                        reference.state_dict().values())):
        raise CLIError("--reference", "its weights are identical to the encoder's (SSLMem would be 0 everywhere): pass "
                                      "the reference's own checkpoint, or --reference-prefix for a co-trained one.")
    return encoder, reference, like


def _candidate_labels(args: argparse.Namespace, labels: Tensor, positions: Tensor) -> Optional[Tensor]:
    """The candidates' labels with ``--labels`` (ClassMem needs at least 2 classes), else ``None``."""
    if not args.labels:
        return None
    chosen = labels[positions]
    if bool((chosen < 0).any()) or chosen.unique().numel() < 2:
        raise CLIError("--labels", f"ClassMem needs labels of at least 2 classes; {args.data!r} gives "
                                   f"{chosen.unique().tolist()[:5]} for the candidates: drop --labels.")
    return chosen


def _probe(args: argparse.Namespace, encoder: nn.Module, reference: Optional[nn.Module], layers: Any,
           candidates: Tensor, device: torch.device, transform: Any = None) -> None:
    """One forward of two candidates' views, so bad ``--transform`` / ``--layers`` / reference fail early."""
    from lightning_memloc.measurement import build_views
    from lightning_memloc.taps.probe import probe_layers
    flag = "--transform" if transform is not None else "--normalize"
    with as_cli_error(flag, (TypeError, ValueError)):
        example = build_views(candidates[:2], args.views, transform, args.seed, None,
                              normalize=args.normalize).example_batch(device)
    with as_cli_error("--layers", (LayerNotFoundError, ValueError)):  # a mismatch is a ValueError too
        with as_cli_error("--reference", (ArchitectureMismatchError,)):
            probe_layers(encoder, reference, layers, example)


def analyze(args: argparse.Namespace) -> int:
    """Run ``memloc analyze`` on parsed arguments; returns the exit code (0) or raises ``CLIError``."""
    from lightning_memloc.cli.analysis_flags import check_analysis_arguments, run_cli_analyses
    from lightning_memloc.measurement import measure
    from lightning_memloc.plots import plot_report
    out_flag = "--output-dir"
    out = check_out(args.output_dir, out_flag)
    if (out / "report.json").exists() and not args.overwrite:
        raise CLIError(out_flag, f"{str(out)!r} already holds a report.json from an earlier analysis: pass another "
                                 "folder, or --overwrite to replace it.")
    device = parse_device(args.device)
    encoder, reference, like = _encoders(args)
    transform = user_transform(args)  # --transform: built (and refused) before the data are read
    cache = _reference_cache(args, reference)  # checked before the data are read
    images, labels = load_cli_data(args, "--data")
    positions = select_candidates(args, len(images), args.seed)
    if positions.numel() < 2:
        flag = "--split-candidates" if args.indices_from_split and not args.candidates else "--candidates"
        raise CLIError(flag, f"{positions.numel()} candidate(s) selected, but UnitMem compares candidates and needs "
                             f"at least 2: select more with {flag}.")
    groups = select_groups(args, len(images), args.seed, positions)
    if "control" in groups and reference is None:
        raise CLIError("--control", "the control is compared with the candidates on SSLMem, which needs --reference.")
    candidates = match_channels(images[positions], args.in_channels)
    extra = {name: match_channels(images[idx], args.in_channels) for name, idx in groups.items()}
    cand_labels = _candidate_labels(args, labels, positions)
    analyses = check_analysis_arguments(args, reference, images, labels, positions)
    if reference is not None and args.pairing == "all" and args.views < 2:  # measure() says `views`; name the flags
        raise CLIError("--views", "LayerMem with --pairing all compares pairs of views: pass --views 2 or more, "
                                  "or --pairing anchor.")
    layers = _layers(args.layers)
    encoder, reference = encoder.to(device), None if reference is None else reference.to(device)
    _probe(args, encoder, reference, layers, candidates, device, transform)
    meta = {"encoder": str(args.encoder), "reference": args.reference, "arch": args.arch or args.model or args.lightning_module,
            "width": getattr(like, "width", None), "in_channels": args.in_channels, "data": str(args.data),
            "size": args.size, "candidates_sha1": images_checksum(images[positions]),
            **{f"{name}_indices": idx.tolist() for name, idx in groups.items()},
            **({"transform": args.transform, "transform_kwargs": args.transform_kwargs} if args.transform else {})}
    kwargs = measure_kwargs(args, reference=reference, layers=layers, labels=cand_labels, candidate_ids=positions,
                            groups=extra, meta=meta, reference_cache=cache, transform=transform)
    with StagedOutput(out, out_flag, overwrite=args.overwrite) as staged:  # locked; files moved in at the end
        try:
            report = measure(encoder, candidates, **kwargs)
            if cache is not None:
                cache.save(args.reference_cache)
        except MemlocError as err:
            raise CLIError("", f"measurement failed: {err}", code=1) from err
        figures = run_cli_analyses(analyses, args, report, encoder, reference, candidates, staged.staging)
        written = [report.save(staged.staging / "report.json")]
        written = staged.commit(written + plot_report(report, staged.staging, images=candidates) + figures)
    print(report.summary_table())
    print(f"\n[memloc] {report.num_candidates} candidates, {len(report.layers)} layers; wrote "
          + ", ".join(str(p) for p in written))
    return 0
