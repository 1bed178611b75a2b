"""Choosing the layers to measure, tapping them with forward hooks, reducing their outputs."""

from __future__ import annotations

import difflib
import functools
import itertools
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_memloc.checks import check_choice
from lightning_memloc.errors import LayerNotFoundError

#: Allowed values of :attr:`LayerSpec.kind`.
LAYER_KINDS: Tuple[str, ...] = ("conv", "linear", "attention", "mlp")

#: Rectifier-like activations picked by the generic ``"auto"`` fallback (no Sigmoid / Tanh).
ACTIVATION_TYPES: Tuple[type, ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU,
                                       nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)

#: Residual blocks ``layers="auto"`` taps, as ``(module, class name)`` (matched by name: timm is never imported).
RESIDUAL_BLOCKS: Tuple[Tuple[str, str], ...] = tuple(itertools.product(
    ("torchvision.models.resnet", "timm.models.resnet", "lightly.models.resnet"), ("BasicBlock", "Bottleneck")))

#: Class attribute marking a module class as one whole layer for ``"auto"`` (the taps import no model).
LAYER_MARKER = "memloc_layer"

_EPS = 1e-12
_KIND_OF_NDIM = {4: "conv", 3: "linear", 2: "linear"}  # the kind of an output rank (None: not measurable)


@dataclass(frozen=True)
class LayerSpec:
    """A tapped layer: its name in ``model.named_modules()`` and its kind (one of :data:`LAYER_KINDS`)."""

    name: str
    kind: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"`name` must be a str, got {type(self.name).__name__}.")
        check_choice("kind", self.kind, LAYER_KINDS)


#: An ``"auto"`` rule: proposes layers of ``model`` or returns ``None`` when it does not apply.
AutoRule = Callable[[nn.Module], Optional[Sequence[Union[str, LayerSpec]]]]


def is_residual_block(module: nn.Module) -> bool:
    """Whether ``module`` is one of :data:`RESIDUAL_BLOCKS` (or a subclass of one)."""
    return any((c.__module__, c.__name__) in RESIDUAL_BLOCKS for c in type(module).__mro__)


def conv_block_rule(model: nn.Module) -> Optional[List[str]]:
    """Every marked layer, residual block and stem activation (a sibling of a stage of residual blocks)."""
    names = [n for n, m in model.named_modules()
             if n and (getattr(type(m), LAYER_MARKER, False) is True or is_residual_block(m))]
    if not names:
        return None
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        if any(isinstance(c, nn.Sequential) and any(is_residual_block(b) for b in c.children()) for _, c in children):
            prefix = f"{parent_name}." if parent_name else ""
            names += [prefix + n for n, c in children if isinstance(c, ACTIVATION_TYPES)]
    return names


def activation_rule(model: nn.Module) -> Optional[List[str]]:
    """Generic fallback: every activation module of :data:`ACTIVATION_TYPES`."""
    return [n for n, m in model.named_modules() if n and isinstance(m, ACTIVATION_TYPES)] or None


#: Rules tried in order by ``resolve_layers(..., "auto", ...)``: the first proposal that survives the probe
#: (modules run once, outermost only) wins; the generic fallback is last.
AUTO_RULES: List[AutoRule] = [conv_block_rule, activation_rule]


def register_auto_rule(rule: AutoRule) -> AutoRule:
    """Insert ``rule`` just before the generic activation fallback (usable as a decorator)."""
    AUTO_RULES.insert(max(len(AUTO_RULES) - 1, 0), rule)
    return rule


def _first_tensor(output: Any) -> Any:
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output


def _as_tensor(output: Any) -> Tensor:
    x = _first_tensor(output)
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected a Tensor (or a tuple/list whose first element is one), got {type(x).__name__}.")
    return x


def _name_and_kind(item: Union[str, LayerSpec]) -> Tuple[str, Optional[str]]:
    if isinstance(item, LayerSpec):
        return item.name, item.kind
    if isinstance(item, str):
        return item, None
    raise TypeError(f"Layers must be given as names (str) or LayerSpec, got {type(item).__name__}.")


