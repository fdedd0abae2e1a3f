"""The loop's exact training state at a phase boundary, kept in the work dir as safetensors + JSON (no pickle).

Tensors (`state.safetensors`): the model's weights (for a BitNet model the float latents, not the codes: a
checkpoint of packed codes alone would resume another trajectory), AdamW's moments and step counts, the
Grokfast EMA μ, the torch RNG state and the noise generator's state. JSON (`state.json`): phases finished,
the history (validation scores and gate verdicts), the curriculum's and the noise controller's state, the global step,
AdamW's param groups. Written to a temporary folder and renamed into place, so a kill while saving leaves the
previous state whole.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS, META = "state.safetensors", "state.json"


@dataclass
class LoopState:
    phase: int = 0  # phases finished: the next to run
    step: int = 0  # optimizer steps over the whole loop (the noise schedule's t)
    history: list[dict] = field(default_factory=list)
    curriculum: dict = field(default_factory=dict)
    noise_eta: float | None = None  # the η the controlled phase ended at (the anneal's start)
    extra: dict = field(default_factory=dict)


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer once (tied weights stored under their first name)."""
    seen, out = set(), {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = t.detach().contiguous().cpu().clone()
    return out


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.contiguous().cpu() for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_state(folder: Path, state: LoopState, model, opt, grokfast, noise_gen: torch.Generator) -> None:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_t, groups = optimizer_tensors(opt)
    tensors = {**{f"model.{k}": v for k, v in model_tensors(model).items()}, **opt_t, **grokfast.state_dict(),
               "rng.torch": torch.get_rng_state(), "rng.noise": noise_gen.get_state()}
    save_file(tensors, str(tmp / TENSORS))
    (tmp / META).write_text(json.dumps({**state.__dict__, "param_groups": groups}, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path, model, opt, grokfast, noise_gen: torch.Generator) -> LoopState:
    """Restores everything `save_state` wrote into the live objects; returns the JSON part."""
    folder = Path(folder)
    tensors = load_file(str(folder / TENSORS))
    meta: dict[str, Any] = json.loads((folder / META).read_text())
    groups = meta.pop("param_groups")
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if m not in _tied_names(model)]
    if missing or unexpected:
        raise ValueError(f"{folder}: the saved loop state does not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); delete {folder} to start the loop again")
    load_optimizer(opt, tensors, groups)
    grokfast.load_state_dict(tensors)
    torch.set_rng_state(tensors["rng.torch"])
    noise_gen.set_state(tensors["rng.noise"])
    return LoopState(**meta)


def _tied_names(model) -> set[str]:
    seen, tied = set(), set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            tied.add(name)
        seen.add(id(t))
    return tied


def has_state(folder: Path) -> bool:
    return (Path(folder) / TENSORS).is_file() and (Path(folder) / META).is_file()
