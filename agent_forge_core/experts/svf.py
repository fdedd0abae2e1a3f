"""Singular value fine-tuning (SVF), Transformer² (Sun et al. 2025, §3.1; SakanaAI/self-adaptive-llms).

Each target matrix is decomposed once, W = U diag(σ) Vᵀ (float32, thin SVD). An expert is a vector z ∈ (0, 1)^r
per matrix, z = sigmoid(p), and the adapted matrix is

    W'(z) = U diag(σ ⊙ z) Vᵀ · Σσ / Σ(σ ⊙ z)

(the reference's `compose_new_params`: the total singular-value mass is kept, so a uniform z gives W back).

Gradient (what the reference's `backward()` chains by hand, and what `z_grad` computes): with G = ∂L/∂W',
M = U diag(σ⊙z) Vᵀ and c = Σσ / Σ(σ⊙z),

    ∂L/∂z_i = c σ_i (u_iᵀ G v_i − ⟨G, M⟩ / Σ(σ⊙z)).

Training composes W' once per step into the model's weights, lets autograd give G for those weights only, and
maps G to z here: no autograd graph through the recomposition of 90 matrices.

Only the target matrices are decomposed (`mlp`: gate, up, down, the reference's set; `all`: also q, k, v, o).
U and V are recomputed at load, never stored; z is indexed by the singular values in descending order, which
the SVD fixes up to joint sign flips of (u_i, v_i) — W' is invariant to those. Nearly repeated singular values
(SmolLM2's MLP matrices have pairs 8e-7·σ_max apart) make the directions inside their pair sensitive to
round-off, so another machine's SVD could rotate them; an expert therefore records ‖W'(z) − W‖ per matrix and
`SVF.check` compares it at load (the same SVD on the same machine is deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TARGETS = {
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


@dataclass
class Factors:
    U: torch.Tensor  # (out, r)
    S: torch.Tensor  # (r,), descending
    Vh: torch.Tensor  # (r, in)

    @property
    def rank(self) -> int:
        return self.S.numel()


def target_names(model, target: str) -> list[str]:
    """Names of the weight parameters of the target projections in the decoder layers, in model order."""
    if target not in TARGETS:
        raise ValueError(f"unknown SVF target {target!r}; allowed: {list(TARGETS)}")
    suffixes = TARGETS[target]
    names = [f"{n}.weight" for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in suffixes and ".layers." in f".{n}"]
    if not names:
        raise ValueError(f"the model has no {target!r} projections ({', '.join(suffixes)}) to adapt")
    return names


def parameter_count(shapes: dict[str, tuple[int, int]]) -> int:
    """Values per expert: min(out, in) per matrix."""
    return sum(min(s) for s in shapes.values())


def decompose(W: torch.Tensor) -> Factors:
    U, S, Vh = torch.linalg.svd(W.detach().float(), full_matrices=False)
    return Factors(U, S, Vh)


def scale(f: Factors, z: torch.Tensor) -> torch.Tensor:
    """c = Σσ / Σ(σ⊙z)."""
    return f.S.sum() / (f.S * z).sum()


def compose(f: Factors, z: torch.Tensor) -> torch.Tensor:
    """W'(z) = U diag(σ⊙z) Vᵀ · Σσ/Σ(σ⊙z)."""
    z = z.to(f.S)
    return (f.U * (f.S * z)) @ f.Vh * scale(f, z)


def z_grad(f: Factors, z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """∂L/∂z from G = ∂L/∂W' (the module docstring's formula)."""
    z, G = z.to(f.S), G.float()
    proj = ((f.U.T @ G) * f.Vh).sum(dim=1)  # u_iᵀ G v_i for every i
    mass = (f.S * z).sum()
    inner = (proj * f.S * z).sum()  # ⟨G, M⟩ = Σ_i σ_i z_i u_iᵀ G v_i
    return scale(f, z) * f.S * (proj - inner / mass)


class SVF:
    """The decomposed target matrices of a model, and z applied to them in place."""

    def __init__(self, model, target: str = "mlp"):
        self.model = model
        self.target = target
        self.names = target_names(model, target)
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in self.names}
        self.factors = {n: decompose(p) for n, p in self.params.items()}
        # the exact base weights: "no expert" must be W itself, not W'(1) (equal only within SVD round-off)
        self.base = {n: p.detach().clone() for n, p in self.params.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    @property
    def n_values(self) -> int:
        return parameter_count(self.shapes)

    def uniform(self, value: float = 1.0) -> dict[str, torch.Tensor]:
        return {n: torch.full((f.rank,), value) for n, f in self.factors.items()}

    @torch.no_grad()
    def apply(self, z: dict[str, torch.Tensor] | None) -> None:
        """Write W'(z) into the model (None: the base weights)."""
        for n, p in self.params.items():
            w = self.base[n] if z is None else compose(self.factors[n], z[n])
            p.copy_(w.to(p.dtype))

    def check(self, z: dict[str, torch.Tensor]) -> None:
        bad = sorted(set(z) ^ set(self.names))
        if bad:
            raise ValueError(f"expert does not match the model's {self.target!r} matrices (differs on {bad[:3]}...): "
                             "it was trained on another model or target set")
        for n, v in z.items():
            if v.numel() != self.factors[n].rank:
                raise ValueError(f"expert for {n} has {v.numel()} values, the matrix has rank {self.factors[n].rank}")
