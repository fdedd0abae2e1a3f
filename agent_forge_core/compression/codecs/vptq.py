"""VPTQ: vector post-training quantization (Liu et al. 2024, arXiv 2409.17066, §3–4).

W ∈ R^{M×N} (out × in) of a linear y = xWᵀ, proxy loss tr(ΔW H ΔWᵀ) with H = XᵀX over calibration
inputs (§3.1), damped by `damp`·mean(diag H) (1%). Vectors of length v run along the output dimension:
column j of W is cut into M/v vectors.

1. Order (§4.1 "channel-independent second-order optimization", act-order): columns sorted by diag(H),
   most important first; with `outlier_frac` > 0 the first ⌈frac·N⌉ of them are outlier columns with
   their own codebook (§4.2.2). The permutation is stored and undone at decode.
2. Codebooks (§4.2.1): Hessian-weighted k-means, vector of column j weighted by H_jj, minimizing
   Σ_j H_jj ‖w − c‖² (Lloyd iterations, deterministic seed). Optional residual codebook (§4.2.3) fitted
   on what the first one leaves.
3. GPTQ-style pass (§3.2, `hessian_pass.gptq_pass`): columns in blocks of `block`; each column's vectors go to their nearest
   centroids (then the residual codebook on the remainder), and the column's error e/U_jj is pushed
   onto the not yet quantized columns through U, the upper Cholesky factor of H⁻¹ (within the block at
   once, onto later blocks lazily), so later columns absorb what earlier ones lost.

Bits per matrix, all counted: indices ⌈log2 k⌉ per vector (plus the residual's and the outliers'),
codebooks k·v·16 (float16), the permutation N·⌈log2 N⌉. bpw = log2(k)/v + overhead, e.g. v=4,
k=256: 2 + (256·4·16 + N log2 N)/(MN).
"""
from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from .base import Codec, Encoded
from .hessian_pass import damped_hessian, gptq_pass, inverse_cholesky


