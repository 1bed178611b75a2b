"""Exceptions to the contract: a keyword is the flag ``--kebab-name`` with its default, one meaning per flag."""

from __future__ import annotations

from typing import Dict

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
