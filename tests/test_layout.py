"""The package's layout contract: one checks module, no upward or private imports, surgery without Lightning.

Issue 15 (Wang et al., *Localizing Memorization in SSL Vision Encoders*, NeurIPS 2024, is what the
package measures; this file checks how it is put together, so that the structure stays true).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import torch
from torch import nn

import lightning_memloc
from lightning_memloc import checks
from lightning_memloc.errors import LayerNotFoundError, NonFiniteActivationError

PACKAGE = Path(lightning_memloc.__file__).parent

#: "No module over ~400 lines" (issue 15): a module past this has more than one job.
MAX_LINES = 410


def _modules() -> Iterator[Tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _memloc_imports(tree: ast.Module) -> Iterator[ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_memloc"):
            yield node


# ------------------------------------------------------------------------------------ imports
def test_no_module_is_much_over_400_lines():
    long = {path.relative_to(PACKAGE).as_posix(): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_is_imported_across_modules():
    found: List[str] = []
    for name, tree in _modules():
        for node in _memloc_imports(tree):
            found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def test_taps_do_not_import_the_model_zoo():
    tree = ast.parse("\n".join(p.read_text(encoding="utf-8") for p in sorted((PACKAGE / "taps").glob("*.py"))))
    imported = [node.module for node in _memloc_imports(tree)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert imported and not [m for m in imported if m.startswith("lightning_memloc.models")]


def test_a_marked_module_class_is_one_layer_for_auto():
    from lightning_memloc.models import ConvBlock
    from lightning_memloc.taps.hooks import LAYER_MARKER, resolve_layers

    class Block(nn.Module):  # a user's block: conv + ReLU, marked as one layer
        memloc_layer = True

        def __init__(self, in_ch: int) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(in_ch, 4, 3, padding=1), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.conv(x))

    class Unmarked(Block):
        memloc_layer = False

    assert getattr(ConvBlock, LAYER_MARKER) is True
    x = torch.rand(1, 3, 8, 8)
    assert [s.name for s in resolve_layers(nn.Sequential(Block(3), Block(4)), "auto", x)] == ["0", "1"]
    # unmarked: the generic fallback taps the activations inside instead
    assert [s.name for s in resolve_layers(nn.Sequential(Unmarked(3), Unmarked(4)), "auto", x)] == ["0.relu", "1.relu"]


@pytest.mark.slow
def test_surgery_imports_no_lightning():
    code = ("import sys, lightning_memloc.models.surgery, lightning_memloc; lightning_memloc.prune_units; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_moved_names_have_one_home_and_no_forwarding_module():
    from lightning_memloc.models import surgery
    from lightning_memloc.callbacks import finetuning, pruning, report_source

    assert pruning.prune_units is surgery.prune_units is lightning_memloc.prune_units
    assert finetuning.ReportSource is report_source.ReportSource
    for gone in ("callbacks.setup_checks", "callbacks.sources", "callbacks.evidence_gate", "callbacks.schedule",
                 "callbacks.layer_runs", "callbacks.naming", "plots_io", "cli.renamed", "metrics", "meter", "taps.taps"):
        spec = importlib.util.find_spec(f"lightning_memloc.{gone}")
        assert spec is None or spec.origin is None, gone  # None origin: a stale __pycache__ folder, no code
    assert not hasattr(importlib.import_module("lightning_memloc.functional.unitmem"), "check_id_vector")


# ------------------------------------------------------------------------------ choice tuples
def _tuples_of_strings(tree: ast.Module) -> Iterator[Tuple[int, tuple]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and node.elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                             for e in node.elts):
            yield node.lineno, tuple(e.value for e in node.elts)


def test_each_choice_tuple_is_defined_once():
    wanted = {checks.PAIRINGS: "PAIRINGS", checks.REDUCTIONS: "REDUCTIONS", checks.NEGATIVE_POLICIES: "NEGATIVE_POLICIES"}
    copies = [f"{name}:{line} {wanted[value]}" for name, tree in _modules()
              for line, value in _tuples_of_strings(tree) if value in wanted]
    assert sorted(c.split()[1] for c in copies) == sorted(wanted.values())
    assert all(c.startswith("checks/values.py:") for c in copies)
    unitmem = importlib.import_module("lightning_memloc.functional.unitmem")

    assert unitmem.REDUCTIONS is checks.REDUCTIONS and unitmem.NEGATIVE_POLICIES is checks.NEGATIVE_POLICIES


# ------------------------------------------------------------------------------------- checks
def test_check_choice_lists_the_allowed_values_as_asked():
    with pytest.raises(ValueError, match=r"^`reduction` must be one of \('mean', 'median'\), got 'max'\.$"):
        checks.check_choice("reduction", "max", checks.REDUCTIONS)
    with pytest.raises(ValueError, match=r"^`scope` must be one of 'layer', 'global', got 3\.$"):
        checks.check_choice("scope", 3, ("layer", "global"), as_tuple=False)
    assert checks.check_choice("pairing", "anchor", checks.PAIRINGS) == "anchor"


def test_check_int_type_error_is_for_the_type_only():
    assert checks.check_int("k", torch.tensor(3), 1, type_error=True) == 3
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="`k` must be an int >= 1"):
            checks.check_int("k", bad, 1, type_error=True)
        with pytest.raises(ValueError, match="`k` must be an int >= 1"):
            checks.check_int("k", bad, 1)
    with pytest.raises(ValueError, match="`k` must be an int >= 1, got 0"):
        checks.check_int("k", 0, 1, type_error=True)


def test_tensor_checks():
    assert checks.as_long_tensor([2, 1], "index").dtype == torch.long
    with pytest.raises(TypeError, match="`index` must hold integers, got dtype torch.float32"):
        checks.as_long_tensor(torch.tensor([1.0]), "index")
    assert checks.check_float_tensor("x", torch.ones(2, 3, dtype=torch.long), 2, "(N, U)").dtype == torch.float32
    with pytest.raises(ValueError, match=r"`x` must have 2 dimension\(s\) \(N, U\), got shape \(3,\)"):
        checks.check_float_tensor("x", torch.ones(3), 2, "(N, U)")
    with pytest.raises(NonFiniteActivationError, match="`x` contains 1 NaN/inf"):
        checks.check_finite_tensor("x", torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="needs at least 2 candidate"):
        checks.check_mean_activations(torch.ones(1, 3), min_candidates=2)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(3,\), one class id per row of `mu`"):
        checks.check_id_vector("labels", torch.zeros(2, dtype=torch.long), 3, "mu", "class id")


def test_module_checks_name_the_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert checks.named_module(model, "1", "f") is model[1]
    with pytest.raises(LayerNotFoundError, match=r"`f` has no module named '11'\. Did you mean \['1'\]\?"):
        checks.named_module(model, "11", "f")
    checks.check_layers_exist(model, ["0", "1"])
    with pytest.raises(LayerNotFoundError, match=r"the report's layers \['2'\] are not modules"):
        checks.check_layers_exist(model, ["0", "2"])
