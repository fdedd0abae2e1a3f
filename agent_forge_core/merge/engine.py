"""Running a recipe: plan the output tensors, then merge and write them one at a time.

Inputs are HF folders (safetensors). The engine:
1. validates the recipe against the method (base model, number of models, known and required
   parameters) and the inputs against each other (architecture, tensor names and shapes, tokenizer);
2. plans every output tensor (name, shape, dtype) so the writer can stream;
3. for each output tensor takes only the input tensors it needs (memory-mapped views, no copy; float32
   math), resolves the parameters for that tensor (filters, layer gradients), merges, checks it is
   finite (one sum), writes it, and drops it;
4. copies config (layer count updated for slices), generation config and the base model's tokenizer.
The output appears atomically: it is built in a sibling temp folder and renamed into place.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..dtypes import DTYPES
from ..errors import ConfigError, ModelLoadError
from .compat import check_architectures, check_tensors, check_tokenizers, read_config
from .methods import REQUIRED, MergeMethod, TensorInputs, get_method
from .recipe import Recipe, resolve
from .safetensors_io import WINDOW_BYTES, LazyCheckpoint, StreamingWriter, TensorInfo

LAYER = re.compile(r"^(.*?\.layers\.)(\d+)(\..*)$")
OUR_GLOBALS = {"seed": 0}  # extensions accepted by every method
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "added_tokens.json")


@dataclass
class MergeStats:
    tensors: int
    bytes_read: int
    bytes_written: int
    seconds: float


@dataclass
class _Job:
    """One output tensor: where its inputs come from and how to resolve its parameters."""

    out: TensorInfo
    sources: list[tuple[str, str]]  # (model ref, input tensor name), recipe order
    t: float
    param_layers: list[list[dict | None]]  # per source: parameter dicts from highest to lowest precedence
    global_layers: list[dict | None]


def _check_params(method: MergeMethod, recipe: Recipe) -> None:
    allowed = set(method.model_params) | set(method.global_params) | set(OUR_GLOBALS)
    blocks = [("parameters", recipe.parameters)]
    blocks += [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(recipe.models or [])]
    for i, s in enumerate(recipe.slices or []):
        blocks.append((f"slices[{i}].parameters", s.parameters))
        blocks += [(f"slices[{i}].sources[{j}].parameters", src.parameters) for j, src in enumerate(s.sources)]
    for where, params in blocks:
        for k in params or {}:
            if k not in allowed:
                raise ConfigError(
                    f"recipe {where}: {method.name} has no parameter {k!r}; allowed: {sorted(allowed)}"
                )


def _check_shape(method: MergeMethod, recipe: Recipe) -> None:
    if method.needs_base and not recipe.base_model:
        raise ConfigError(f"merge_method {method.name} needs base_model (the task vectors are taken from it)")
    groups = [[m.model for m in recipe.models]] if recipe.models else [[s.model for s in sl.sources] for sl in recipe.slices]
    for g in groups:
        n = len([m for m in g if m != recipe.base_model])
        if n < method.min_models or (method.max_models is not None and n > method.max_models):
            most = "" if method.max_models is None else f" and at most {method.max_models}"
            raise ConfigError(
                f"merge_method {method.name} takes at least {method.min_models}{most} model(s) besides the base; "
                f"the recipe gives {n}"
            )


def _resolve_all(layers: list[dict | None], name: str, t: float, defaults: dict[str, Any], what: str) -> dict:
    out = {}
    for key, default in defaults.items():
        value = None
        for params in layers:
            if params and key in params:
                value = resolve(params[key], name, t)
                if value is not None:
                    break
        if value is None:
            if default is REQUIRED:
                raise ConfigError(f"recipe: {what} needs parameter {key!r} (for tensor {name})")
            value = default
        out[key] = value
    return out


def plan_jobs(recipe: Recipe, ckpts: dict[str, LazyCheckpoint], num_layers: int, dtype: torch.dtype | None) -> tuple[list[_Job], int]:
    """Output tensors in the base/first model's order, with their sources. Returns (jobs, output layers)."""
    top = recipe.parameters
    if recipe.models:
        refs = [m.model for m in recipe.models]
        if recipe.base_model and recipe.base_model not in refs:
            refs.append(recipe.base_model)
        entries = {m.model: m.parameters for m in recipe.models}
        ref = recipe.base_model or refs[0]
        names = ckpts[ref].names()
        for r in refs:
            check_tensors(ref, ckpts[ref], r, ckpts[r], names)
        jobs = []
        for name in names:
            m = LAYER.match(name)
            t = int(m.group(2)) / (num_layers - 1) if m and num_layers > 1 else 0.0
            info = ckpts[ref].infos[name]
            jobs.append(_Job(
                out=TensorInfo(name, dtype or info.dtype, info.shape), sources=[(r, name) for r in refs], t=t,
                param_layers=[[entries[r], top] if r in entries else [None] for r in refs], global_layers=[top],
            ))
        return jobs, num_layers
    # slices: pre-layer tensors from the first slice's sources, layers renumbered, post from the last
    first, last = recipe.slices[0], recipe.slices[-1]
    ref = first.sources[0].model
    # as mergekit's architecture files for Llama-like models: embeddings before the layers, the rest
    # (final norm, lm_head) after them; safetensors lists names alphabetically, so order says nothing
    outside = [n for n in ckpts[ref].names() if not LAYER.match(n)]
    pre = [n for n in outside if "embed" in n]
    post = [n for n in outside if "embed" not in n]
    layer_names = [n for n in ckpts[ref].names() if LAYER.match(n) and int(LAYER.match(n).group(2)) == 0]
    jobs: list[_Job] = []

    def add(name_out: str, sl, srcs: list[tuple[str, str]], t: float) -> None:
        info = ckpts[srcs[0][0]].infos[srcs[0][1]]
        for r, n in srcs:
            if n not in ckpts[r].infos:
                raise ModelLoadError(f"cannot merge: {r} has no tensor {n!r}")
            if ckpts[r].infos[n].shape != info.shape:
                raise ModelLoadError(f"cannot merge: tensor {n!r} has shape {list(ckpts[r].infos[n].shape)} in {r} but {list(info.shape)} in {srcs[0][0]}")
        by_model = {s.model: s.parameters for s in sl.sources}
        jobs.append(_Job(
            out=TensorInfo(name_out, dtype or info.dtype, info.shape), sources=srcs, t=t,
            param_layers=[[by_model.get(r), sl.parameters, top] for r, _ in srcs], global_layers=[sl.parameters, top],
        ))

    for name in pre:
        add(name, first, [(s.model, name) for s in first.sources], 0.0)
    out_layer = 0
    for sl in recipe.slices:
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
        if len(lengths) != 1:
            raise ConfigError(f"recipe slice {sl.model_dump()}: all sources of a slice must span the same number of layers")
        (n,) = lengths
        for s in sl.sources:
            if s.layer_range[0] < 0 or s.layer_range[1] > num_layers or n <= 0:
                raise ConfigError(f"recipe: layer_range {list(s.layer_range)} of {s.model} is outside 0..{num_layers}")
        for off in range(n):
            t = off / (n - 1) if n > 1 else 1.0
            for tmpl in layer_names:
                m = LAYER.match(tmpl)
                add(f"{m.group(1)}{out_layer}{m.group(3)}", sl,
                    [(s.model, f"{m.group(1)}{s.layer_range[0] + off}{m.group(3)}") for s in sl.sources], t)
            out_layer += 1
    for name in post:
        add(name, last, [(s.model, name) for s in last.sources], 0.0)
    return jobs, out_layer