def _check_names(model: nn.Module, names: Sequence[str]) -> None:
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise ValueError(f"Duplicate layer names: {duplicates}. Give each layer once.")
    valid = dict(model.named_modules())
    missing = [n for n in names if n not in valid]
    if missing:
        close = {name: difflib.get_close_matches(name, [v for v in valid if v], n=3, cutoff=0.6) for name in missing}
        lines = [f"Layer {name!r} not found in {type(model).__name__}." + (
            f" Did you mean {', '.join(repr(c) for c in near)}?" if near else "") for name, near in close.items()]
        lines.append("Valid names are the keys of dict(model.named_modules()); "
                     "list them with `[name for name, _ in model.named_modules()]`.")
        raise LayerNotFoundError("\n".join(lines))


@dataclass
class _Call:
    order: int
    count: int
    ndim: Optional[int]


@contextmanager
def eval_mode(*models: Optional[nn.Module]) -> Iterator[None]:
    """Put models in eval mode and give every submodule back its own previous mode afterwards."""
    saved = [(m, m.training) for model in models if model is not None for m in model.modules()]
    try:
        for model in models:
            if model is not None:
                model.eval()
        yield
    finally:
        for module, training in saved:
            module.training = training


def _probe(model: nn.Module, example_input: Any) -> Dict[str, _Call]:
    """One eval-mode, no-grad forward recording each module's order, call count and output rank."""
    record: Dict[str, _Call] = {}

    def fn(name: str, output: Any) -> None:
        if name in record:  # a module called again: counted; the order and rank of its first call are kept
            record[name].count += 1
            return
        x = _first_tensor(output)
        record[name] = _Call(len(record), 1, x.ndim if isinstance(x, Tensor) else None)

    as_kwargs = isinstance(example_input, dict)
    args = example_input if isinstance(example_input, (tuple, list)) else () if as_kwargs else (example_input,)
    with eval_mode(model), torch.no_grad(), LayerTaps(model, [n for n, _ in model.named_modules()], fn):
        model(*args, **(example_input if as_kwargs else {}))
    return record


def _select(proposed: Sequence[Union[str, LayerSpec]], record: Dict[str, _Call]) -> List[LayerSpec]:
    kinds: Dict[str, Optional[str]] = {}
    for name, kind in map(_name_and_kind, proposed):
        if name and name in record and record[name].count == 1:
            kinds.setdefault(name, kind)
    outer = [n for n in kinds if not any(n.startswith(o + ".") for o in kinds if o != n)]
    found = ((n, kinds[n] or _KIND_OF_NDIM.get(record[n].ndim)) for n in sorted(outer, key=lambda n: record[n].order))
    return [LayerSpec(name, kind) for name, kind in found if kind is not None]


def resolve_layers(model: nn.Module, layers: Union[str, Sequence[Union[str, LayerSpec]]],
                   example_input: Any) -> List[LayerSpec]:
    """``layers`` (``"auto"``, names or :class:`LayerSpec`) as :class:`LayerSpec` in forward order.

    A probe forward with ``example_input`` (a tuple/list unpacked, a dict as keywords) orders the layers and
    infers kinds from the output rank; ``"auto"`` on ResNet9 gives the paper's layers 1..8.

    Example:
        >>> from lightning_memloc.models import TinyCNN
        >>> resolve_layers(TinyCNN(width=2), "auto", torch.randn(1, 3, 8, 8))[0]
        LayerSpec(name='conv1', kind='conv')
    """
    if isinstance(layers, str):
        if layers != "auto":
            raise ValueError(f"`layers` must be 'auto' or a sequence of module names, got the string "
                             f"{layers!r}; to tap one layer pass layers=[{layers!r}].")
        record = _probe(model, example_input)
        for rule in AUTO_RULES:
            proposed = rule(model)
            specs = _select(proposed, record) if proposed else []
            if specs:
                return specs
        raise ValueError(f"layers='auto' found no layer to tap in {type(model).__name__} (no ConvBlock, "
                         "torchvision residual block or activation called exactly once per forward). "
                         "Pass explicit names, e.g. layers=['features.3', ...]; list them with "
                         "`[name for name, _ in model.named_modules()]`.")
    items = [_name_and_kind(item) for item in layers]
    if not items:
        raise ValueError("`layers` is empty: pass 'auto' or at least one module name.")
    _check_names(model, [name for name, _ in items])
    record = _probe(model, example_input)
    specs = []
    for name, kind in items:
        call = record.get(name)
        if call is None:
            raise ValueError(f"Layer {name!r} did not run in a forward pass with the example input, so it "
                             "cannot be tapped.")
        if call.count > 1:
            raise ValueError(f"Layer {name!r} runs {call.count} times per forward (a module reused at "
                             "several places); its hook would mix several outputs. Tap a module that runs "
                             "once, or give each use its own module.")
        kind = kind or _KIND_OF_NDIM.get(call.ndim)
        if kind is None:
            raise ValueError(f"Layer {name!r} outputs a tensor of rank {call.ndim}; only 2-D (B, D), 3-D "
                             "(B, T, D) and 4-D (B, C, H, W) outputs can be measured.")
        specs.append(LayerSpec(name, kind))
    return sorted(specs, key=lambda s: record[s.name].order)


