"""SeedLM (Shafipour et al. 2024, arXiv 2410.10714, §3): weights as seeds of a pseudo-random generator.

A matrix is cut into blocks w ∈ R^C (row-major, the last block zero-padded). For a seed s the LFSR
(`compression/lfsr.py`) gives the C·P states after s, filled row-major into V(s) ∈ N^{C×P} and mapped to
U(s) = (V(s) − 2^15) / 2^15 ∈ [−1, 1). Per block, for every seed, the least-squares coefficients
t = U(s)⁺ w are quantized to P 4-bit two's-complement mantissas q ∈ [−8, 7] with one shared 4-bit
exponent, t̂ = q·2^e with e = ⌈log2(max|t| / 7)⌉ clipped to the tensor's 16-exponent window
[e_top − 15, e_top]; the seed with the smallest ‖w − U(s)t̂‖ wins, exhaustively over all 2^16 − 1 seeds
(pseudo-inverses precomputed in float64). Scoring every seed (`search_all`) costs ~11 ms a block on
two cores; `search_pruned` returns the same argmin scoring ~20 seeds a block and ruling out the rest
with a lower bound (one float32 GEMM for all seeds), ~80x faster (bench/seedlm_search.py). Decoding
regenerates U(s) from the same `lfsr.windows` the encoder uses.

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
from .base import Codec, Encoded

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


GROUP = 64  # seeds per group in the pruned search: a group is scanned only if its best bound can win


@lru_cache(maxsize=4)
def projector_features(C: int, P: int, n_seeds: int, device: str = "cpu") -> torch.Tensor:
    """Π(s) = U U⁺ (the orthogonal projector onto range U(s)) as features, float32 (T, S'), T = C(C+1)/2.

    wᵀΠw = Σ_{i≤j} F_ij(w)·Π_ij with F_ij = w_i w_j (doubled off the diagonal), so wᵀΠ(s)w for all seeds
    is one GEMM F(w) @ feats. S is padded to a multiple of GROUP with dummies whose diagonal is −4: their
    projected energy is −4‖w‖², never a candidate.
    """
    _, U, pinv = bases(C, P, n_seeds, "cpu")
    i, j = torch.triu_indices(C, C)
    feats = (U @ pinv)[:, i, j] * torch.where(i == j, 1.0, 2.0).double()  # (S, T)
    pad = torch.zeros((-n_seeds) % GROUP, len(i), dtype=feats.dtype)
    pad[:, i == j] = -4.0
    return torch.cat([feats, pad]).t().float().contiguous().to(device)


def quantize(t: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t (..., P) -> (t̂, e, q): 4-bit mantissas q ∈ [−8, 7] with one shared exponent e ∈ [lo, hi], t̂ = q·2^e."""
    amax = t.abs().amax(-1).clamp(min=1e-300)
    e = torch.ceil(torch.log2(amax / 7)).clamp(lo, hi)
    scale = torch.exp2(e).unsqueeze(-1)
    q = torch.clamp(torch.round(t / scale), -8, 7)
    return q * scale, e, q


def quantized_error(U: torch.Tensor, pinv: torch.Tensor, b: torch.Tensor, lo: int, hi: int):
    """‖b − U t̂‖² for t = U⁺b, per candidate: U (N, C, P), U⁺ (N, P, C), b (N, C) -> (err, e, q)."""
    t_hat, e, q = quantize(torch.einsum("npc,nc->np", pinv, b), lo, hi)
    return ((torch.einsum("ncp,np->nc", U, t_hat) - b) ** 2).sum(-1), e, q


def exponent_window(w: torch.Tensor, pinv: torch.Tensor) -> tuple[int, int]:
    """The tensor's 16 exponents [e_top − 15, e_top], e_top = ⌈log2(g·max|w|/7)⌉, g the median ‖U(s)⁺‖_∞.

    The median (a typical seed's gain): near-degenerate seeds need larger coefficients, get clipped and
    lose the search; sizing the window for them would zero every small coefficient.
    """
    gain = pinv.abs().sum(-1).amax(-1).median().item()
    peak = w.abs().max().item()
    e_top = math.ceil(math.log2(peak * gain / 7)) if peak > 0 else 0
    return e_top - (2**EXPONENT - 1), e_top


def search_all(blocks: torch.Tensor, U: torch.Tensor, pinv: torch.Tensor, lo: int, hi: int):
    """The reference search: every seed's quantized error, argmin (lowest seed wins ties).

    blocks (B, C) float64 -> (seed index (B,), e (B,), q (B, P)).
    """
    t_hat, e, q = quantize(torch.einsum("spc,bc->bsp", pinv, blocks), lo, hi)
    err = ((torch.einsum("scp,bsp->bsc", U, t_hat) - blocks.unsqueeze(1)) ** 2).sum(-1)  # (B, S)
    k = err.argmin(1)
    rows = torch.arange(len(blocks), device=blocks.device)
    return k, e[rows, k], q[rows, k]


# float32 error of a unit block's projected energy (a T-term dot of entries ≤ 2, T ≤ 78) is ~1e-5 at
# worst; the bound is loosened by 10x that
PROJ_SLACK = 1e-4


def search_pruned(blocks: torch.Tensor, feats: torch.Tensor, U: torch.Tensor, pinv: torch.Tensor, lo: int, hi: int,
                  probe: int = 16):
    """The same argmin as `search_all`, with most seeds ruled out by a bound instead of evaluated.

    With t = U⁺w the least-squares fit, w − Ut ⟂ range(U), so for any t̂
        ‖w − U t̂‖² = ‖w‖² − wᵀΠw + ‖U(t − t̂)‖² ≥ ‖w‖² − wᵀΠw =: LB(s),   Π = U U⁺.
    LB for all seeds is one float32 GEMM (`projector_features`). The best seed of each of the `probe`
    groups with the smallest LB is evaluated exactly: the smallest of those errors, e*, bounds the
    optimum from above. Every seed with LB(s) ≤ e* (+ float32 slack) is then evaluated exactly, found
    group by group, and the argmin taken over them. A seed left out has err ≥ LB > e* ≥ optimum, so the
    result is the exhaustive argmin (ties: lowest seed, as in `search_all`).
    Returns (seed index (B,), e (B,), q (B, P), seeds scored exactly).
    """
    B, C = blocks.shape
    P = U.shape[-1]
    norm2 = (blocks * blocks).sum(-1)
    live = norm2 > 0  # an all-zero block: every seed reconstructs it exactly; seed index 0 as search_all
    unit = blocks / norm2.clamp(min=1e-300).sqrt().unsqueeze(-1)
    i, j = torch.triu_indices(C, C, device=blocks.device)
    proj = ((unit[:, i] * unit[:, j]).float() @ feats).view(B, -1, GROUP)  # wᵀΠw/‖w‖², (B, groups, GROUP)
    gmax = proj.amax(-1)
    gi = gmax.topk(min(probe, gmax.shape[1]), dim=1).indices
    top = (gi * GROUP + proj.gather(1, gi.unsqueeze(-1).expand(-1, -1, GROUP)).argmax(-1)).reshape(-1)
    err, _, _ = quantized_error(U[top], pinv[top], blocks.repeat_interleave(gi.shape[1], 0), lo, hi)
    thr = (1 - PROJ_SLACK - err.view(B, -1).amin(1) / norm2.clamp(min=1e-300)).float().unsqueeze(-1)  # LB(s) ≤ e* (+slack)
    rg, g = ((gmax >= thr) & live.unsqueeze(1)).nonzero(as_tuple=True)
    m, o = (proj[rg, g] >= thr[rg]).nonzero(as_tuple=True)  # row-major: seeds ascend within a row
    r, s = rg[m], g[m] * GROUP + o
    err, e, q = quantized_error(U[s], pinv[s], blocks[r], lo, hi)
    best = torch.full((B,), float("inf"), dtype=err.dtype, device=err.device).scatter_reduce(0, r, err, "amin")
    at_min = err == best[r]
    pos = torch.arange(len(s), device=err.device)
    first = torch.full((B,), len(s), device=err.device).scatter_reduce(0, r[at_min], pos[at_min], "amin")
    k = torch.zeros(B, dtype=torch.int64, device=blocks.device)
    e_out = torch.full((B,), float(lo), dtype=torch.float64, device=blocks.device)
    q_out = torch.zeros(B, P, dtype=torch.float64, device=blocks.device)
    hit = live.nonzero(as_tuple=True)[0]
    k[hit], e_out[hit], q_out[hit] = s[first[hit]], e[first[hit]], q[first[hit]]
    return k, e_out, q_out, len(top) + len(s)


class SeedLM(Codec):
    name = "seedlm"

    def __init__(self, C: int = 8, P: int = 3, n_seeds: int = lfsr.PERIOD, chunk: int = 64, device: str = "cpu"):
        if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
            raise ConfigError(f"seedlm device must be cpu, cuda, cuda:N or auto, got {device!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if not (1 <= P < C):
            raise ConfigError(f"seedlm needs 1 <= P < C, got C={C}, P={P}")
        if not 1 <= n_seeds <= lfsr.PERIOD:
            raise ConfigError(f"seedlm n_seeds must be in 1..{lfsr.PERIOD}, got {n_seeds}")
        self.C, self.P, self.n_seeds, self.chunk = C, P, n_seeds, chunk

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        # checked here, where the search runs, not at config load: the config may be written on a CPU machine
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"seedlm device={self.device!r} but this machine has no usable CUDA device; "
                              "set the seedlm rule's params.device to cpu or auto")
        C, P = self.C, self.P
        flat = w.detach().reshape(-1).double()
        n = flat.numel()
        blocks = torch.nn.functional.pad(flat, (0, (-n) % C)).reshape(-1, C).to(self.device)
        seeds, U, pinv = bases(C, P, self.n_seeds, self.device)
        lo, hi = exponent_window(flat, pinv)
        best_seed = torch.empty(len(blocks), dtype=torch.int64)
        best_e = torch.empty(len(blocks), dtype=torch.int64)
        best_q = torch.empty(len(blocks), P, dtype=torch.int64)
        feats = projector_features(C, P, self.n_seeds, self.device)
        for i in range(0, len(blocks), self.chunk):
            k, e, q, _ = search_pruned(blocks[i: i + self.chunk], feats, U, pinv, lo, hi)
            best_seed[i: i + len(k)] = seeds[k].cpu()
            best_e[i: i + len(k)] = e.long().cpu()
            best_q[i: i + len(k)] = q.long().cpu()
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
