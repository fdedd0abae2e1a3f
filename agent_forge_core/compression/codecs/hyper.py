"""Hyper-Compression (Fan et al. 2024, arXiv 2409.00592, §3–4): weights as points on a winding trajectory.

Consecutive weights form 2-D points p. The hyperfunction is the irrational winding on a torus: the
codebook is the first n points of θ_i = (i·s·d mod L) + c − L/2 in the square of side L around the
points' centroid c, for the direction d = (L/t, L)/‖·‖ and step s = ‖(L/t², L/t)‖ of the reference
implementation with t = √n. Those points are θ_i = (a·L/t + b·L/t², b·L/t) for i = a·t + b: a sheared
lattice, so the nearest codebook point has a closed form (the nearest of rows ⌊y·t/L⌉ − 1 … + 1,
each row's best column by rounding) instead of the reference's k-d tree / full distance search.

Points outside the square (§4 "engineering twists"): with K classes, ring boundaries
r_k = L/2 + k·(r_max − L/2)/K (k = 1..K, r_max the farthest point's distance from c); a point of class k
(the first ring containing it) is scaled towards c by (L/2)/r_k, which puts it inside the square,
quantized there, and scaled back at decode. Index = i + n·class (class 0: inside the square), stored at
a fixed width ⌈log2(n(K+1))⌉ bits per pair. K ∈ 1..`class_max` and the square's side (a multiple of
the weights' standard deviation from `sides`) are chosen per tensor by the smallest squared error, as
the reference picks its class count by loss.

Bits: pairs·⌈log2(n(K+1))⌉ + 4·32 (centroid, L, r_max); bpw ≈ that / 2, e.g. n=1600, K=3: 6.5;
n=64, K=3: 4.0.
"""
from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from .base import Codec, Encoded


def ring_bounds(L: float, r_max: float, K: int, spacing: str) -> torch.Tensor:
    """Outer radii r_1..r_K of the K classes of points outside the square (r_K = r_max)."""
    k = torch.arange(1, K + 1, dtype=torch.float64)
    r_max = max(r_max, L / 2)
    if spacing == "linear":  # the paper's equal-width rings
        r = L / 2 + k * (r_max - L / 2) / K
    else:  # geometric: a constant ratio between rings, so the many points just outside stay precise
        r = (L / 2) * (r_max / (L / 2)) ** (k / K)
    r[-1] = r_max
    return r


def lattice_points(n: int, L: float) -> torch.Tensor:
    """The codebook θ_i − (c − L/2), i = 0..n−1 (n = t²), float64 (n, 2)."""
    t = math.isqrt(n)
    i = torch.arange(n)
    a, b = (i // t).double(), (i % t).double()  # integer form: no floating-point `mod L` at the edges
    return torch.stack([a * L / t + b * L / t**2, b * L / t], 1)


def nearest_lattice(u: torch.Tensor, n: int, L: float) -> torch.Tensor:
    """Index of the codebook point nearest to each u ∈ [0, L]² (closed form over the lattice rows)."""
    t = math.isqrt(n)
    h = L / t  # row spacing, and column spacing within a row
    r0 = torch.round(u[:, 1] / h).long()
    best_d = torch.full((len(u),), float("inf"), dtype=u.dtype)
    best_i = torch.zeros(len(u), dtype=torch.int64)
    for dr in (-1, 0, 1):
        b = (r0 + dr).clamp(0, t - 1)
        a = torch.round((u[:, 0] - b * L / t**2) / h).long().clamp(0, t - 1)
        x, y = a * h + b * L / t**2, b * h
        d = (u[:, 0] - x) ** 2 + (u[:, 1] - y) ** 2
        better = d < best_d
        best_d = torch.where(better, d, best_d)
        best_i = torch.where(better, a * t + b, best_i)
    return best_i


def decode_points(idx: torch.Tensor, n: int, spacing: str, c: torch.Tensor, L: float, K: int, r_max: float) -> torch.Tensor:
    """Index -> 2-D point: the codebook point, scaled back out of the square by its ring's factor."""
    cls, i = idx // n, idx % n
    q = lattice_points(n, L)[i] - L / 2
    rings = ring_bounds(L, r_max, K, spacing)
    factor = torch.where(cls == 0, torch.ones(len(idx), dtype=torch.float64), (L / 2) / rings[(cls - 1).clamp(min=0)])
    return q / factor[:, None] + c


class HyperCompression(Codec):
    name = "hyper"

    def __init__(self, n: int = 1600, class_max: int = 3, sides: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 8.0),
                 spacing: str = "linear"):
        if spacing not in ("linear", "geometric"):
            raise ConfigError(f"hyper spacing must be linear (the paper's rings) or geometric, got {spacing!r}")
        self.spacing = spacing
        if math.isqrt(n) ** 2 != n or n < 4:
            raise ConfigError(f"hyper n must be a perfect square >= 4 (the codebook is a t x t winding), got {n}")
        if class_max < 1:
            raise ConfigError(f"hyper class_max must be >= 1, got {class_max}")
        if not sides or min(sides) <= 0:
            raise ConfigError(f"hyper sides (multiples of the weights' std) must be positive, got {sides}")
        self.n, self.class_max, self.sides = n, class_max, tuple(sides)

    def _encode_with(self, pts: torch.Tensor, c: torch.Tensor, L: float, K: int, r_max: float):
        d = pts - c
        inner = (d.abs() <= L / 2).all(1)
        r = d.norm(dim=1)
        rings = ring_bounds(L, r_max, K, self.spacing)
        cls = torch.searchsorted(rings, r.contiguous()).clamp(max=K - 1) + 1  # first ring with r <= r_k
        cls = torch.where(inner, torch.zeros_like(cls), cls)
        factor = torch.where(inner, torch.ones_like(r), (L / 2) / rings[(cls - 1).clamp(min=0)])
        i = nearest_lattice((d * factor[:, None]).clamp(-L / 2, L / 2) + L / 2, self.n, L)
        return i + self.n * cls

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        flat = w.detach().reshape(-1).double()
        pad = flat.numel() % 2
        pts = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, 2)
        c = pts.mean(0)
        # float32 is what is stored: encode with the stored geometry so decode matches exactly
        c = c.float().double()
        r_max = float(torch.tensor((pts - c).norm(dim=1).max().item()).float())
        std = flat.std().item() or 1.0
        best = None
        for side in self.sides:
            L = float(torch.tensor(side * std).float())
            for K in range(1, self.class_max + 1):
                idx = self._encode_with(pts, c, L, K, r_max)
                err = ((decode_points(idx, self.n, self.spacing, c, L, K, r_max) - pts) ** 2).sum().item()
                if best is None or err < best[0]:
                    best = (err, idx, L, K)
        _, idx, L, K = best
        geometry = torch.tensor([c[0].item(), c[1].item(), L, r_max], dtype=torch.float32)
        width = max(1, math.ceil(math.log2(self.n * (K + 1))))
        return Encoded(self.name, tuple(w.shape), {"index": idx, "geometry": geometry},
                       {"n": self.n, "K": K, "pad": pad, "spacing": self.spacing}, {"index": (width, False)})

    def decode(self, enc: Encoded) -> torch.Tensor:
        g = enc.payload["geometry"].double()
        p = enc.params
        pts = decode_points(enc.payload["index"].long(), p["n"], p["spacing"], g[:2], g[2].item(), p["K"], g[3].item())
        flat = pts.reshape(-1)
        return flat[: flat.numel() - enc.params["pad"]].reshape(enc.shape).float()
