"""The naming contract: ``memloc`` flags are the keywords of measure() / MemorizationMonitor, one meaning per flag.

The exceptions are listed here and in docs/cli.md.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Dict

import pytest

from lightning_memloc import MemorizationMonitor, measure
from lightning_memloc.cli import build_parser
from lightning_memloc.cli.analyze import MEASURE_FLAGS, measure_kwargs
from lightning_memloc.cli.demo import build_parser as demo_parser

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

#: ``measure()`` keywords without a ``memloc analyze`` flag of the same name and default, and why.
MEASURE_EXCEPTIONS: Dict[str, str] = {
    "labels": "a tensor in measure(); the switch --labels reads the labels of --data",
    "candidate_ids": "the dataset indices the command selected (--indices, --indices-from-split, --candidates)",
    "progress": "default on (--no-progress turns it off): an interactive command shows progress, as the monitor does",
    "state_dtype": "not exposed: float32 states (float64 only matters past millions of candidates)",
    "meta": "written by the command: checkpoints, architecture, data, control / unseen indices",
}

#: ``MemorizationMonitor`` keywords that ``memloc demo`` exposes with another meaning or default, and why.
MONITOR_EXCEPTIONS: Dict[str, str] = {
    "output_dir": "default runs/demo: the demo always writes its report, plots and logs",
    "batch_size": "the training batch (images per step and encoder); the monitor measures 32 candidates per step",
    "num_workers": "the training DataLoader's workers; the monitor generates its views in the main process",
    "transform": "a choice of training augmentation (batched | lightly); the monitor's views are the default ones",
    "unseen": "a choice of canary group (independent | neither); the monitor takes the images",
}

#: Flags that two sub-commands both have with another meaning, and why.
FLAG_EXCEPTIONS: Dict[str, str] = {
    "--batch-size": "analyze: candidates per forward step (measure()'s batch_size); demo: the training batch",
    "--unseen": "analyze / plot: an indices file or 'split'; demo: which canaries form the unseen group",
    "--transform": "analyze: a per-image view transform factory (pkg.module:factory); demo: the training augmentation",
}


def _sub(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flags(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Flag name (the first option string) → action; old spellings are not names."""
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def _spellings(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Every option string (names and old spellings) → action."""
    return {s: a for a in parser._actions for s in a.option_strings if a.dest != "help"}


def _keywords(func) -> Dict[str, object]:
    return {n: p.default for n, p in inspect.signature(func).parameters.items() if p.kind is p.KEYWORD_ONLY}


def _kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


PARSERS = {"analyze": lambda: _sub("analyze"), "plot": lambda: _sub("plot"), "demo": demo_parser}


@pytest.mark.parametrize("keyword", sorted(_keywords(measure)))
def test_every_measure_keyword_is_an_analyze_flag_with_its_default(keyword):
    flags = _flags(_sub("analyze"))
    if keyword in MEASURE_EXCEPTIONS:
        action = flags.get(_kebab(keyword))
        assert action is None or action.default != _keywords(measure)[keyword], \
            f"{keyword} now follows the contract: remove it from MEASURE_EXCEPTIONS"
        return
    assert _kebab(keyword) in flags, f"measure({keyword}=...) has no flag {_kebab(keyword)} in memloc analyze"
    action = flags[_kebab(keyword)]
    assert action.dest == keyword
    assert action.default == _keywords(measure)[keyword], f"{_kebab(keyword)} defaults to {action.default!r}"


def test_analyze_passes_every_contract_flag_to_measure_by_name():
    keywords = _keywords(measure)
    assert set(MEASURE_FLAGS) <= set(keywords)
    flags = _flags(_sub("analyze"))
    assert all(flags[_kebab(name)].dest == name for name in MEASURE_FLAGS)  # the flag of the same name sets it
    argv = ["analyze", "--data", "d.npz", "--output-dir", "o", "--views", "3", "--seed", "7", "--batch-size", "5",
            "--pairing", "anchor", "--reduction", "median", "--negative", "shift", "--top-k", "4", "--num-workers", "1",
            "--no-progress", "--bootstrap", "200", "--confidence", "0.9", "--alpha", "0.1", "--autocast", "bf16",
            "--normalize", "0.5,0.4/0.2,0.1"]
    args = build_parser().parse_args(argv)
    kw = measure_kwargs(args, reference=None, layers="auto", labels=None, candidate_ids=None, groups={}, meta={},
                        reference_cache=None)
    assert set(kw) <= set(keywords)
    assert {k: kw[k] for k in MEASURE_FLAGS} == {"views": 3, "seed": 7, "batch_size": 5, "pairing": "anchor",
                                                "reduction": "median", "negative": "shift", "top_k": 4,
                                                "num_workers": 1, "progress": False, "bootstrap": 200,
                                                "confidence": 0.9, "alpha": 0.1, "autocast": "bf16",
                                                "normalize": ((0.5, 0.4), (0.2, 0.1))}


def test_demo_flags_of_monitor_keywords_share_name_and_default():
    keywords = _keywords(MemorizationMonitor.__init__)
    flags = _flags(demo_parser())
    shared = {a.dest for a in flags.values()} & set(keywords)
    assert {"views", "seed", "bootstrap", "threshold", "every_n_epochs", "output_dir", "num_workers"} <= shared
    for dest in sorted(shared):
        action = next(a for a in flags.values() if a.dest == dest)
        assert action.option_strings[0] == _kebab(dest), f"{dest} is spelled {action.option_strings[0]} in the demo"
        if dest not in MONITOR_EXCEPTIONS:
            assert action.default == keywords[dest], f"demo {_kebab(dest)} defaults to {action.default!r}"
    assert set(MONITOR_EXCEPTIONS) <= shared  # no stale exception


def test_one_meaning_per_flag_name_across_subcommands():
    parsers = {name: make() for name, make in PARSERS.items()}
    names = {name: _flags(p) for name, p in parsers.items()}
    for flag in sorted(set().union(*names.values())):
        having = [n for n in names if flag in names[n]]
        dests = {names[n][flag].dest for n in having}
        assert len(dests) == 1, f"{flag} stores {dests} in {having}"
    assert set(FLAG_EXCEPTIONS) <= {f for f in set().union(*names.values()) if sum(f in v for v in names.values()) > 1}
    # the flags the issue found with two meanings
    assert "--candidates" not in names["demo"] and "--limit" not in names["demo"]
    assert "--subset" in names["demo"] and "--subset" not in names["analyze"]
    for parser, argv in ((parsers["analyze"], ["--data", "d", "--output-dir", "o"]), (parsers["demo"], [])):
        assert parser.parse_args(argv + ["--split-candidates", "6"]).split_candidates == 6  # a count
        assert parser.parse_args(argv + ["--split-candidates", "0.2"]).split_candidates == pytest.approx(0.2)
    assert parsers["analyze"].parse_args(["--data", "d", "--output-dir", "o", "--candidates", "6"]).candidates == 6


def test_old_spellings_are_gone():
    analyze = _spellings(_sub("analyze"))
    assert "--out" not in analyze and analyze["--no-progress"].dest == "progress"
    demo = _spellings(demo_parser())
    assert not {"--out", "--workers", "--limit", "--candidates", "--independent"} & set(demo)


def test_docs_list_exactly_the_exceptions():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Naming contract", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (measure|monitor|flag) \|", section, flags=re.M)
    documented = {kind: {name for name, k in rows if k == kind} for kind in ("measure", "monitor", "flag")}
    assert documented == {"measure": set(MEASURE_EXCEPTIONS), "monitor": set(MONITOR_EXCEPTIONS),
                          "flag": set(FLAG_EXCEPTIONS)}
