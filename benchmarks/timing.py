"""``sync``: wait for a device's queued work before reading a clock (shared by the benchmarks)."""

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a clock read after it includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
