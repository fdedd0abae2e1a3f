"""SeedLM (Shafipour et al. 2024, arXiv 2410.10714, §3): weights as seeds of a pseudo-random generator.

A matrix is cut into blocks w ∈ R^C (row-major, the last block zero-padded). For a seed s the LFSR
(`compression/lfsr.py`) gives the C·P states after s, filled row-major into V(s) ∈ N^{C×P} and mapped to
U(s) = (V(s) − 2^15) / 2^15 ∈ [−1, 1). Per block, for every seed, the least-squares coefficients
t = U(s)⁺ w are quantized to P 4-bit two's-complement mantissas q ∈ [−8, 7] with one shared 4-bit
exponent, t̂ = q·2^e with e = ⌈log2(max|t| / 7)⌉ clipped to the tensor's 16-exponent window
[e_top − 15, e_top]; the seed with the smallest ‖w − U(s)t̂‖ wins (exhaustive over all 2^16 − 1 seeds,
vectorized, pseudo-inverses precomputed in float64). Decoding regenerates U(s) from the same
`lfsr.windows` the encoder uses.

Bits: per block K + 4 + 4P (seed, exponent, mantissas) and 8 per tensor for e_top:
bpw = (K + 4 + 4P)/C, i.e. 4.0 for (C, P) = (8, 3) and 3.0 for (12, 4).
e_top = ⌈log2(g · max|w| / 7)⌉ with g the median over seeds of ‖U(s)⁺‖_∞ (|t_i| ≤ ‖U(s)⁺‖_∞ · max|w|): a
typical seed's coefficients fit without clipping; a near-degenerate seed's would be clipped and lose.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ...errors import ConfigError
from .. import lfsr
from .base import Codec, Encoded, register

MANTISSA = 4
EXPONENT = 4


def basis_of(seeds: torch.Tensor, C: int, P: int) -> torch.Tensor:
    """U(s) for each seed, float64 (S, C, P): the one seed -> basis map of encoder and decoder."""
    V = lfsr.windows(seeds.numpy().astype(np.int64), C * P).reshape(-1, C, P).astype(np.float64)
    return torch.from_numpy((V - 2**15) / 2**15)


@lru_cache(maxsize=4)
def bases(C: int, P: int, n_seeds: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seeds, U (S,C,P), U⁺ (S,P,C)) in float64 for seeds 1..n_seeds, on `device`."""
    seeds = torch.arange(1, n_seeds + 1, dtype=torch.int64)
    U = basis_of(seeds, C, P)
    return seeds.to(device), U.to(device), torch.linalg.pinv(U).to(device)


@register
class SeedLM(Codec):
    name = "seedlm"

    def __init__(self, C: int = 8, P: int = 3, n_seeds: int = lfsr.PERIOD, chunk: int = 16, device: str = "cpu"):
        if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
            raise ConfigError(f"seedlm device must be cpu, cuda, cuda:N or auto, got {device!r}")
        if device == "auto":  # the exhaustive search is a GPU-sized job (~30 h for 135M weights on 2 cores)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if not (1 <= P < C):
            raise ConfigError(f"seedlm needs 1 <= P < C, got C={C}, P={P}")
        if not 1 <= n_seeds <= lfsr.PERIOD:
            raise ConfigError(f"seedlm n_seeds must be in 1..{lfsr.PERIOD}, got {n_seeds}")
        self.C, self.P, self.n_seeds, self.chunk = C, P, n_seeds, chunk

    def bits_per_block(self) -> int:
        return lfsr.K + EXPONENT + MANTISSA * self.P

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        C, P = self.C, self.P
        flat = w.detach().reshape(-1).double()
        n = flat.numel()
        blocks = torch.nn.functional.pad(flat, (0, (-n) % C)).reshape(-1, C).to(self.device)
        seeds, U, pinv = bases(C, P, self.n_seeds, self.device)
        # a typical seed's gain ‖U⁺‖_∞ (the median): near-degenerate seeds need larger coefficients, get
        # clipped and lose the search; sizing the window for them would zero every small coefficient
        gain = pinv.abs().sum(-1).amax(-1).median().item()
        peak = flat.abs().max().item()
        e_top = math.ceil(math.log2(peak * gain / 7)) if peak > 0 else 0
        lo, hi = e_top - (2**EXPONENT - 1), e_top
        best_seed = torch.empty(len(blocks), dtype=torch.int64)
        best_e = torch.empty(len(blocks), dtype=torch.int64)
        best_q = torch.empty(len(blocks), P, dtype=torch.int64)
        for i in range(0, len(blocks), self.chunk):
            b = blocks[i: i + self.chunk]  # (B, C)
            t = torch.einsum("spc,bc->sbp", pinv, b)  # (S, B, P)
            amax = t.abs().amax(-1).clamp(min=1e-300)
            e = torch.ceil(torch.log2(amax / 7)).clamp(lo, hi)
            scale = torch.exp2(e).unsqueeze(-1)
            q = torch.clamp(torch.round(t / scale), -8, 7)
            recon = torch.einsum("scp,sbp->sbc", U, q * scale)
            err = ((recon - b.unsqueeze(0)) ** 2).sum(-1)  # (S, B)
            k = err.argmin(0)  # lowest seed wins ties: deterministic
            cols = torch.arange(len(b), device=b.device)
            best_seed[i: i + len(b)] = seeds[k].cpu()
            best_e[i: i + len(b)] = e[k, cols].long().cpu()
            best_q[i: i + len(b)] = q[k, cols].long().cpu()
        payload = {
            "seed": best_seed.to(torch.int32),
            "exponent": (best_e - lo).to(torch.uint8),  # 0..15
            "mantissa": best_q.to(torch.int8),  # -8..7
        }
        widths = {"seed": (lfsr.K, False), "exponent": (EXPONENT, False), "mantissa": (MANTISSA, True)}
        # e_low: one 8-bit exponent per tensor. Seeds are 1..2^16-1 in K = 16 bits.
        return Encoded(self.name, tuple(w.shape), payload, {"C": C, "P": P, "e_low": lo}, widths, extra_bits=8)

    def decode(self, enc: Encoded) -> torch.Tensor:
        C, P, lo = enc.params["C"], enc.params["P"], enc.params["e_low"]
        U = basis_of(enc.payload["seed"].long(), C, P)  # (N, C, P)
        t = enc.payload["mantissa"].double() * torch.exp2(enc.payload["exponent"].double() + lo).unsqueeze(-1)
        blocks = torch.einsum("ncp,np->nc", U, t)
        n = math.prod(enc.shape)
        return blocks.reshape(-1)[:n].reshape(enc.shape).float()
