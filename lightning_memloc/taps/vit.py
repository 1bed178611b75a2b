"""Vision Transformers: the ``layers="auto"`` rule, token units and per-kind summaries.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) find that in ViTs
most memorization sits in the fully-connected (MLP) layers rather than in self-attention. To
compare the two, every transformer block is tapped twice, in forward order:

* ``"attention"``: the output of the self-attention module (torchvision's
  ``EncoderBlock.self_attention``, an ``nn.MultiheadAttention`` whose ``(output, weights)`` tuple
  the taps reduce to its first element; timm's ``Block.attn``);
* ``"mlp"``: the MLP hidden units, i.e. the output of the activation inside the block's MLP
  (torchvision ``MLPBlock`` = ``Sequential(Linear, GELU, Dropout, Linear, Dropout)`` → ``mlp.1``;
  timm ``Mlp`` → ``mlp.act``).

Importing this module registers :func:`vit_block_rule` with
:func:`~lightning_memloc.taps.hooks.register_auto_rule` (once, also on reload). It recognises
torchvision ``VisionTransformer`` / ``EncoderBlock``, timm-style blocks (any module with ``.attn``
and ``.mlp.act``) and lightly's wrappers (``MaskedVisionTransformerTorchvision`` and, when timm is
installed, ``MaskedVisionTransformerTIMM``), which hold those blocks under ``vit.``.

Token units: a unit of a ``(B, T, D)`` layer output is one of the ``D`` features; its activation
is the mean over all ``T`` tokens (DESIGN §1), class token included. :func:`token_unit_activations`
also offers excluding the class token (patch tokens only) or using the class token alone.
Negative activations (GELU ≥ −0.17, attention outputs of any sign) go through the library's
``negative=`` policy (:func:`~lightning_memloc.functional.apply_negative_policy`); see
``docs/vit.md``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from lightning_memloc.checks import check_choice
from lightning_memloc.report.report import MemorizationReport
from lightning_memloc.taps import hooks as _taps
from lightning_memloc.taps.hooks import ACTIVATION_TYPES, LayerSpec, register_auto_rule, unit_activations

__all__ = ["CLASS_TOKEN_POLICIES", "VIT_KINDS", "group_by_kind", "token_unit_activations", "vit_block_rule",
           "vit_layers"]

#: Layer kinds proposed for transformer blocks, in their forward order inside a block.
VIT_KINDS: Tuple[str, str] = ("attention", "mlp")

#: Allowed values of ``class_token`` in :func:`token_unit_activations`.
CLASS_TOKEN_POLICIES: Tuple[str, ...] = ("include", "exclude", "only")


def _torchvision_encoder_block() -> Optional[type]:
    try:
        from torchvision.models.vision_transformer import EncoderBlock
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return EncoderBlock


def _first_activation(module: nn.Module) -> Optional[str]:
    """Name (relative to ``module``) of the first activation child, e.g. ``"1"`` in an ``MLPBlock``."""
    for name, child in module.named_children():
        if isinstance(child, ACTIVATION_TYPES):
            return name
    return None


def _block_layers(name: str, block: nn.Module, encoder_block: Optional[type]) -> List[LayerSpec]:
    """The attention and MLP-hidden taps of one block, or ``[]`` if it is not a transformer block."""
    prefix = f"{name}." if name else ""
    if encoder_block is not None and isinstance(block, encoder_block):
        act = _first_activation(block.mlp)
        specs = [LayerSpec(f"{prefix}self_attention", "attention")]
        return specs + ([LayerSpec(f"{prefix}mlp.{act}", "mlp")] if act is not None else [])
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if isinstance(attn, nn.Module) and isinstance(mlp, nn.Module) and isinstance(getattr(mlp, "act", None), nn.Module):
        return [LayerSpec(f"{prefix}attn", "attention"), LayerSpec(f"{prefix}mlp.act", "mlp")]
    return []


def vit_layers(model: nn.Module, kinds: Sequence[str] = VIT_KINDS) -> List[LayerSpec]:
    """Attention and MLP-hidden layers of every transformer block of ``model``, block by block.

    Static (no forward pass): blocks come in ``named_modules()`` order, attention before MLP
    inside a block. Pass the result as ``layers=`` to :func:`~lightning_memloc.measure` to tap a
    subset, e.g. only the MLPs (Wang et al., NeurIPS 2024, locate most ViT memorization there).

    Args:
        model: a torchvision ``VisionTransformer``, a model with timm-style blocks, a lightly
            masked ViT wrapper, or any module containing such blocks.
        kinds: the kinds to keep, a subset of :data:`VIT_KINDS`.

    Returns:
        :class:`~lightning_memloc.taps.hooks.LayerSpec` list (empty if ``model`` has no block).

    Raises:
        ValueError: ``kinds`` holds something other than ``"attention"`` / ``"mlp"``.

    Example:
        >>> from lightning_memloc.models.vit import TinyViT
        >>> [s.name for s in vit_layers(TinyViT(depth=1), kinds=("mlp",))]
        ['encoder.layers.encoder_layer_0.mlp.1']
    """
    if isinstance(kinds, str) or not set(kinds) <= set(VIT_KINDS):
        raise ValueError(f"`kinds` must be a sequence of values in {VIT_KINDS}, got {kinds!r}.")
    encoder_block = _torchvision_encoder_block()
    specs: List[LayerSpec] = []
    claimed: List[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in claimed):
            continue  # inside a block already taken (e.g. a timm block nested in a torchvision one)
        found = _block_layers(name, module, encoder_block)
        if found:
            claimed.append(name)
            specs += [s for s in found if s.kind in kinds]
    return specs


def vit_block_rule(model: nn.Module) -> Optional[List[LayerSpec]]:
    """``layers="auto"`` rule for ViTs: :func:`vit_layers` with both kinds, or ``None`` if none.

    :func:`~lightning_memloc.taps.hooks.resolve_layers` keeps the modules that run exactly once per
    forward and orders them by forward execution (attention, then MLP, block after block).

    Example:
        >>> import torch
        >>> from lightning_memloc.models.vit import TinyViT
        >>> from lightning_memloc.taps.hooks import resolve_layers
        >>> [s.kind for s in resolve_layers(TinyViT(depth=1), "auto", torch.rand(1, 3, 16, 16))]
        ['attention', 'mlp']
    """
    return vit_layers(model) or None


def _register() -> None:
    """Register :func:`vit_block_rule` once (a reload replaces the older copy instead of adding one)."""
    rules = _taps.AUTO_RULES  # looked up at call time: tests may swap the list
    for i, rule in enumerate(rules):
        if getattr(rule, "__module__", None) == __name__ and getattr(rule, "__name__", None) == "vit_block_rule":
            rules[i] = vit_block_rule
            return
    register_auto_rule(vit_block_rule)


_register()


def token_unit_activations(output: Any, class_token: str = "include", num_prefix_tokens: int = 1) -> Tensor:
    """Per-unit activations ``(B, D)`` of a token sequence ``(B, T, D)`` under a class-token policy.

    * ``"include"`` (default, the library's rule): mean over all ``T`` tokens — exactly
      :func:`~lightning_memloc.taps.hooks.unit_activations`. The class token is one token out of ``T``
      (1/17 of the weight for a 4×4 patch grid), so it cannot dominate a unit, and the same rule
      holds for every architecture, so CNN and ViT numbers stay comparable.
    * ``"exclude"``: mean over the patch tokens only (tokens ``num_prefix_tokens:``), i.e. the
      spatial mean of a CNN channel. Use when prefix tokens (class, register or distillation
      tokens) should not count.
    * ``"only"``: the first token (the class token): the unit's value in the image embedding.

    Args:
        output: a ``(B, T, D)`` tensor (a tuple/list gives its first element), or a ``(B, D)``
            tensor (no token dimension; only ``"include"`` applies).
        class_token: one of :data:`CLASS_TOKEN_POLICIES`.
        num_prefix_tokens: tokens before the patches (1 for torchvision and most timm ViTs).

    Returns:
        ``Tensor[B, D]``.

    Raises:
        ValueError: unknown policy, ``num_prefix_tokens`` < 1 or leaving no patch token, or a
            non-token output with ``"exclude"`` / ``"only"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[3.0], [1.0], [2.0]]])
        >>> [float(token_unit_activations(x, p)) for p in CLASS_TOKEN_POLICIES]
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
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or not 1 <= num_prefix_tokens < x.shape[1]:
        raise ValueError(f"`num_prefix_tokens` must be an int in [1, T-1] = [1, {x.shape[1] - 1}], got {num_prefix_tokens!r}.")
    return x[:, 0] if class_token == "only" else x[:, num_prefix_tokens:].mean(dim=1)


