"""``memloc analyze``."""

from __future__ import annotations

import argparse
from typing import Any, List, Union

import torch

from lightning_memloc.cli.checks import check_out, parse_device
from lightning_memloc.cli.errors import FILE_ERRORS, CLIError, as_cli_error
from lightning_memloc.cli.loading import load_checkpoint
from lightning_memloc.cli.selection import load_cli_data, match_channels, select_candidates, select_groups
from lightning_memloc.cli.zoo import build_model
from lightning_memloc.errors import ArchitectureMismatchError, LayerNotFoundError, MemlocError


# ---------------------------------------------------------------------------------- analyze
def _reference_cache(args: argparse.Namespace, reference: Any) -> Any:
    """The ``--reference-cache`` file's cache (new if absent), checked before any forward pass."""
    if getattr(args, "reference_cache", None) is None:
        return None
    if reference is None:
        raise CLIError("--reference-cache", "caches the reference's alignments and needs --reference: pass one, or drop it.")
    from lightning_memloc.reference_cache import ReferenceCache

    with as_cli_error("--reference-cache", (ValueError, OSError)):
        return ReferenceCache.load(args.reference_cache, missing_ok=True)


def analyze(args: argparse.Namespace) -> int:
    from lightning_memloc.io import check_writable_dir
    from lightning_memloc.measure import build_views, measure, probe_layers
    from lightning_memloc.plots import plot_report
    from lightning_memloc.user_models import user_encoders

    out = check_out(args.out)
    if (out / "report.json").exists() and not args.overwrite:
        raise CLIError("--out", f"{str(out)!r} already holds a report.json from an earlier analysis: pass another "
                                "folder, or --overwrite to replace it.")
    device = parse_device(args.device)
    built = user_encoders(args)  # --model / --lightning-module; None for --arch
    if built is not None:
        (encoder, reference), like = built, built[0]
    else:
        with as_cli_error("--width", (ValueError,)):
            like = build_model(args.arch, args.width, args.in_channels)
        encoder = load_checkpoint(args.encoder, like, args.encoder_prefix, "--encoder", args)
        reference = None if args.reference is None else load_checkpoint(args.reference, like, args.reference_prefix,
                                                                 "--reference", args)
    if reference is not None:
        same = all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), reference.state_dict().values()))
        if same:
            raise CLIError("--reference", "its weights are identical to the encoder's (SSLMem would be 0 everywhere): "
                                          "pass the reference's own checkpoint, or --reference-prefix for a "
                                          "co-trained one.")
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
    cand_labels = None
    if args.labels:
        cand_labels = labels[positions]
        if bool((cand_labels < 0).any()) or cand_labels.unique().numel() < 2:
            raise CLIError("--labels", f"ClassMem needs labels of at least 2 classes; {args.data!r} gives "
                                       f"{cand_labels.unique().tolist()[:5]} for the candidates: drop --labels.")
    from lightning_memloc.cli.analyses import check_analysis_arguments, run_cli_analyses
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
    with as_cli_error("--out", FILE_ERRORS):
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

