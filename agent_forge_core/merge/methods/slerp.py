from __future__ import annotations

import torch

from .base import REQUIRED, MergeMethod, TensorInputs


def slerp(t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two tensors seen as flat vectors (Shoemake 1985):

        cos Ω = <a/|a|, b/|b|>,  θ = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b

    The norms are not interpolated (a and b are used unnormalized, as in mergekit). When |cos Ω| >
    `dot_threshold` the vectors are (anti)parallel, sin Ω ≈ 0, and linear interpolation is used.
    """
    fa, fb = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = fa.norm(), fb.norm()
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = ((fa / na) * (fb / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return ((1 - t) * a + t * b).to(a.dtype)
    omega = torch.acos(dot)
    s = torch.sin(omega)
    ca, cb = float(torch.sin((1 - t) * omega) / s), float(torch.sin(t * omega) / s)
    return (ca * a + cb * b).to(a.dtype)


class Slerp(MergeMethod):
    """SLERP between the base model (t = 0) and one other model (t = 1); `t` may vary by layer/tensor."""

    name = "slerp"
    reference = "https://en.wikipedia.org/wiki/Slerp"
    needs_base = True
    min_models = 1
    max_models = 1
    global_params = {"t": REQUIRED}

    def merge(self, x: TensorInputs) -> torch.Tensor:
        (other,) = x.others()
        return slerp(float(x.params["t"]), x.base, x.tensors[other])
