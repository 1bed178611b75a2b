import pytest
import torch


@pytest.fixture(autouse=True)
def _small_threads():
    """Tests run on 2 cores: keep torch from oversubscribing them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Tiny models: one thread avoids OpenMP contention on the shared cores (~50x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
