"""Mixed precision for the stages that train or decode on CPU (bfloat16 dot products: ~3.5x a float32 576x1536
matmul on 2 cores, measured in bench/baking_speed.py)."""
from __future__ import annotations

import torch


def autocast(device, precision: str):
    """bfloat16 autocast on `device` when `precision` says so (a no-op context otherwise)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
