"""Fixed-width integer packing: n values of `width` bits in ⌈n·width/8⌉ bytes, little-endian bit order.

Signed fields are stored offset by 2^(width−1) (so −8..7 in 4 bits becomes 0..15). The artifact stores
every integer payload of a codec packed this way, so its size on disk is the accounted bits rounded up
to a byte per field.
"""
from __future__ import annotations

import torch


def packed_bytes(n: int, width: int) -> int:
    return (n * width + 7) // 8


CHUNK = 8 << 16  # values per step (a multiple of 8, so every chunk ends on a byte boundary)


def pack(values: torch.Tensor, width: int, signed: bool = False) -> torch.Tensor:
    """Flattened `values` -> uint8 tensor of packed_bytes(numel, width) bytes."""
    if not 1 <= width <= 32:
        raise ValueError(f"bit width must be in 1..32, got {width}")
    v = values.reshape(-1).to(torch.int64)
    if signed:
        v = v + (1 << (width - 1))
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << width):
        raise ValueError(f"values out of range for {width}-bit {'signed' if signed else 'unsigned'} packing")
    out = []
    for i in range(0, v.numel(), CHUNK):
        bits = ((v[i: i + CHUNK].unsqueeze(1) >> torch.arange(width)) & 1).reshape(-1)  # LSB first
        bits = torch.nn.functional.pad(bits, (0, (-bits.numel()) % 8))
        out.append((bits.reshape(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)


def unpack(data: torch.Tensor, width: int, n: int, signed: bool = False) -> torch.Tensor:
    """Inverse of `pack`: n int64 values."""
    out = []
    step = CHUNK * width // 8  # bytes per chunk of values
    for i, j in zip(range(0, n, CHUNK), range(0, data.numel(), step)):
        m = min(CHUNK, n - i)
        bits = ((data[j: j + step].to(torch.int64).unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1)[: m * width]
        out.append((bits.reshape(m, width) << torch.arange(width)).sum(1))
    v = torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
    return v - (1 << (width - 1)) if signed else v
