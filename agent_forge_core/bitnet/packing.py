"""Packed storage of ternary codes.

- `base3`: 5 trits per byte, byte = sum_i (c_i + 1) * 3^i for i < 5 (max 242): 1.6 bits per weight.
- `2bit`:  4 codes per byte, (c + 1) in two bits each: 2 bits per weight, cheaper to unpack.
Both round-trip exactly; the flat length is padded to a multiple of 5 (or 4) and cut on unpacking.
"""
from __future__ import annotations

import math

import torch

FORMATS = {"base3": (5, 8 / 5), "2bit": (4, 2.0)}
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
_SHIFT2 = torch.tensor([0, 2, 4, 6], dtype=torch.int32)


def bits_per_weight(fmt: str) -> float:
    return FORMATS[fmt][1]


def packed_size(numel: int, fmt: str) -> int:
    return math.ceil(numel / FORMATS[fmt][0])


def pack(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt not in FORMATS:
        raise ValueError(f"packing format must be one of {sorted(FORMATS)}, got {fmt!r}")
    flat = codes.reshape(-1).to(torch.int32) + 1
    if flat.numel() and (flat.min() < 0 or flat.max() > 2):
        raise ValueError("pack() takes ternary codes in {-1, 0, 1}")
    per = FORMATS[fmt][0]
    pad = (-flat.numel()) % per
    flat = torch.cat([flat, torch.ones(pad, dtype=torch.int32)]).view(-1, per)  # pad with code 0
    if fmt == "base3":
        return (flat * _POW3).sum(dim=1).to(torch.uint8)
    return (flat << _SHIFT2).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size, fmt: str) -> torch.Tensor:
    """int8 codes in {-1, 0, 1} of the given shape."""
    numel = math.prod(shape)
    b = packed.to(torch.int32)[:, None]
    if fmt == "base3":
        trits = (b // _POW3) % 3
    elif fmt == "2bit":
        trits = (b >> _SHIFT2) & 3
    else:
        raise ValueError(f"packing format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return (trits.reshape(-1)[:numel] - 1).to(torch.int8).view(*shape)
