"""The naming contract between ``measure()``, the monitor, the report, the metrics and the logged tags.

One name per concept across surfaces (``docs/definitions.md``, "Naming contract"): keywords that
``measure()`` and ``MemorizationMonitor`` share have one name and one default (the measurement
settings come from :class:`~lightning_memloc.options.MeasureOptions`) unless listed in
:data:`~lightning_memloc.options.SURFACE_DIFFERENCES`; every ``compute()`` key of the meter's
metrics maps to a report field (:data:`~lightning_memloc.meter.REPORT_FIELDS`); every logged tag
is built by :mod:`lightning_memloc.tags`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from lightning_memloc import MemorizationReport, measure
from lightning_memloc.callbacks import MemorizationMonitor
from lightning_memloc.callbacks.logging import custom_scalar_layout, report_scalars
from lightning_memloc.callbacks.utility import utility_layout
from lightning_memloc.meter import METRIC_ONLY_KEYS, REPORT_FIELDS
from lightning_memloc.metrics import ClassMem, LayerMem, UnitMem
from lightning_memloc.models import TinyCNN
from lightning_memloc.options import SURFACE_DIFFERENCES, MeasureOptions
from lightning_memloc import tags

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_memloc"


def _defaults(fn):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is not inspect.Parameter.VAR_KEYWORD and name != "self"}


def test_shared_keywords_have_one_name_and_one_default():
    ours, theirs = _defaults(measure), _defaults(MemorizationMonitor.__init__)
    differing = {name for name in set(ours) & set(theirs) if ours[name] != theirs[name]}
    assert differing == set(SURFACE_DIFFERENCES), differing
    for name, reason in SURFACE_DIFFERENCES.items():
        assert len(reason) > 20, name  # each difference is explained


def test_every_option_reaches_both_surfaces_with_its_default():
    ours, theirs = _defaults(measure), _defaults(MemorizationMonitor.__init__)
    for field in dataclasses.fields(MeasureOptions):
        if field.name == "with_reference":  # derived from `reference`, not a keyword
            continue
        assert ours[field.name] == field.default, field.name
        if field.name not in SURFACE_DIFFERENCES:
            assert theirs[field.name] == field.default, field.name


def _full_report() -> MemorizationReport:
    torch.manual_seed(0)
    f, g = TinyCNN(), TinyCNN()
    return measure(f, torch.rand(8, 3, 16, 16), reference=g, views=2, top_k=2, labels=torch.tensor([0, 1] * 4),
                   control=torch.rand(4, 3, 16, 16), unseen=torch.rand(4, 3, 16, 16), bootstrap=200)


def test_every_logged_scalar_and_chart_tag_comes_from_tags():
    report = _full_report()
    scalars = report_scalars(report)
    assert scalars
    for tag in scalars:
        if tag.startswith(f"{tags.PREFIX}/significant_layers/"):
            assert tag == tags.significant_tag(tag.rsplit("/", 1)[1])
        elif tag == tags.verdict_tag():
            assert scalars[tag] in (0.0, 1.0)
        else:
            quantity, layer = tags.parse_scalar_tag(tag)  # a known quantity of a measured layer
            assert layer in report.layers and tag == tags.scalar_tag(quantity, layer)
            # TensorBoard's section (first path component) is the quantity's own, named like the layer runs' tag
            assert tag.split("/")[0] == tags.by_layer_tag(quantity) == f"memloc.{quantity}"
    # every evidence record key is a known quantity (a new one is added to tags.py, once)
    keys = {key for record in report.evidence.layers.values() for key in record}
    assert keys <= set(tags.EVIDENCE_QUANTITIES), keys - set(tags.EVIDENCE_QUANTITIES)
    # the charts of the custom-scalars layout name logged tags only
    for charts in custom_scalar_layout(report).values():
        for _, (_, series) in charts.items():
            assert set(series) <= set(scalars), set(series) - set(scalars)
    # per-layer runs write the quantities of tags.LAYER_QUANTITIES, all of them known
    assert set(tags.LAYER_QUANTITIES) <= set(tags.SCALAR_QUANTITIES)
    knn = utility_layout([20])["memloc utility"]["kNN accuracy and LayerMem"][1][0]
    assert knn == f"^{tags.knn_tag(20)}$"


def _tag_literals(path: Path):
    """String constants (docstrings excluded) in ``path`` that spell a tag root themselves."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    roots = (f"{tags.PREFIX}/", f"{tags.PREFIX}{tags.SEPARATOR}", tags.LAYER_RUNS_FOLDER)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value.startswith(roots) or any(f"'{r}" in node.value or f'"{r}' in node.value for r in roots):
                yield node.lineno, node.value


def test_no_module_spells_a_tag_itself():
    logging_modules = ["logging.py", "layer_runs.py", "naming.py", "utility.py", "monitor.py", "figures.py"]
    found = {name: list(_tag_literals(PACKAGE / "callbacks" / name)) for name in logging_modules}
    assert not any(found.values()), found


def test_metric_keys_map_to_report_fields():
    report_fields = {f.name for f in dataclasses.fields(MemorizationReport)}
    mapped = set()
    torch.manual_seed(0)
    acts, index = torch.rand(4, 3), torch.arange(4)
    metrics = {"UnitMem": UnitMem(4, 3), "ClassMem": ClassMem(4, 3), "LayerMem": LayerMem(4, 2, top_k=2)}
    metrics["UnitMem"].update(acts, index)
    metrics["ClassMem"].update(acts, index, torch.tensor([0, 1, 0, 1]))
    metrics["LayerMem"].update(torch.rand(2, 4), torch.rand(2, 4), index)
    for kind, metric in metrics.items():
        keys = set(metric.compute())
        assert keys == set(REPORT_FIELDS[kind]) | set(METRIC_ONLY_KEYS[kind]), kind
        assert set(REPORT_FIELDS[kind].values()) <= report_fields, kind
        mapped |= set(REPORT_FIELDS[kind].values())
    # every per-layer result field of the report is filled from a metric key
    not_from_metrics = {"layers", "layer_kinds", "candidate_ids", "meta", "evidence", "analyses"}
    assert report_fields - not_from_metrics == mapped


def test_report_methods_are_named_like_their_tags_and_old_names_warn():
    report = _full_report()
    scalars = report_scalars(report, threshold=0.3)
    for layer in report.layers:
        assert report.unit_mem_mean()[layer] == scalars[tags.scalar_tag("unit_mem_mean", layer)]
        assert report.unit_mem_frac_above(0.3)[layer] == scalars[tags.scalar_tag("unit_mem_frac_above", layer)]
        assert report.num_dead_units()[layer] == scalars[tags.scalar_tag("dead_units", layer)]
    for old, new, args in (("mean_unit_mem", "unit_mem_mean", ()), ("fraction_above", "unit_mem_frac_above", (0.3,)),
                           ("num_dead", "num_dead_units", ())):
        with pytest.warns(DeprecationWarning, match=f"use MemorizationReport.{new}"):
            assert getattr(report, old)(*args) == getattr(report, new)(*args)
