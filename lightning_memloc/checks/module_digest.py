"""A digest of what decides a module's forward besides its tensors: structure, settings, code, hooks.

A ``state_dict``-keyed cache would miss a swapped activation, a padding, a patched ``forward`` or a hook:
:func:`structure_digest` feeds each sub-module's name, class, MRO code, plain attributes and forward hooks, and
torch's global hooks; not code reached through a global name."""

from __future__ import annotations

import enum
import functools
import hashlib
import types
from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.fx
from torch import Tensor, nn

from lightning_memloc.errors import MemlocError

__all__ = ["UnkeyableModuleError", "settings_digest", "structure_digest"]

#: nn.Module's bookkeeping: tensors, children and forward hooks are fed on their own; the rest changes no forward.
_INTERNALS = frozenset({
    "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training", "_backward_pre_hooks",
    "_backward_hooks", "_is_full_backward_hook", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"})
#: (hooks, with-kwargs flags, always-called flags): dicts keyed by handle ids, which differ between equal models.
_HOOKS = (("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", ""),
          ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"))
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, enum.Enum,
          torch.memory_format, torch.layout)
_MAX_DEPTH = 16


class UnkeyableModuleError(MemlocError, ValueError):
    """A module holds an attribute whose effect on the forward cannot be digested."""


def _const(value: Any) -> bytes:
    """A code constant, the same in every process (a frozenset's order follows the string hash seed)."""
    if isinstance(value, types.CodeType):
        return _code_bytes(value)
    if isinstance(value, (tuple, frozenset)):
        items = [_const(v) for v in value]
        return type(value).__name__.encode() + b"(" + b",".join(sorted(items) if isinstance(value, frozenset)
                                                                 else items) + b")"
    return repr(value).encode()


def _code_bytes(code: types.CodeType) -> bytes:
    """What a code object computes: bytecode, names, constants (nested code too); not its file or line numbers."""
    consts = b"|".join(_const(c) for c in code.co_consts)
    names = repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
                  code.co_kwonlyargcount, code.co_flags)).encode()
    return code.co_code + b"\0" + names + b"\0" + consts