def run_merge(
    recipe: Recipe,
    out_dir: str | Path,
    folders: dict[str, Path] | None = None,
    max_shard_bytes: int = 2 << 30,
    progress: Callable[[float, str], None] | None = None,
    window_bytes: int = WINDOW_BYTES,
) -> MergeStats:
    """Merge per `recipe` into `out_dir`. `folders` maps the recipe's model names to local folders
    (names that are folders themselves need no entry). Peak memory: the tensors of one merge step plus,
    per input model, at most `window_bytes` + its largest tensor of mapped file pages."""
    start = time.perf_counter()
    method = get_method(recipe.merge_method)
    _check_shape(method, recipe)
    _check_params(method, recipe)
    folders = {r: Path((folders or {}).get(r, r)) for r in recipe.referenced_models()}
    for r, f in folders.items():
        if not f.is_dir():
            raise ModelLoadError(f"recipe model {r!r}: {f} is not a model folder")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; choose a new output folder (nothing was written)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output folder (nothing was written)")
    configs = {r: read_config(f) for r, f in folders.items()}
    check_architectures(configs)
    check_tokenizers(folders)
    ckpts = {r: LazyCheckpoint(f, window_bytes) for r, f in folders.items()}
    dtype_name = recipe.out_dtype or recipe.dtype
    if dtype_name and dtype_name not in DTYPES:
        raise ConfigError(f"recipe dtype {dtype_name!r} is not supported; use one of {sorted(DTYPES)}")
    tok_ref = recipe.base_model or recipe.referenced_models()[0]
    num_layers = int(configs[tok_ref].get("num_hidden_layers", 0))
    jobs, out_layers = plan_jobs(recipe, ckpts, num_layers, DTYPES.get(dtype_name) if dtype_name else None)
    top = recipe.parameters or {}
    seed = int(resolve(top.get("seed"), "", 0.0) or 0)
    listed = _listed(recipe)

    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    read = 0
    try:
        with StreamingWriter(tmp, [j.out for j in jobs], max_shard_bytes) as writer:
            for k, job in enumerate(jobs):
                # views of the inputs' file mappings: float32 inputs are not copied at all
                tensors = [ckpts[r].get(n).float() for r, n in job.sources]
                read += sum(ckpts[r].infos[n].nbytes for r, n in job.sources)
                refs = [r for r, _ in job.sources]
                base_index = refs.index(recipe.base_model) if recipe.base_model in refs else None
                model_params = []
                for r, layers in zip(refs, job.param_layers):
                    model_params.append(
                        _resolve_all(layers, job.out.name, job.t, method.model_params, f"model {r}") if r in listed else None
                    )
                params = _resolve_all(job.global_layers, job.out.name, job.t, method.global_params, method.name)
                merged = method.merge(TensorInputs(job.out.name, tensors, model_params, base_index, params, seed, refs))
                merged = merged.to(job.out.dtype)
                if not is_finite(merged):
                    raise FloatingPointError(f"merge produced non-finite values in {job.out.name} (as {job.out.dtype}); "
                                             "check the recipe's weights, or write a wider dtype")
                writer.write(job.out.name, merged)
                del tensors, merged
                if progress and (k % 16 == 0 or k == len(jobs) - 1):
                    progress((k + 1) / len(jobs), f"merged {k + 1}/{len(jobs)} tensors")
        _copy_side_files(folders[tok_ref], tmp, configs[tok_ref], out_layers if recipe.slices else None, dtype_name)
        (tmp / "merge_recipe.yaml").write_text(recipe.to_yaml())
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); a non-empty folder is never replaced
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    written = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    return MergeStats(len(jobs), read, written, time.perf_counter() - start)


def is_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite. One sum covers the common case (a NaN or inf anywhere makes it
    non-finite); only a non-finite sum, which may also be an overflow of finite entries, pays for the
    exact elementwise check."""
    if not t.is_floating_point() or not t.numel() or math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _listed(recipe: Recipe) -> set[str]:
    """Models that take part with their own parameters (listed in `models` or as slice sources)."""
    names = {m.model for m in recipe.models or []}
    for s in recipe.slices or []:
        names |= {src.model for src in s.sources}
    return names


def _copy_side_files(src: Path, dst: Path, config: dict, layers: int | None, dtype_name: str | None) -> None:
    cfg = dict(config)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
        if isinstance(cfg.get("layer_types"), list):
            cfg["layer_types"] = (cfg["layer_types"] * layers)[:layers]
    if dtype_name:
        cfg["torch_dtype"] = dtype_name
        if "dtype" in cfg:
            cfg["dtype"] = dtype_name
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("generation_config.json", *TOKENIZER_FILES):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
