"""An SVF expert as stored: z per target matrix (float16), beside the base checkpoint, never baked in.

File `experts/<domain>.safetensors`: one tensor per matrix (its parameter name), the vector z in float16, and
in the safetensors metadata the domain, target set, objective and ‖W'(z) − W‖_F per matrix (the fingerprint
`SVF.check` compares at load: another base, or another machine's SVD rotating nearly repeated singular
directions, shows up there instead of as a silently different model).

Mixing (Transformer² §3.2, few-shot adaptation): z' = Σ_k α_k z_k, linear in z.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .svf import SVF, compose

EXPERTS_DIR = "experts"


@dataclass
class Expert:
    domain: str
    z: dict[str, torch.Tensor]  # matrix name -> (rank,) values in (0, 1)
    meta: dict = field(default_factory=dict)  # target, objective, deltas...

    @property
    def n_values(self) -> int:
        return sum(v.numel() for v in self.z.values())

    def stored(self) -> "Expert":
        """The expert as it is after a save and load (z rounded to float16)."""
        return Expert(self.domain, {n: v.detach().half().float() for n, v in self.z.items()}, dict(self.meta))

    def fingerprint(self, svf: SVF) -> dict[str, float]:
        return {n: float((compose(svf.factors[n], self.z[n]) - svf.base[n].float()).norm()) for n in svf.names}

    def save(self, folder: str | Path, svf: SVF) -> str:
        from safetensors.torch import save_file

        exp = self.stored()
        rel = f"{EXPERTS_DIR}/{self.domain}.safetensors"
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**exp.meta, "domain": self.domain, "target": svf.target, "deltas": exp.fingerprint(svf)}
        save_file({n: v.half().contiguous() for n, v in exp.z.items()}, str(path),
                  metadata={"expert": json.dumps(meta)})
        return rel

    @classmethod
    def load(cls, path: str | Path) -> "Expert":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("expert", "{}"))
            z = {k: f.get_tensor(k).float() for k in f.keys()}
        if "domain" not in meta:
            raise ValueError(f"{path}: not an SVF expert file (no 'expert' metadata)")
        return cls(meta["domain"], z, meta)

    def verify(self, svf: SVF, rtol: float = 1e-3) -> None:
        """Refuse an expert whose W'(z) here differs from the one it was trained on (see module docstring)."""
        svf.check(self.z)
        expected = self.meta.get("deltas", {})
        for n, d in self.fingerprint(svf).items():
            want = expected.get(n)
            if want is not None and abs(d - want) > rtol * max(want, 1e-6) + 1e-5:
                raise ValueError(f"expert {self.domain!r}: ‖W'(z) − W‖ of {n} is {d:.6g} here, {want:.6g} when it was "
                                 "trained: the base checkpoint differs from the one the expert was trained on")


def mix(experts: list[Expert], alpha: list[float] | torch.Tensor) -> dict[str, torch.Tensor] | None:
    """z' = Σ_k α_k z_k; None (the base weights) when every α_k is 0, where W'(z') is undefined."""
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    if alpha.numel() != len(experts):
        raise ValueError(f"{alpha.numel()} mixing weights for {len(experts)} experts")
    if float(alpha.clamp(min=0).sum()) == 0.0:
        return None
    return {n: sum(a * e.z[n] for a, e in zip(alpha, experts)) for n in experts[0].z}


def load_experts(folder: str | Path, domains: list[str]) -> list[Expert]:
    return [Expert.load(Path(folder) / EXPERTS_DIR / f"{d}.safetensors") for d in domains]


def rebase_experts(folder: str | Path, model) -> dict[str, float]:
    """Re-anchor the experts beside a checkpoint whose weights a later stage re-encoded (final compression): the
    fingerprint ‖W'(z) − W‖_F of every expert file under `experts/` is recomputed on `model`'s weights and stored,
    so loading checks against the weights the experts now run on. Returns {file: largest relative change of a
    matrix's fingerprint}: how far the re-encoding moved the experts' effect. It is bounded by Hoffman–Wielandt,
    |Δ‖diag(σ(z−1))‖| ≤ max|z−1| · ‖W_c − W‖_F, so a faithful re-encoding moves it little; the stage that
    re-encodes measures the experts through its own gates."""
    from safetensors.torch import save_file

    folder = Path(folder)
    spec = json.loads((folder / "experts.json").read_text())
    svf = SVF(model, spec["target"])
    drift = {}
    for path in sorted((folder / EXPERTS_DIR).glob("*.safetensors")):
        exp = Expert.load(path)
        svf.check(exp.z)
        old, new = exp.meta.get("deltas", {}), exp.fingerprint(svf)
        drift[path.name] = max((abs(new[n] - old[n]) / max(old[n], 1e-6) for n in new if n in old), default=0.0)
        save_file({n: v.half().contiguous() for n, v in exp.z.items()}, str(path),
                  metadata={"expert": json.dumps({**exp.meta, "deltas": new})})
    return drift