def group_by_kind(report: MemorizationReport, threshold: float = 0.5) -> Dict[str, Dict[str, float]]:
    """Summaries per layer kind (e.g. ViT ``"attention"`` vs ``"mlp"``, Wang et al., NeurIPS 2024).

    For each kind in ``report.layer_kinds`` (in order of first appearance in ``report.layers``):

    * ``"num_layers"``: number of layers of that kind;
    * ``"unit_mem"``: mean UnitMem over all units of those layers (units pooled; dead units count
      as 0, as in :meth:`~lightning_memloc.MemorizationReport.unit_mem_mean`);
    * ``"fraction_above"``: fraction of those units with UnitMem > ``threshold``;
    * ``"dead_fraction"``: fraction of dead units (e.g. attention units clamped to 0);
    * with a reference encoder only: ``"layer_mem"`` and ``"delta_layer_mem"``, the mean LayerMem
      and ΔLayerMem over those layers (ΔLayerMem of an MLP layer is its increase over the
      attention layer before it: the paper's test of where memorization is added).

    Args:
        report: a measurement result.
        threshold: UnitMem above which a unit counts as highly memorizing.

    Returns:
        ``{kind: {statistic: value}}``.

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
        stats = {
            "num_layers": float(len(layers)),
            "unit_mem": sum(float(s.sum()) for s in scores) / units if units else math.nan,
            "fraction_above": sum(float((s > threshold).sum()) for s in scores) / units if units else math.nan,
            "dead_fraction": sum(float(report.dead_units[layer].sum()) for layer in layers) / units if units else math.nan,
        }
        if report.layer_mem is not None:
            stats["layer_mem"] = sum(report.layer_mem[layer] for layer in layers) / len(layers)
        if report.delta_layer_mem is not None:
            stats["delta_layer_mem"] = sum(report.delta_layer_mem[layer] for layer in layers) / len(layers)
        out[kind] = stats
    return out
