"""Fixtures shared by the test files (plain helper functions are in ``helpers.py``)."""

import os
import random
import zlib

import numpy as np
import pytest
import torch

from helpers import mixed_encoder
from lightning_memloc.models import TinyCNN


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test draws from generators seeded by its own name, not from what earlier tests left.

    Without it a test's random inputs depend on the order the suite runs in, and a tolerance that
    holds for most draws fails now and then (seen in test_fidelity's per-view BatchNorm check).
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture(autouse=True)
def _small_threads():
    """Tests run on 2 cores: keep torch from oversubscribing them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


#: What a DDP launch leaves in ``os.environ`` of the test process (Lightning sets the address, port
#: and world layout there). A later test would reuse the port of an earlier process group.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK", "PL_GLOBAL_SEED")


@pytest.fixture(autouse=True)
def _fresh_ddp_environment():
    """Each test starts without the DDP variables an earlier test's launch left behind."""
    saved = {key: os.environ.get(key) for key in _DDP_ENV}
    for key in _DDP_ENV:
        os.environ.pop(key, None)
    yield
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


@pytest.fixture
def one_thread():
    """Tiny models: one thread avoids OpenMP contention on the shared cores (~50x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The reliability tests' models and images (test_reliability*.py).
@pytest.fixture
def encoder():
    return mixed_encoder(0)


@pytest.fixture
def reference():
    torch.manual_seed(1)
    return TinyCNN(width=4).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# Hypothesis profiles (tests/test_properties.py): "ci" (the default; a fixed, bounded set of generated cases, so
# CI time stays small and a failure reproduces) and "thorough" (fresh random cases, many more; run it by hand:
# MEMLOC_HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties.py). Counts: docs/reliability.md.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # a dev dependency: tests/test_properties.py is skipped without it
    pass
else:
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                              suppress_health_check=_SLOW_OK)
    settings.register_profile("thorough", max_examples=400, deadline=None, suppress_health_check=_SLOW_OK)
    settings.load_profile(os.environ.get("MEMLOC_HYPOTHESIS_PROFILE", "ci"))
