import pytest
import torch


@pytest.fixture(autouse=True)
def _small_threads():
    """Tests run on 2 cores: keep torch from oversubscribing them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)
