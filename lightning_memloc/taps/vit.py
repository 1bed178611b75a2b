"""Vision Transformers (``"attention"`` and ``"mlp"`` taps per block): the ``"auto"`` rule, token units, summaries."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock

from lightning_memloc.checks import check_choice, check_int
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.taps.hooks import ACTIVATION_TYPES, AUTO_RULES, LayerSpec, register_auto_rule, unit_activations

#: Layer kinds proposed for transformer blocks, in their forward order inside a block.
VIT_KINDS: Tuple[str, str] = ("attention", "mlp")

#: Allowed values of ``class_token`` in :func:`token_unit_activations`.
CLASS_TOKEN_POLICIES: Tuple[str, ...] = ("include", "exclude", "only")


def _block_layers(name: str, block: nn.Module) -> List[LayerSpec]:
    """The attention and MLP-hidden taps of one transformer block, else ``[]``."""
    prefix = f"{name}." if name else ""
    if isinstance(block, EncoderBlock):
        act = next((n for n, child in block.mlp.named_children() if isinstance(child, ACTIVATION_TYPES)), None)
        specs = [LayerSpec(f"{prefix}self_attention", "attention")]
        return specs + ([LayerSpec(f"{prefix}mlp.{act}", "mlp")] if act is not None else [])
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if isinstance(attn, nn.Module) and isinstance(mlp, nn.Module) and isinstance(getattr(mlp, "act", None), nn.Module):
        return [LayerSpec(f"{prefix}attn", "attention"), LayerSpec(f"{prefix}mlp.act", "mlp")]
    return []


def vit_layers(model: nn.Module, kinds: Sequence[str] = VIT_KINDS) -> List[LayerSpec]:
    """``kinds`` layers of every torchvision / timm-style transformer block of ``model``, statically, block by block.

    Example:
        >>> from lightning_memloc.models.small import TinyViT
        >>> [s.name for s in vit_layers(TinyViT(depth=1), kinds=("mlp",))]
        ['encoder.layers.encoder_layer_0.mlp.1']
    """
    if isinstance(kinds, str) or not set(kinds) <= set(VIT_KINDS):
        raise ValueError(f"`kinds` must be a sequence of values in {VIT_KINDS}, got {kinds!r}.")
    specs: List[LayerSpec] = []
    claimed: List[str] = []  # blocks already taken
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in claimed):
            continue  # inside a block already taken (e.g. a timm block nested in a torchvision one)
        found = _block_layers(name, module)
        if found:
            claimed.append(name)
            specs += [s for s in found if s.kind in kinds]
    return specs


def vit_block_rule(model: nn.Module) -> Optional[List[LayerSpec]]:
    """``layers="auto"`` rule for ViTs: :func:`vit_layers` with both kinds, or ``None``.

    Example:
        >>> import torch
        >>> from lightning_memloc.models.small import TinyViT
        >>> from lightning_memloc.taps.hooks import resolve_layers
        >>> [s.kind for s in resolve_layers(TinyViT(depth=1), "auto", torch.rand(1, 3, 16, 16))]
        ['attention', 'mlp']
    """
    return vit_layers(model) or None


for _i, _rule in enumerate(AUTO_RULES):  # register once: a reload replaces the older copy
    if getattr(_rule, "__module__", None) == __name__ and getattr(_rule, "__name__", None) == "vit_block_rule":
        AUTO_RULES[_i] = vit_block_rule
        break
else:
    register_auto_rule(vit_block_rule)


def token_unit_activations(output: Any, class_token: str = "include", num_prefix_tokens: int = 1) -> Tensor:
    """Per-unit activations ``(B, D)`` of tokens ``(B, T, D)``: mean over all (``"include"``), over patches, or the class token.

    ``"exclude"`` drops the first ``num_prefix_tokens``; ``"only"`` takes the first token.

    Example:
        >>> import torch
        >>> [float(token_unit_activations(torch.tensor([[[3.0], [1.0], [2.0]]]), p)) for p in CLASS_TOKEN_POLICIES]
        [2.0, 1.5, 3.0]
    """
    check_choice("class_token", class_token, CLASS_TOKEN_POLICIES)
    if class_token == "include":
        return unit_activations(output)
    x = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(x, Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"class_token={class_token!r} needs a token sequence (B, T, D), got {shape}; "
                         "use class_token='include' for other outputs.")
    check_int("num_prefix_tokens", num_prefix_tokens, 1, x.shape[1])  # 1 <= prefix < T: a patch token is left
    return x[:, 0] if class_token == "only" else x[:, num_prefix_tokens:].mean(dim=1)


def group_by_kind(report: MemorizationReport, threshold: float = 0.5) -> Dict[str, Dict[str, float]]:
    """``{kind: {statistic: value}}`` per layer kind (e.g. ViT ``"attention"`` vs ``"mlp"``).

    Statistics: ``num_layers``, pooled ``unit_mem``, ``fraction_above`` ``threshold``, ``dead_fraction``, with a
    reference the mean ``layer_mem`` and ``delta_layer_mem``.

    Example:
        >>> import torch
        >>> r = MemorizationReport(layers=["a", "m"], layer_kinds={"a": "attention", "m": "mlp"},
        ...     candidate_ids=torch.arange(2), unit_mem={"a": torch.tensor([0.2, 0.4]), "m": torch.tensor([1.0])},
        ...     unit_argmax={"a": torch.tensor([0, 1]), "m": torch.tensor([0])},
        ...     dead_units={"a": torch.tensor([False, False]), "m": torch.tensor([False])})
        >>> round(group_by_kind(r)["attention"]["unit_mem"], 3), group_by_kind(r)["mlp"]["num_layers"]
        (0.3, 1.0)
    """
    groups: Dict[str, List[str]] = {}
    for layer in report.layers:
        groups.setdefault(report.layer_kinds.get(layer, "unknown"), []).append(layer)
    out: Dict[str, Dict[str, float]] = {}
    for kind, layers in groups.items():
        scores = [report.unit_mem[layer].float().flatten() for layer in layers]
        units = sum(int(s.numel()) for s in scores)
        stats = {"num_layers": float(len(layers)),
                 "unit_mem": sum(float(s.sum()) for s in scores) / units if units else math.nan,
                 "fraction_above": sum(float((s > threshold).sum()) for s in scores) / units if units else math.nan,
                 "dead_fraction": sum(float(report.dead_units[n].sum()) for n in layers) / units if units else math.nan}
        for field in ("layer_mem", "delta_layer_mem"):
            if getattr(report, field) is not None:
                stats[field] = sum(getattr(report, field)[layer] for layer in layers) / len(layers)
        out[kind] = stats
    return out
