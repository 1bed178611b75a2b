"""Loading ``--encoder`` / ``--reference`` checkpoints into the ``--arch`` model, with one-line errors."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Optional

from torch import nn

from lightning_memloc.cli.cli_error import FILE_ERRORS, as_cli_error
from lightning_memloc.cli.zoo import DEFAULT_WIDTH
from lightning_memloc.errors import AmbiguousPrefixError, ArchitectureMismatchError


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