def nearest(x: torch.Tensor, C: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest row of C for every row of x (ties: the lowest index)."""
    cc = (C * C).sum(1)
    out = torch.empty(len(x), dtype=torch.int64)
    for i in range(0, len(x), chunk):
        xb = x[i: i + chunk]
        out[i: i + chunk] = (cc - 2 * xb @ C.T).argmin(1)
    return out


def weighted_kmeans(x: torch.Tensor, w: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Lloyd's k-means minimizing Σ w_i ‖x_i − c(i)‖²; init: k distinct points drawn ∝ w. Returns (k, v)."""
    g = torch.Generator().manual_seed(seed)
    k = min(k, len(x))
    C = x[torch.multinomial(w + 1e-12, k, replacement=False, generator=g)].clone()
    for _ in range(iters):
        a = nearest(x, C)
        mass = torch.zeros(k, dtype=x.dtype).index_add_(0, a, w)
        sums = torch.zeros_like(C).index_add_(0, a, x * w[:, None])
        new = torch.where(mass[:, None] > 0, sums / mass.clamp(min=1e-30)[:, None], C)  # empty: keep
        if torch.equal(new, C):
            break
        C = new
    return C


class VPTQ(Codec):
    name = "vptq"
    uses_hessian = True
    trainable = ("codebook", "outlier_codebook")  # `finetune.py`: the centroids, indices fixed

    def __init__(self, v: int = 4, k: int = 256, residual_k: int = 0, outlier_frac: float = 0.0, outlier_k: int | None = None,
                 permute: bool = True, damp: float = 0.01, block: int = 128, iters: int = 20, seed: int = 0):
        outlier_k = k if outlier_k is None else outlier_k
        if v < 1 or k < 2 or residual_k == 1 or residual_k < 0 or outlier_k < 2:
            raise ConfigError(f"vptq needs v >= 1, k >= 2, residual_k 0 or >= 2, outlier_k >= 2; got v={v}, k={k}, "
                              f"residual_k={residual_k}, outlier_k={outlier_k}")
        if not 0 <= outlier_frac < 1:
            raise ConfigError(f"vptq outlier_frac must be in [0, 1), got {outlier_frac}")
        if self.index_bits(outlier_k) != self.index_bits(k):
            # outlier columns' indices are rows of the same index arrays, at one width
            raise ConfigError(f"vptq: outlier_k ({outlier_k}) must need as many index bits as k ({k})")
        self.v, self.k, self.residual_k, self.outlier_frac, self.outlier_k = v, k, residual_k, outlier_frac, outlier_k
        self.permute, self.damp, self.block, self.iters, self.seed = permute, damp, block, iters, seed

    @staticmethod
    def index_bits(k: int) -> int:
        return max(1, math.ceil(math.log2(k)))

    def _order(self, d: torch.Tensor) -> tuple[torch.Tensor, int]:
        N = len(d)
        n_out = math.ceil(self.outlier_frac * N) if self.outlier_frac > 0 else 0
        by_importance = torch.sort(d, descending=True, stable=True).indices
        if self.permute:
            return by_importance, n_out
        out = torch.sort(by_importance[:n_out]).values  # outliers first, the rest in their own order
        mask = torch.ones(N, dtype=torch.bool)
        mask[out] = False
        return torch.cat([out, torch.arange(N)[mask]]), n_out

    def _codebooks(self, W: torch.Tensor, d: torch.Tensor, cols: slice, k: int, seed: int) -> list[torch.Tensor]:
        """Hessian-weighted codebook(s) for the columns `cols` of W (columns as rows of vectors)."""
        M = W.shape[0]
        x = W[:, cols].T.reshape(-1, self.v)  # column-major vectors along the output dim
        wts = d[cols].repeat_interleave(M // self.v)
        books = [weighted_kmeans(x, wts, k, self.iters, seed).half().float()]
        if self.residual_k:
            r = x - books[0][nearest(x, books[0])]
            books.append(weighted_kmeans(r, wts, self.residual_k, self.iters, seed + 1).half().float())
        return books

    def encode(self, w: torch.Tensor, hessian: torch.Tensor | None = None) -> Encoded:
        M, N = w.shape
        if M % self.v:
            raise ConfigError(f"vptq vector length {self.v} does not divide the output dimension {M}")
        W, H = damped_hessian(w, hessian, self.damp)
        d = torch.diag(H).clone()
        perm, n_out = self._order(d)
        W, H, d = W[:, perm], H[perm][:, perm], d[perm]
        U = inverse_cholesky(H)

        Wf, df = W.float(), d.float()
        books = {"normal": self._codebooks(Wf, df, slice(n_out, N), self.k, self.seed)}
        if n_out:
            books["outlier"] = self._codebooks(Wf, df, slice(0, n_out), self.outlier_k, self.seed + 7)
        nv = M // self.v
        idx = [torch.empty(N, nv, dtype=torch.int64) for _ in books["normal"]]

        def quantize(j: int, col: torch.Tensor) -> torch.Tensor:
            q = torch.zeros(M, dtype=torch.float64)
            for level, C in enumerate(books["outlier" if j < n_out else "normal"]):
                a = nearest((col - q).float().reshape(nv, self.v), C)
                idx[level][j] = a
                q = q + C[a].reshape(M).double()
            return q

        gptq_pass(W, U, quantize, self.block)

        payload = {f"codebook{i}": C.half() for i, C in enumerate(books["normal"])}
        widths = {}
        for i, (C, ix) in enumerate(zip(books["normal"], idx)):
            payload[f"index{i}"] = ix
            widths[f"index{i}"] = (self.index_bits(len(C)), False)
        if n_out:
            for i, C in enumerate(books["outlier"]):
                payload[f"outlier_codebook{i}"] = C.half()
        if self.permute or n_out:
            payload["perm"] = perm
            widths["perm"] = (self.index_bits(N), False)
        params = {"v": self.v, "n_outlier": n_out, "levels": len(books["normal"])}
        return Encoded(self.name, (M, N), payload, params, widths)

    def decode(self, enc: Encoded) -> torch.Tensor:
        M, N = enc.shape
        n_out, levels = enc.params["n_outlier"], enc.params["levels"]
        cols = torch.zeros(N, M)
        for i in range(levels):
            ix = enc.payload[f"index{i}"].long()
            cols[n_out:] += enc.payload[f"codebook{i}"].float()[ix[n_out:]].reshape(N - n_out, M)
            if n_out:
                cols[:n_out] += enc.payload[f"outlier_codebook{i}"].float()[ix[:n_out]].reshape(n_out, M)
        W = cols.T
        if "perm" in enc.payload:
            out = torch.empty_like(W)
            out[:, enc.payload["perm"].long()] = W
            return out
        return W.contiguous()