def unit_activations(output: Any) -> Tensor:
    """Per-unit activations ``(B, U)``: ``(B, C, H, W)`` mean over space, ``(B, T, D)`` over tokens, ``(B, D)`` as is.

    Example:
        >>> unit_activations(torch.arange(8.).reshape(1, 2, 2, 2))
        tensor([[1.5000, 5.5000]])
    """
    x = _as_tensor(output)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"Expected a 2-D, 3-D or 4-D output, got shape {tuple(x.shape)}.")
    return x if x.ndim == 2 else x.mean(dim=(2, 3) if x.ndim == 4 else 1)


def flat_representation(output: Any) -> Tensor:
    """Flattened, L2-normalised ``(B, D)`` (SSLMem's r_l); an all-zero row stays zero, half normalised in float32.

    Example:
        >>> flat_representation(torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    x = _as_tensor(output)
    if x.ndim < 2:
        raise ValueError(f"Expected a batched output (B, ...), got shape {tuple(x.shape)}.")
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16) or not flat.is_floating_point():
        out_dtype = flat.dtype if flat.is_floating_point() else torch.get_default_dtype()
        return F.normalize(flat.float(), p=2.0, dim=1, eps=_EPS).to(out_dtype)
    return F.normalize(flat, p=2.0, dim=1, eps=_EPS)


class LayerTaps:
    """Context manager tapping named modules: each forward calls ``fn(name, output)``; hooks removed on exit.

    Outputs are never modified nor kept: reduce them inside ``fn``.

    Example:
        >>> from lightning_memloc.models import TinyCNN
        >>> model, units = TinyCNN(width=2), {}
        >>> with LayerTaps(model, ["conv1", "conv3"], lambda n, out: units.update({n: unit_activations(out)})):
        ...     _ = model(torch.randn(4, 3, 8, 8))
        >>> {n: tuple(u.shape) for n, u in units.items()}
        {'conv1': (4, 2), 'conv3': (4, 8)}
    """

    def __init__(self, model: nn.Module, names: Sequence[Union[str, LayerSpec]], fn: Callable[[str, Any], Any]) -> None:
        if isinstance(names, str):
            raise TypeError(f"`names` must be a sequence of names, not a str; did you mean [{names!r}]?")
        self.model = model
        self.names: Tuple[str, ...] = tuple(_name_and_kind(n)[0] for n in names)
        _check_names(model, self.names)
        self.fn = fn
        self._handles: List[torch.utils.hooks.RemovableHandle] = []

    @property
    def active(self) -> bool:
        """Whether hooks are currently registered."""
        return bool(self._handles)

    def _hook(self, name: str, module: nn.Module, args: Any, output: Any) -> None:  # None: the output is kept
        self.fn(name, output)

    def __enter__(self) -> "LayerTaps":
        if self._handles:
            raise RuntimeError("LayerTaps is already active (it is not re-entrant).")
        modules = dict(self.model.named_modules())
        try:
            for name in self.names:
                self._handles.append(modules[name].register_forward_hook(functools.partial(self._hook, name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