class _Digest:
    """One digest pass over a model."""

    def __init__(self, root: Optional[nn.Module], class_code: bool = True) -> None:
        self.hasher = hashlib.blake2b(digest_size=20)
        self.names = {} if root is None else {id(m): n for n, m in root.named_modules(remove_duplicate=False)}
        self.class_code = class_code
        self.classes: Dict[int, str] = {}
        self.seen: Set[int] = set()

    def feed(self, text: str) -> None:
        self.hasher.update(text.encode())
        self.hasher.update(b"\0")

    def klass(self, cls: type) -> None:
        if id(cls) not in self.classes:
            code = _class_code(cls) if self.class_code else hashlib.blake2b(digest_size=20).hexdigest()
            self.classes[id(cls)] = f"{cls.__module__}.{cls.__qualname__}:{code}"
        self.feed(self.classes[id(cls)])

    def value(self, obj: Any, where: str, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise UnkeyableModuleError(f"{where} nests objects deeper than {_MAX_DEPTH} levels")
        if isinstance(obj, _PLAIN):
            self.feed(f"{type(obj).__name__}:{obj!r}")
        elif isinstance(obj, Tensor):
            t = obj.detach()
            self.feed(f"tensor{t.dtype}{tuple(t.shape)}{t.device.type}")
            if t.numel():
                self.hasher.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, (list, tuple)):
            self.feed(f"{type(obj).__name__}[{len(obj)}]")
            for i, item in enumerate(obj):
                self.value(item, f"{where}[{i}]", depth + 1)
        elif isinstance(obj, (set, frozenset)):
            self.value(sorted(obj, key=repr), where, depth)
        elif isinstance(obj, dict):
            self.feed(f"dict[{len(obj)}]")
            for key, item in obj.items():
                self.feed(repr(key))
                self.value(item, f"{where}[{key!r}]", depth + 1)
        elif isinstance(obj, torch.fx.Graph):  # a traced model's program (torchvision's feature extractors)
            self.feed(f"fx graph {obj}")
        elif isinstance(obj, type):
            self.feed(f"class {obj.__module__}.{obj.__qualname__}")
        elif isinstance(obj, nn.Module):
            self.module_ref(obj, where, depth)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, where, depth)
        elif isinstance(obj, types.MethodType):
            self.feed("method")
            self.function(obj.__func__, where, depth)
            self.value(obj.__self__, f"{where}.__self__", depth + 1)
        elif isinstance(obj, functools.partial):
            self.feed("partial")
            self.value((obj.func, obj.args, obj.keywords), where, depth + 1)
        elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)) or callable(obj) and not hasattr(
                obj, "__dict__") and " at 0x" not in repr(obj):
            self.feed(f"builtin {getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}")
        elif hasattr(obj, "__dict__"):
            self.instance(obj, where, depth)
        elif " at 0x" not in repr(obj):
            self.feed(f"{type(obj).__qualname__}:{obj!r}")
        else:
            raise UnkeyableModuleError(f"{where} is a {type(obj).__qualname__} ({obj!r})")

    def function(self, func: types.FunctionType, where: str, depth: int) -> None:
        self.feed(f"function {func.__module__}.{func.__qualname__}")
        self.hasher.update(_code_bytes(func.__code__))
        self.value((func.__defaults__, func.__kwdefaults__), f"{where} defaults", depth + 1)
        for i, cell in enumerate(func.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                content = None
            self.value(content, f"{where} closure[{i}]", depth + 1)

    def instance(self, obj: Any, where: str, depth: int) -> None:
        if id(obj) in self.seen:  # a cycle, or an object already fed
            self.feed(f"seen {type(obj).__qualname__}")
            return
        self.seen.add(id(obj))
        self.klass(type(obj))
        self.value(dict(vars(obj)), where, depth + 1)

    def module_ref(self, module: nn.Module, where: str, depth: int) -> None:
        """A module met as a value: by name if it is in the tree, else by its own digest (weights included)."""
        name = self.names.get(id(module))
        if name is not None:
            self.feed(f"module {name!r}")
        elif id(module) in self.seen:
            self.feed(f"seen {type(module).__qualname__}")
        else:
            self.seen.add(id(module))
            for key, tensor in module.state_dict(keep_vars=True).items():
                self.feed(key)
                self.value(tensor, f"{where}.{key}", depth + 1)
            self.tree(module, where, depth + 1)

    def tree(self, root: nn.Module, where: str, depth: int = 0) -> None:
        for name, module in root.named_modules(remove_duplicate=False):
            path = f"{where}.{name}" if name else where
            self.feed(f"module {name!r}")
            self.klass(type(module))
            for attr, item in vars(module).items():
                if attr not in _INTERNALS:
                    self.feed(attr)
                    self.value(item, f"{path}.{attr}", depth + 1)
            for names in _HOOKS:
                self.hooks(module, names, path, depth)

    def hooks(self, owner: Any, names: Tuple[str, str, str], where: str, depth: int) -> None:
        hooks, kwargs, always = (getattr(owner, n, None) or {} if n else {} for n in names)
        if hooks:
            self.feed(names[0])
            for key, hook in hooks.items():
                self.feed(f"kwargs={key in kwargs},always={key in always}")
                self.value(hook, f"{where}.{names[0]}", depth + 1)


def _class_code(cls: type) -> str:
    """Digest of the code of every function in ``cls``'s MRO (``__func__``: static and class methods)."""
    pairs = ((base, attr, getattr(value, "__func__", value)) for base in cls.__mro__[:-1]  # not `object`
             for attr, value in sorted(vars(base).items()))
    return _functions_code(tuple((base, attr, func, func.__code__) for base, attr, func in pairs
                                 if isinstance(func, types.FunctionType)))


@functools.lru_cache(maxsize=512)
def _functions_code(functions: Tuple[Tuple[type, str, types.FunctionType, types.CodeType], ...]) -> str:
    """Digest of ``(class, name, function, code)`` entries, cached: hashing code is most of a digest's cost."""
    code = hashlib.blake2b(digest_size=20)
    for base, attr, _, func_code in functions:
        code.update(f"{base.__qualname__}.{attr}".encode() + _code_bytes(func_code))
    return code.hexdigest()


def structure_digest(model: nn.Module) -> str:
    """BLAKE2b digest (hex) of everything but tensors that decides ``model``'s forward (see the module docstring).

    Example:
        >>> a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> b = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2), nn.ReLU())
        >>> b.load_state_dict(a.state_dict())
        <All keys matched successfully>
        >>> structure_digest(a) == structure_digest(b)
        False
    """
    digest = _Digest(model)
    digest.tree(model, type(model).__name__)
    for names in (("_global_forward_pre_hooks", "", ""),
                  ("_global_forward_hooks", "", "_global_forward_hooks_always_called")):
        digest.hooks(torch.nn.modules.module, names, "torch's global hooks", 0)
    return digest.hasher.hexdigest()


def settings_digest(obj: Any) -> str:
    """BLAKE2b digest (hex) of an object's settings: class names, attribute values, tensors, functions; not
    class code, so that a resumed run's transform or reference survives a library upgrade.

    Example:
        >>> from torchvision.transforms import v2
        >>> settings_digest(v2.RandomResizedCrop(8, scale=(0.2, 1.0))) == settings_digest(v2.RandomResizedCrop(8))
        False
    """
    digest = _Digest(None, class_code=False)
    digest.value(obj, type(obj).__qualname__)
    return digest.hasher.hexdigest()
